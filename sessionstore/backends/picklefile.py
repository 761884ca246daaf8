"""The ``pickle`` backend: sessions in one pickle file, shared by threads and processes.

Linesman rewrote its whole pickle file on every change, which grew slow past a
few hundred sessions.  This file is instead an append-only log: a header, then
one frame per change, each frame a pickle of a plain tuple::

    frame = length (4 bytes) + CRC-32 (4 bytes) + pickle(("put", id, version,
            created_at, accessed_at, expires_at, payload)) or pickle(("del", id))

A commit appends one frame, so its cost does not grow with the number of
sessions.  When dead frames outweigh live ones the log is compacted: written
to a temporary file in the same directory and renamed over the old one, so a
crash leaves the old file or the new, never a mix.

Every process keeps an index of the records and, under a lock on the stable
file ``<filename>.lock``, reads the frames other processes appended (or the
whole file again after another process compacted it) before each operation.

Frames only ever hold strings, numbers and bytes, and are read with an
unpickler that refuses every global, so a pickle planted in the file cannot
run code; session payloads inside are signed and verified before use.

A frame cut short at the end of the file is a write that a killed process
never finished (it was never acknowledged): it is ignored, and cut off by the
next write.  A damaged frame anywhere else makes the file corrupt: every
operation then raises :class:`BackendError` naming the file, and nothing is
written to it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import logging
import os
import pickle
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, Literal, NoReturn

from ..config import as_bool, as_filename
from ..errors import BackendError, BusyRetry
from .base import Backend, Record

log = logging.getLogger("sessionstore")

HEADER = ("sessionstore.pickle", 1)
_FRAME = struct.Struct(">II")
_PROTOCOL = 5
#: Compact when the file is larger than twice the live data plus this.
_COMPACT_SLACK = 1 << 20


class _FrameUnpickler(pickle.Unpickler):
    """Frames hold only tuples of str, int, float and bytes: no globals at all."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def _encode(frame: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(frame, _PROTOCOL)
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def _put(record: Record) -> bytes:
    r = record
    return _encode(
        ("put", r.session_id, r.version, r.created_at, r.accessed_at, r.expires_at, r.payload)
    )


class PickleBackend(Backend):
    """Sessions in a pickle file (``filename``, default ``sessions.dat``)."""

    options = {"filename": as_filename, "fsync": as_bool}

    def __init__(
        self, filename: str = "sessions.dat", *, fsync: bool = False, busy_timeout: float = 5.0
    ) -> None:
        super().__init__(busy_timeout=busy_timeout)
        self.filename = os.path.abspath(filename)
        self.fsync = fsync
        self._mutex = threading.RLock()
        self._pid = os.getpid()
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._writable = True
        # What the index reflects: which file, and how many of its bytes.
        self._file_id: tuple[int, int] | None = None
        self._offset = 0
        self._index: dict[str, Record] = {}
        self._sizes: dict[str, int] = {}  # frame size of each live record
        self._live = 0  # sum of self._sizes, kept up to date
        self._corrupt: BackendError | None = None
        #: (file id, offset, index) as of the last time the lock was released:
        #: what reads use without any lock while the file has not grown.
        self._view: tuple[tuple[int, int] | None, int, dict[str, Record]] | None = None

    # -- locking and syncing ---------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        if self._pid != os.getpid():
            self._after_fork()
        with self._mutex:
            if self._lock_fd is None:
                self._open_lock()
            assert self._lock_fd is not None
            self._flock(fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                self._sync()
                yield
            finally:
                # The index holds every frame up to the offset (and perhaps a
                # few newer ones, never a partial one).
                self._view = None if self._corrupt else (self._file_id, self._offset, self._index)
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _after_fork(self) -> None:
        # flock belongs to the open file description, which a child shares
        # with its parent: the child needs descriptors of its own.
        self._pid = os.getpid()
        self._mutex = threading.RLock()
        self._view = None
        self._lock_fd = None
        self._fd = None
        self._file_id = None

    def _open_lock(self) -> None:
        path = self.filename + ".lock"
        try:
            self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            try:  # a read-only place: reads still work, writes will fail
                self._lock_fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise BackendError(f"cannot open the lock file {path}", exc) from exc

    def _flock(self, operation: int) -> None:
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
                delay = min(delay * 2, 0.02)

    def _sync(self) -> None:
        """Bring the index up to date with the file (under the lock)."""
        if self._corrupt is not None:
            raise self._corrupt
        try:
            st = os.stat(self.filename)
        except FileNotFoundError:
            self._reset_index(None)
            return
        except OSError as exc:
            raise BackendError(f"cannot read {self.filename}", exc) from exc
        file_id = (st.st_dev, st.st_ino)
        if file_id != self._file_id or st.st_size < self._offset:
            self._reopen()
            self._reset_index(file_id)
        if st.st_size > self._offset:
            self._read_frames(st.st_size)

    def _reset_index(self, file_id: tuple[int, int] | None) -> None:
        self._file_id = file_id
        self._offset = 0
        self._index = {}
        self._sizes = {}
        self._live = 0

    def _reopen(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            self._fd = os.open(self.filename, os.O_RDWR | os.O_APPEND)
            self._writable = True
        except PermissionError:
            self._fd = os.open(self.filename, os.O_RDONLY)
            self._writable = False
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise BackendError(f"cannot open {self.filename}", exc) from exc
            self._fd = os.open(self.filename, os.O_RDONLY)
            self._writable = False

    def _read_frames(self, size: int) -> None:
        assert self._fd is not None
        data = os.pread(self._fd, size - self._offset, self._offset)
        pos = 0
        if self._offset == 0:
            pos = self._read_header(data)
        while pos < len(data):
            if len(data) - pos < _FRAME.size:
                break  # torn tail
            length, crc = _FRAME.unpack_from(data, pos)
            end = pos + _FRAME.size + length
            if end > len(data):
                break  # torn tail
            body = data[pos + _FRAME.size : end]
            if zlib.crc32(body) != crc:
                if end == len(data):
                    break  # the last frame, torn by a crash: never acknowledged
                self._fail(f"damaged frame at byte {self._offset + pos}")
            try:
                frame = _FrameUnpickler(io.BytesIO(body)).load()
                self._apply(frame, end - pos)
            except Exception as exc:
                self._fail(f"unreadable frame at byte {self._offset + pos} ({exc})")
            pos = end
        self._offset += pos

    def _read_header(self, data: bytes) -> int:
        if len(data) >= _FRAME.size:
            length, crc = _FRAME.unpack_from(data)
            body = data[_FRAME.size : _FRAME.size + length]
            if len(body) == length and zlib.crc32(body) == crc:
                try:
                    if _FrameUnpickler(io.BytesIO(body)).load() == HEADER:
                        return int(_FRAME.size + length)
                except Exception:
                    log.debug("unreadable header in %s", self.filename, exc_info=True)
        self._fail("not a sessionstore pickle file (bad header)")

    def _apply(self, frame: tuple[Any, ...], size: int) -> None:
        if frame[0] == "put" and len(frame) == 7:
            record = Record(*frame[1:])
            self._index[record.session_id] = record
            self._live += size - self._sizes.get(record.session_id, 0)
            self._sizes[record.session_id] = size
        elif frame[0] == "del" and len(frame) == 2:
            self._index.pop(frame[1], None)
            self._live -= self._sizes.pop(frame[1], 0)
        else:
            raise ValueError(f"unknown frame kind {frame[0]!r}")

    def _fail(self, reason: str) -> NoReturn:
        self._corrupt = BackendError(
            f"session file {self.filename} is corrupt: {reason}; it is left untouched"
        )
        raise self._corrupt

    # -- writing ----------------------------------------------------------------------

    def _append(self, frames: bytes) -> None:
        """Append frames to the file (under the exclusive lock)."""
        if self._offset == 0:
            # No file yet (or an empty one): create it, header first, atomically.
            self._rewrite(b"")
        assert self._fd is not None
        if not self._writable:
            raise BackendError(f"session file {self.filename} is read-only")
        size = os.fstat(self._fd).st_size
        if size != self._offset:
            # A torn frame left by a killed process: cut it off first.
            log.warning(
                "%s: dropping %d bytes of an unfinished write", self.filename, size - self._offset
            )
            self._truncate()
        try:
            view = memoryview(frames)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            self._truncate()  # leave no partial frame behind
            raise BackendError(f"cannot write to session file {self.filename}", exc) from exc
        self._offset += len(frames)

    def _truncate(self) -> None:
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._offset)
        except OSError:
            log.exception("%s: could not cut off a partial write", self.filename)

    def _rewrite(self, frames: bytes) -> None:
        """Replace the file by a header plus ``frames``: temp file, fsync, rename."""
        directory = os.path.dirname(self.filename)
        try:
            fd, temp = tempfile.mkstemp(prefix=".sessions-", suffix=".tmp", dir=directory)
        except OSError as exc:
            raise BackendError(f"cannot write a new {self.filename}", exc) from exc
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(_encode(HEADER))
                out.write(frames)
                out.flush()
                # Always fsync here: the rename must never publish an empty file.
                os.fsync(out.fileno())
            os.replace(temp, self.filename)
            if self.fsync:
                dir_fd = os.open(directory, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise BackendError(f"cannot write a new {self.filename}", exc) from exc
        self._reopen()
        assert self._fd is not None  # _reopen() opened it or raised
        st = os.fstat(self._fd)
        self._file_id = (st.st_dev, st.st_ino)
        self._offset = st.st_size

    def _maybe_compact(self) -> None:
        if self._offset <= 2 * self._live + _COMPACT_SLACK:
            return
        try:
            self._compact()
        except BackendError:
            # The commit itself is safely appended; compaction retries later.
            log.warning("could not compact %s", self.filename, exc_info=True)

    def _compact(self) -> None:
        frames = [_put(r) for r in self._index.values()]
        self._rewrite(b"".join(frames))
        self._sizes = {
            r.session_id: len(f) for r, f in zip(self._index.values(), frames, strict=True)
        }
        self._live = sum(self._sizes.values())

    # -- Backend ------------------------------------------------------------------------

    def setup(self) -> None:
        with self._locked(exclusive=False):
            pass

    def close(self) -> None:
        with self._mutex:
            for fd in (self._fd, self._lock_fd):
                if fd is not None:
                    os.close(fd)
            self._fd = self._lock_fd = None
            self._view = None
            self._reset_index(None)

    def compare_and_swap(
        self, session_id: str, expected_version: int | None, record: Record | None
    ) -> bool:
        with self._locked(exclusive=True):
            current = self._index.get(session_id)
            if (None if current is None else current.version) != expected_version:
                return False
            if record is None:
                if current is not None:
                    self._delete_ids([session_id])
                return True
            self._put_records([record])
            return True

    def _put_records(self, records: list[Record]) -> None:
        frames = [_put(r) for r in records]
        self._append(b"".join(frames))
        for record, frame in zip(records, frames, strict=True):
            self._index[record.session_id] = record
            self._live += len(frame) - self._sizes.get(record.session_id, 0)
            self._sizes[record.session_id] = len(frame)
        self._maybe_compact()

    def _delete_ids(self, session_ids: list[str]) -> int:
        present = [i for i in dict.fromkeys(session_ids) if i in self._index]
        if present:
            self._append(b"".join(_encode(("del", i)) for i in present))
            for session_id in present:
                del self._index[session_id]
                self._live -= self._sizes.pop(session_id)
            self._maybe_compact()
        return len(present)

    def get(self, session_id: str) -> Record | None:
        # The usual case takes no lock at all, neither the file's nor the
        # mutex: when the file is the one last indexed and has not grown past
        # it, the index is the file.  (The log only ever grows; compaction
        # renames a new file over it.)  Threads then never queue behind
        # another thread's system calls.
        if self._pid == os.getpid() and self._view is not None:
            try:
                st = os.stat(self.filename)
            except OSError:
                pass
            else:
                found = self._current(st, session_id)
                if found is not False:
                    return found
                # A thread of ours may be appending what the stat saw: once it
                # is done (it holds the mutex), the index may cover it.
                with self._mutex:
                    found = self._current(st, session_id)
                if found is not False:
                    return found
        with self._locked(exclusive=False):
            return self._index.get(session_id)

    def _current(self, st: os.stat_result, session_id: str) -> Record | None | Literal[False]:
        """The record as indexed, if the index covers the file ``st`` saw;
        else False."""
        view = self._view
        if view is None or (st.st_dev, st.st_ino) != view[0] or st.st_size > view[1]:
            return False
        return view[2].get(session_id)

    def add(self, record: Record) -> None:
        with self._locked(exclusive=True):
            self._put_records([record])

    def iter_records(self) -> Iterator[Record]:
        with self._locked(exclusive=False):
            records = list(self._index.values())
        return iter(records)

    def delete(self, session_id: str) -> int:
        with self._locked(exclusive=True):
            return self._delete_ids([session_id])

    def delete_many(self, session_ids: Iterable[str]) -> int:
        with self._locked(exclusive=True):
            return self._delete_ids(list(session_ids))

    def delete_all(self) -> int:
        with self._locked(exclusive=True):
            count = len(self._index)
            if count:
                self._rewrite(b"")
                self._index = {}
                self._sizes = {}
                self._live = 0
            return count

    def delete_expired(self, now: float | None = None, limit: int | None = None) -> int:
        now = time.time() if now is None else now
        with self._locked(exclusive=True):
            return self._delete_ids(
                [r.session_id for r in self._index.values() if r.is_expired(now)]
            )

    def count(self) -> int:
        with self._locked(exclusive=False):
            return len(self._index)
