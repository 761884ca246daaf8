"""The ``pickle`` backend: sessions in one pickle file, shared by threads and processes.

The file is an append-only log of frames (format and crash rules in
:mod:`sessionstore.backends.picklelog`).  A commit appends one frame, so its
cost does not grow with the number of sessions.  When dead frames outweigh
live ones the log is compacted in the background, other processes waiting only
for the final rename (:mod:`sessionstore.backends.picklecompact`), then
following to the new file with the index they have while the new one loads
in the background (:mod:`sessionstore.backends.picklebridge`).  Temporary
files left by a killed compaction are removed when a store is set up.

Memory does not grow with the records: a process keeps only where each
session's latest frame is (:mod:`sessionstore.backends.pickleindex`: 32 bytes
a session in sorted arrays, ~120 bytes for each of the up to 4,096 ids new
since the last merge, ~250 bytes for each session bound to a user) and reads
a record from the file when asked (one ``pread``, checked; the last 2,048
read or written are kept per open file: :mod:`~sessionstore.backends.picklefiles`).
Opening loads the index file ``<filename>.index`` (written by compaction,
rewritten in the background every 4 MB of log) and reads only the log after
what it covers; without a usable one it reads the whole log (logged).

Under a flock on the stable file ``<filename>.lock`` each process reads what
other processes appended before each operation
(:mod:`sessionstore.backends.picklesync`).  What can be read *before* taking
the lock is: a read (``get``) first applies the whole frames others appended,
with no lock at all, and is served from the index if they are all there is
(``tests/test_pickle_unlocked.py``); a process that finds the lock busy reads
them (or a compaction's new file) while it waits; one that got the lock at
once but finds a new file (at start-up, after a compaction, or replaced) or
more than 16 KB of new frames lets go of it to read them.  Only whole, valid
frames are applied without the lock; a partial frame, a torn tail or damage
after them is judged under it.  Reads of an up-to-date index take no lock
(threads use the arrays under a sequence number, a merge being the only
change that moves entries).  A busy lock is waited for in the kernel's queue,
up to ``busy_timeout`` (:mod:`~sessionstore.backends.picklelock`).

Nothing is destroyed on a guess:

* Only a torn final append (see ``picklelog.classify_tail``) is ever cut,
  and only when the file is still the one (inode, size) just read, and has
  never been seen rewritten in place by this process.
* The last bytes indexed are re-read before each locked operation: a file
  rewritten in place (``cp backup sessions.dat``) is noticed, logged and read
  again from the start, and nothing is cut from it afterwards.
* A file deleted or replaced by something other than a compaction is logged
  as an error, never silently taken for an empty store.
* A damaged file is a :class:`BackendError` naming the file and byte offset
  (damage in a stretch covered by the index file is found when that record
  is read: a :class:`DamagedRecord` for its visitor, the file untouched).
  At :meth:`PickleBackend.setup` (start-up) a file with a valid header but
  damaged frames is **set aside**: hard-linked to
  ``<filename>.damaged-<time>`` (every byte kept), and a new file holding
  every readable record takes its place, so the site starts with the sessions
  that could be read.  A file that does not even start with our header is
  refused (it may be someone else's file), and so is a damaged one when
  :attr:`~PickleBackend.sets_aside` is false (the command line).

Files are opened with ``O_NOFOLLOW`` (a symlink at the store or lock path is
refused) and made private (0600), with a warning when a wider mode was found.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from ..config import as_bool, as_filename
from ..errors import BackendError
from . import procid
from .base import Backend, Record
from .picklebridge import Bridge, Following
from .picklecompact import Compaction
from .picklefiles import read_record, remember
from .picklehandle import Handle
from .pickleindex import OffsetIndex
from .picklelock import FileLock
from .picklelog import encode, encode_put
from .picklepurge import Purge
from .picklesync import LogReader

log = logging.getLogger("sessionstore")


class PickleBackend(FileLock, LogReader, Following, Compaction, Purge, Backend):
    """Sessions in a pickle file (``filename``, default ``sessions.dat``)."""

    options = {"filename": as_filename, "fsync": as_bool}
    #: Whether :meth:`setup` sets a damaged file aside (a site starts with
    #: what could be read) or refuses it with the :class:`BackendError` (the
    #: command line: a command changes no file it was not asked to).
    sets_aside = True

    def __init__(
        self, filename: str = "sessions.dat", *, fsync: bool = False, busy_timeout: float = 5.0
    ) -> None:
        super().__init__(busy_timeout=busy_timeout)
        self.filename = os.path.abspath(filename)
        self.fsync = fsync
        self._mutex = threading.RLock()
        self._pid = os.getpid()
        self._lock_fd: int | None = None
        self._handle: Handle | None = None
        self._writable = True
        self._private = False
        # What the index reflects: which file, and how many of its bytes.
        self._file_id: tuple[int, int] | None = None
        self._offset = 0
        #: (position, the 8-byte header (length + CRC) of a frame indexed
        #: last): re-read before each operation to notice an in-place rewrite.
        self._mark: tuple[int, bytes] | None = None
        self._index = OffsetIndex()
        self._indexed = 0  # the log bytes the index file covers
        self._put_bytes = self._put_frames = 0  # put frames read or written
        self._tail: tuple[Any, ...] | None = None  # a cuttable torn tail, as seen
        self._no_cut: set[tuple[int, int]] = set()  # files seen rewritten in place
        #: (lineage token, generation) of the file indexed: compaction keeps
        #: the token and adds one to the generation.
        self._lineage: tuple[str, int] | None = None
        self._corrupt: tuple[tuple[int, int, int, int], BackendError] | None = None
        self._holding = False
        self._pending = None
        self._compact_after = 0  # back-off after a failed compaction
        self._compacting = False  # a compaction thread of ours is running
        self._due: str | None = None
        self._compactor: threading.Thread | None = None
        #: What delete_expired() goes through, and in which file.
        self._purge: tuple[Iterator[tuple[int, float]], Handle | None] | None = None
        #: (file id, offset, index, handle) as of the last time the lock was
        #: released: what reads use without any lock while the file has not grown.
        self._view: tuple[tuple[int, int] | None, int, OffsetIndex, Handle | None] | None = None
        #: A compaction's new log followed with the old log's index while its
        #: own loads (:mod:`~sessionstore.backends.picklebridge`): the index
        #: holds ``offset - shift`` for a frame of the new log.
        self._bridge: Bridge | None = None
        self._shift = 0

    # -- Backend ------------------------------------------------------------------------

    def setup(self) -> None:
        try:
            with self._locked(exclusive=False):
                pass
            self.remove_orphans()
            return
        except BackendError as exc:
            if self._corrupt is None or getattr(exc, "offset", 0) == 0 or not self.sets_aside:
                self.close()
                raise  # not our file at all, or unreadable: refuse
        # Damaged frames after a valid header: set the file aside, under the
        # exclusive lock (another process may have done it meanwhile).
        with self._mutex:
            assert self._lock_fd is not None
            self._flock(fcntl.LOCK_EX)
            self._holding = True
            try:
                self._corrupt = None
                self._file_id = None
                try:
                    self._sync()
                except BackendError as exc:
                    self._set_aside(exc)
            finally:
                self._holding = False
                self._view = None
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._pid == os.getpid():
            self._wait_for_bridge()  # (its loader would hold the files open)
        compactor = self._compactor
        if compactor is not None and self._pid == os.getpid():
            compactor.join()  # let it finish: it would open the files again
            self._checkpoint()  # (it fell behind a bulk load)
        with self._mutex:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            self._lock_fd = None
            self._view = self._purge = None
            self._reset_index(None)
            self._close_file()

    def compare_and_swap(
        self, session_id: str, expected_version: int | None, record: Record | None
    ) -> bool:
        self._acquire(exclusive=True)
        try:
            offset = self._index.get(session_id)
            current = None
            if offset is not None:  # (self._record_at(), inline)
                assert self._handle is not None
                current = read_record(self._handle, offset, session_id, self.filename)
            if (None if current is None else current.version) != expected_version:
                return False
            if record is None:
                if current is not None:
                    self._delete_ids([session_id])
                return True
            self._put_record(record)
            return True
        finally:
            self._release()

    def _put_records(self, records: list[Record]) -> None:
        frames = [encode_put(r) for r in records]
        data = b"".join(frames)
        self._append(data)
        # (The file may have just been made; offsets are the old log's while
        # following a compaction: see picklebridge.)
        position = self._offset - len(data) - self._shift
        assert self._handle is not None
        put, handle = self._index.put, self._handle
        for record, frame in zip(records, frames, strict=True):
            put(record.session_id, position, record.expires_at, record.user)
            remember(handle, position, record)
            position += len(frame)
        self._put_bytes += len(data)
        self._put_frames += len(frames)
        self._maybe_compact()

    def _put_record(self, record: Record) -> None:
        """``_put_records([record])``, for the swap of every write request."""
        data = encode_put(record)
        self._append(data)
        position = self._offset - len(data) - self._shift  # (as in _put_records)
        assert self._handle is not None
        self._index.put(record.session_id, position, record.expires_at, record.user)
        remember(self._handle, position, record)
        self._put_bytes += len(data)
        self._put_frames += 1
        self._maybe_compact()

    def _delete_ids(self, session_ids: list[str]) -> int:
        index = self._index
        present = [i for i in dict.fromkeys(session_ids) if index.get(i) is not None]
        if present:
            self._append(b"".join(encode(("del", i)) for i in present))
            for session_id in present:
                self._index.delete(session_id)
            self._maybe_compact()
        return len(present)

    def get(self, session_id: str) -> Record | None:
        # The usual case takes no lock at all, neither the file's nor the
        # mutex: when the file is the one last indexed and has not grown past
        # it, the index is the file.  (The log only ever grows; compaction
        # renames a new file over it.)  Threads then never queue behind
        # another thread's system calls.
        if self._pid == procid.pid and self._view is not None:
            try:
                st = os.stat(self.filename)
            except OSError:
                pass
            else:
                found = self._current(st, session_id)
                if found is not False:
                    return found
                # A thread of ours may be appending what the stat saw: once it
                # is done (it holds the mutex), the index may cover it.  If
                # not, others appended: read their frames, without the lock.
                with self._mutex:
                    found = self._current(st, session_id)
                    if found is False and not self._holding:
                        found = self._caught_up(session_id)
                if found is not False:
                    return found
        with self._locked(exclusive=False):
            offset = self._index.get(session_id)
            return None if offset is None else self._record_at(offset, session_id)

    def _current(self, st: os.stat_result, session_id: str) -> Record | None | Literal[False]:
        """The record as indexed, if the index covers the file ``st`` saw;
        else False."""
        view = self._view
        if view is None or (st.st_dev, st.st_ino) != view[0] or st.st_size != view[1]:
            return False
        index = view[2]
        seq = index.seq
        try:
            offset = index.get(session_id)
        except IndexError:  # (its arrays were retired meanwhile: seq says so)
            return False
        if seq & 1 or index.seq != seq:
            return False  # a merge moved entries meanwhile: ask again, with the mutex
        if offset is None:
            return None
        if offset >= view[1]:
            # Indexed after this view was taken, by a thread following a
            # compaction (its offsets past the old file's end are in the new
            # file, which this view's handle does not read): ask again.
            return False
        handle = view[3]
        assert handle is not None
        return read_record(handle, offset, session_id, self.filename)

    def _caught_up(self, session_id: str) -> Record | None | Literal[False]:
        """The record, once the index has read the frames appended to the file
        at the path (with the mutex, without the file lock: complete frames
        never change); False if anything else is there (an append being
        written, a torn tail, damage: judged under the lock)."""
        if not self._catch_up(0) or self._handle is None:
            return False
        # Every complete frame up to the offset is indexed: a state the file
        # was in during this call (an append still being written is not
        # acknowledged yet), and what reads use until the file grows again.
        self._view = (self._file_id, self._offset, self._index, self._handle)
        offset = self._index.get(session_id)
        return None if offset is None else self._record_at(offset, session_id)

    def add(self, record: Record) -> None:
        with self._locked(exclusive=True):
            self._put_records([record])

    def iter_records(self) -> Iterator[Record]:
        """Every record, read from the file as it was when called (the
        offsets are a snapshot, 8 bytes a session; no lock is held while
        they are read)."""
        with self._locked(exclusive=False):
            offsets, handle = self._index.offsets(), self._handle
        return (self._record_at(offset, None, handle) for offset in offsets if offset)

    def user_sessions(self, user: str) -> list[Record]:
        with self._locked(exclusive=False):
            index = self._index
            found = []
            for session_id in index.of_user(user):
                offset = index.get(session_id)
                if offset is not None:
                    found.append(self._record_at(offset, session_id))
            return found

    def delete(self, session_id: str) -> int:
        with self._locked(exclusive=True):
            return self._delete_ids([session_id])

    def delete_many(self, session_ids: Iterable[str]) -> int:
        with self._locked(exclusive=True):
            return self._delete_ids(list(session_ids))

    def delete_all(self) -> int:
        with self._locked(exclusive=True):
            count = self._index.count
            if count:
                self._rewrite(b"")
                self._index = OffsetIndex()
                self._put_bytes = self._put_frames = self._indexed = 0
            return count

    def count(self) -> int:
        with self._locked(exclusive=False):
            return self._index.count
