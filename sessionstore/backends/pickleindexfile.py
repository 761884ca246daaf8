"""The pickle backend's index file: its format, its checks, and putting a new one in place.

The index file lets a process open a store of any size by reading ~32 bytes
a session (:mod:`~sessionstore.backends.pickleindex`) and only the log
written after it.  It is written by compaction, rewritten in the
background when the log has grown :data:`~sessionstore.backends.picklecompact.REFRESH`
bytes past it, and at ``close()`` of a process that wrote, once the log is
:data:`~sessionstore.backends.picklecompact.CLOSE_TAIL` bytes past it
(:mod:`~sessionstore.backends.picklecompact`).

Format (``<log>.index``)::

    b"SSIDX\\x00\\x01\\n"                      magic, 8 bytes
    meta length (4 bytes, big-endian) + meta  a pickle of a plain tuple:
        ("index", 1, byteorder, n, lineage token, generation, inode of the log,
         covered: the log bytes indexed, mark position, mark bytes,
         bytes of put frames, number of put frames)
    hi, lo, offs (n x 8 bytes each, unsigned) and exps (n x 8, double),
        in the byte order named in meta
    users length (4 bytes) + a pickle of ((id, user), ...)
    CRC-32 of everything above (4 bytes)

An index is used only when its CRC holds and it names the log now at the path:
same inode, same lineage and generation (the log's origin frame), ``covered``
no larger than the file, and the 8-byte frame header recorded at ``mark``
(the last frame it covers) still there.  Then opening reads the index and
only the log's frames after ``covered``.  Anything else is read from the
whole log instead, never trusted blindly, never a crash, and the index file
is left as found (``tests/test_pickle_index.py``):

* no index: read silently (a small store never had one);
* a torn, zeroed or damaged index, or not an index at all (bad magic, bad
  CRC, cut short): logged as a warning;
* an index of another log (another inode, an older generation, a log
  rewritten in place since): logged at info level (a ``delete_all`` or a set
  aside removes the index of the file it replaces; a crash between a
  compaction's two renames leaves one);
* a process that finds, without the lock, an index naming another inode than
  the log it opened may be between a compaction's two renames: it looks
  again under the lock instead of reading the whole log.

An index is written to a temporary file and renamed into place; it is not
fsynced (a torn one fails its CRC).  Damage in a record the index points at
is found when it is read: a ``DamagedRecord`` for that visitor, logged.

Turns: reading a whole index in the background (following a compaction) and
writing a new one each cost ~40-100 ms of CPU at 1,000,000 sessions, and
every process wanted to at the same moment (all four workers after a
compaction; two or three at once when the log grew past ``REFRESH``), which
left the requests of a two-core machine waiting for a CPU, file lock held,
for 100-300 ms (measured).  So they take turns on an exclusive ``flock`` of
the index file at the path (:func:`take_turn`): a loader waits for its turn
(at most :data:`TURN_WAIT`, then goes ahead), a background writer that finds
the index busy does not write (another process is at it; the log's growth
asks again later).  The lock only spreads the work: nothing is wrong
without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import pickle
import struct
import sys
import time
import zlib
from array import array
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from . import picklelog
from .picklehandle import Handle, retire
from .pickleindex import Base, OffsetIndex
from .picklelog import FrameUnpickler

log = logging.getLogger("sessionstore")

MAGIC = b"SSIDX\x00\x01\n"
_LEN = struct.Struct(">I")
_COUNT = struct.Struct(">Q")
VERSION = 2


class Meta(NamedTuple):
    """What an index file covers (see the module docstring)."""

    token: str
    generation: int
    inode: int
    covered: int
    mark: tuple[int, bytes] | None
    put_bytes: int
    put_frames: int


class BadIndex(Exception):
    """An index file that cannot be used (why, in the message)."""


def write_index(
    out: io.BufferedWriter, base: Base, bound: dict[str, str], meta: Meta, live: int | None = None
) -> None:
    """Write an index file (of a base with no extra entries: merge first).
    ``live``: the count of live entries when nobody else changes the arrays
    meanwhile (a compaction's new index): written as they are; else (a
    process's live index) each chunk is copied and its live entries counted."""
    n = len(base[0])
    mark_at, mark = meta.mark or (0, b"")
    head = (
        "index", VERSION, sys.byteorder, n, meta.token, meta.generation, meta.inode,
        meta.covered, mark_at, mark, meta.put_bytes, meta.put_frames,
    )  # fmt: skip
    encoded = pickle.dumps(head, 5)
    crc = 0
    for part in (MAGIC, _LEN.pack(len(encoded)), encoded):
        out.write(part)
        crc = zlib.crc32(part, crc)
    counted = 0
    for column in base:
        with memoryview(column) as view, view.cast("B") as raw:
            for start in range(0, len(raw), 1 << 20):
                if live is not None:
                    chunk: bytes | memoryview = raw[start : start + (1 << 20)]
                else:
                    # A copy, so that the CRC (and the count) is of the bytes
                    # written even if an entry changes meanwhile (see
                    # picklecompact._snapshot).
                    chunk = bytes(raw[start : start + (1 << 20)])
                    if column is base[2]:
                        counted += len(chunk) // 8 - array("Q", chunk).count(0)
                out.write(chunk)
                crc = zlib.crc32(chunk, crc)
    users = pickle.dumps(tuple(bound.items()), 5)
    count = counted if live is None else live
    for tail in (_COUNT.pack(count), _LEN.pack(len(users)), users):
        out.write(tail)
        crc = zlib.crc32(tail, crc)
    out.write(_LEN.pack(crc))


def read_meta(source: io.BufferedReader) -> tuple[Meta, int, bytes]:
    """The meta of an index file, the entry count (negative for a version 1
    file, which has no live count), and the bytes read (for the CRC)."""
    magic = source.read(len(MAGIC) + _LEN.size)
    if len(magic) != len(MAGIC) + _LEN.size or not magic.startswith(MAGIC):
        raise BadIndex("not an index file (bad magic)")
    (size,) = _LEN.unpack_from(magic, len(MAGIC))
    encoded = source.read(min(size, 1 << 16))
    try:
        head: Any = FrameUnpickler(io.BytesIO(encoded)).load()
        kind, version, byteorder, n, token, generation, inode = head[:7]
        covered, mark_at, mark, put_bytes, put_frames = head[7:]
    except Exception as exc:
        raise BadIndex(f"unreadable meta ({exc})") from exc
    if kind != "index" or version not in (1, VERSION) or byteorder != sys.byteorder:
        raise BadIndex("another format or byte order")
    if not isinstance(n, int) or not 0 <= n <= 1 << 40:
        raise BadIndex(f"implausible entry count {n!r:.20}")
    meta = Meta(token, generation, inode, covered, (mark_at, mark) if mark else None,
                put_bytes, put_frames)  # fmt: skip
    return meta, n if version == VERSION else -1 - n, magic + encoded


def read_index(
    source: io.BufferedReader, check: Callable[[Meta], str | None], spare: Base | None = None
) -> tuple[Meta, OffsetIndex]:
    """Read and verify a whole index file; :class:`BadIndex` if it does not
    check out, or if ``check(meta)`` names a reason not to use it.  The
    arrays are read into ``spare`` (resized) when given: memory already in
    the process (:meth:`OffsetIndex.retire`)."""
    meta, n, head = read_meta(source)
    why = check(meta)
    if why is not None:
        raise BadIndex(why)
    crc = zlib.crc32(head)
    counted = n >= 0
    n = n if counted else -1 - n
    base: Base = spare or (array("Q", [0]) * n, array("Q", [0]) * n, array("Q", [0]) * n,
                           array("d", [0.0]) * n)  # fmt: skip
    for column in base:
        if len(column) > n:
            del column[n:]
        elif len(column) < n:
            column.extend(array(column.typecode, bytes(8 * (n - len(column)))))
    for column in base:
        # Read straight into the arrays: no second copy, even for a moment.
        with memoryview(column) as view, view.cast("B") as raw:
            if source.readinto(raw) != len(raw):
                raise BadIndex("cut short")
            crc = zlib.crc32(raw, crc)
    live = None
    if counted:
        count = source.read(_COUNT.size)
        if len(count) != _COUNT.size:
            raise BadIndex("cut short")
        crc = zlib.crc32(count, crc)
        (live,) = _COUNT.unpack(count)
    size = source.read(_LEN.size)
    if len(size) != _LEN.size:
        raise BadIndex("cut short")
    users = source.read(_LEN.unpack(size)[0])
    crc = zlib.crc32(users, zlib.crc32(size, crc))
    if source.read(_LEN.size + 1) != _LEN.pack(crc):
        raise BadIndex("checksum mismatch")
    try:
        bound = dict(FrameUnpickler(io.BytesIO(users)).load())
    except Exception as exc:
        raise BadIndex(f"unreadable user list ({exc})") from exc
    if live is not None and live > n:
        raise BadIndex(f"implausible live count {live}")
    return meta, OffsetIndex(base, bound, live)


#: The longest a loader waits for its turn at the index file.
TURN_WAIT = 2.0
_TURN_POLL = 0.005


def take_turn(fd: int, wait: float) -> bool:
    """Take this process's turn at the index file ``fd`` (an exclusive flock,
    let go when it is closed), waiting up to ``wait`` seconds for it; False
    if it was not had (see the module docstring)."""
    give_up = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= give_up:
                return False
            time.sleep(_TURN_POLL)  # (a background thread: no request waits)
        except OSError:
            return False


def open_index(path: str) -> io.BufferedReader:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    return os.fdopen(fd, "rb")


class IndexFiles:
    """Loading an index file, and putting a new one in place (a mixin of
    the pickle backend)."""

    filename: str
    _holding: bool
    _index: OffsetIndex
    _offset: int
    _indexed: int
    _mark: tuple[int, bytes] | None
    _lineage: tuple[str, int] | None
    _put_bytes: int
    _put_frames: int

    if TYPE_CHECKING:

        @property
        def _fd(self) -> int | None: ...
        def _temp(self) -> tuple[int, str]: ...
        def _mark_holds(self, mark: tuple[int, bytes] | None = None) -> bool: ...

    @contextlib.contextmanager
    def _index_file(
        self, index: OffsetIndex, meta: Meta, bound: dict[str, str] | None = None
    ) -> Iterator[str]:
        """A temporary index file for renaming, flocked (like a compaction's
        log, so that no set-up takes it for an orphan) until it is renamed or
        removed.  ``bound`` is given for a process's live index (frozen, its
        entries still changing); a compaction's own index is written as is."""
        index.merge()
        fd, temp = self._temp()
        try:
            with os.fdopen(fd, "wb", closefd=False) as out:
                if bound is None:
                    write_index(out, index.base, index.bound, meta, index.count)
                else:
                    write_index(out, index.base, bound, meta)
            yield temp
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)  # (gone if renamed)
            os.close(fd)

    @contextlib.contextmanager
    def _old_index_kept(self) -> Iterator[int | None]:
        """Keep the index file at the path open until the end of the block,
        then let go of it in the background: renaming over a file nobody
        holds frees its blocks in the rename (33 ms for the 32 MB of
        1,000,000 sessions, measured), which would be under the lock that
        others wait for.  Yields its descriptor (None: no index file)."""
        try:
            fd = os.open(self.filename + ".index", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            fd = None  # none yet (or not ours): nothing to free
        try:
            yield fd
        finally:
            if fd is not None:
                retire(Handle(fd))

    def _load_index(self, st: os.stat_result, spare: Base | None = None) -> bool:
        """Start from the index file if it verifies for the log opened; False
        (nothing done) if it names another file and we hold no lock: it may
        be the old log's index, about to be replaced.  ``spare``: the arrays
        of the index of the file left, to read it into."""
        assert self._fd is not None
        path = self.filename + ".index"
        lineage = picklelog.lineage_of(os.pread(self._fd, 512, 0))

        def check(meta: Meta) -> str | None:
            if meta.inode != st.st_ino:
                return "it indexes another file"
            if (meta.token, meta.generation) != lineage:
                return "it indexes another generation of the log"
            if meta.covered > st.st_size:
                return "it covers more than the log holds"
            if not self._mark_holds(meta.mark):
                return "the log was rewritten since"
            return None

        try:
            with open_index(path) as source:
                meta, index = read_index(source, check, spare)
        except FileNotFoundError:
            return True
        except (OSError, BadIndex) as exc:
            if not self._holding and "another file" in str(exc):
                return False
            level = logging.INFO if "indexes another" in str(exc) else logging.WARNING
            log.log(level, "%s not used (%s): reading the whole log", path, exc)
            return True
        self._index = index
        self._offset = self._indexed = meta.covered
        self._mark = meta.mark
        self._lineage = lineage
        self._put_bytes, self._put_frames = meta.put_bytes, meta.put_frames
        return True

    def _rename_index(self, temp: str) -> None:
        """Put a new index in place; a failure is only logged (the index is
        derived data: readers fall back on the log)."""
        try:
            os.replace(temp, self.filename + ".index")
        except OSError:
            log.warning("could not put the new index of %s in place", self.filename, exc_info=True)
