"""The README renders, and CI runs the test command it gives."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
import zipfile

import docutils.core
import pytest
from docutils.writers.null import Writer

from .conftest import ROOT

TEST_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
)


def test_readme_is_valid_restructuredtext():
    text = (ROOT / "README.rst").read_text(encoding="utf-8")
    # Any warning (a malformed table, a broken title) stops the rendering.
    docutils.core.publish_string(
        text, writer=Writer(), settings_overrides={"halt_level": 2, "report_level": 2}
    )


def test_ci_runs_the_readme_test_command():
    assert TEST_COMMAND in (ROOT / "README.rst").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert TEST_COMMAND.replace("pip install", "pip install -q") in ci


def _claimed_pythons():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    metadata = parser["metadata"]["classifiers"]
    found = re.findall(r"Programming Language :: Python :: (3\.\d+)$", metadata, re.M)
    return sorted(found, key=lambda v: tuple(map(int, v.split("."))))


def test_ci_runs_every_python_the_package_claims():
    claimed = _claimed_pythons()
    assert claimed == ["3.10", "3.11", "3.12", "3.13"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    listed = re.search(r"^PYTHONS=\(([^)]*)\)", ci, re.M)
    assert listed and sorted(listed.group(1).split()) == claimed
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    newest = claimed[-1].split(".")
    below = f"{newest[0]}.{int(newest[1]) + 1}"
    assert parser["options"]["python_requires"] == f">={claimed[0]}, <{below}"


@pytest.mark.slow
def test_the_wheel_carries_the_license(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("sessionstore-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (license_name,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert archive.read(license_name) == (ROOT / "LICENSE").read_bytes()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    assert b"MIT License" in (ROOT / "LICENSE").read_bytes()
    assert b"\nLicense: MIT\n" in metadata and b"\nLicense-File: LICENSE\n" in metadata
