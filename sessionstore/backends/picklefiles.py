"""The pickle log's files: open handles, records read from them, temporary files, renames.

* Each :class:`~.picklehandle.Handle` (an open log) keeps the last 2,048
  records read or written, by offset (a frame at an offset of a file never
  changes).
* :func:`read_record`: one record, read with one ``pread`` and checked (CRC,
  frame kind, id); a record that fails is a :class:`DamagedRecord` for its
  visitor, logged, and left in the file for ``sessionstore check``.
* :class:`LogFiles`: appends (under the exclusive lock: a torn tail left by
  a crash is cut first, only when ``_sync`` saw it as such; a failed append
  cuts its own partial frame), temporary files ``.<name>.*.compact.tmp``
  (flocked while in use, and made under another name until locked, so
  :meth:`LogFiles.remove_orphans` removes only those of dead processes), a
  new log renamed over the old one (created, emptied, set
  aside, compacted), and a damaged log set aside under
  ``<name>.damaged-<time>-<pid>`` with every byte kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import os
import struct
import tempfile
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import BackendError, DamagedRecord
from . import picklelog
from .base import Record
from .picklehandle import Handle
from .picklelog import Damaged, encode, encode_put
from .safefiles import make_private

log = logging.getLogger("sessionstore")

ORIGIN = struct.Struct(">QQQQ")  # dev, inode, base, tail_at: fixed size
#: Records kept per open file, by offset.
_CACHE = 2048
#: The name a temporary file has until it is locked (see ``LogFiles._temp``).
_FRESH = ".compact.new"


def read_record(handle: Handle, offset: int, session_id: str | None, filename: str) -> Record:
    """The record of ``session_id`` (None: whichever) whose frame starts at
    ``offset`` of the file ``handle``."""
    record = handle.cache.get(offset)
    if record is not None and session_id in (None, record.session_id):
        return record
    fd, at = handle.fd, offset
    if handle.before is not None:  # (following a compaction: see Handle)
        if offset < handle.split:
            fd = handle.before.fd
        else:
            at = offset + handle.shift
    try:
        frame = picklelog.read_frame(fd, at)
        if frame[0] != "put":
            raise Damaged(at, f"a {frame[0]!r:.20} frame where a record should be")
        record = picklelog.record_of(frame)
        if session_id is not None and record.session_id != session_id:
            raise Damaged(at, "the frame holds another session")
    except (Damaged, ValueError, DamagedRecord, OSError) as exc:
        shown = session_id or "(unknown id)"
        log.error("%s: session %s unreadable at byte %d: %s", filename, shown, at, exc)
        raise DamagedRecord(shown, f"unreadable at byte {at} of {filename} ({exc})") from exc
    remember(handle, offset, record)
    return record


def remember(handle: Handle, offset: int, record: Record) -> None:
    cache = handle.cache
    if len(cache) >= _CACHE:
        handle.cache = cache = {}
    cache[offset] = record


class LogFiles:
    """Temporary files and renames of the pickle backend (a mixin)."""

    filename: str
    fsync: bool
    _file_id: tuple[int, int] | None
    _offset: int
    _lineage: tuple[str, int] | None
    _mark: tuple[int, bytes] | None
    _tail: tuple[Any, ...] | None
    _corrupt: Any
    _writable: bool
    _private: bool
    _no_cut: set[tuple[int, int]]

    if TYPE_CHECKING:

        @property
        def _fd(self) -> int | None: ...
        def _reopen(self) -> None: ...

    def _append(self, frames: bytes) -> None:
        """Append frames to the file (under the exclusive lock)."""
        if self._file_id is None:
            # No file yet: create it, header first, atomically.
            self._rewrite(b"")
        fd = self._fd
        assert fd is not None
        if not self._writable:
            raise BackendError(f"session file {self.filename} is read-only")
        st = os.fstat(fd)
        if self._offset == 0 and st.st_size == 0:
            self._rewrite(b"")  # an empty file: give it a header
            fd = self._fd
            assert fd is not None
            st = os.fstat(fd)
        if st.st_size != self._offset:
            self._cut_torn_tail(st)
        if not self._private:
            make_private(fd, self.filename)
            self._private = True
        try:
            written = os.write(fd, frames)
            if written < len(frames):  # (a short write: the rest, in turn)
                view = memoryview(frames)[written:]
                while view:
                    view = view[os.write(fd, view) :]
            if self.fsync:
                os.fsync(fd)
        except OSError as exc:
            # Our own partial frame (nobody else writes under the lock).
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._offset)
            raise BackendError(f"cannot write to session file {self.filename}", exc) from exc
        self._offset += len(frames)
        self._mark = (self._offset - len(frames), frames[:8])

    def _cut_torn_tail(self, st: os.stat_result) -> None:
        assert self._fd is not None
        extra = st.st_size - self._offset
        if self._tail != (self._file_id, self._offset, st.st_size) or self._file_id in self._no_cut:
            raise BackendError(
                f"session file {self.filename} has {extra} unexpected bytes at byte "
                f"{self._offset}: not cut, nothing written (see `sessionstore check`)"
            )
        log.warning("%s: cutting %d bytes of an unfinished write", self.filename, extra)
        try:
            os.ftruncate(self._fd, self._offset)
        except OSError as exc:
            raise BackendError(f"cannot cut an unfinished write off {self.filename}", exc) from exc
        self._tail = None

    # -- replacing -------------------------------------------------------------------

    def _temp(self) -> tuple[int, str]:
        """A new temporary file, locked (which tells remove_orphans() it is
        in use) before it has the name remove_orphans() looks for: another
        process starting up deleted it between mkstemp() and flock()."""
        directory, name = os.path.split(self.filename)
        fd, fresh = tempfile.mkstemp(prefix=f".{name}.", suffix=_FRESH, dir=directory)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            temp = fresh[: -len(_FRESH)] + ".compact.tmp"
            os.rename(fresh, temp)  # (the lock goes with the file)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(fresh)
            raise
        return fd, temp

    def _temps(self, suffix: str = ".compact.tmp") -> Iterator[str]:
        directory, name = os.path.split(self.filename)
        yield from glob.glob(os.path.join(glob.escape(directory), f".{name}.*{suffix}"))

    def remove_orphans(self) -> list[str]:
        """Delete the temporary files of compactions whose process died (one
        that died between making and locking its file: an hour later)."""
        removed = [temp for temp in self._temps() if not in_use(temp, remove=True)]
        for fresh in self._temps(_FRESH):
            with contextlib.suppress(OSError):
                if time.time() - os.stat(fresh).st_mtime > 3600 and not in_use(fresh, True):
                    removed.append(fresh)
        if removed:
            log.warning("%s: removed %d unfinished compactions", self.filename, len(removed))
        return removed

    def _publish(self, temp: str, fd: int) -> None:
        """Rename the fsynced ``temp`` (open as ``fd``, exclusively locked)
        over the log, then follow it."""
        # Whoever puts a file at the path without our lock (an operator
        # restoring a backup) must not lose it to a rename: look first.  (A
        # window of microseconds remains; Python has no renameat2 exchange.)
        if self._file_id is not None:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(self.filename, follow_symlinks=False)
                if (st.st_dev, st.st_ino) != self._file_id:
                    raise BackendError(f"{self.filename} was replaced meanwhile: not renamed over")
        os.replace(temp, self.filename)
        # A log now: held shared, like any open log (an exclusive lock
        # would keep those opening it waiting until we close it).
        fcntl.flock(fd, fcntl.LOCK_SH)
        if self.fsync:
            dir_fd = os.open(os.path.dirname(self.filename), os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._reopen()
        assert self._fd is not None  # _reopen() opened it or raised
        st = os.fstat(self._fd)
        self._file_id = (st.st_dev, st.st_ino)
        self._offset = st.st_size
        self._tail = None

    def _origin(
        self, where: tuple[int, int, int, int], lineage: tuple[str, int] | None = None
    ) -> tuple[bytes, tuple[str, int]]:
        token, generation = lineage or self._lineage or (os.urandom(8).hex(), 0)
        lineage = (token, generation + 1)
        return encode(("origin", *lineage, ORIGIN.pack(*where))), lineage

    def _rewrite(self, frames: bytes) -> None:
        """Replace the file by a header plus ``frames`` (under the exclusive
        lock): temp file, fsync, rename.  Used to create the file, to empty it
        and to set a damaged one aside."""
        try:
            fd, temp = self._temp()
        except OSError as exc:
            raise BackendError(f"cannot write a new {self.filename}", exc) from exc
        origin, lineage = self._origin((0, 0, 0, 0))
        try:
            # The descriptor (and its lock) stays open until the rename: a
            # process starting up takes an unlocked temporary file for an orphan.
            with os.fdopen(fd, "wb", closefd=False) as out:
                out.write(encode(picklelog.HEADER) + origin)
                out.write(frames)
                out.flush()
                # Always fsync here: the rename must never publish an empty file.
                os.fsync(out.fileno())
            self._publish(temp, fd)
        except (OSError, BackendError) as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            if isinstance(exc, BackendError):
                raise
            raise BackendError(f"cannot write a new {self.filename}", exc) from exc
        finally:
            os.close(fd)
        # The index of the file replaced is of no use now (derived data): a
        # process opening the new file would otherwise take it for one being
        # replaced by a compaction and read the log holding the lock.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.filename + ".index")
        self._mark = None
        self._lineage = lineage

    def _set_aside(self, error: BackendError) -> None:
        """Keep a damaged file under another name; a new file takes the
        records that could be read.  Every byte of the old file is kept."""
        with open(self.filename, "rb") as source:
            data = source.read()
        records, problems = picklelog.salvage(data)
        left_out = sum("left out" in p.reason for p in problems)
        aside = f"{self.filename}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        os.link(self.filename, aside)
        self._rewrite(b"".join(encode_put(r) for r in records.values()))
        self._corrupt = None
        self._file_id = None  # the next sync indexes the new file
        log.error(
            "%s; it is set aside, unchanged, as %s, and a new file holds the %d sessions "
            "that could be read (%d left out: a later change of theirs was in a damaged "
            "stretch)",
            getattr(error, "damage", error),
            aside,
            len(records),
            left_out,
        )


def in_use(temp: str, remove: bool = False) -> bool:
    """Whether a compaction's temporary file is locked by a live process;
    with ``remove``, delete it when it is not."""
    try:
        fd = os.open(temp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return True  # gone, or not ours to judge
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Unlocked, but perhaps because it was just renamed over the log
        # (a compaction done): then it is no temporary file any more.
        opened = os.fstat(fd)
        now = os.stat(temp, follow_symlinks=False)
        if (opened.st_dev, opened.st_ino) != (now.st_dev, now.st_ino):
            return True
    except (BlockingIOError, FileNotFoundError):
        return True
    finally:
        os.close(fd)
    if remove:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            return True  # (someone else's now)
    return False
