"""The ``sessionstore`` command run in this process, as a separate one would.

A new interpreter costs about 150 ms of imports per command; the tests of
what a command does run ``sessionstore.cli.main`` here instead, with what a
process would show: the exit code (argparse's usage errors included), stdout
and stderr as bytes or text, warnings logged on stderr (as Python's
last-resort handler prints them in a process), and its own environment for
``SESSIONSTORE_SECRET``.  ``test_cli`` runs the command as a real process
too, and checks both give the same.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from typing import Any

from sessionstore.cli import main


@dataclass
class Ran:
    """What a run of the command gave, like :class:`subprocess.CompletedProcess`."""

    returncode: int
    stdout: Any  # str, or bytes with text=False
    stderr: Any


@contextlib.contextmanager
def _secret_variable(value: str | None):
    before = os.environ.get("SESSIONSTORE_SECRET")
    try:
        if value is None:
            os.environ.pop("SESSIONSTORE_SECRET", None)
        else:
            os.environ["SESSIONSTORE_SECRET"] = value
        yield
    finally:
        if before is None:
            os.environ.pop("SESSIONSTORE_SECRET", None)
        else:
            os.environ["SESSIONSTORE_SECRET"] = before


def run(*args: str, secret_variable: str | None = None, text: bool = True) -> Ran:
    """``sessionstore ARGS`` with ``$SESSIONSTORE_SECRET`` set to
    ``secret_variable`` (unset by default)."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    handler = logging.StreamHandler(err)
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with (
            _secret_variable(secret_variable),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        root.removeHandler(handler)
    stdout, stderr = out.buffer.getvalue(), err.buffer.getvalue()
    if text:
        return Ran(code, stdout.decode(), stderr.decode())
    return Ran(code, stdout, stderr)
