"""Holding a store's lock file as another process would, and waiting for a state."""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager


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
