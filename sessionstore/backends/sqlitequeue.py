"""SQLite's writers take turns on a lock the kernel hands over.

SQLite lets one connection write at a time.  One that finds the database
locked waits in SQLite's busy handler, which sleeps between tries: 1, 2, 5,
10, 15, 20, 25, 25, 25, 50, 50 and then 100 ms.  Under 4 saturating worker
processes a writer could sleep through many turns taken by the others:
single commits of 330 ms at 1,000 sessions, and 430-640 ms during a purge at
1,000,000 (``benchmarks/scale.py --fleet``).

So every write statement of a process first takes its turn on an exclusive
``flock`` of ``<database>.writers``, a file of its own beside the database
(SQLite's own locks are POSIX locks on the database and its ``-shm`` file,
which this neither touches nor disturbs), and lets go right after the
statement.  The kernel wakes a waiter the moment the lock is let go
(:mod:`~sessionstore.backends.flockwait`), so SQLite finds the database free
and its busy handler never sleeps, except for a writer that does not take
turns (another program, the ``sqlite3`` shell), which it still waits for.

Threads of one process share the lock's open file description, so they take
turns on a mutex first.  A child process after ``fork`` opens a descriptor of
its own.  Where the file cannot be made (a read-only place, in which nothing
is written anyway) there is no queue.  Reads never take a turn: in WAL mode
they do not wait for writers.
"""

from __future__ import annotations

import fcntl
import os
import threading

from ..errors import BusyRetry
from . import procid
from .flockwait import open_lock_file, take


class WriterQueue:
    """The turns of one database's writers: :meth:`acquire`, then :meth:`release`."""

    __slots__ = ("path", "busy_timeout", "_pid", "_mutex", "_fd", "_absent")

    def __init__(self, database: str, busy_timeout: float) -> None:
        self.path = database + ".writers"
        self.busy_timeout = busy_timeout
        self._pid = os.getpid()
        self._mutex = threading.Lock()
        self._fd: int | None = None
        self._absent = False  # the file could not be made: no queue

    def acquire(self) -> None:
        """Wait for this process's turn to write, up to ``busy_timeout``
        (then :class:`BusyRetry`)."""
        if self._pid != procid.pid:
            self._after_fork()
        # (Untimed first: the usual case, free, costs a third of a timed one.)
        if not self._mutex.acquire(False) and not self._mutex.acquire(timeout=self.busy_timeout):
            raise BusyRetry(f"{self.path}: another thread kept the turn to write")
        try:
            if self._fd is None and not self._absent:
                self._open()
            if self._fd is not None:
                self._lock(self._fd)
        except BaseException:
            self._mutex.release()
            raise

    def release(self) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()

    def _lock(self, fd: int) -> None:
        held = take(fd, self.path, fcntl.LOCK_EX, self.busy_timeout)
        if held is None:
            raise BusyRetry(f"{self.path}: other processes kept the turn to write")
        self._fd = held

    def _open(self) -> None:
        try:
            self._fd = open_lock_file(self.path)
        except OSError:
            self._absent = True  # a read-only place: nothing is written there

    def _after_fork(self) -> None:
        # The parent's descriptor (and the lock it may hold) stays the parent's.
        self._pid = os.getpid()
        self._mutex = threading.Lock()
        self._fd = None
        self._absent = False

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            with self._mutex:
                fd, self._fd = self._fd, None
                if fd is not None:
                    os.close(fd)
