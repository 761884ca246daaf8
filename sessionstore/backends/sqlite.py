"""The ``sqlite`` backend: one SQLite file for the threads and processes of a machine.

The database runs in WAL mode with ``synchronous = NORMAL``: a commit that
returned survives the process being killed.  ``fsync = true`` switches to
``synchronous = FULL`` so it also survives power loss.  Every change is one
statement in autocommit mode, so it cannot be left half-done.

Storage format: one table ``sessions`` (``id`` primary key, ``version``,
``created_at``, ``accessed_at``, ``expires_at``, the signed ``payload`` and
``user_id``), indexed on ``expires_at`` (cleanup) and on ``user_id`` where not
null (a user's sessions).  ``user_id`` is written by the same statement as the
rest of the record, so the index never disagrees with it; a table made before
the column existed gets it (``ALTER TABLE``) at :meth:`SqliteBackend.setup`.

Bounded and cheap at scale:

* :meth:`SqliteBackend.setup` checks only what costs milliseconds (the file
  header, the size it declares against the file's, the schema).  The full
  ``PRAGMA integrity_check`` is ``sessionstore check``'s.
* ``delete_expired`` deletes in batches of :data:`_PURGE_BATCH`, one short
  write transaction each.
* The WAL stays bounded, and a file deleted or replaced under a running
  process is noticed: :mod:`sessionstore.backends.sqlitefile`, which holds
  the file, its checkpoints and the connections.

A damaged database found at start-up is refused with a :class:`BackendError`
naming the file (not renamed, not changed): SQLite's pages cannot be sorted
into readable and damaged cheaply at start-up, and the file may be someone
else's.  ``sessionstore check`` says what is wrong and ``sessionstore salvage
--to sqlite --to-option filename=NEW`` copies every readable row out.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator
from typing import Any

from ..config import as_bool, as_filename
from .base import Record, checked_record
from .sqlitefile import SqliteFile

log = logging.getLogger("sessionstore")

_COLUMNS = "id, version, created_at, accessed_at, expires_at, payload, user_id"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    accessed_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    payload BLOB NOT NULL,
    user_id TEXT
);
CREATE INDEX IF NOT EXISTS sessions_expires_at ON sessions (expires_at);
"""
#: The user index; a table made before it existed gets the column first.
_USER_INDEX = (
    "CREATE INDEX IF NOT EXISTS sessions_user_id ON sessions (user_id) WHERE user_id IS NOT NULL"
)
_BATCH = 500
_PURGE_BATCH = 250


def _row_to_record(row: tuple[Any, ...]) -> Record:
    return checked_record(*row)


def _create(conn: sqlite3.Connection) -> None:
    """The table and its indexes; a table from before the user index gets
    its ``user_id`` column (several processes may race to add it)."""
    conn.executescript(_SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(sessions)")}
    if "user_id" not in columns:
        try:
            conn.execute("ALTER TABLE sessions ADD COLUMN user_id TEXT")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc).lower():
                raise
    conn.execute(_USER_INDEX)


class SqliteBackend(SqliteFile):
    """Sessions in a SQLite file (``filename``, default ``sessions.db``)."""

    options = {"filename": as_filename, "fsync": as_bool}

    def __init__(
        self, filename: str = "sessions.db", *, fsync: bool = False, busy_timeout: float = 5.0
    ) -> None:
        super().__init__(filename, fsync=fsync, busy_timeout=busy_timeout)

    def _create(self, conn: sqlite3.Connection) -> None:
        _create(conn)

    # -- Backend ------------------------------------------------------------------

    def setup(self) -> None:
        try:
            with self._conn() as conn:
                if not self.read_only:
                    _create(conn)
                if not self._memory:
                    self._check_size(conn)
                    conn.execute("SELECT max(id) FROM sessions").fetchone()
        except BaseException:
            self.close()
            raise

    def compare_and_swap(
        self, session_id: str, expected_version: int | None, record: Record | None
    ) -> bool:
        if self._memory:
            with self._conn() as conn:
                return self._swap(conn, session_id, expected_version, record)
        # Every write request comes here: no context manager on the way.
        writers = self._writers
        assert writers is not None
        writers.acquire()
        try:
            return self._swap(self._thread_connection(), session_id, expected_version, record)
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc
        finally:
            writers.release()

    def _swap(
        self,
        conn: sqlite3.Connection,
        session_id: str,
        expected_version: int | None,
        record: Record | None,
    ) -> bool:
        self._wrote(conn)
        if record is None:
            if expected_version is None:
                return self._get(conn, session_id) is None
            sql = "DELETE FROM sessions WHERE id = ? AND version = ?"
            return conn.execute(sql, (session_id, expected_version)).rowcount == 1
        values = record[1:]  # a Record's fields are _COLUMNS, in order
        if expected_version is None:
            sql = (
                f"INSERT INTO sessions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING"
            )
            return conn.execute(sql, (session_id, *values)).rowcount == 1
        sql = (
            "UPDATE sessions SET version = ?, created_at = ?, accessed_at = ?, "
            "expires_at = ?, payload = ?, user_id = ? WHERE id = ? AND version = ?"
        )
        return conn.execute(sql, (*values, session_id, expected_version)).rowcount == 1

    @staticmethod
    def _get(conn: sqlite3.Connection, session_id: str) -> Record | None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
        ).fetchone()
        return None if row is None else _row_to_record(row)

    def get(self, session_id: str) -> Record | None:
        if self._memory:
            with self._conn() as conn:
                return self._get(conn, session_id)
        # Every request comes here: no context manager on the way, and no
        # look at the file (writes look: a read of a deleted file's last
        # state is stale, never lost, and the next write notices).
        try:
            return self._get(self._thread_connection(check_file=False), session_id)
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc

    def add(self, record: Record) -> None:
        with self._writing() as conn:
            self._wrote(conn)
            conn.execute(
                f"INSERT OR REPLACE INTO sessions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                record,  # its fields are _COLUMNS, in order
            )

    def iter_records(self) -> Iterator[Record]:
        # Page by id so a large table streams without holding a read
        # transaction open across the caller's work.
        last = ""
        while True:
            with self._conn() as conn:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM sessions WHERE id > ? ORDER BY id LIMIT ?",
                    (last, _BATCH),
                ).fetchall()
            yield from (_row_to_record(row) for row in rows)
            if len(rows) < _BATCH:
                return
            last = rows[-1][0]

    def delete(self, session_id: str) -> int:
        with self._writing() as conn:
            self._wrote(conn)
            return conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount

    def delete_many(self, session_ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(session_ids))
        deleted = 0
        with self._writing() as conn:
            for start in range(0, len(ids), _BATCH):
                chunk = ids[start : start + _BATCH]
                marks = ", ".join("?" * len(chunk))
                deleted += conn.execute(
                    f"DELETE FROM sessions WHERE id IN ({marks})", chunk
                ).rowcount
        return deleted

    def delete_all(self) -> int:
        with self._writing() as conn:
            return conn.execute("DELETE FROM sessions").rowcount

    def delete_expired(self, now: float | None = None, limit: int | None = None) -> int:
        """Delete up to ``limit`` expired sessions (all when None), in short
        write transactions.

        An unlimited purge pauses after each batch for twice as long as the
        batch took, so that the requests queued for their turn to write
        (:mod:`~sessionstore.backends.sqlitequeue`) take theirs: a purge taking
        the lock back at once starved them (a 1.1 s stall measured at
        1,000,000 sessions)."""
        now = time.time() if now is None else now
        sql = (
            "DELETE FROM sessions WHERE id IN "
            "(SELECT id FROM sessions WHERE expires_at <= ? LIMIT ?)"
        )
        deleted = 0
        while limit is None or deleted < limit:
            batch = _PURGE_BATCH if limit is None else min(_PURGE_BATCH, limit - deleted)
            started = time.monotonic()
            with self._writing() as conn:
                count = conn.execute(sql, (now, batch)).rowcount
                self._wrote(conn)
            deleted += count
            if count < batch:
                break
            if limit is None:
                time.sleep(2 * (time.monotonic() - started))
        return deleted

    def user_sessions(self, user: str) -> list[Record]:
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM sessions WHERE user_id = ?", (user,)
            ).fetchall()
        return [_row_to_record(row) for row in rows]

    def count(self) -> int:
        with self._conn() as conn:
            return int(conn.execute("SELECT count(*) FROM sessions").fetchone()[0])
