"""Open pickle logs: who holds one, and letting go of a replaced one gently.

A compaction renames a new log over the old one; each process goes on
reading the old log through the descriptor it holds (a bridge reads old
records from it for seconds: :mod:`~sessionstore.backends.picklebridge`),
and the file's blocks are freed when the last descriptor of the last process
is closed.  Freeing 330 MB at once (a million sessions) is one journal
transaction on ext4, more with online ``discard``: measured, the ``close``
took 60-70 ms and every other process's ``fdatasync`` waited 18-28 ms behind
it on a quiet machine, and up to 150 ms at once under the four-worker
benchmark.  Cut down 16 MB at a time with a sync between, the same file took
180 ms to free and no other sync waited more than 6 ms.

Only the last holder may cut: a bridged process reads the old bytes until it
lets go.  So every descriptor of a log is opened with :func:`open_log`, which
takes a shared ``flock`` on it (on the log itself: the write lock is a flock
of ``<log>.lock``, and a compaction's temporary file gives up its exclusive
one for a shared one when it is renamed over the log).  A :class:`Handle`
whose file has no name left (``st_nlink == 0``: replaced) is closed in a
thread of its own, which asks for the exclusive lock without waiting: the
kernel grants it only when no other open file description holds the shared
one, and a failed conversion drops ours, so of several processes letting go
at once the last to ask gets it.  Then no one can open the file again (no
name) and no one holds it: it is cut down in steps and closed.  Anyone else
just closes it.

Invariants: a descriptor we read a log through holds the shared lock for as
long as it is open; a file is cut only with the exclusive lock, with no name,
by the process that opened it (a child after ``fork`` shares its parent's
open file descriptions, so it closes what it inherited and never cuts).  A
process that opened the path just before it was replaced finds the
exclusive lock taken or the name gone, and opens the path again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import sys
import threading
import time
from typing import TYPE_CHECKING

from . import procid
from .safefiles import open_nofollow

if TYPE_CHECKING:
    from .base import Record

#: How much of a replaced log is cut at a time, and the pause between cuts.
FREE_STEP = 16 << 20
FREE_PAUSE = 0.005


class Handle:
    """An open log file, closed when the last holder lets go of it: a thread
    reading without the lock keeps the file it looked up open, whatever
    another thread reopens meanwhile.  ``cache`` maps offsets to records.
    ``gentle``: a log opened with :func:`open_log`, freed in steps when it
    was replaced (see the module docstring)."""

    __slots__ = ("fd", "cache", "before", "split", "shift", "_open")

    def __init__(self, fd: int, gentle: bool = False, same: Handle | None = None) -> None:
        self.fd = fd
        #: The descriptor's owner, shared by the handles of one open file.
        self._open: _Open = same._open if same is not None else _Open(fd, gentle)
        self.cache: dict[int, Record] = {}
        #: A compaction's new log followed without its index yet
        #: (:mod:`~sessionstore.backends.picklebridge`): offsets below
        #: ``split`` are read from the old log ``before``, the others at
        #: ``offset + shift`` of this file.
        self.before: Handle | None = None
        self.split = self.shift = 0

    def again(self) -> Handle:
        """Another handle of the same open file (an empty cache, no
        ``before``): the file is closed when neither is held."""
        return Handle(self.fd, same=self)


class _Open:
    """A descriptor, closed when no handle holds it any more."""

    __slots__ = ("fd", "gentle", "pid")

    def __init__(self, fd: int, gentle: bool) -> None:
        self.fd, self.gentle, self.pid = fd, gentle, procid.pid

    def __del__(self) -> None:
        # (Not while the interpreter exits: no thread can start then.)
        if self.gentle and self.pid == procid.pid and not sys.is_finalizing():
            with contextlib.suppress(OSError):
                if os.fstat(self.fd).st_nlink == 0:
                    _closing().put(self.fd)
                    return
        with contextlib.suppress(OSError):
            os.close(self.fd)


def open_log(path: str, flags: int) -> int:
    """A descriptor of the log at ``path``, holding the shared lock that
    tells others it is read (raises what ``open`` raises)."""
    while True:
        fd = open_nofollow(path, flags)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                if os.fstat(fd).st_nlink == 0:
                    os.close(fd)  # replaced, and being cut: the new one
                    continue
                # A compaction's file between its rename and giving up its
                # exclusive lock (microseconds), or a check of an orphan.
                fcntl.flock(fd, fcntl.LOCK_SH)
            if os.fstat(fd).st_nlink == 0:
                os.close(fd)  # replaced just after we opened it
                continue
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        return fd


_retired: queue.SimpleQueue[Handle | int | threading.Event] = queue.SimpleQueue()
_closer: tuple[int, threading.Thread] | None = None


def _closing() -> queue.SimpleQueue[Handle | int | threading.Event]:
    """The queue of this process's closing thread (started when first needed;
    a child after fork starts a queue of its own: what its parent had queued
    is the parent's to close, and cut)."""
    global _closer, _retired
    if _closer is None or _closer[0] != procid.pid:
        if _closer is not None:
            _retired = queue.SimpleQueue()
        thread = threading.Thread(target=_close_retired, name="sessionstore-close", daemon=True)
        _closer = (procid.pid, thread)
        thread.start()
    return _retired


def retire(handle: Handle) -> None:
    """Let go of ``handle`` in a thread of its own: whatever closing it
    costs is not in a request's time."""
    _closing().put(handle)


def settle() -> None:
    """Wait until what this process let go of so far is closed (or cut)."""
    done = threading.Event()
    _closing().put(done)
    done.wait()


def _close_retired() -> None:
    while True:
        item = _retired.get()
        if isinstance(item, int):
            free_gently(item)
        elif isinstance(item, threading.Event):
            item.set()
        del item  # a handle is closed here, unless a reader still holds it


def free_gently(fd: int) -> bool:
    """Close the replaced log ``fd``, first cutting it down in steps if no
    other process holds it (see the module docstring); True if it was cut."""
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another holder: the last one cuts it
        st = os.fstat(fd)
        if st.st_nlink:
            return False  # (never a file with a name)
        size = st.st_size
        while size > 0:
            size = max(0, size - FREE_STEP)
            os.ftruncate(fd, size)
            os.fdatasync(fd)
            if size:
                time.sleep(FREE_PAUSE)
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
