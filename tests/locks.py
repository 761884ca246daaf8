"""Stores set up for lock tests, their lock files held as another process would
hold them, and waiting for a state."""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager


def set_up(backend_class, path, busy_timeout=5.0):
    """A ``backend_class`` store at ``path``, set up."""
    backend = backend_class(str(path), busy_timeout=busy_timeout)
    backend.setup()
    return backend


@contextmanager
def flock_held(path):
    """An exclusive flock of ``path``, held by an open file of its own (a
    flock belongs to the open file, so this is what another process holding
    it looks like)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def until(condition, seconds=5.0):
    """Wait for ``condition`` (a state, not a time), failing after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)
