"""Following a compaction of the pickle log without loading its index in a request.

When a compaction publishes a new log, every other process must move to it:
its appends must go to the new file, the old one being no longer at the
path.  Loading the new index file costs ~40 ms of CPU at 1,000,000 sessions
(32 MB read, and a CRC-32 of it: 30 ms of that, measured with cProfile), and
every process did it at once, in the request that noticed the new file.

Instead a process that had indexed the whole old log *bridges*: it keeps its
index and reads the records it points at from the old log, which it still
holds open (the bytes of the old inode never change once a new file is at the
path: appends go to the file at the path, under the lock, and a torn tail is
cut only there).  The new log is the old one's live frames in another order
up to ``tail_at``, then the old log's bytes from ``base`` on, as they are
(:mod:`~sessionstore.backends.picklecompact`; both numbers are in the new
log's origin frame).  So byte ``o >= base`` of the old log is byte ``o +
shift`` of the new one (``shift = tail_at - base``), and the old log's end,
``split``, is byte ``split + shift``: where the frames appended since the
compaction start.  Those are read, and appended, as usual, and indexed at
``offset - shift``: one space of offsets, in which an offset below ``split``
is read from the old log and any other at ``offset + shift`` of the new one
(:class:`~sessionstore.backends.picklefiles.Handle`).  Every read and
compare-and-swap sees what it would see with the new index, at once: a record
before ``split`` is the same bytes in either file, and every frame after it is
read from the new file, under the lock as before, before the version is
compared.

A thread of the process meanwhile loads the new index file, and the frames
after it, into an index of its own (no lock; a second index in memory, 32 MB
at 1,000,000 sessions, for that long).  The next sync that finds it done
reads the few frames appended since, and puts it in place of the bridged one;
the old log's descriptor is closed in the background.

A process bridges only when sure of the mapping, and else loads the new index
as before (:mod:`~sessionstore.backends.picklesync`):

* the new log's origin frame names the file this process had indexed (device
  and inode), in its lineage, one generation on (a file created, emptied or
  set aside has no such origin; two compactions are two generations);
* this process had read every byte of the old log (its size: no torn tail,
  no damage, never seen rewritten in place), without the file lock (the
  locked sync loads as before);
* the last frame it read from the old log is where the mapping puts it in the
  new log (its 8-byte header, length and CRC, compared), or, when none was
  appended since the compaction's snapshot, the old log ended at ``base``;
  and the new log holds at least ``split + shift`` bytes.

A loader that fails (no index file, a damaged one, an index of a newer file)
leaves the next sync to load the index the usual way (logged).  Nothing that
needs the offsets of one file runs while bridged: a compaction or an index
writer of this process waits for the loader.  (``tests/test_pickle_bridge.py``:
commits of a bridged process, and of another process on top of them, lose
nothing; a purge; a loader that fails; new files that are not one compaction.)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import BackendError
from . import picklelog
from .picklefiles import ORIGIN
from .picklehandle import Handle, open_log, retire
from .pickleindex import OffsetIndex
from .pickleindexfile import TURN_WAIT, BadIndex, Meta, open_index, read_index, take_turn
from .picklelog import FRAME, MAX_FRAME

log = logging.getLogger("sessionstore")

_CHUNK = 1 << 20


def origin_of(head: bytes) -> tuple[str, int, int, int, int, int] | None:
    """``(token, generation, dev, inode, base, tail_at)`` from the origin
    frame at the start of a log; None if it has none naming a compacted file."""
    start = picklelog.header_size(head)
    found = None if start is None else picklelog.frame_at(head, start)
    if found is None or found[1][0] != "origin" or len(found[1]) != 4:
        return None
    _, token, generation, where = found[1]
    if not isinstance(where, bytes) or len(where) != ORIGIN.size:
        return None
    return (str(token), int(generation), *ORIGIN.unpack(where))


def index_frames(fd: int, index: OffsetIndex, pos: int, end: int) -> tuple[int, Any]:
    """Apply the whole, valid frames of ``fd`` from ``pos`` towards ``end``
    to ``index``; where they stop, and the last one's mark (or None)."""
    mark = None
    while pos < end:
        data = os.pread(fd, min(end - pos, _CHUNK), pos)
        at = 0
        while (found := picklelog.frame_at(data, at)) is not None:
            _apply(index, found[1], pos + at)
            mark = (pos + at, data[at : at + FRAME.size])
            at = found[0]
        if not at:
            # One frame longer than the chunk; else the end of what is whole.
            if len(data) < FRAME.size or len(data) == end - pos:
                break
            length = FRAME.unpack_from(data)[0]
            if length > MAX_FRAME or pos + FRAME.size + length > end:
                break
            data = os.pread(fd, FRAME.size + length, pos)
            found = picklelog.frame_at(data, 0)
            if found is None:
                break
            _apply(index, found[1], pos)
            mark, at = (pos, data[: FRAME.size]), found[0]
        pos += at
    return pos, mark


def _apply(index: OffsetIndex, frame: tuple[Any, ...], at: int) -> None:
    if frame[0] == "put":
        record = picklelog.record_of(frame)
        index.put(record.session_id, at, record.expires_at, record.user)
    elif frame[0] == "del" and len(frame) == 2 and isinstance(frame[1], str):
        index.delete(frame[1])
    elif frame[0] != "origin":
        raise ValueError(f"unknown frame kind {frame[0]!r:.40}")


class Bridge:
    """A new log followed with the old log's index (see the module docstring)."""

    __slots__ = ("handle", "lineage", "thread", "result")

    def __init__(self, handle: Handle, lineage: tuple[str, int]) -> None:
        self.handle = handle
        self.lineage = lineage
        self.thread: threading.Thread | None = None
        #: (index, offset, mark, covered) once loaded; an exception if it failed.
        self.result: tuple[OffsetIndex, int, Any, int] | Exception | None = None


class Following:
    """Bridging to a compaction's new log (a mixin of the pickle backend)."""

    filename: str
    _handle: Handle | None
    _file_id: tuple[int, int] | None
    _offset: int
    _indexed: int
    _mark: tuple[int, bytes] | None
    _index: OffsetIndex
    _tail: tuple[Any, ...] | None
    _lineage: tuple[str, int] | None
    _no_cut: set[tuple[int, int]]
    _corrupt: Any
    _view: Any
    _purge: Any
    _holding: bool
    _mutex: threading.RLock
    _shift: int
    _bridge: Bridge | None

    if TYPE_CHECKING:

        def _read_frames(self, st: os.stat_result, seen: tuple[int, int, int, int]) -> None: ...
        def _mark_holds(self, mark: tuple[int, bytes] | None = None) -> bool: ...

    def _bridge_to(self) -> bool:
        """Follow the new log at the path with the index we have, if it is a
        compaction of the file we indexed whole, and start loading its index
        in the background; False (nothing changed) if not sure.  (Without
        the file lock: see the module docstring.)"""
        old = self._handle
        if (
            old is None
            or old.before is not None  # (bridged already: load the usual way)
            or self._holding
            or self._file_id is None
            or self._lineage is None
            or self._corrupt is not None
            or self._file_id in self._no_cut
        ):
            return False
        try:
            size = os.fstat(old.fd).st_size
            if self._offset < size:  # what others appended last
                self._read_frames(os.fstat(old.fd), (0, 0, 0, 0))
            if self._offset != size or not self._mark_holds():
                return False
            fd = open_log(self.filename, os.O_RDWR | os.O_APPEND)
        except (OSError, BackendError):
            return False  # (a read-only file: the usual way)
        try:
            st = os.fstat(fd)
            found = self._mapping(fd, st.st_size)
        except OSError:
            found = None
        if found is None:
            os.close(fd)
            return False
        shift, base = found
        split, mark = self._offset, self._mark
        token, generation = self._lineage
        # Sure of the mapping: the file at the path, read through our index.
        handle = Handle(fd, gentle=True)
        handle.before, handle.split, handle.shift = old, split, shift
        self._handle = handle
        self._writable, self._private = True, False  # (made private at the first write)
        self._view = self._purge = None
        self._file_id = (st.st_dev, st.st_ino)
        self._offset = split + shift
        assert mark is not None
        # (The frame last read before the snapshot is elsewhere in the new
        # log: then the next frame read or written is the first mark.)
        self._mark = (mark[0] + shift, mark[1]) if mark[0] >= base else None
        self._lineage = (token, generation + 1)
        self._tail = None
        self._shift = shift
        self._indexed = self._offset  # (no index file is written from ours meanwhile)
        bridge = self._bridge = Bridge(handle, self._lineage)
        bridge.thread = threading.Thread(
            target=self._load_behind, args=(bridge,), name="sessionstore-follow", daemon=True
        )
        bridge.thread.start()
        self._read_frames(st, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return True

    def _mapping(self, fd: int, size: int) -> tuple[int, int] | None:
        """``(shift, base)`` if the log ``fd`` (of ``size`` bytes) is one
        compaction of the whole file we indexed; else None."""
        assert self._lineage is not None and self._file_id is not None
        origin = origin_of(os.pread(fd, 512, 0))
        token, generation = self._lineage
        if origin is None or origin[:4] != (token, generation + 1, *self._file_id):
            return None
        base, shift = origin[4], origin[5] - origin[4]
        split, mark = self._offset, self._mark
        if mark is None or size < split + shift:
            return None
        # The last frame we read, where the mapping puts it; or none appended
        # since the compaction's snapshot, which then ended at our end.
        if split == base or (
            mark[0] >= base and os.pread(fd, len(mark[1]), mark[0] + shift) == mark[1]
        ):
            return shift, base
        return None

    def _load_behind(self, bridge: Bridge) -> None:
        """The new log's index, loaded in a thread of its own (no lock).
        (Not at a lower CPU priority: preempted while it holds the GIL, it
        would hold up the requests of its own process the longer.)"""
        time.sleep(0)  # (the request that started it first: it waits for the GIL)
        fd = bridge.handle.fd
        try:
            st = os.fstat(fd)

            def check(meta: Meta) -> str | None:
                if meta.inode != st.st_ino:
                    return "it indexes another file"
                if (meta.token, meta.generation) != bridge.lineage:
                    return "it indexes another generation of the log"
                if meta.covered > st.st_size:
                    return "it covers more than the log holds"
                if meta.mark and os.pread(fd, len(meta.mark[1]), meta.mark[0]) != meta.mark[1]:
                    return "the log was rewritten since"
                return None

            with open_index(self.filename + ".index") as source:
                take_turn(source.fileno(), TURN_WAIT)  # (one loader at a time)
                meta, index = read_index(source, check)
            offset, mark = index_frames(fd, index, meta.covered, os.fstat(fd).st_size)
            bridge.result = (index, offset, mark or meta.mark, meta.covered)
        except Exception as exc:  # (the next sync then loads it the usual way)
            bridge.result = exc

    def _cross(self) -> None:
        """Put a loaded index in place of the bridged one (with the mutex):
        the few frames appended since it was loaded are read first.  A
        loader that failed leaves the index to be loaded the usual way."""
        bridge = self._bridge
        assert bridge is not None and bridge.result is not None
        result = bridge.result
        handle = bridge.handle
        if not isinstance(result, Exception):
            index, offset, mark, covered = result
            try:
                if offset < self._offset:
                    offset, more = index_frames(handle.fd, index, offset, self._offset)
                    mark = more or mark
            except Exception as exc:  # (a frame it cannot index: the usual way)
                result = exc
            else:
                if offset < self._offset:
                    result = BadIndex(f"the log after byte {offset} could not be read")
        self._bridge = None
        if isinstance(result, Exception):
            log.info("%s: the new index was not loaded (%s): loading it now", self.filename, result)
            self._file_id = None  # the sync reads the file at the path again
            return
        self._index.seq |= 1  # (a reader without the lock holding it asks again)
        self._index = index
        self._offset = offset
        self._mark = mark
        self._indexed = covered
        self._shift = 0
        self._view = self._purge = None
        self._handle = handle.again()
        retire(handle)  # the old log is let go of in the background

    def _wait_for_bridge(self) -> None:
        """Wait for a loader of ours to finish (not with the mutex)."""
        bridge = self._bridge
        if bridge is not None and bridge.thread is not None:
            bridge.thread.join()
