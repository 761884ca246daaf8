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
68-75 MB RSS, of which ~32 MB are these arrays and ~27 MB the interpreter
and its modules.  A process following a compaction holds two for a moment:
its old index, which it keeps using, and the new one, loaded in the
background (:mod:`~sessionstore.backends.picklebridge`); one that cannot
follow that way reads the new index into these arrays
(:meth:`OffsetIndex.retire`).

**On disk**: the index file, written by compaction and refreshed in the
background: :mod:`~sessionstore.backends.pickleindexfile`.
"""

from __future__ import annotations

import contextlib
import hashlib
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

#: Entries of the extra dict that make a process merge them into its base
#: (a merge costs ~25 ms at 1,000,000 sessions, most of it moving the arrays).
EXTRA_MAX = 4096
#: The same while reading a stretch of log (at open): fewer, larger merges.
BULK_EXTRA_MAX = 65_536
_M64 = (1 << 64) - 1
_OFF_BITS = 40
_OFF_MASK = (1 << _OFF_BITS) - 1
_EXP_MAX = (1 << 40) - 1

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

    def __init__(
        self, base: Base | None = None, bound: dict[str, str] | None = None,
        count: int | None = None,
    ) -> None:  # fmt: skip
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
        #: Live entries (``count``: as an index file says, its writer
        #: having counted them; else counted here, ~30 ms at 1,000,000).
        offs = self.base[2]
        self.count = len(offs) - offs.count(0) if count is None else count
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
        key = _keys.get(session_id) or key_of(session_id)  # (no call when known)
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
        key = _keys.get(session_id) or key_of(session_id)
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

    def retire(self) -> Base | None:
        """Take this index's arrays out of it for the index of another file
        to be read into (an index of 1,000,000 sessions in fresh memory cost
        ~20 ms of page faults to each process following a compaction, all
        at once); None if a compaction or an index writer reads them.  The
        index is left empty, and ``seq`` odd for good: a reader without the
        lock that still holds it asks again with the mutex."""
        if self.frozen or not len(self.base[0]):
            return None
        self.seq |= 1
        base, self.base, self.extra = self.base, _empty_base(), {}
        return base

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
