"""The backend contract suite on the embedded backends."""

from __future__ import annotations

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
