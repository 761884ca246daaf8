"""Expiry purge of the pickle backend: ``delete_expired(now, limit)``.

The index is scanned with no file lock held (its expiry times pick the
candidates; they may be a second early), at most :data:`_PURGE_SCAN` entries
per call when there is a ``limit`` (a request's cleanup: a few milliseconds at
any size; the next call resumes where it stopped).  The candidates' records
are read without the lock too (a frame at an offset of a file never changes),
:data:`_PURGE_BATCH` at a time, and those expired are deleted under the
exclusive lock if each is still its id's latest frame in the same file (so a
session refreshed meanwhile survives): the lock is held for index lookups and
one append, ~1 ms a batch, not for the reads (5-45 ms a batch measured with 4
busy workers at 1,000,000 sessions, when they were read under it).  A
candidate that cannot be read is left alone (logged).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import BackendError
from . import procid
from .base import Record
from .picklehandle import Handle
from .pickleindex import OffsetIndex

#: Expired sessions deleted per lock hold by an unlimited delete_expired().
_PURGE_BATCH = 250
#: Index entries a limited delete_expired() looks at per call.
_PURGE_SCAN = 20_000


class Purge:
    """``delete_expired`` of the pickle backend (a mixin)."""

    _file_id: tuple[int, int] | None
    _handle: Handle | None
    _index: OffsetIndex
    _pid: int
    _mutex: threading.RLock
    _purge: tuple[Iterator[tuple[int, float]], Handle | None] | None

    if TYPE_CHECKING:

        def _locked(self, exclusive: bool) -> contextlib.AbstractContextManager[None]: ...
        def _delete_ids(self, session_ids: list[str]) -> int: ...
        def _record_at(
            self, offset: int, session_id: str | None, handle: Handle | None = None
        ) -> Record: ...

    def delete_expired(self, now: float | None = None, limit: int | None = None) -> int:
        """Delete up to ``limit`` expired sessions (all when None): see the
        module docstring."""
        now = time.time() if now is None else now
        # The candidates are read without the lock: from descriptors of this
        # process's own (a child after fork reads its parent's otherwise, and
        # holds none of the shared locks that keep a replaced log from being
        # cut under it: picklehandle).  Taking the lock once opens them.
        if self._file_id is None or self._pid != procid.pid:
            with self._locked(exclusive=False):
                pass
        if limit is None:
            self._purge = None  # one whole pass from the start
        deleted = 0
        while limit is None or deleted < limit:
            batch = _PURGE_BATCH if limit is None else min(_PURGE_BATCH, limit - deleted)
            budget = None if limit is None else _PURGE_SCAN
            candidates, handle, finished = self._expired_candidates(now, batch, budget)
            expired = self._expired_at(candidates, now, handle)
            if expired:
                with self._locked(exclusive=True):
                    if handle is self._handle:
                        index = self._index
                        deleted += self._delete_ids(
                            [i for offset, i in expired if index.get(i) == offset]
                        )
            if finished or limit is not None:
                break
        return deleted

    def _expired_candidates(
        self, now: float, batch: int, budget: int | None
    ) -> tuple[list[int], Handle | None, bool]:
        """The offsets of up to ``batch`` expired records, looking at up to
        ``budget`` entries from where the last scan stopped; the file they
        are in; and whether the pass is complete."""
        with self._mutex:
            if self._purge is None or self._purge[1] is not self._handle:
                self._purge = (self._index.live(), self._handle)
            scan, handle = self._purge
            found: list[int] = []
            for seen, (offset, expires_at) in enumerate(scan, 1):
                if expires_at <= now:
                    found.append(offset)
                if len(found) >= batch or (budget is not None and seen >= budget):
                    return found, handle, False
            self._purge = None
            return found, handle, True

    def _expired_at(
        self, offsets: list[int], now: float, handle: Handle | None
    ) -> list[tuple[int, str]]:
        """``(offset, id)`` of the records at ``offsets`` of the file
        ``handle`` that are expired (read without the lock)."""
        found = []
        for offset in offsets:
            try:
                record = self._record_at(offset, None, handle)
            except BackendError:
                continue  # damaged: logged, and kept for `sessionstore check`
            if record.expires_at <= now:
                found.append((offset, record.session_id))
        return found
