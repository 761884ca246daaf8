"""The backend contract suite on the embedded backends."""

from __future__ import annotations

import os

import pytest

from sessionstore.backends.memory import MemoryBackend
from sessionstore.backends.picklefile import PickleBackend
from sessionstore.backends.sqlite import SqliteBackend
from sessionstore.testing import BackendContract, PersistentBackendContract


class TestMemoryBackend(BackendContract):
    @pytest.fixture
    def backend(self):
        backend = MemoryBackend()
        backend.setup()
        yield backend
        backend.close()


class TestPickleBackend(PersistentBackendContract):
    @pytest.fixture
    def backend(self, tmp_path):
        backend = PickleBackend(str(tmp_path / "sessions.dat"))
        backend.setup()
        yield backend
        backend.close()

    @pytest.fixture
    def reopen(self, tmp_path):
        return lambda: PickleBackend(str(tmp_path / "sessions.dat"))

    def test_a_reader_follows_another_process_through_compaction(self, backend, reopen):
        """Reads that find the file unchanged skip the lock; a compaction by
        another process (a new file renamed over the old) must still be seen."""
        from sessionstore.testing import make_record

        record = make_record(payload=b"x" * 100_000)
        assert backend.compare_and_swap(record.session_id, None, record)
        assert backend.get(record.session_id) == record  # indexed, now on the fast path
        other = reopen()
        other.setup()
        try:
            inode = os.stat(other.filename).st_ino
            current = record
            while os.stat(other.filename).st_ino == inode:  # until it compacts
                new = current._replace(version=current.version + 1)
                assert other.compare_and_swap(current.session_id, current.version, new)
                current = new
            assert current.version > 2
            assert backend.get(record.session_id) == current
            assert backend.compare_and_swap(record.session_id, current.version - 1, record) is False
        finally:
            other.close()


class TestSqliteBackend(PersistentBackendContract):
    @pytest.fixture
    def backend(self, tmp_path):
        backend = SqliteBackend(str(tmp_path / "sessions.db"))
        backend.setup()
        yield backend
        backend.close()

    @pytest.fixture
    def reopen(self, tmp_path):
        return lambda: SqliteBackend(str(tmp_path / "sessions.db"))


class TestSqliteMemoryBackend(BackendContract):
    @pytest.fixture
    def backend(self):
        backend = SqliteBackend(":memory:")
        backend.setup()
        yield backend
        backend.close()
