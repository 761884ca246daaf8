"""SQLite faults, and purging in batches on both embedded stores."""

from __future__ import annotations

import contextlib
import os
import sqlite3

import pytest

from sessionstore import BackendError
from sessionstore.backends.picklefile import PickleBackend
from sessionstore.backends.sqlite import SqliteBackend
from sessionstore.testing import make_record

BACKENDS = {"pickle": (PickleBackend, "sessions.dat"), "sqlite": (SqliteBackend, "sessions.db")}


def opened(kind, tmp_path):
    cls, name = BACKENDS[kind]
    backend = cls(str(tmp_path / name))
    backend.setup()
    return backend


@pytest.mark.parametrize("kind", ["pickle", "sqlite"])
def test_delete_expired_with_a_limit_deletes_at_most_that_many(tmp_path, kind):
    backend = opened(kind, tmp_path)
    expired = [make_record(expires_at=1000.0) for _ in range(2500)]
    live = [make_record(expires_at=5000.0) for _ in range(10)]
    for record in [*expired, *live]:
        backend.add(record)
    assert backend.delete_expired(2000.0, limit=100) == 100
    assert backend.count() == 2410
    assert backend.delete_expired(2000.0) == 2400  # several batches, all of them
    assert set(backend.get_all()) == {r.session_id for r in live}
    assert backend.delete_expired(2000.0, limit=100) == 0
    backend.close()


def test_sqlite_deleted_file_is_logged_and_a_new_one_used(tmp_path, caplog):
    backend = opened("sqlite", tmp_path)
    old = make_record()
    backend.add(old)
    for path in tmp_path.glob("sessions.db*"):
        path.unlink()
    new = make_record()
    with caplog.at_level("ERROR", "sessionstore"):
        assert backend.compare_and_swap(new.session_id, None, new)
    assert "sessions.db was deleted while in use" in caplog.text
    other = opened("sqlite", tmp_path)  # another worker sees the write
    assert set(other.get_all()) == {new.session_id}
    other.close()
    backend.close()


def test_sqlite_wal_truncate_held_off_by_a_reader_runs_soon_after(tmp_path, monkeypatch):
    """A reader that pins the WAL holds a checkpoint off; once it lets go, the
    WAL is cut within a few writes, not another round of checks later."""
    from sessionstore.backends import sqlitefile

    monkeypatch.setattr(sqlitefile, "_WAL_CHECK_EVERY", 25)
    monkeypatch.setattr(sqlitefile, "_WAL_PASSIVE", 16 << 10)
    monkeypatch.setattr(sqlitefile, "_WAL_TRUNCATE", 32 << 10)
    path = tmp_path / "sessions.db"
    backend = SqliteBackend(str(path), busy_timeout=0.05)
    backend.setup()
    wal = tmp_path / "sessions.db-wal"
    reader = sqlite3.connect(path)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM sessions").fetchall()  # a snapshot, pinned
    for _ in range(25):  # the 25th write checks, and the reader holds it off
        backend.add(make_record(payload=os.urandom(4000)))
    pinned = wal.stat().st_size
    assert pinned > 64 << 10
    reader.rollback()
    for _ in range(sqlitefile._WAL_RETRY_EVERY):
        backend.add(make_record(payload=os.urandom(4000)))
    assert wal.stat().st_size < 32 << 10  # cut, then one write appended
    assert backend.count() == 25 + sqlitefile._WAL_RETRY_EVERY
    reader.close()
    backend.close()


def test_sqlite_symlink_is_refused(tmp_path):
    target = tmp_path / "elsewhere.db"
    (tmp_path / "sessions.db").symlink_to(target)  # dangling
    with pytest.raises(BackendError, match="symbolic link"):
        opened("sqlite", tmp_path)
    assert not target.exists()


def test_sqlite_wider_mode_is_narrowed_with_a_warning(tmp_path, caplog):
    opened("sqlite", tmp_path).close()
    (tmp_path / "sessions.db").chmod(0o666)
    with caplog.at_level("WARNING", "sessionstore"):
        backend = opened("sqlite", tmp_path)
        backend.add(make_record())
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.glob("sessions.db*")}
    backend.close()
    assert "had mode 0666" in caplog.text
    assert set(modes.values()) == {0o600}, modes


def open_handles(path):
    """The descriptors of this process open on ``path`` (or its -wal/-shm)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(path)):
                found.append(fd)
    return found


@pytest.mark.parametrize("kind", ["pickle", "sqlite"])
def test_a_failed_setup_leaves_no_handle_open(tmp_path, kind):
    """Python 3.13 warns (an error under filterwarnings) about a connection
    left for the garbage collector, as on the damaged-file path of setup()."""
    backend = opened(kind, tmp_path)
    for _ in range(200):
        backend.add(make_record(payload=os.urandom(2000)))
    backend.close()
    path = tmp_path / BACKENDS[kind][1]
    data = path.read_bytes()
    # SQLite: cut in half on a page boundary;
    # pickle: a bad header (not our file: refused).
    half = len(data) // 2 // 4096 * 4096  # whole pages: SQLite opens it
    damaged = data[:half] if kind == "sqlite" else b"\xff" + data[1:]
    path.write_bytes(damaged)
    failing = BACKENDS[kind][0](str(path))
    with pytest.raises(BackendError, match=path.name):
        failing.setup()
    assert open_handles(path) == []
    assert path.read_bytes() == damaged


def test_memory_cleanup_reaches_expired_sessions_behind_live_ones():
    """A request's cleanup (limit 100) removes expired sessions wherever they
    are, not only among the first 100 records, which live sessions can fill."""
    from sessionstore.backends.memory import MemoryBackend

    backend = MemoryBackend()
    for _ in range(150):
        backend.add(make_record(expires_at=5000.0))
    expired = [make_record(expires_at=1000.0) for _ in range(10)]
    for record in expired:
        backend.add(record)
    assert backend.delete_expired(2000.0, limit=4) == 4
    assert backend.delete_expired(2000.0, limit=100) == 6
    assert backend.count() == 150


def test_a_backend_error_carries_the_original_error(tmp_path):
    """SPEC 9: storage failures are BackendError, with the driver's error kept."""
    import sessionstore

    backend = opened("sqlite", tmp_path)
    other = sqlite3.connect(tmp_path / "sessions.db")
    other.execute("DROP TABLE sessions")
    other.close()  # ("with" would only commit, and 3.13 warns of an unclosed one)
    with pytest.raises(BackendError) as caught:
        backend.get(make_record().session_id)
    assert isinstance(caught.value.original_error, sqlite3.OperationalError)
    assert caught.value.__cause__ is caught.value.original_error
    backend.close()
    for name in ("ConfigurationError", "InvalidAppName", "ConcurrentUpdate", "BusyRetry"):
        assert issubclass(getattr(sessionstore, name), sessionstore.SessionStoreError)
    assert issubclass(BackendError, sessionstore.SessionStoreError)
