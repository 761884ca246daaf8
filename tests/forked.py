"""Child processes forked from a warm server, for tests that start many.

A fresh ``python -m tests.child`` spends about 150 ms starting Python and
importing sessionstore before it does anything; the crash tests start one per
kill (30 to 50 of them).  :func:`start` forks the child instead, from
multiprocessing's fork server: one single-threaded process, started once per
pytest run with the backends imported.  The child is a real process with its
own backend (opened after the fork, as a fresh interpreter would), killed
with a real signal; only the interpreter start is saved.

Children are forked from that server, never from pytest's own process: the
threads of earlier tests (servers, background compactions) could hold a lock
across a fork.

:class:`Forked` looks like the :class:`subprocess.Popen` the tests used
before: ``stdout`` (text, line by line, ending when the child dies),
``send_signal``, ``wait`` (``-signal.SIGKILL`` for a killed child),
``communicate``.  A child that fails prints ``child failed: <traceback>`` as
its last line, for the test to show.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import select
import signal
import sys
import time
import traceback
from typing import IO, Any

#: multiprocessing's fork server context, for tests that start their own
#: processes (a Barrier, a Queue and Process targets from importable modules).
CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(
    ["__main__", "tests.compaction_child", "tests.apps", "waitress"]
    + [f"sessionstore.backends.{name}" for name in ("sqlite", "redis", "sql")]
    + ["psycopg", "pymysql"]
)


def _run(module: str, command: str, args: tuple[str, ...], writer: Any) -> None:
    """In the child: print to the pipe, then run ``python -m tests.MODULE COMMAND ARGS``."""
    commands = importlib.import_module(f"tests.{module}").COMMANDS
    sys.stdout = os.fdopen(writer.fileno(), "w", closefd=False)
    try:
        commands[command](*args)
    except BaseException:
        # A failing child says why on the line protocol's pipe, where the
        # test reads it (the fork server's stderr is nobody's).
        print("child failed:", traceback.format_exc().replace("\n", " | "), flush=True)
        raise


class Forked:
    """``python -m tests.MODULE COMMAND ARGS``, forked from the warm server."""

    def __init__(self, module: str, command: str, *args: str) -> None:
        reader, writer = CONTEXT.Pipe(duplex=False)
        self._process = CONTEXT.Process(
            target=_run, args=(module, command, args, writer), daemon=True
        )
        self._process.start()
        writer.close()  # the child's copy is the only one: EOF when it dies
        self.stdout: IO[str] = os.fdopen(os.dup(reader.fileno()), "r")
        reader.close()
        assert self._process.pid is not None
        self.pid: int = self._process.pid

    def send_signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 60) -> int | None:
        self._process.join(timeout)
        return self._process.exitcode

    def communicate(self, timeout: float = 60) -> tuple[str, int | None]:
        """The child's whole output and exit code; it is killed (and the test
        fails) if it has not ended within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        chunks = []
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.stdout], [], [], max(0.0, left))
            if not ready:
                self.send_signal(signal.SIGKILL)
                raise AssertionError(f"the child did not end in {timeout} s")
            chunk = os.read(self.stdout.fileno(), 65536)
            if not chunk:
                break
            chunks.append(chunk)
        self.stdout.close()
        return b"".join(chunks).decode(), self.wait(max(0.0, deadline - time.monotonic()))


def start(module: str, command: str, *args: str) -> Forked:
    """Fork ``python -m tests.MODULE COMMAND ARGS`` (MODULE: child, compaction_child)."""
    return Forked(module, command, *args)
