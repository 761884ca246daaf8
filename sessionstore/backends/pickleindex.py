"""The pickle backend's index: where each session's latest frame starts, in ~32 bytes a session.

A process does not keep the records of the log in memory, only where each
live session's latest ``put`` frame starts; records are read from the file on
demand (``os.pread``) and checked there (CRC, frame kind, id).

**In memory** (:class:`OffsetIndex`).  An id is known by its *key*, the
128-bit BLAKE2b hash of its UTF-8 bytes, split in two 64-bit halves:

* the *base*: four parallel arrays sorted by key, ``hi`` and ``lo`` (the key),
  ``offs`` (byte offset of the frame in the log) and ``exps`` (``expires_at``),
  ``array`` module storage: 32 bytes a session, looked up with ``bisect``.
  Expiry times here only pick the records a purge reads (they may be up to a
  second early, from the extra dict); the record read decides.
  A delete sets the offset to 0 (a *tombstone*: byte 0 holds the file header,
  never a record); a later put of the same id reuses the slot.
* the *extra* dict, key -> ``floor(expires_at) << 40 | offset``, for ids not in
  the base (new since the base was built): ~120 bytes an entry, merged into
  the base in place once it holds :data:`EXTRA_MAX` entries (one ``bisect``
  and one move of a run of the arrays per merged entry).
* ``bound`` (id -> user) and ``users`` (user -> ids) for the sessions bound
  to a user only: a minority; ~250 bytes each.

Two ids with the same 128-bit key are taken to be the same id (a chance of
about 10^-27 at a million sessions); a record read back is still checked to
carry the id asked for, so such a collision would lose a session, never show
one visitor another's.

Readers on other threads use the index without a lock, checking ``seq``
before and after (a merge makes it odd while it moves entries); writers hold
the process's mutex.  A compaction or an index writer reads the arrays of the
live index without copying them: ``frozen`` holds merges off meanwhile.

Memory per worker at 1,000,000 sessions (``benchmarks/scale.py --fleet``):
75 MB RSS, of which ~32 MB are these arrays and ~27 MB the interpreter and
its modules.

**On disk** (``<log>.index``, written by compaction and refreshed in the
background; see :mod:`~sessionstore.backends.picklecompact`)::

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
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import struct
import sys
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from .picklelog import FrameUnpickler

MAGIC = b"SSIDX\x00\x01\n"
#: Entries of the extra dict that make a process merge them into its base
#: (a merge costs ~25 ms at 1,000,000 sessions, most of it moving the arrays).
EXTRA_MAX = 4096
#: The same while reading a stretch of log (at open): fewer, larger merges.
BULK_EXTRA_MAX = 65_536
_M64 = (1 << 64) - 1
_OFF_BITS = 40
_OFF_MASK = (1 << _OFF_BITS) - 1
_EXP_MAX = (1 << 40) - 1
_LEN = struct.Struct(">I")

Base = tuple["array[int]", "array[int]", "array[int]", "array[float]"]


#: The keys of the ids used last: a request reads, then swaps, then
#: indexes the same id (a few MB at most; emptied when full).
_keys: dict[str, int] = {}


def key_of(session_id: str) -> int:
    """The 128-bit key of an id."""
    key = _keys.get(session_id)
    if key is None:
        digest = hashlib.blake2b(session_id.encode("utf-8", "surrogatepass"), digest_size=16)
        key = int.from_bytes(digest.digest(), "big")
        if len(_keys) >= 8192:
            _keys.clear()
        _keys[session_id] = key
    return key


def _pack(offset: int, expires_at: float) -> int:
    if 0.0 <= expires_at < _EXP_MAX:
        return int(expires_at) << _OFF_BITS | offset  # (int() is floor here)
    return (0 if expires_at < 0 else _EXP_MAX) << _OFF_BITS | offset


def _empty_base() -> Base:
    return array("Q"), array("Q"), array("Q"), array("d")


class OffsetIndex:
    """Where each live session's latest frame starts (see the module docstring)."""

    __slots__ = ("base", "extra", "bound", "users", "count", "seq", "limit", "frozen")

    def __init__(self, base: Base | None = None, bound: dict[str, str] | None = None) -> None:
        self.base: Base = base or _empty_base()
        self.extra: dict[int, int] = {}
        self.bound: dict[str, str] = {}
        self.users: dict[str, set[str]] = {}
        #: Odd while a merge moves entries: a reader without the lock that
        #: sees it odd, or changed across its lookup, asks again with it.
        self.seq = 0
        #: Extra entries that make put() merge (more while a log is read whole).
        self.limit = EXTRA_MAX
        #: Above 0 while a compaction or an index writer reads the arrays
        #: without a copy: no merge (nothing moves, nothing is resized).
        self.frozen = 0
        offs = self.base[2]
        self.count = len(offs) - offs.count(0)
        for session_id, user in (bound or {}).items():
            self._bind(session_id, user)

    # -- lookups ------------------------------------------------------------------------

    @staticmethod
    def _position(base: Base, key: int) -> int:
        """The slot of ``key`` in ``base``, or -1."""
        hi, lo = base[0], base[1]
        high, low = key >> 64, key & _M64
        i = bisect_left(hi, high)
        n = len(hi)
        while i < n and hi[i] == high:
            if lo[i] == low:
                return i
            i += 1
        return -1

    def get(self, session_id: str) -> int | None:
        """The offset of the id's latest frame, or None."""
        key = key_of(session_id)
        packed = self.extra.get(key)  # before the base: see the module docstring
        if packed is not None:
            return packed & _OFF_MASK
        base = self.base
        i = self._position(base, key)
        return (base[2][i] or None) if i >= 0 else None

    def of_user(self, user: str) -> list[str]:
        return list(self.users.get(user, ()))

    # -- changes ------------------------------------------------------------------------

    def put(self, session_id: str, offset: int, expires_at: float, user: str | None) -> None:
        key = key_of(session_id)
        extra = self.extra
        if key in extra:
            extra[key] = _pack(offset, expires_at)
        else:
            base = self.base
            i = self._position(base, key)
            if i >= 0:
                self.count += not base[2][i]
                base[2][i] = offset
                base[3][i] = expires_at
            else:
                extra[key] = _pack(offset, expires_at)
                self.count += 1
        if user is not None or session_id in self.bound:
            self._unbind(session_id)
            if user is not None:
                self._bind(session_id, user)
        if len(extra) >= self.limit:
            self.merge()

    def delete(self, session_id: str) -> bool:
        """Forget the id; whether it was there."""
        key = key_of(session_id)
        if self.extra.pop(key, None) is None:
            base = self.base
            i = self._position(base, key)
            if i < 0 or not base[2][i]:
                return False
            base[2][i] = 0
        self.count -= 1
        if session_id in self.bound:
            self._unbind(session_id)
        return True

    def _bind(self, session_id: str, user: str) -> None:
        self.bound[session_id] = user
        self.users.setdefault(user, set()).add(session_id)

    def _unbind(self, session_id: str) -> None:
        user = self.bound.pop(session_id, None)
        if user is not None:
            ids = self.users[user]
            ids.discard(session_id)
            if not ids:
                del self.users[user]

    def merge(self) -> None:
        """Move the extra entries into the base, in place: the arrays grow
        by the entries merged and each run of old entries moves once, so the
        Python-level work is one step per extra entry, not per session, and
        no second copy of the arrays is ever made (which, freed, would stay
        in the process as fragments).  ``seq`` is odd meanwhile."""
        extra = self.extra
        if not extra or self.frozen:
            return
        items = sorted(extra.items())
        hi, lo, offs, exps = base = self.base
        n, m = len(hi), len(items)
        points, start = [], 0
        for key, _ in items:
            high, low = key >> 64, key & _M64
            i = bisect_left(hi, high, start)
            while i < n and hi[i] == high and lo[i] < low:
                i += 1
            points.append(i)
            start = i
        self.seq += 1
        try:
            columns: list[Any] = list(base)
            for column in columns:
                column.extend(array(column.typecode, bytes(8 * m)))
            end = n
            for j in range(m - 1, -1, -1):
                p = points[j]
                if p < end:
                    for column in columns:
                        column[p + j + 1 : end + j + 1] = column[p:end]
                key, packed = items[j]
                hi[p + j], lo[p + j] = key >> 64, key & _M64
                offs[p + j], exps[p + j] = packed & _OFF_MASK, float(packed >> _OFF_BITS)
                end = p
            self.extra = {}
        finally:
            self.seq += 1

    @contextlib.contextmanager
    def bulk(self) -> Iterator[None]:
        """Fewer, larger merges while a stretch of log is read."""
        self.limit = BULK_EXTRA_MAX
        try:
            yield
        finally:
            self.limit = EXTRA_MAX
            if len(self.extra) >= EXTRA_MAX:
                self.merge()

    # -- walks ----------------------------------------------------------------------------

    def live(self) -> Iterator[tuple[int, float]]:
        """``(offset, expires_at)`` of every live entry (base order, then the extra)."""
        _, _, offs, exps = self.base
        for i, offset in enumerate(offs):
            if offset:
                yield offset, exps[i]
        for packed in list(self.extra.values()):
            yield packed & _OFF_MASK, float(packed >> _OFF_BITS)

    def offsets(self) -> list[int] | array[int]:
        """Every live offset, as a snapshot."""
        found = array("Q", self.base[2])
        found.extend(packed & _OFF_MASK for packed in self.extra.values())
        return found


# -- the index file ---------------------------------------------------------------------


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


def write_index(out: io.BufferedWriter, base: Base, bound: dict[str, str], meta: Meta) -> None:
    """Write an index file (of a base with no extra entries: merge first)."""
    n = len(base[0])
    mark_at, mark = meta.mark or (0, b"")
    head = (
        "index", 1, sys.byteorder, n, meta.token, meta.generation, meta.inode,
        meta.covered, mark_at, mark, meta.put_bytes, meta.put_frames,
    )  # fmt: skip
    encoded = pickle.dumps(head, 5)
    crc = 0
    for chunk in (MAGIC, _LEN.pack(len(encoded)), encoded):
        out.write(chunk)
        crc = zlib.crc32(chunk, crc)
    for column in base:
        with memoryview(column) as view, view.cast("B") as raw:
            for start in range(0, len(raw), 1 << 20):
                # A copy, so that the CRC is of the bytes written even if an
                # entry changes meanwhile (see picklecompact._snapshot).
                chunk = bytes(raw[start : start + (1 << 20)])
                out.write(chunk)
                crc = zlib.crc32(chunk, crc)
    users = pickle.dumps(tuple(bound.items()), 5)
    for chunk in (_LEN.pack(len(users)), users):
        out.write(chunk)
        crc = zlib.crc32(chunk, crc)
    out.write(_LEN.pack(crc))


def read_meta(source: io.BufferedReader) -> tuple[Meta, int, bytes]:
    """The meta of an index file, the entry count, and the bytes read (for the CRC)."""
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
    if (kind, version, byteorder) != ("index", 1, sys.byteorder) or not isinstance(n, int):
        raise BadIndex("another format or byte order")
    meta = Meta(token, generation, inode, covered, (mark_at, mark) if mark else None,
                put_bytes, put_frames)  # fmt: skip
    return meta, n, magic + encoded


def read_index(
    source: io.BufferedReader, check: Callable[[Meta], str | None]
) -> tuple[Meta, OffsetIndex]:
    """Read and verify a whole index file; :class:`BadIndex` if it does not
    check out, or if ``check(meta)`` names a reason not to use it."""
    meta, n, head = read_meta(source)
    why = check(meta)
    if why is not None:
        raise BadIndex(why)
    crc = zlib.crc32(head)
    if not 0 <= n <= 1 << 40:
        raise BadIndex(f"implausible entry count {n}")
    base: Base = (array("Q", [0]) * n, array("Q", [0]) * n, array("Q", [0]) * n,
                  array("d", [0.0]) * n)  # fmt: skip
    for column in base:
        # Read straight into the arrays: no second copy, even for a moment.
        with memoryview(column) as view, view.cast("B") as raw:
            if source.readinto(raw) != len(raw):
                raise BadIndex("cut short")
            crc = zlib.crc32(raw, crc)
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
    return meta, OffsetIndex(base, bound)


def open_index(path: str) -> io.BufferedReader:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    return os.fdopen(fd, "rb")
