"""Waiting for a file lock in the kernel's queue, with a timeout.

``flock`` blocks without a timeout, and polling it (try, sleep, try again)
leaves a waiter asleep while others take turns: the kernel wakes a blocked
waiter as soon as the lock is let go.  :class:`FlockWait` makes the blocking
call in a thread of its own, on a descriptor of its own, so the caller can
give up after ``busy_timeout``.  Used by the pickle backend's file lock and
by SQLite's queue of writers, through :func:`take` and :func:`open_lock_file`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading

from ..errors import BackendError
from .safefiles import make_private, open_nofollow


class FlockWait:
    """A blocking flock with a timeout: flock has none, so the wait is made
    on a descriptor of its own (a lock belongs to the open file description)
    in a thread of its own.  Got in time, the descriptor becomes the
    process's lock descriptor; given up, the thread lets go of the lock as
    soon as it gets it and closes the descriptor, so a wait given up never
    leaves the lock held (``tests/test_pickle_unlocked.py``)."""

    __slots__ = ("fd", "_operation", "_guard", "_state", "_ended")

    def __init__(self, path: str, operation: int) -> None:
        self.fd = open_nofollow(path, os.O_RDONLY)
        self._operation = operation
        self._guard = threading.Lock()
        self._state = "waiting"  # then "got", "failed" or "given up"
        self._ended = threading.Event()
        thread = threading.Thread(target=self._run, name="sessionstore-lock", daemon=True)
        thread.start()

    def _run(self) -> None:
        try:
            fcntl.flock(self.fd, self._operation)
            state = "got"
        except OSError:
            state = "failed"
        with self._guard:
            if self._state == "given up":
                self._close()
                return
            self._state = state
        self._ended.set()

    def done(self, timeout: float) -> bool:
        """Whether the lock is ours within ``timeout`` seconds."""
        self._ended.wait(timeout)
        with self._guard:
            if self._state == "got":
                return True
            if self._state == "failed":
                self._close()
            else:
                self._state = "given up"  # the thread lets go of it
            return False

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)  # (a forked child may share it)
        os.close(self.fd)


def open_lock_file(path: str) -> int:
    """A descriptor of the lock file ``path``, made (mode 0600) if missing;
    read-only where it cannot be written (a flock needs no right to write).
    Raises :class:`OSError` when it can be neither."""
    try:
        fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
    except BackendError:
        raise  # (a symbolic link)
    except OSError:
        return open_nofollow(path, os.O_RDONLY)
    make_private(fd, path)
    return fd


def take(fd: int, path: str, operation: int, timeout: float) -> int | None:
    """Take the flock ``operation`` on ``fd`` (a descriptor of ``path``): at
    once when free, else waiting in the kernel's queue up to ``timeout``.
    The descriptor that holds it, which after a wait is the waiter's own
    (``fd`` is closed then, holding nothing); None if the time ran out.
    Raises :class:`OSError` when no waiter can be made (no descriptor left)."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        pass
    wait = FlockWait(path, operation)
    if not wait.done(timeout):
        return None
    os.close(fd)
    return wait.fd
