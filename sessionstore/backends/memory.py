"""The ``memory`` backend: a dict in this process, for tests and one process.

Beside the records it keeps an index from user to session ids
(``user_sessions()``), changed under the same lock as the records.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

from .base import Backend, Record


class MemoryBackend(Backend):
    """Sessions in a dict guarded by a lock; gone when the process ends."""

    def __init__(self, *, busy_timeout: float = 5.0) -> None:
        super().__init__(busy_timeout=busy_timeout)
        self._records: dict[str, Record] = {}
        self._users: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def _put(self, session_id: str, record: Record | None) -> Record | None:
        """Store or remove one record and keep the user index in step; the
        lock is held by the caller."""
        old = self._records.pop(session_id, None)
        if old is not None and old.user is not None:
            ids = self._users.get(old.user)
            if ids is not None:
                ids.discard(session_id)
                if not ids:
                    del self._users[old.user]
        if record is not None:
            self._records[session_id] = record
            if record.user is not None:
                self._users.setdefault(record.user, set()).add(session_id)
        return old

    def compare_and_swap(
        self, session_id: str, expected_version: int | None, record: Record | None
    ) -> bool:
        with self._lock:
            current = self._records.get(session_id)
            if (None if current is None else current.version) != expected_version:
                return False
            if (
                record is not None
                and record.user is None
                and (current is None or current.user is None)
            ):
                self._records[session_id] = record  # no user index to keep in step
            else:
                self._put(session_id, record)
            return True

    def get(self, session_id: str) -> Record | None:
        return self._records.get(session_id)

    def add(self, record: Record) -> None:
        with self._lock:
            self._put(record.session_id, record)

    def iter_records(self) -> Iterator[Record]:
        with self._lock:
            records = list(self._records.values())
        return iter(records)

    def delete(self, session_id: str) -> int:
        with self._lock:
            return 0 if self._put(session_id, None) is None else 1

    def delete_many(self, session_ids: Iterable[str]) -> int:
        with self._lock:
            return sum(self._put(i, None) is not None for i in set(session_ids))

    def delete_all(self) -> int:
        with self._lock:
            count = len(self._records)
            self._records.clear()
            self._users.clear()
            return count

    def delete_expired(self, now: float | None = None, limit: int | None = None) -> int:
        """Every record is looked at (a dict scan, no copy); at most ``limit``
        expired ones are deleted.  The base class looks at the first
        ``limit`` only, which live sessions at the front would fill forever."""
        now = time.time() if now is None else now
        with self._lock:
            expired = [i for i, record in self._records.items() if record.is_expired(now)]
            for session_id in expired[:limit]:
                self._put(session_id, None)
        return len(expired[:limit])

    def count(self) -> int:
        return len(self._records)

    def user_sessions(self, user: str) -> list[Record]:
        with self._lock:
            ids = self._users.get(user, ())
            return [self._records[i] for i in ids]
