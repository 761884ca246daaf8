"""Compaction of the pickle log, and its index file, without holding up the other processes.

*Phase 0, under the process's mutex only* (never the file lock): a snapshot
of the index, a copy of its arrays (~10 ms at 1,000,000 sessions), as of byte
``base`` of the log.

*Phase 1, no lock held*: the live frames are copied, raw and CRC-checked, in
key order, from the log to a temporary file ``.<name>.*.compact.tmp`` in the
same directory (flocked while in use, so that
:meth:`~sessionstore.backends.picklefiles.LogFiles.remove_orphans` leaves it
alone), and fsynced.  Then the frames appended to the log since ``base`` are
copied and applied to the new index (:mod:`~sessionstore.backends.picklecopy`:
old byte ``o`` lands at ``tail_at + o - base``), in rounds, until fewer than
:data:`_LOCKED_COPY` bytes are left; the new index
(:mod:`~sessionstore.backends.pickleindex`), covering all of that, is written
to another temporary file.

*Phase 2, under the exclusive lock*: only the frames appended since phase 1
last looked are copied, the origin frame is completed, the log is fsynced, the
index file is renamed to ``<log>.index`` and the new log over the old one.
Other processes wait only for phase 2: a copy of what was appended while
the index was written, one fsync and two renames (measured at 1,000,000
sessions with 4 busy workers: at most ~11 ms; the index file replaced is
let go of after the lock, its blocks freed in the background).  Each then
follows to the new log while it waits for the lock or before taking it:
with the index it has, reading the records before the compaction from the
old log, while a thread of its own loads the new index
(:mod:`~sessionstore.backends.picklebridge`); or, when it cannot be sure of
that, by loading the new index into the arrays of its old one (~40 ms of
CPU at 1,000,000 sessions) and reading the frames after it
(``test_compaction_loses_nothing_another_process_commits_meanwhile``,
``test_a_process_following_a_compaction_reads_the_new_index_into_its_arrays``,
``tests/test_pickle_bridge.py``).

Crashes: before the renames, the old log is whole and the temporary files
are removed by the next set-up; between the two renames (the index first),
the old log is beside an index of a file that never appeared: not used, the
log is read whole (logged).  A process that opens the old log between the two
renames finds that index too: it waits for the lock and looks again
(``test_a_process_opening_between_the_two_renames_waits_for_the_lock``).

A frame that fails its CRC while being copied stops the compaction (logged,
backed off like a full disk): the log is never rewritten without it.

Compaction starts by itself, in a background thread so that no request waits
for it, once the log is larger than twice the live data (estimated: live
sessions times the mean put frame) plus 1 MiB; one at a time per process, and
not while another process's temporary file is locked.  One that fails (a full
disk) backs off until the log has grown by as much again, and none starts
without the free space for it.  When the log has grown :data:`REFRESH` bytes
past what the index file covers, a process writes a new index of the same log
in the background (unless another process's is recent enough), so that
opening never reads much more than that much of the log; and at ``close()``
of a process that wrote that much, if its background writer fell behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import BackendError
from . import picklelog
from .picklecopy import Tail, copy_live, copy_range
from .picklefiles import LogFiles, in_use
from .picklehandle import Handle
from .pickleindex import OffsetIndex
from .pickleindexfile import BadIndex, IndexFiles, Meta, open_index, read_meta, take_turn
from .picklelog import Damaged, encode

log = logging.getLogger("sessionstore")

#: Compact when the file is larger than twice the live data plus this.
COMPACT_SLACK = 1 << 20
#: Write a new index file when the log has grown this much past the last one.
REFRESH = 4 << 20
#: Catching up with the frames appended during a compaction stops when fewer
#: bytes than this are left (they are copied under the lock, and every other
#: process reads them after the index when it follows), or after this many
#: rounds.
_LOCKED_COPY = 16 << 10
_CATCH_UP_ROUNDS = 5
#: At close(), a new index file when the log has grown this much past the
#: last one (see ``Compaction._checkpoint``).
CLOSE_TAIL = 64 << 10


class Compaction(IndexFiles, LogFiles):
    """The compaction half of :class:`~sessionstore.backends.picklefile.PickleBackend`."""

    filename: str
    fsync: bool
    _handle: Handle | None
    _file_id: tuple[int, int] | None
    _offset: int
    _indexed: int
    _index: OffsetIndex
    _put_bytes: int
    _put_frames: int
    _lineage: tuple[str, int] | None
    _mark: tuple[int, bytes] | None
    _tail: tuple[Any, ...] | None
    _corrupt: Any
    _compact_after: int
    _compacting: bool
    _due: str | None  # "compact" or "index": to start once the lock is released
    _compactor: threading.Thread | None
    _mutex: threading.RLock
    _bridge: Any  # (see picklebridge)

    if TYPE_CHECKING:

        @property
        def _fd(self) -> int | None: ...
        def _locked(self, exclusive: bool) -> contextlib.AbstractContextManager[None]: ...
        def _reopen(self) -> None: ...
        def _sync(self) -> None: ...
        def _wait_for_bridge(self) -> None: ...

    # -- compaction -----------------------------------------------------------------------

    def _live_bytes(self) -> int:
        """The live records' size, estimated: their number times the mean
        size of the put frames read or written in this file."""
        if not self._put_frames:
            return 0
        return self._index.count * self._put_bytes // self._put_frames

    def _maybe_compact(self) -> None:
        """Note whether the log is due a compaction, or a new index file
        (under the exclusive lock, after a write): :meth:`_start_due` starts
        it once the lock is released."""
        offset = self._offset
        refresh = offset - self._indexed > REFRESH
        if not refresh and offset <= COMPACT_SLACK:
            return  # (the usual case for a small store, in a few operations)
        compact = offset > max(2 * self._live_bytes() + COMPACT_SLACK, self._compact_after)
        if (compact or refresh) and not self._compacting:
            self._due = "compact" if compact else "index"

    def _start_due(self) -> None:
        """Start what :meth:`_maybe_compact` found due, in the background
        (with the mutex, after the file lock is released: the snapshot, a
        copy of the arrays, holds up no other process)."""
        if self._bridge is not None:
            return  # offsets of two files: once the new index is in place
        due, self._due = self._due, None
        if due is None or self._compacting or self._file_id is None:
            return
        if due == "index" and self._index_is_recent():
            return
        if any(in_use(t) for t in self._temps()):
            return
        self._compacting = True
        job = self._compact_quietly if due == "compact" else self._refresh_quietly
        self._compactor = threading.Thread(
            target=job, args=(self._snapshot(),), name="sessionstore-compact", daemon=True
        )
        self._compactor.start()

    def _snapshot(self) -> Snapshot:
        """The index as of now (with the mutex): the live one, its new ids
        merged and further merges held off until :meth:`_thaw`, so that its
        arrays can be read without a copy (32 MB at 1,000,000 sessions).
        Entries still change meanwhile, but only to point at frames after
        ``offset``, which the readers of what is written from them read too."""
        assert self._handle is not None and self._file_id is not None
        index = self._index
        index.merge()
        index.frozen += 1
        return Snapshot(
            index, dict(index.bound), self._offset, self._file_id, self._handle,
            self._lineage, self._mark, self._put_bytes, self._put_frames,
        )  # fmt: skip

    def _thaw(self, snapshot: Snapshot) -> None:
        with self._mutex:
            snapshot.state.frozen -= 1

    def _compact_quietly(self, snapshot: Snapshot) -> None:
        try:
            self._compact_from(snapshot)
        except (BackendError, OSError, Damaged) as exc:
            # Commits are safely appended meanwhile; compaction waits until
            # the log has grown by as much again.
            with self._mutex:
                self._compact_after = 2 * self._offset
            log.warning(
                "could not compact %s (%s); next try at %d bytes",
                self.filename,
                exc,
                self._compact_after,
                exc_info=not isinstance(exc, Damaged),
            )
        finally:
            self._compacting = False

    def compact(self) -> None:
        """Compact the log now (it also happens by itself, in the background)."""
        with self._locked(exclusive=False):
            pass
        while self._bridge is not None:  # (following another's compaction)
            self._wait_for_bridge()
            with self._locked(exclusive=False):
                pass  # (puts the new index in place)
        with self._mutex:
            if self._file_id is None or self._bridge is not None:
                return
            snapshot = self._snapshot()
        self._compact_from(snapshot)

    def _compact_from(self, snapshot: Snapshot) -> None:
        state, base = snapshot.state, snapshot.offset
        mean = snapshot.put_bytes // max(snapshot.put_frames, 1)
        stat = os.statvfs(os.path.dirname(self.filename))
        if stat.f_bavail * stat.f_frsize < state.count * mean + COMPACT_SLACK:
            self._thaw(snapshot)
            raise BackendError(f"no room to compact {self.filename}")
        try:
            fd, temp = self._temp()
        except BaseException:
            self._thaw(snapshot)
            raise
        try:
            # The descriptor outlives the file object: its lock must hold
            # until the file is renamed or removed, or a process starting up
            # would take it for an orphan.
            with os.fdopen(fd, "r+b", closefd=False) as out:
                origin, lineage = self._origin((0, 0, 0, 0), snapshot.lineage)
                out.write(encode(picklelog.HEADER) + origin)
                new, put_bytes, mark = copy_live(state, base, snapshot.handle.fd, out)
                tail_at = out.tell()
                out.flush()
                os.fsync(out.fileno())  # the bulk, before anyone waits
                index = OffsetIndex(new, snapshot.bound)
                tail = Tail(index, base, tail_at, mark, put_bytes, len(new[0]))
                # What was appended meanwhile, copied and indexed without the
                # lock, until what is left is short: others read it after
                # the index when they follow, and we copy it under the lock.
                # (Merged before each look, so that what the index file waits
                # for after the last one, while more is appended, is its
                # writing only: a merge of 4,096 ids costs ~25 ms at 1,000,000.)
                for _ in range(_CATCH_UP_ROUNDS):
                    index.merge()
                    end = self._synced_to(snapshot)
                    if end - tail.copied <= _LOCKED_COPY:
                        break
                    tail.take(snapshot.handle.fd, end, out)
                meta = Meta(*lineage, os.fstat(out.fileno()).st_ino, tail.covered, tail.mark,
                            tail.put_bytes, tail.put_frames)  # fmt: skip
                with (
                    self._old_index_kept(),
                    self._index_file(index, meta) as index_temp,
                    self._locked(exclusive=True),
                ):
                    if self._file_id != snapshot.file_id or self._offset < tail.copied:
                        return  # replaced meanwhile (another compaction won)
                    assert self._fd is not None
                    copy_range(self._fd, tail.copied, self._offset, out)
                    where = (*snapshot.file_id, base, tail_at)
                    origin, _ = self._origin(where, snapshot.lineage)
                    out.seek(len(encode(picklelog.HEADER)))
                    out.write(origin)  # the same size as the placeholder
                    out.flush()
                    os.fsync(out.fileno())
                    # The index first: a process that sees the new log
                    # then finds its index (one opening the old log in
                    # between finds an index of another file: it waits
                    # for the lock and looks again).
                    self._rename_index(index_temp)
                    self._publish(temp, out.fileno())
                    # Our index is the new one; the frames copied under
                    # the lock are read by the next sync, like anyone else's.
                    self._index = index
                    self._offset = self._indexed = tail.covered
                    self._mark, self._lineage = tail.mark, lineage
                    self._put_bytes, self._put_frames = tail.put_bytes, tail.put_frames
                    self._compact_after = 0
        finally:
            self._thaw(snapshot)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)  # (gone if renamed)
            os.close(fd)

    def _synced_to(self, snapshot: Snapshot) -> int:
        """Where the frames of the snapshot's file end, as far as we know
        now (read without the lock: complete frames never change)."""
        with self._mutex:
            with contextlib.suppress(BackendError, OSError):
                self._sync()
            return self._offset if self._file_id == snapshot.file_id else snapshot.offset

    # -- the index file -----------------------------------------------------------------

    def _index_is_recent(self, within: int | None = None) -> bool:
        """Whether the index file at the path (another process's) covers
        this file to within ``within`` bytes (:data:`REFRESH`, read when
        called); notes what it covers."""
        if within is None:
            within = REFRESH
        try:
            with open_index(self.filename + ".index") as source:
                meta, _, _ = read_meta(source)
        except (OSError, BadIndex):
            return False
        if self._file_id is None or meta.inode != self._file_id[1]:
            return False
        if (meta.token, meta.generation) != self._lineage:
            return False
        self._indexed = max(self._indexed, meta.covered)
        return self._offset - self._indexed <= within

    def _checkpoint(self) -> None:
        """At ``close()`` of a process that started a compaction or an index
        writer (it wrote at least :data:`REFRESH` bytes): a new index file
        if the log has grown more than :data:`CLOSE_TAIL` past the last one,
        so that the next open reads little of the log.  A bulk load
        (``migrate`` into a pickle store, a fill) appends faster than the
        background writer follows: opening 1,000,000 sessions then read 4-8
        MB of new sessions, 0.4-1.2 s for each of 4 workers starting together."""
        with self._mutex:
            if self._file_id is None or self._corrupt is not None or self._compacting:
                return
            if self._bridge is not None:
                return  # (the new log has an index of its own)
            if self._offset - self._indexed <= CLOSE_TAIL or self._index_is_recent(CLOSE_TAIL):
                return
            self._compacting = True
            snapshot = self._snapshot()
        self._refresh_quietly(snapshot)

    def _refresh_quietly(self, snapshot: Snapshot) -> None:
        try:
            meta = Meta(*(snapshot.lineage or ("", 0)), snapshot.file_id[1], snapshot.offset,
                        snapshot.mark, snapshot.put_bytes, snapshot.put_frames)  # fmt: skip
            with self._old_index_kept() as old:
                # Another process at the index file (writing a new one, or
                # loading it): not two at once (see pickleindexfile).
                if old is not None:
                    if not take_turn(old, 0):
                        return
                    with self._mutex:  # (another process's, covering as much, meanwhile)
                        if self._index_is_recent(self._offset - snapshot.offset):
                            return
                with (
                    self._index_file(snapshot.state, meta, snapshot.bound) as temp,
                    self._locked(exclusive=False),
                ):
                    if self._file_id == snapshot.file_id:
                        self._rename_index(temp)
                        self._indexed = max(self._indexed, snapshot.offset)
        except (BackendError, OSError):
            log.warning("could not write the index of %s", self.filename, exc_info=True)
            with self._mutex:
                self._indexed = self._offset  # try again REFRESH bytes later
        finally:
            self._thaw(snapshot)
            self._compacting = False


class Snapshot(NamedTuple):
    """A process's index as of byte ``offset`` of its log, and what the log was."""

    state: OffsetIndex
    bound: dict[str, str]
    offset: int
    file_id: tuple[int, int]
    handle: Handle
    lineage: tuple[str, int] | None
    mark: tuple[int, bytes] | None
    put_bytes: int
    put_frames: int
