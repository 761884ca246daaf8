"""Passive WAL checkpoints run in a thread of each process's own, outside the
writers' turns (``sessionstore/backends/sqlitecheckpoint.py``): real files."""

from __future__ import annotations

import threading

from sessionstore.backends import sqlitefile
from sessionstore.backends.sqlite import SqliteBackend
from sessionstore.backends.sqlitecheckpoint import Checkpointer
from sessionstore.testing import make_record

from .locks import set_up, until
from .test_sqlite_queue import turn_held


def fill(backend, count):
    for _ in range(count):
        backend.add(make_record(payload=b"x" * 2000))


def test_a_passive_checkpoint_needs_no_turn_to_write(tmp_path):
    path = tmp_path / "sessions.db"
    backend = set_up(SqliteBackend, path)
    fill(backend, 100)
    before = path.stat().st_size  # the rows are in the WAL
    with turn_held(path):  # another process is writing
        used = Checkpointer(str(path)).checkpoint()
        assert path.stat().st_size > before + 100 * 2000  # copied into the database
    assert used is not None
    used[0].close()
    assert backend.count() == 100
    backend.close()


def test_a_growing_wal_is_checkpointed_in_the_background(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlitefile, "_WAL_CHECK_EVERY", 25)
    monkeypatch.setattr(sqlitefile, "_WAL_PASSIVE", 16 << 10)
    monkeypatch.setattr(sqlitefile, "_WAL_TRUNCATE", 1 << 30)  # never in a turn
    monkeypatch.setattr(sqlitefile, "_WAL_PASSIVE_EVERY", 1)
    path = tmp_path / "sessions.db"
    backend = set_up(SqliteBackend, path)
    before = path.stat().st_size
    fill(backend, 100)
    until(lambda: backend._checkpointer.runs >= 1)  # noqa: SLF001
    assert path.stat().st_size > before + 25 * 2000  # (at least what preceded the ask)
    backend.close()
    names = [t.name for t in threading.enumerate()]
    assert "sessionstore-checkpoint" not in names  # close() ended the thread


def test_a_checkpoint_never_makes_a_deleted_database_again(tmp_path):
    path = tmp_path / "sessions.db"
    backend = set_up(SqliteBackend, path)
    fill(backend, 5)
    backend.close()
    path.unlink()
    assert Checkpointer(str(path)).checkpoint() is None
    assert not path.exists()


def test_a_checkpoint_follows_a_database_replaced_at_its_path(tmp_path):
    path = tmp_path / "sessions.db"
    backend = set_up(SqliteBackend, path)
    fill(backend, 5)
    checkpointer = Checkpointer(str(path))
    first = checkpointer.checkpoint()
    assert first is not None
    backend.close()
    path.unlink()  # replaced by a new store
    backend = set_up(SqliteBackend, path)
    fill(backend, 100)
    before = path.stat().st_size
    second = checkpointer.checkpoint(first)
    assert second is not None and second[0] is not first[0]
    assert path.stat().st_size > before + 100 * 2000  # the new file's WAL copied
    second[0].close()
    backend.close()
