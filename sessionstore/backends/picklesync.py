"""Reading the pickle log into a process's index, and noticing what changed under it.

The reading half of :class:`~sessionstore.backends.picklefile.PickleBackend`:
before each operation :meth:`LogReader._sync` brings the index up to date
with the file at the path (under the lock; :meth:`LogReader._catch_up` does
the long reads before taking it).  What it notices, and what it does:

* frames appended by others: applied;
* a compaction by another process (a new inode whose origin frame names the
  file we indexed): the index is carried over (``Compaction._follow``);
* another file at the path (deleted, replaced, a backup put back): logged
  as an error, and the file now there is read from the start;
* the same inode rewritten in place (the frame header last indexed no longer
  matches, or the file shrank below it): logged, read again from the start,
  and nothing is ever cut from that file afterwards;
* a torn final append: noted as cuttable (``_tail``) for the next write;
* damage: a :class:`BackendError` naming the file and byte offset, raised
  again for as long as the file is unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import BackendError
from . import picklelog
from .base import Record
from .picklelog import Damaged
from .safefiles import open_nofollow

log = logging.getLogger("sessionstore")

#: New bytes in the log worth reading before taking the lock.
_CATCH_UP = 256 << 10


def _follows(before: tuple[str, int] | None, after: tuple[str, int] | None) -> bool:
    """Whether a file of lineage ``after`` is a later compaction of ``before``."""
    if before is None:
        return after is not None and after[1] == 1
    return after is not None and after[0] == before[0] and after[1] > before[1]


class LogReader:
    """The reading half of the pickle backend (a mixin)."""

    filename: str
    _fd: int | None
    _writable: bool
    _private: bool
    _file_id: tuple[int, int] | None
    _offset: int
    _mark: tuple[int, bytes] | None
    _index: dict[str, Record]
    _sizes: dict[str, int]
    _live: int
    _tail: tuple[Any, ...] | None
    _no_cut: set[tuple[int, int]]
    _lineage: tuple[str, int] | None
    _corrupt: tuple[tuple[int, int, int, int], BackendError] | None
    _mutex: threading.RLock

    if TYPE_CHECKING:

        def _follow(self, header: bytes, file_id: tuple[int, int]) -> bool: ...

    def _catch_up(self) -> None:
        """Index a new file, or a long stretch of new frames, before taking
        the lock, so that nobody waits while we read: complete frames never
        change (the log is append-only; a compaction renames a new file over
        it; only a torn tail is ever cut).  The locked sync then checks it all
        and reads only what came since."""
        if self._corrupt is not None:
            return
        try:
            st = os.stat(self.filename)
        except OSError:
            return
        if (st.st_dev, st.st_ino) != self._file_id or st.st_size - self._offset > _CATCH_UP:
            with contextlib.suppress(BackendError, OSError):
                self._sync()

    def _sync(self) -> None:
        """Bring the index up to date with the file (under the lock)."""
        try:
            st = os.stat(self.filename, follow_symlinks=False)
        except FileNotFoundError:
            if self._file_id is not None:
                log.error(
                    "%s was deleted while in use: its %d sessions are gone; "
                    "a new file starts with the next write",
                    self.filename,
                    len(self._index),
                )
            self._close_file()
            self._reset_index(None)
            return
        except OSError as exc:
            raise BackendError(f"cannot read {self.filename}", exc) from exc
        seen = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if self._corrupt is not None:
            if self._corrupt[0] == seen:
                raise self._corrupt[1]
            self._corrupt = None
            self._file_id = None  # changed since: read it again
        file_id = (st.st_dev, st.st_ino)
        if file_id != self._file_id:
            previous, before, count = self._file_id, self._lineage, len(self._index)
            self._reopen()
            assert self._fd is not None
            st = os.fstat(self._fd)  # the file opened, whatever the path held before
            file_id, seen = (
                (st.st_dev, st.st_ino),
                (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns),
            )
            if previous is not None and self._follow(os.pread(self._fd, 512, 0), file_id):
                if st.st_size > self._offset:
                    self._read_frames(st, seen)
                return
            self._reset_index(file_id)
            self._read_frames(st, seen)
            if previous is not None and not _follows(before, self._lineage):
                log.error(
                    "%s was replaced by another file (not a compaction): "
                    "%d sessions before, %d now",
                    self.filename,
                    count,
                    len(self._index),
                )
            return
        if st.st_size < self._offset or not self._mark_holds():
            log.error(
                "%s was rewritten in place by something other than sessionstore: "
                "reading it again; nothing will be cut from it",
                self.filename,
            )
            self._no_cut.add(file_id)
            self._reset_index(file_id)
        if st.st_size > self._offset:
            self._read_frames(st, seen)
        else:
            self._tail = None

    def _mark_holds(self) -> bool:
        if self._mark is None:
            return True
        assert self._fd is not None
        position, header = self._mark
        return os.pread(self._fd, len(header), position) == header

    def _reset_index(self, file_id: tuple[int, int] | None) -> None:
        self._file_id = file_id
        self._offset = 0
        self._mark = None
        self._index = picklelog.RecordIndex()
        self._sizes = {}
        self._live = 0
        self._tail = None
        self._lineage = None

    def _close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _reopen(self) -> None:
        self._close_file()
        try:
            self._fd = open_nofollow(self.filename, os.O_RDWR | os.O_APPEND)
            self._writable = True
            self._private = False  # made private at the first write
        except BackendError:
            raise
        except OSError as exc:
            try:  # a read-only file or place: reads still work
                self._fd = open_nofollow(self.filename, os.O_RDONLY)
            except OSError:
                raise BackendError(f"cannot open {self.filename}", exc) from exc
            self._writable = False

    def _read_frames(self, st: os.stat_result, seen: tuple[int, int, int, int]) -> None:
        assert self._fd is not None
        try:
            data = os.pread(self._fd, st.st_size - self._offset, self._offset)
        except OSError as exc:  # a bad sector
            raise BackendError(f"cannot read {self.filename}", exc) from exc
        pos = 0
        if self._offset == 0:
            if not data:
                return  # an empty file: an empty store
            header = picklelog.header_size(data)
            if header is None:
                self._fail(seen, 0, "not a sessionstore pickle file (bad header)")
            pos = header
        last = -1
        try:
            for start, end, frame in picklelog.iter_frames(data, pos):
                self._apply(frame, end - start)
                pos, last = end, start
        except Damaged as exc:
            self._fail(seen, self._offset + exc.offset, exc.reason)
        except Exception as exc:
            self._fail(seen, self._offset + pos, f"unreadable frame ({exc})")
        if last >= 0:
            self._mark = (self._offset + last, data[last : last + 8])
        self._offset += pos
        if self._offset < st.st_size:
            self._tail = (self._file_id, self._offset, st.st_size)
            log.info("%s: an unfinished write at byte %d", self.filename, self._offset)
        else:
            self._tail = None

    def _apply(self, frame: tuple[Any, ...], size: int) -> None:
        if frame[0] == "put":
            record = picklelog.record_of(frame)
            self._index[record.session_id] = record
            self._live += size - self._sizes.get(record.session_id, 0)
            self._sizes[record.session_id] = size
        elif frame[0] == "del" and len(frame) == 2:
            self._index.pop(frame[1], None)
            self._live -= self._sizes.pop(frame[1], 0)
        elif frame[0] == "origin" and len(frame) in (3, 4):
            self._lineage = (str(frame[1]), int(frame[2]))
        else:
            raise ValueError(f"unknown frame kind {frame[0]!r:.40}")

    def _fail(self, seen: tuple[int, int, int, int], offset: int, reason: str) -> NoReturn:
        error = BackendError(
            f"session file {self.filename} is damaged at byte {offset}: {reason}; "
            "it is left untouched (see `sessionstore check` and `salvage`)"
        )
        error.offset = offset  # type: ignore[attr-defined]
        self._corrupt = (seen, error)
        self._reset_index(self._file_id)
        raise error
