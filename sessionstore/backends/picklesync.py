"""Reading the pickle log into a process's index, and noticing what changed under it.

The reading half of :class:`~sessionstore.backends.picklefile.PickleBackend`.
A process holds an :class:`~sessionstore.backends.pickleindex.OffsetIndex`
(where each session's latest frame is, ~32 bytes a session) and reads records
from the file on demand (:meth:`LogReader._record_at`: one ``pread``, the CRC,
the frame kind and the id checked; a record that fails is a
:class:`DamagedRecord` for its visitor, logged and left in the file).

Before each operation :meth:`LogReader._sync` brings the index up to date
with the file at the path, under the lock, with one ``stat``.  What is long
to read (a new file, or many new frames) it leaves to
:meth:`LogReader._catch_up`, which reads it with the lock released before
the lock is taken again.  What it notices, and what it does:

* frames appended by others: applied (read in chunks of 1 MiB);
* a compaction (by another process) of the file indexed: followed with the
  index we have, the new one loading in the background
  (:mod:`~sessionstore.backends.picklebridge`), when sure of it;
* a new file at the path (at start-up, after a compaction otherwise, or a
  file replaced): the index file ``<log>.index`` is loaded if it verifies
  for this file, and only the log after the bytes it covers is read; else the
  whole log is read (the reason logged);
* another file at the path that is no compaction of ours (deleted, replaced,
  a backup put back): logged as an error, and the file now there is read;
* the same inode rewritten in place (the frame header last indexed no longer
  matches, or the file shrank below it): logged, read again from the start,
  and nothing is ever cut from that file afterwards;
* a torn final append: noted as cuttable (``_tail``) for the next write;
* damage in the frames read: a :class:`BackendError` naming the file and
  byte offset, raised again for as long as the file is unchanged.  (Damage
  in a stretch covered by the index file is found when that record is read,
  by ``sessionstore check``, or by a compaction, which then stops.)
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
from .picklefiles import read_record
from .picklehandle import Handle, open_log, retire
from .pickleindex import Base, OffsetIndex
from .picklelog import FRAME, MAX_FRAME, Damaged

log = logging.getLogger("sessionstore")

#: New bytes in the log worth reading before taking the lock (~50 frames:
#: others wait while we read under it).
_CATCH_UP = 16 << 10
#: Bytes of the log read at a time.
_CHUNK = 1 << 20


class NewFile(Exception):  # noqa: N818 - a signal, not a failure
    """Another file is at the path, or much was appended to it (see
    ``LogReader._sync``)."""


def _follows(before: tuple[str, int] | None, after: tuple[str, int] | None) -> bool:
    """Whether a file of lineage ``after`` is a later compaction of ``before``."""
    if before is None:
        return after is not None and after[1] == 1
    return after is not None and after[0] == before[0] and after[1] > before[1]


class LogReader:
    """The reading half of the pickle backend (a mixin)."""

    filename: str
    _handle: Handle | None
    _writable: bool
    _private: bool
    _file_id: tuple[int, int] | None
    _offset: int
    _indexed: int
    _mark: tuple[int, bytes] | None
    _index: OffsetIndex
    _put_bytes: int
    _put_frames: int
    _tail: tuple[Any, ...] | None
    _no_cut: set[tuple[int, int]]
    _lineage: tuple[str, int] | None
    _corrupt: tuple[tuple[int, int, int, int], BackendError] | None
    _mutex: threading.RLock
    _holding: bool  # the file lock is held (by this thread: the mutex is too)
    #: (file id, lineage, count) before a new file whose loading was put off.
    _pending: tuple[tuple[int, int] | None, tuple[str, int] | None, int] | None
    _view: Any
    _purge: Any
    _shift: int  # (see picklebridge)
    _bridge: Any

    if TYPE_CHECKING:

        def _load_index(self, st: os.stat_result, spare: Base | None = None) -> bool: ...
        def _bridge_to(self) -> bool: ...
        def _cross(self) -> None: ...

    @property
    def _fd(self) -> int | None:
        handle = self._handle
        return None if handle is None else handle.fd

    def _catch_up(self, more_than: int = _CATCH_UP) -> bool:
        """Index a new file, or new frames (more than ``more_than`` bytes),
        without the lock, so that nobody waits while we read: complete frames
        never change (the log is append-only; a compaction renames a new file
        over it; only a torn tail is ever cut).  Only whole, valid frames are
        applied; whatever follows them (an append being written, a torn tail,
        damage) is left to the locked sync, which checks it all and reads
        only what came since.  Whether the index now covers every byte of the
        file the path held when called."""
        if self._corrupt is not None:
            return False
        try:
            st = os.stat(self.filename)
        except OSError:
            return False
        if (st.st_dev, st.st_ino) != self._file_id or st.st_size - self._offset > more_than:
            with contextlib.suppress(BackendError, OSError):
                self._sync()
        return (
            self._corrupt is None
            and self._file_id == (st.st_dev, st.st_ino)
            and self._offset >= st.st_size
        )

    def _sync(self, defer_new: bool = False) -> None:
        """Bring the index up to date with the file (under the lock); with
        ``defer_new``, raise :class:`NewFile` instead of reading a new file,
        or a long stretch of new frames (:meth:`_catch_up` reads them
        without the lock)."""
        bridge = self._bridge
        if bridge is not None and bridge.result is not None:
            # The new index loaded in the background: in place, before the
            # look at the file (the loader saw it up to an offset that a
            # look taken before might not reach: "rewritten in place").
            self._cross()
        try:
            st = os.stat(self.filename, follow_symlinks=False)
        except FileNotFoundError:
            if self._file_id is not None:
                log.error(
                    "%s was deleted while in use: its %d sessions are gone; "
                    "a new file starts with the next write",
                    self.filename,
                    self._index.count,
                )
            self._close_file()
            self._reset_index(None)
            return
        except OSError as exc:
            raise BackendError(f"cannot read {self.filename}", exc) from exc
        seen = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if (
            defer_new
            and self._corrupt is None
            and ((st.st_dev, st.st_ino) != self._file_id or st.st_size - self._offset > _CATCH_UP)
        ):
            raise NewFile  # much to read: the caller reads it without the lock first
        if self._corrupt is not None:
            if self._corrupt[0] == seen:
                raise self._corrupt[1]
            self._corrupt = None
            self._file_id = None  # changed since: read it again
        file_id = (st.st_dev, st.st_ino)
        if file_id != self._file_id:
            if defer_new and self._file_id is not None:
                raise NewFile
            if self._bridge_to():
                return  # a compaction of our file, followed with our index
            previous, before, count = self._pending or (
                self._file_id,
                self._lineage,
                self._index.count,
            )
            self._pending = None
            self._reopen()
            assert self._fd is not None
            st = os.fstat(self._fd)  # the file opened, whatever the path held before
            file_id = (st.st_dev, st.st_ino)
            seen = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            spare = self._index.retire()
            self._reset_index(file_id)
            if st.st_size and not self._load_index(st, spare):
                # Caught between a compaction's two renames: do it again
                # under the lock, which the compaction holds across both.
                self._pending = (previous, before, count)
                self._file_id = None
                raise BackendError(f"{self.filename}: its index is being replaced")
            self._read_frames(st, seen)
            if previous is not None and not _follows(before, self._lineage):
                log.error(
                    "%s was replaced by another file (not a compaction): "
                    "%d sessions before, %d now",
                    self.filename,
                    count,
                    self._index.count,
                )
            return
        rewritten = st.st_size < self._offset
        mark = self._mark  # (self._mark_holds(), inline: every operation)
        if not rewritten and mark is not None and mark[1]:
            assert self._handle is not None
            rewritten = os.pread(self._handle.fd, len(mark[1]), mark[0]) != mark[1]
        if rewritten:
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

    def _mark_holds(self, mark: tuple[int, bytes] | None = None) -> bool:
        position, header = mark or self._mark or (0, b"")
        if not header:
            return True
        fd = self._fd
        assert fd is not None
        return os.pread(fd, len(header), position) == header

    def _reset_index(self, file_id: tuple[int, int] | None) -> None:
        self._file_id = file_id
        self._shift, self._bridge = 0, None
        self._offset = self._indexed = 0
        self._mark = None
        self._index = OffsetIndex()
        self._put_bytes = self._put_frames = 0
        self._tail = None
        self._lineage = None
        if self._handle is not None:
            self._handle.cache = {}

    def _close_file(self) -> None:
        self._handle = None  # closed once no reader holds it

    def _reopen(self) -> None:
        if self._handle is not None:
            # Closing the last descriptor of a replaced log frees its blocks
            # (137 ms for 300 MB, measured): not in a request's time.  (The
            # lock-free view and a purge scan hold it too: let go of them first.)
            self._view = self._purge = None
            retire(self._handle)
            self._handle = None
        self._shift, self._bridge = 0, None
        try:
            fd = open_log(self.filename, os.O_RDWR | os.O_APPEND)
            self._writable = True
            self._private = False  # made private at the first write
        except BackendError:
            raise
        except OSError as exc:
            try:  # a read-only file or place: reads still work
                fd = open_log(self.filename, os.O_RDONLY)
            except OSError:
                raise BackendError(f"cannot open {self.filename}", exc) from exc
            self._writable = False
        self._handle = Handle(fd, gentle=True)

    # -- the log ------------------------------------------------------------------------

    def _pread(self, size: int, at: int) -> bytes:
        assert self._fd is not None
        try:
            return os.pread(self._fd, size, at)
        except OSError as exc:  # a bad sector
            raise BackendError(f"cannot read {self.filename}", exc) from exc

    def _read_frames(self, st: os.stat_result, seen: tuple[int, int, int, int]) -> None:
        """Apply the frames from ``_offset`` to the end of the file ``st``."""
        end, pos = st.st_size, self._offset
        if pos == 0:
            if not end:
                return  # an empty file: an empty store
            header = picklelog.header_size(self._pread(min(end, 4096), 0))
            if header is None:
                self._fail(seen, 0, "not a sessionstore pickle file (bad header)")
            self._offset = pos = header
        try:
            with self._index.bulk():
                self._read_from(pos, end)
        except Damaged as exc:
            if not self._holding:
                return  # perhaps an append being written: judged under the lock
            self._fail(seen, exc.offset, exc.reason)
        except BackendError:
            raise  # could not read (a bad sector): not damage we saw
        except Exception as exc:
            if not self._holding:
                return
            self._fail(seen, self._offset, f"unreadable frame ({exc})")
        if not self._holding:
            return  # (a partial frame at the end: the locked sync judges it)
        if self._offset < end:
            self._tail = (self._file_id, self._offset, end)
            log.info("%s: an unfinished write at byte %d", self.filename, self._offset)
        else:
            self._tail = None

    def _read_from(self, pos: int, end: int) -> None:
        """Apply the frames from ``pos`` (``_offset`` follows) to ``end``."""
        last: tuple[int, bytes] | None = None
        try:
            while pos < end:
                data = self._pread(min(_CHUNK, end - pos), pos)
                if pos + len(data) < end:
                    done = self._whole_frames(data, pos)
                    if done:
                        last, pos = done
                        continue
                    data = self._one_frame(data, pos, end)
                for start, stop, frame in picklelog.iter_frames(data, 0):
                    self._apply(frame, pos + start, stop - start)
                    last = (pos + start, data[start : start + FRAME.size])
                    self._offset = pos + stop
                pos = self._offset
                break
        except Damaged as exc:
            raise Damaged(pos + exc.offset, exc.reason) from None
        finally:
            self._mark = last or self._mark

    def _whole_frames(self, data: bytes, pos: int) -> tuple[tuple[int, bytes], int] | None:
        """Apply the whole, valid frames at the start of ``data`` (read at
        ``pos``); the last one's mark and where the first other bytes start."""
        at, last = 0, None
        while True:
            found = picklelog.frame_at(data, at)
            if found is None:
                break
            stop, frame = found
            self._apply(frame, pos + at, stop - at)
            last = (pos + at, data[at : at + FRAME.size])
            at = stop
            self._offset = pos + at
        return None if last is None else (last, pos + at)

    def _one_frame(self, data: bytes, pos: int, end: int) -> bytes:
        """What to read at ``pos`` where no whole frame fits ``data``: one
        longer frame, or (damage, or a torn write) the rest of the file."""
        if len(data) >= FRAME.size:
            length = FRAME.unpack_from(data)[0]
            if length <= MAX_FRAME and pos + FRAME.size + length < end:
                longer = self._pread(FRAME.size + length, pos)
                if picklelog.frame_at(longer, 0) is not None:
                    return longer
        return self._pread(end - pos, pos)

    def _apply(self, frame: tuple[Any, ...], start: int, size: int) -> None:
        if frame[0] == "put":
            record = picklelog.record_of(frame)
            # (at an offset of the old log's, while bridged: see picklebridge)
            self._index.put(record.session_id, start - self._shift, record.expires_at, record.user)
            self._put_bytes += size
            self._put_frames += 1
        elif frame[0] == "del" and len(frame) == 2 and isinstance(frame[1], str):
            self._index.delete(frame[1])
        elif frame[0] == "origin" and len(frame) in (3, 4):
            self._lineage = (str(frame[1]), int(frame[2]))
        else:
            raise ValueError(f"unknown frame kind {frame[0]!r:.40}")

    def _fail(self, seen: tuple[int, int, int, int], offset: int, reason: str) -> NoReturn:
        damage = f"session file {self.filename} is damaged at byte {offset}: {reason}"
        error = BackendError(
            damage + "; it is left untouched (see `sessionstore check` and `salvage`)"
        )
        error.offset = offset  # type: ignore[attr-defined]
        error.damage = damage  # type: ignore[attr-defined]  # without what happens next
        self._corrupt = (seen, error)
        self._reset_index(self._file_id)
        raise error

    # -- records --------------------------------------------------------------------------

    def _record_at(
        self, offset: int, session_id: str | None, handle: Handle | None = None
    ) -> Record:
        """The record of ``session_id`` (None: whichever) whose frame starts
        at ``offset`` of the file ``handle`` (default: the current one)."""
        handle = handle or self._handle
        assert handle is not None
        return read_record(handle, offset, session_id, self.filename)
