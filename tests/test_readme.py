"""The README renders, and CI runs the test command it gives."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

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


# The wheel's build: ~3 s of pip (a fresh build environment, then setuptools)
# on one core.  conftest starts it as soon as the tests are collected, so it
# runs while the tests before this one do; the test waits for it.
_BUILD: dict[str, Any] = {}


def start_building_the_wheel() -> None:
    if _BUILD:
        return
    folder = Path(tempfile.mkdtemp(prefix="sessionstore-wheel-"))
    _BUILD["folder"] = folder
    _BUILD["pip"] = subprocess.Popen(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder), str(ROOT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def stop_building_the_wheel() -> None:
    """Stop a build no test waited for; remove the built wheel."""
    pip = _BUILD.pop("pip", None)
    if pip is not None:
        pip.kill()
        pip.communicate()
    folder = _BUILD.pop("folder", None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def built_wheel_folder():
    start_building_the_wheel()  # unless conftest did
    pip = _BUILD.pop("pip")
    _, errors = pip.communicate(timeout=300)
    assert pip.returncode == 0, errors.decode()
    yield _BUILD["folder"]
    stop_building_the_wheel()


@pytest.mark.slow
def test_the_wheel_carries_the_license(built_wheel_folder):
    (wheel,) = built_wheel_folder.glob("sessionstore-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (license_name,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert archive.read(license_name) == (ROOT / "LICENSE").read_bytes()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    assert b"MIT License" in (ROOT / "LICENSE").read_bytes()
    assert b"\nLicense: MIT\n" in metadata and b"\nLicense-File: LICENSE\n" in metadata
