"""The ``sqlite`` backend: one SQLite file for the threads and processes of a machine.

The database runs in WAL mode with ``synchronous = NORMAL``: a commit that
returned survives the process being killed.  ``fsync = true`` switches to
``synchronous = FULL`` so it also survives power loss.  Every change is one
statement in autocommit mode, so it cannot be left half-done.  Each thread
gets its own connection, opened afresh in a child after ``fork``;
``:memory:`` uses one shared connection behind a lock.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from ..config import as_bool, as_filename
from ..errors import BackendError, BusyRetry
from .base import Backend, Record

_COLUMNS = "id, version, created_at, accessed_at, expires_at, payload"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    accessed_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_expires_at ON sessions (expires_at);
"""
_BATCH = 500


def _row_to_record(row: tuple[Any, ...]) -> Record:
    return Record(row[0], row[1], row[2], row[3], row[4], bytes(row[5]))


class SqliteBackend(Backend):
    """Sessions in a SQLite file (``filename``, default ``sessions.db``)."""

    options = {"filename": as_filename, "fsync": as_bool}

    def __init__(
        self, filename: str = "sessions.db", *, fsync: bool = False, busy_timeout: float = 5.0
    ) -> None:
        super().__init__(busy_timeout=busy_timeout)
        self.filename = filename
        self.fsync = fsync
        self._memory = filename == ":memory:"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._shared: sqlite3.Connection | None = None

    # -- connections ------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if not self._memory and not os.path.exists(self.filename):
            # Create the file private to its owner; SQLite gives the -wal and
            # -shm files the same mode.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.filename, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(
            self.filename,
            timeout=self.busy_timeout,
            isolation_level=None,  # autocommit: one statement, one transaction
            check_same_thread=False,
        )
        if not self._memory:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise BackendError(f"{self.filename}: cannot switch to WAL mode ({mode})")
        conn.execute(f"PRAGMA synchronous = {'FULL' if self.fsync else 'NORMAL'}")
        return conn

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """A connection for this thread, with SQLite errors translated."""
        try:
            if self._memory:
                # Every connection to :memory: is a new, empty database: share one.
                with self._lock:
                    if self._shared is None:
                        self._shared = self._open()
                    yield self._shared
                return
            yield self._thread_connection()
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc

    def _thread_connection(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            self._after_fork()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._open()
            with self._lock:
                self._connections.append(conn)
        return conn

    def _failure(self, exc: sqlite3.Error) -> BackendError | BusyRetry:
        message = str(exc).lower()
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in message or "busy" in message):
            return BusyRetry(f"{self.filename} stayed locked: {exc}")
        return BackendError(f"SQLite database {self.filename} failed", exc)

    def _after_fork(self) -> None:
        # A connection must never be used across fork; the parent's are
        # abandoned (not closed: closing could disturb the parent's locks).
        self._pid = os.getpid()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections = []

    # -- Backend ------------------------------------------------------------------

    def setup(self) -> None:
        with self._conn() as conn:
            conn.executescript(_SCHEMA)
            if self._memory:
                return
            problem = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
            if problem != "ok":
                raise BackendError(f"SQLite database {self.filename} is damaged: {problem}")

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
            if self._shared is not None:
                connections.append(self._shared)
            self._shared = None
        for conn in connections:
            conn.close()
        self._local = threading.local()

    def compare_and_swap(
        self, session_id: str, expected_version: int | None, record: Record | None
    ) -> bool:
        with self._conn() as conn:
            if record is None:
                if expected_version is None:
                    return self._get(conn, session_id) is None
                sql = "DELETE FROM sessions WHERE id = ? AND version = ?"
                return conn.execute(sql, (session_id, expected_version)).rowcount == 1
            values = (
                record.version,
                record.created_at,
                record.accessed_at,
                record.expires_at,
                record.payload,
            )
            if expected_version is None:
                sql = (
                    f"INSERT INTO sessions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (id) DO NOTHING"
                )
                return conn.execute(sql, (session_id, *values)).rowcount == 1
            sql = (
                "UPDATE sessions SET version = ?, created_at = ?, accessed_at = ?, "
                "expires_at = ?, payload = ? WHERE id = ? AND version = ?"
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
        # Every request comes here: no context manager on the way.
        try:
            return self._get(self._thread_connection(), session_id)
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc

    def add(self, record: Record) -> None:
        with self._conn() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO sessions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.session_id,
                    record.version,
                    record.created_at,
                    record.accessed_at,
                    record.expires_at,
                    record.payload,
                ),
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
        with self._conn() as conn:
            return conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount

    def delete_many(self, session_ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(session_ids))
        deleted = 0
        with self._conn() as conn:
            for start in range(0, len(ids), _BATCH):
                chunk = ids[start : start + _BATCH]
                marks = ", ".join("?" * len(chunk))
                deleted += conn.execute(
                    f"DELETE FROM sessions WHERE id IN ({marks})", chunk
                ).rowcount
        return deleted

    def delete_all(self) -> int:
        with self._conn() as conn:
            return conn.execute("DELETE FROM sessions").rowcount

    def delete_expired(self, now: float | None = None, limit: int | None = None) -> int:
        now = time.time() if now is None else now
        with self._conn() as conn:
            sql = "DELETE FROM sessions WHERE expires_at <= ?"
            return conn.execute(sql, (now,)).rowcount

    def count(self) -> int:
        with self._conn() as conn:
            return int(conn.execute("SELECT count(*) FROM sessions").fetchone()[0])
