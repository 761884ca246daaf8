"""The ``sql`` backend: sessions in PostgreSQL or MariaDB/MySQL, through SQLAlchemy Core.

``url`` is an SQLAlchemy URL (``postgresql+psycopg://user@host/db``,
``mysql+pymysql://root@host/db``); ``table`` names the table (default
``sessions``), created by :meth:`SqlBackend.setup` with an index on the expiry
time when missing.  The compare-and-swap is one conditional ``UPDATE`` (or an
``INSERT`` that a primary key guards, or a conditional ``DELETE``), so it is
atomic however many machines write.  Connections are pooled, checked before
use (a restarted server is reconnected to), and never shared across ``fork``.

Needs SQLAlchemy and a driver: ``pip install 'sessionstore[postgresql]'`` or
``'sessionstore[mysql]'``.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import BackendError, BusyRetry, ConfigurationError
from .base import Backend, Record

try:
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_errors
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ConfigurationError(
        "backend", "sql", "needs SQLAlchemy: pip install 'sessionstore[postgresql]' or [mysql]"
    ) from exc

_BATCH = 500
_DRIVERS = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}


def _as_url(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(key, value, "expected an SQLAlchemy URL")
    try:
        url = sa.engine.make_url(value)
    except sa_errors.ArgumentError as exc:
        raise ConfigurationError(key, value, "not an SQLAlchemy URL") from exc
    if url.get_backend_name() not in _DRIVERS:
        raise ConfigurationError(key, value, "expected a postgresql:// or mysql:// URL")
    return value


def _as_table(key: str, value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", value):
        raise ConfigurationError(key, value, "expected a table name (letters, digits, '_')")
    return value


class SqlBackend(Backend):
    """Sessions in an SQL table (``url``, ``table`` default ``sessions``)."""

    options = {"url": _as_url, "table": _as_table}

    def __init__(
        self,
        url: str = "postgresql+psycopg://127.0.0.1/sessions",
        *,
        table: str = "sessions",
        busy_timeout: float = 5.0,
    ) -> None:
        super().__init__(busy_timeout=busy_timeout)
        self.url = url
        self._shown = sa.engine.make_url(url).render_as_string(hide_password=True)
        metadata = sa.MetaData()
        self.table = sa.Table(
            _as_table("backend.table", table),
            metadata,
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("version", sa.BigInteger, nullable=False),
            sa.Column("created_at", sa.Double, nullable=False),
            sa.Column("accessed_at", sa.Double, nullable=False),
            sa.Column("expires_at", sa.Double, nullable=False, index=True),
            # 16 MB: MEDIUMBLOB on MySQL (a plain BLOB stops at 64 KB), BYTEA elsewhere.
            sa.Column("payload", sa.LargeBinary(length=2**24 - 1), nullable=False),
        )
        self._engine = self._create_engine()
        self._pid = os.getpid()

    def _create_engine(self) -> sa.engine.Engine:
        url = sa.engine.make_url(self.url)
        family = _DRIVERS.get(url.get_backend_name(), "")
        try:
            engine = sa.create_engine(
                url,
                pool_pre_ping=True,  # reconnect after a server restart
                pool_timeout=self.busy_timeout,
            )
        except (ImportError, sa_errors.NoSuchModuleError) as exc:
            extra = "postgresql" if family == "postgresql" else "mysql"
            raise ConfigurationError(
                "backend.url",
                self._shown,
                f"its driver is not installed: pip install 'sessionstore[{extra}]' ({exc})",
            ) from exc
        timeout_ms = max(1, int(self.busy_timeout * 1000))

        @sa.event.listens_for(engine, "connect")
        def limit_lock_waits(dbapi_connection: Any, record: Any) -> None:
            # How long a statement may wait for a row lock before BusyRetry.
            cursor = dbapi_connection.cursor()
            if family == "postgresql":
                cursor.execute(f"SET lock_timeout = {timeout_ms}")
            else:
                cursor.execute(
                    f"SET SESSION innodb_lock_wait_timeout = {max(1, round(self.busy_timeout))}"
                )
            cursor.close()
            if family == "postgresql":
                dbapi_connection.commit()

        return engine

    @contextlib.contextmanager
    def _begin(self) -> Iterator[sa.engine.Connection]:
        """A connection in a transaction, with database errors translated."""
        if self._pid != os.getpid():
            # Connections must never cross fork; drop the parent's, untouched.
            self._engine.dispose(close=False)
            self._pid = os.getpid()
        try:
            with self._engine.begin() as conn:
                yield conn
        except sa_errors.DBAPIError as exc:
            message = str(exc.orig).lower()
            if "lock" in message and ("timeout" in message or "wait" in message):
                raise BusyRetry(f"{self._shown}: a row stayed locked") from exc
            raise BackendError(f"database {self._shown} failed", exc.orig) from exc
        except sa_errors.SQLAlchemyError as exc:
            raise BackendError(f"database {self._shown} failed", exc) from exc

    def _row(self, row: Any) -> Record:
        return Record(
            row.id,
            int(row.version),
            float(row.created_at),
            float(row.accessed_at),
            float(row.expires_at),
            bytes(row.payload),
        )

    @staticmethod
    def _values(record: Record) -> dict[str, Any]:
        return {
            "version": record.version,
            "created_at": record.created_at,
            "accessed_at": record.accessed_at,
            "expires_at": record.expires_at,
            "payload": record.payload,
        }

    # -- Backend -------------------------------------------------------------------

    def setup(self) -> None:
        with self._begin() as conn:
            self.table.metadata.create_all(conn, checkfirst=True)

    def close(self) -> None:
        self._engine.dispose()

    def compare_and_swap(
        self, session_id: str, expected_version: int | None, record: Record | None
    ) -> bool:
        t = self.table
        if expected_version is None:
            if record is None:
                return self.get(session_id) is None
            try:
                with self._begin() as conn:
                    conn.execute(t.insert().values(id=session_id, **self._values(record)))
            except BackendError as exc:
                if isinstance(exc.__cause__, sa_errors.IntegrityError):
                    return False  # the id exists: the primary key refused it
                raise
            return True
        where = sa.and_(t.c.id == session_id, t.c.version == expected_version)
        with self._begin() as conn:
            if record is None:
                result = conn.execute(t.delete().where(where))
            else:
                result = conn.execute(t.update().where(where).values(**self._values(record)))
            return result.rowcount == 1

    def get(self, session_id: str) -> Record | None:
        with self._begin() as conn:
            row = conn.execute(sa.select(self.table).where(self.table.c.id == session_id)).first()
        return None if row is None else self._row(row)

    def add(self, record: Record) -> None:
        t = self.table
        for _ in range(3):
            with self._begin() as conn:
                result = conn.execute(
                    t.update().where(t.c.id == record.session_id).values(**self._values(record))
                )
                if result.rowcount == 1:
                    return
            try:
                with self._begin() as conn:
                    conn.execute(t.insert().values(id=record.session_id, **self._values(record)))
                return
            except BackendError as exc:
                if not isinstance(exc.__cause__, sa_errors.IntegrityError):
                    raise  # an insert raced us: update it on the next round
        raise BusyRetry(f"{self._shown}: could not store session {record.session_id}")

    def iter_records(self) -> Iterator[Record]:
        # Page by id: a large table streams without one long transaction.
        t, last = self.table, ""
        while True:
            query = sa.select(t).where(t.c.id > last).order_by(t.c.id).limit(_BATCH)
            with self._begin() as conn:
                rows = conn.execute(query).all()
            yield from (self._row(row) for row in rows)
            if len(rows) < _BATCH:
                return
            last = rows[-1].id

    def delete(self, session_id: str) -> int:
        with self._begin() as conn:
            return int(
                conn.execute(self.table.delete().where(self.table.c.id == session_id)).rowcount
            )

    def delete_many(self, session_ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(session_ids))
        deleted = 0
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start : start + _BATCH]
            with self._begin() as conn:
                deleted += conn.execute(
                    self.table.delete().where(self.table.c.id.in_(chunk))
                ).rowcount
        return deleted

    def delete_all(self) -> int:
        with self._begin() as conn:
            return int(conn.execute(self.table.delete()).rowcount)

    def delete_expired(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self._begin() as conn:
            return int(
                conn.execute(self.table.delete().where(self.table.c.expires_at <= now)).rowcount
            )

    def count(self) -> int:
        with self._begin() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(self.table)).scalar_one()
            )

    def __repr__(self) -> str:
        return f"<SqlBackend {self._shown} table={self.table.name!r}>"
