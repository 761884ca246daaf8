"""The ``memory`` backend: a dict in this process, for tests and one process."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

from .base import Backend, Record


class MemoryBackend(Backend):
    """Sessions in a dict guarded by a lock; gone when the process ends."""

    def __init__(self, *, busy_timeout: float = 5.0) -> None:
        super().__init__(busy_timeout=busy_timeout)
        self._records: dict[str, Record] = {}
        self._lock = threading.Lock()

    def compare_and_swap(
        self, session_id: str, expected_version: int | None, record: Record | None
    ) -> bool:
        with self._lock:
            current = self._records.get(session_id)
            if (None if current is None else current.version) != expected_version:
                return False
            if record is None:
                self._records.pop(session_id, None)
            else:
                self._records[session_id] = record
            return True

    def get(self, session_id: str) -> Record | None:
        return self._records.get(session_id)

    def add(self, record: Record) -> None:
        with self._lock:
            self._records[record.session_id] = record

    def iter_records(self) -> Iterator[Record]:
        with self._lock:
            records = list(self._records.values())
        return iter(records)

    def delete(self, session_id: str) -> int:
        with self._lock:
            return 0 if self._records.pop(session_id, None) is None else 1

    def delete_many(self, session_ids: Iterable[str]) -> int:
        with self._lock:
            return sum(self._records.pop(i, None) is not None for i in set(session_ids))

    def delete_all(self) -> int:
        with self._lock:
            count = len(self._records)
            self._records.clear()
            return count

    def count(self) -> int:
        return len(self._records)
