"""Compaction of the pickle log, without holding up the other processes.

*Phase 1, no lock held*: the live records as of byte ``base`` of the log (a
snapshot of the index taken under the lock) are written to a temporary file
``.<name>.*.compact.tmp`` in the same directory, flocked while it is written
(so :meth:`Compaction.remove_orphans` leaves a live one alone), and fsynced.

*Phase 2, under the exclusive lock*: the frames appended to the log since
``base`` are copied, raw, to the end of the temporary file (they replay the
same way there), the origin frame is completed with where they start, and the
file is fsynced and renamed over the log.  Other processes wait only for
phase 2: a short copy, one fsync and a rename.  A crash in either phase leaves
the old log whole (the rename is the commit point) and a temporary file that
the next set-up removes.

The origin frame ``("origin", lineage, generation, pack(dev, inode, base,
tail_at))`` lets a process whose index covers the old file up to any byte
``o >= base`` carry its index over: it continues at byte ``tail_at + (o -
base)`` of the new file without reading it again
(``test_a_reader_follows_a_compaction_without_reading_the_file_again``).

Compaction starts by itself, in a background thread so that no request waits
for it, once the log is larger than twice the live data plus 1 MiB; one at a
time per process, and not while another process's temporary file is locked.
One that fails (a full disk) backs off until the log has grown by as much
again, and none starts without the free space for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import os
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import BackendError
from . import picklelog
from .base import Record
from .picklelog import encode, encode_put

log = logging.getLogger("sessionstore")

#: Compact when the file is larger than twice the live data plus this.
COMPACT_SLACK = 1 << 20
ORIGIN = struct.Struct(">QQQQ")  # dev, inode, base, tail_at: fixed size


class Compaction:
    """The compaction half of :class:`~sessionstore.backends.picklefile.PickleBackend`."""

    filename: str
    fsync: bool
    _fd: int | None
    _file_id: tuple[int, int] | None
    _offset: int
    _live: int
    _index: dict[str, Record]
    _lineage: tuple[str, int] | None
    _mark: tuple[int, bytes] | None
    _tail: tuple[Any, ...] | None
    _corrupt: Any
    _compact_after: int
    _compacting: bool
    _compactor: threading.Thread | None
    _mutex: threading.RLock

    if TYPE_CHECKING:

        def _locked(self, exclusive: bool) -> contextlib.AbstractContextManager[None]: ...
        def _reopen(self) -> None: ...

    # -- files --------------------------------------------------------------------------

    def _temp(self) -> tuple[int, str]:
        directory, name = os.path.split(self.filename)
        fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".compact.tmp", dir=directory)
        fcntl.flock(fd, fcntl.LOCK_EX)  # tells remove_orphans() it is in use
        return fd, temp

    def _temps(self) -> Iterator[str]:
        directory, name = os.path.split(self.filename)
        yield from glob.glob(os.path.join(glob.escape(directory), f".{name}.*.compact.tmp"))

    def remove_orphans(self) -> list[str]:
        """Delete the temporary files of compactions whose process died."""
        removed = [temp for temp in self._temps() if not _in_use(temp, remove=True)]
        if removed:
            log.warning("%s: removed %d unfinished compactions", self.filename, len(removed))
        return removed

    def _publish(self, temp: str) -> None:
        """Rename the fsynced ``temp`` over the log, then follow it."""
        # Whoever puts a file at the path without our lock (an operator
        # restoring a backup) must not lose it to a rename: look first.  (A
        # window of microseconds remains; Python has no renameat2 exchange.)
        if self._file_id is not None:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(self.filename, follow_symlinks=False)
                if (st.st_dev, st.st_ino) != self._file_id:
                    raise BackendError(f"{self.filename} was replaced meanwhile: not renamed over")
        os.replace(temp, self.filename)
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

    def _origin(self, where: tuple[int, int, int, int]) -> tuple[bytes, tuple[str, int]]:
        token, generation = self._lineage or (os.urandom(8).hex(), 0)
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
            with os.fdopen(fd, "wb") as out:
                out.write(encode(picklelog.HEADER) + origin)
                out.write(frames)
                out.flush()
                # Always fsync here: the rename must never publish an empty file.
                os.fsync(out.fileno())
            self._publish(temp)
        except (OSError, BackendError) as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            if isinstance(exc, BackendError):
                raise
            raise BackendError(f"cannot write a new {self.filename}", exc) from exc
        self._mark = None
        self._lineage = lineage

    # -- compaction -----------------------------------------------------------------------

    def _maybe_compact(self) -> None:
        """Start a compaction in the background if the log is due one
        (under the exclusive lock, after a write)."""
        if self._offset <= max(2 * self._live + COMPACT_SLACK, self._compact_after):
            return
        if self._compacting or any(_in_use(t) for t in self._temps()):
            return
        self._compacting = True
        snapshot = list(self._index.values())
        args = (snapshot, self._offset, self._file_id)
        self._compactor = threading.Thread(
            target=self._compact_quietly, args=args, name="sessionstore-compact", daemon=True
        )
        self._compactor.start()

    def _compact_quietly(self, *args: Any) -> None:
        try:
            self._compact_from(*args)
        except (BackendError, OSError):
            # Commits are safely appended meanwhile; compaction waits until
            # the log has grown by as much again.
            with self._mutex:
                self._compact_after = 2 * self._offset
            log.warning(
                "could not compact %s; next try at %d bytes",
                self.filename,
                self._compact_after,
                exc_info=True,
            )
        finally:
            self._compacting = False

    def compact(self) -> None:
        """Compact the log now (it also happens by itself, in the background)."""
        with self._locked(exclusive=True):
            snapshot, base, file_id = list(self._index.values()), self._offset, self._file_id
        if file_id is not None:
            self._compact_from(snapshot, base, file_id)

    def _compact_from(self, snapshot: list[Record], base: int, file_id: tuple[int, int]) -> None:
        frames = [encode_put(r) for r in snapshot]
        size = sum(map(len, frames))
        stat = os.statvfs(os.path.dirname(self.filename))
        if stat.f_bavail * stat.f_frsize < size + COMPACT_SLACK:
            raise BackendError(f"no room to compact {self.filename}")
        fd, temp = self._temp()
        try:
            with os.fdopen(fd, "r+b") as out:
                origin, _ = self._origin((0, 0, 0, 0))
                out.write(encode(picklelog.HEADER) + origin)
                for frame in frames:
                    out.write(frame)
                out.flush()
                os.fsync(out.fileno())  # the bulk, before anyone waits
                with self._locked(exclusive=True):
                    if self._file_id != file_id or self._offset < base:
                        return  # replaced meanwhile (another compaction won)
                    assert self._fd is not None
                    tail = os.pread(self._fd, self._offset - base, base)
                    tail_at = out.tell()
                    out.write(tail)
                    origin, lineage = self._origin((*file_id, base, tail_at))
                    out.seek(len(encode(picklelog.HEADER)))
                    out.write(origin)  # the same size as the placeholder
                    out.flush()
                    os.fsync(out.fileno())
                    mark = self._mark
                    self._publish(temp)
                    self._lineage = lineage
                    self._mark = _moved(mark, base, tail_at)
                    self._live = self._offset - tail_at + size
                    self._compact_after = 0
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    def _follow(self, header: bytes, file_id: tuple[int, int]) -> bool:
        """Carry the index over to a compaction of the file it covers, given
        the first bytes of the new file; False if it is no such compaction."""
        start = picklelog.header_size(header)
        found = None if start is None else picklelog.frame_at(header, start)
        if found is None or found[1][0] != "origin" or len(found[1]) != 4:
            return False
        _, token, generation, packed = found[1]
        dev, inode, base, tail_at = ORIGIN.unpack(packed)
        if (dev, inode) != self._file_id or not base <= self._offset or self._lineage is None:
            return False
        if token != self._lineage[0]:
            return False
        self._file_id = file_id
        self._mark = _moved(self._mark, base, tail_at)
        self._offset = tail_at + (self._offset - base)
        self._lineage = (token, generation)
        self._tail = None
        return True

    def _set_aside(self, error: BackendError) -> None:
        """Keep a damaged file under another name; a new file takes the
        records that could be read.  Every byte of the old file is kept."""
        with open(self.filename, "rb") as source:
            data = source.read()
        records, _ = picklelog.salvage(data)
        aside = f"{self.filename}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        os.link(self.filename, aside)
        self._rewrite(b"".join(encode_put(r) for r in records.values()))
        self._corrupt = None
        self._file_id = None  # the next sync indexes the new file
        log.error(
            "%s; it is kept as %s and a new file holds the %d sessions that could be read",
            error,
            aside,
            len(records),
        )


def _moved(mark: tuple[int, bytes] | None, base: int, tail_at: int) -> tuple[int, bytes] | None:
    """Where a frame header of the old file is in the compacted one (if copied)."""
    if mark is None or mark[0] < base:
        return None
    return (tail_at + mark[0] - base, mark[1])


def _in_use(temp: str, remove: bool = False) -> bool:
    """Whether a compaction's temporary file is locked by a live process;
    with ``remove``, delete it when it is not."""
    try:
        fd = os.open(temp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return True  # gone, or not ours to judge
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    if remove:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return False
