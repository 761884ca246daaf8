"""The README renders, and CI runs the test command it gives."""

from __future__ import annotations

import docutils.core
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
