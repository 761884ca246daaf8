"""The pickle backend's file lock: taking it, syncing under it, waiting for it.

A flock on the stable file ``<filename>.lock`` (not on the log, which a
compaction renames a new file over, and whose own shared flock only says
who reads it: :mod:`~sessionstore.backends.picklehandle`), shared to read
and exclusive to write,
held with the process's mutex (threads of one process share the lock's open
file description, so they take turns on the mutex first).  Taking it syncs
the index with the file (:mod:`~sessionstore.backends.picklesync`); a new
file or a long stretch of new frames found then is read with the lock let go
and taken again.  A child process after ``fork`` opens descriptors of its own.

Waiting for a busy lock is a blocking flock on a descriptor of its own, in a
thread of its own, given up after ``busy_timeout``
(:mod:`~sessionstore.backends.flockwait`): the kernel wakes waiters when the
lock is let go, where polling missed turns.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import BackendError, BusyRetry
from . import procid
from .flockwait import open_lock_file, take
from .picklehandle import Handle
from .pickleindex import OffsetIndex
from .picklesync import NewFile

#: The longest wait between two tries of a busy lock when waiting in the
#: kernel's queue cannot be done (see ``FileLock._flock``).
_POLL_MAX = 0.002


class FileLock:
    """The locking half of the pickle backend (a mixin)."""

    filename: str
    busy_timeout: float
    _pid: int
    _mutex: threading.RLock
    _lock_fd: int | None
    _holding: bool
    _view: Any
    _purge: Any
    _corrupt: Any
    _file_id: tuple[int, int] | None
    _offset: int
    _index: OffsetIndex
    _handle: Handle | None
    _due: str | None
    _compacting: bool
    _bridge: Any

    if TYPE_CHECKING:

        def _sync(self, defer_new: bool = False) -> None: ...
        def _catch_up(self, more_than: int = ...) -> bool: ...
        def _start_due(self) -> None: ...

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        self._acquire(exclusive)
        try:
            yield
        finally:
            self._release()

    def _acquire(self, exclusive: bool) -> None:
        """Take the mutex and the file's lock, and sync the index with the
        file; :meth:`_release` lets go.  (``_locked`` is the same as a
        context manager; the write path calls these two directly, a
        generator-based context manager costing more than the lock.)"""
        if self._pid != procid.pid:
            self._after_fork()
        self._mutex.acquire()
        try:
            if self._lock_fd is None:
                self._open_lock()
            assert self._lock_fd is not None
            operation = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            try:  # the usual case: free at once
                fcntl.flock(self._lock_fd, operation | fcntl.LOCK_NB)
            except BlockingIOError:
                # Busy: read what the others appended (or a compaction's new
                # file) while they hold it, so that the locked sync has
                # little left to read when our turn comes.
                self._catch_up(0)
                self._flock(operation)  # wait for it, up to busy_timeout
        except BaseException:
            self._mutex.release()
            raise
        self._holding = True
        try:
            try:
                self._sync(defer_new=True)
            except NewFile:
                # A new file (a compaction published, or our first look)
                # or a long stretch of new frames: read it without the
                # lock, which others are waiting for.  (One stat per
                # operation: no look at the file before taking the lock.)
                self._holding = False
                assert self._lock_fd is not None
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                self._catch_up()
                self._flock(fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                self._holding = True
                self._sync()
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        try:
            self._holding = False
            # The index holds every frame up to the offset (and perhaps a
            # few newer ones, never a partial one).
            self._view = (
                None if self._corrupt else (self._file_id, self._offset, self._index, self._handle)
            )
            assert self._lock_fd is not None
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            if self._due is not None:
                self._start_due()
        finally:
            self._mutex.release()

    def _after_fork(self) -> None:
        # flock belongs to the open file description, which a child shares
        # with its parent: the child needs descriptors of its own (the
        # parent's stay open for the parent).
        self._pid = os.getpid()
        self._mutex = threading.RLock()
        self._compacting = False
        self._due = None
        self._view = None
        self._lock_fd = None
        self._handle = None  # the parent's stays open in the parent
        self._purge = None  # (a scan of the parent's handle)
        self._file_id = None
        self._bridge = None  # (its loader thread is the parent's)

    def _open_lock(self) -> None:
        path = self.filename + ".lock"
        try:  # (read-only in a read-only place: reads still work, writes fail)
            self._lock_fd = open_lock_file(path)
        except OSError as exc:
            raise BackendError(f"cannot open the lock file {path}", exc) from exc

    def _flock(self, operation: int) -> None:
        """Wait for the lock, up to ``busy_timeout``, in the kernel's queue
        of waiters (:class:`~.flockwait.FlockWait`), which wakes a waiter
        when the lock is let go; polling left a waiter asleep while others
        took turns.
        Measured with 4 processes taking turns on 2 cores: the longest wait
        16-23 ms, against 40-78 ms polling every 2 ms at most."""
        assert self._lock_fd is not None
        if self._holding:  # (a conversion: only our own descriptor can make it)
            return self._poll(operation)
        try:
            held = take(self._lock_fd, self.filename + ".lock", operation, self.busy_timeout)
        except OSError:  # (no descriptor to spare: poll)
            return self._poll(operation)
        if held is None:
            raise BusyRetry(f"{self.filename} stayed locked")
        self._lock_fd = held

    def _poll(self, operation: int) -> None:
        assert self._lock_fd is not None
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.0005
        while True:
            try:
                fcntl.flock(self._lock_fd, operation | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BusyRetry(f"{self.filename} stayed locked") from None
                time.sleep(delay)
                delay = min(delay * 2, _POLL_MAX)
