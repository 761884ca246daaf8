"""The ``sql`` backend: sessions in PostgreSQL or MariaDB/MySQL, through SQLAlchemy Core.

``url`` is an SQLAlchemy URL (``postgresql+psycopg://user@host/db``,
``mysql+pymysql://root@host/db``); ``table`` names the table (default
``sessions``), created by :meth:`SqlBackend.setup` with an index on the expiry
time when missing.  The compare-and-swap is one conditional ``UPDATE`` (or an
``INSERT`` that a primary key guards, or a conditional ``DELETE``), so it is
atomic however many machines write.

Every operation is one statement, so connections run in autocommit mode: a
read is one round trip to the server and a commit another (no ``BEGIN``,
``COMMIT`` or liveness ping around them).  The statements a request runs are
compiled once for the database's dialect and executed on the pooled driver
connection; SQLAlchemy still opens, pools and configures the connections and
runs the management operations.  A pooled connection the server has dropped
(a restart, an idle timeout) fails its first statement; the pool is then
discarded and the statement runs once more on a fresh connection, except a
compare-and-swap, whose outcome is then unknown: it is settled by reading back
(:meth:`Backend.settle`).  A swap (but not the insert of a new session) is
fenced: it applies only while the server's clock is before its deadline.
Every wait is bounded by ``busy_timeout`` (:mod:`.sqlconnect`); a server that
does not answer in time is :class:`BusyRetry`.  Connections are never shared across ``fork``.

Storage format: one row per session, columns ``id`` (the session id, primary
key), ``version`` (grows by one per commit), ``created_at``, ``accessed_at``,
``expires_at`` (epoch seconds, indexed for cleanup), ``payload`` (the signed
bytes) and ``user_id`` (the user the session is bound to, or NULL; indexed,
written by the same statement as the rest of the row).  ``setup()`` creates
the table and indexes when missing, safely when several processes start at
once, and adds ``user_id`` to a table made before it existed.  Cleanup deletes expired rows at most
``limit`` (or ``_BATCH``) per statement.

``fsync`` (default false) matches the embedded backends: a commit that
returned survives the application being killed, and on PostgreSQL it is
written with ``synchronous_commit = off``, so a crash of the database machine
itself can lose the last fraction of a second of commits (never corrupt
them).  ``fsync = true`` waits for the server's own flush.  On MariaDB/MySQL
the server's ``innodb_flush_log_at_trx_commit`` decides either way.

Needs SQLAlchemy and a driver: ``pip install 'sessionstore[postgresql]'`` or
``'sessionstore[mysql]'``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from ..config import as_bool
from ..errors import BackendError, BusyRetry, ConfigurationError
from .base import Backend, OutcomeUnknown, Record, ServerClock, checked_record

try:
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_errors
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ConfigurationError(
        "backend", "sql", "needs SQLAlchemy: pip install 'sessionstore[postgresql]' or [mysql]"
    ) from exc

from .sqlconnect import answered_busy, bound_engine, family_of, no_answer, unreachable

_BATCH = 500
_T = TypeVar("_T")


def masked(url: object) -> str:
    """``url`` with its password replaced by ``***``, for messages."""
    text = str(url)
    try:
        return str(sa.engine.make_url(text).render_as_string(hide_password=True))
    except (sa_errors.ArgumentError, ValueError):
        return re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", text)


def _as_url(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(key, value, "expected an SQLAlchemy URL")
    try:
        url = sa.engine.make_url(value)
    except sa_errors.ArgumentError as exc:
        raise ConfigurationError(key, masked(value), "not an SQLAlchemy URL") from exc
    if not family_of(url):
        raise ConfigurationError(key, masked(value), "expected a postgresql:// or mysql:// URL")
    return value


def _as_table(key: str, value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", value):
        raise ConfigurationError(key, value, "expected a table name (letters, digits, '_')")
    return value


class SqlBackend(Backend):
    """Sessions in an SQL table (``url``, ``table`` default ``sessions``)."""

    options = {"url": _as_url, "table": _as_table, "fsync": as_bool}

    def __init__(
        self,
        url: str = "postgresql+psycopg://127.0.0.1/sessions",
        *,
        table: str = "sessions",
        fsync: bool = False,
        busy_timeout: float = 5.0,
    ) -> None:
        super().__init__(busy_timeout=busy_timeout)
        self.url = url
        self.fsync = fsync
        self._shown = masked(url)
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
            sa.Column("user_id", sa.String(255), nullable=True, index=True),
        )
        self._engine = self._create_engine()
        self._pid = os.getpid()
        self._prepare_statements()
        self._server_clock = ServerClock(
            lambda: float(self._execute(self._select_now, {}, fetch=True)[0])
        )

    def _prepare_statements(self) -> None:
        """Build and compile the per-request statements once: building and
        compiling one cost more than the round trip it makes."""
        t = self.table
        values: dict[str, Any] = {
            "version": sa.bindparam("b_version"),
            "created_at": sa.bindparam("b_created_at"),
            "accessed_at": sa.bindparam("b_accessed_at"),
            "expires_at": sa.bindparam("b_expires_at"),
            "payload": sa.bindparam("b_payload"),
            "user_id": sa.bindparam("b_user"),
        }
        this_id = t.c.id == sa.bindparam("b_id")
        if family_of(self._engine.url) == "mysql":
            server_now: Any = sa.func.unix_timestamp(sa.func.now(sa.literal_column("6")))
        else:
            server_now = sa.extract("epoch", sa.func.clock_timestamp())
        this_version = sa.and_(
            this_id,
            t.c.version == sa.bindparam("b_expected"),
            server_now <= sa.bindparam("b_deadline"),  # the fence (see .base)
        )
        dialect = self._engine.dialect

        def compiled(statement: Any) -> str:
            return str(statement.compile(dialect=dialect))

        self._select_one = compiled(sa.select(t).where(this_id))
        self._insert_one = compiled(t.insert().values(id=sa.bindparam("b_id"), **values))
        self._update_one = compiled(t.update().where(this_id).values(**values))
        self._swap_one = compiled(t.update().where(this_version).values(**values))
        self._delete_swap = compiled(t.delete().where(this_version))
        self._delete_one = compiled(t.delete().where(this_id))
        self._select_now = compiled(sa.select(server_now))

    def _create_engine(self) -> sa.engine.Engine:
        url = sa.engine.make_url(self.url)
        try:
            return bound_engine(url, self.busy_timeout, self.fsync)
        except (ImportError, sa_errors.NoSuchModuleError) as exc:
            extra = "postgresql" if family_of(url) == "postgresql" else "mysql"
            raise ConfigurationError(
                "backend.url",
                self._shown,
                f"its driver is not installed: pip install 'sessionstore[{extra}]' ({exc})",
            ) from exc

    def _run(self, work: Callable[[sa.engine.Connection], _T]) -> _T:
        """Run ``work`` on a pooled connection, database errors translated."""
        self._check_fork()
        for attempt in range(2):
            try:
                with self._engine.connect() as conn:
                    return work(conn)
            except sa_errors.DBAPIError as exc:
                timed_out = no_answer(exc.orig or exc)
                if exc.connection_invalidated and attempt == 0 and not timed_out:
                    continue  # SQLAlchemy discarded the pool: once more, on a fresh one
                raise self._failure(exc.orig or exc) from exc
            except sa_errors.SQLAlchemyError as exc:
                raise BackendError(f"database {self._shown} failed", exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _execute(
        self, sql: str, params: dict[str, Any], fetch: bool = False, swap: str | None = None
    ) -> Any:
        """Run one compiled statement on a pooled driver connection: the row
        (``fetch``) or the row count.  ``swap`` (the session id) marks a
        compare-and-swap: a connection lost after sending it raises
        :class:`OutcomeUnknown` instead of sending it again."""
        self._check_fork()
        dialect = self._engine.dialect
        for attempt in range(2):
            try:
                conn = self._engine.raw_connection()
            except dialect.loaded_dbapi.Error as exc:  # could not connect
                raise self._failure(exc) from exc
            except sa_errors.SQLAlchemyError as exc:  # the pool timed out
                raise BackendError(f"database {self._shown} failed", exc) from exc
            cursor = None
            try:
                # One cursor per driver connection, kept with it: making one
                # per statement cost a tenth of the statement.
                kept = conn.info.get("sessionstore.cursor")
                if kept is None or kept[0] is not conn.dbapi_connection:
                    kept = conn.info["sessionstore.cursor"] = (conn.dbapi_connection, conn.cursor())
                cursor = kept[1]
                cursor.execute(sql, params)
                return cursor.fetchone() if fetch else cursor.rowcount
            except dialect.loaded_dbapi.Error as exc:
                if answered_busy(exc) or not dialect.is_disconnect(
                    exc, conn.dbapi_connection, cursor
                ):
                    raise self._failure(exc) from exc
                conn.invalidate(exc)
                if not no_answer(exc):
                    # A connection the server had dropped (a restart, an idle
                    # timeout): the other pooled ones are as stale.
                    self._engine.dispose()
                if swap is not None:
                    raise OutcomeUnknown(swap) from exc
                if attempt == 0 and not no_answer(exc):
                    continue
                raise self._failure(exc) from exc
            finally:
                conn.close()  # back to the pool, or gone if invalidated
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_fork(self) -> None:
        if self._pid != os.getpid():
            # Connections must never cross fork; drop the parent's, untouched.
            self._engine.dispose(close=False)
            self._pid = os.getpid()

    def _failure(self, error: BaseException) -> BackendError | BusyRetry:
        if answered_busy(error):
            return BusyRetry(f"{self._shown}: a row stayed locked or the server was busy")
        if no_answer(error):
            return BusyRetry(f"{self._shown} did not answer in time")
        if unreachable(error):  # SPEC 6: unreachable is busy, a 503 to retry
            return BusyRetry(f"{self._shown} is unreachable: {error}")
        return BackendError(f"database {self._shown} failed", error)

    @staticmethod
    def _row(row: Any) -> Record:
        """A record from a row in column order (id, version, times, payload, user)."""
        return checked_record(row[0], row[1], row[2], row[3], row[4], row[5], row[6])

    @staticmethod
    def _values(record: Record) -> dict[str, Any]:
        return {
            "b_id": record.session_id,
            "b_version": record.version,
            "b_created_at": record.created_at,
            "b_accessed_at": record.accessed_at,
            "b_expires_at": record.expires_at,
            "b_payload": record.payload,
            "b_user": record.user,
        }

    # -- Backend -------------------------------------------------------------------

    def setup(self) -> None:
        """Create the table and its index when missing.  Several processes
        starting at once race between "is it there?" and "create it": the
        loser's error is ignored once the table is found to exist."""
        for attempt in range(3):
            try:
                self._run(lambda conn: self.table.metadata.create_all(conn, checkfirst=True))
                break
            except BackendError:
                if attempt == 2 or not self._run(self._has_table):
                    raise
        self._migrate()

    def table_exists(self) -> bool:
        """Whether the table is there (the command line never creates one)."""
        return self._run(self._has_table)

    def _has_table(self, conn: sa.engine.Connection) -> bool:
        return bool(sa.inspect(conn).has_table(self.table.name))

    def _columns(self, conn: sa.engine.Connection) -> set[str]:
        return {c["name"] for c in sa.inspect(conn).get_columns(self.table.name)}

    def _migrate(self) -> None:
        """A table from before the user index gets its ``user_id`` column and
        index; processes racing to add them ignore the loser's error."""
        column = self.table.c.user_id
        [index] = [i for i in self.table.indexes if "user_id" in i.columns]
        for attempt in range(3):
            try:
                if "user_id" not in self._run(self._columns):
                    kind = column.type.compile(dialect=self._engine.dialect)
                    name = self._engine.dialect.identifier_preparer.format_table(self.table)
                    add = f"ALTER TABLE {name} ADD COLUMN user_id {kind}"
                    self._run(lambda conn: conn.exec_driver_sql(add))  # noqa: B023
                self._run(lambda conn: index.create(conn, checkfirst=True))  # noqa: B023
                return
            except BackendError:
                if attempt == 2:
                    raise

    def close(self) -> None:
        self._engine.dispose()

    def compare_and_swap(
        self, session_id: str, expected_version: int | None, record: Record | None
    ) -> bool:
        if expected_version is None:
            if record is None:
                return self.get(session_id) is None
            return self.settle(session_id, None, record, lambda: self._insert(record, swap=True))
        params: dict[str, Any]
        if record is None:
            sql, params = self._delete_swap, {"b_id": session_id}
        else:
            sql, params = self._swap_one, self._values(record)
        params["b_expected"] = expected_version

        def swap() -> bool:
            params["b_deadline"] = self._server_clock.deadline(self.busy_timeout / 2)
            return bool(self._execute(sql, params, swap=session_id) == 1)

        return self.settle(session_id, expected_version, record, swap)

    def _insert(self, record: Record, swap: bool = False) -> bool:
        """Insert a new session; False when its id exists (the key refused it)."""
        try:
            self._execute(
                self._insert_one, self._values(record), swap=record.session_id if swap else None
            )
        except BackendError as exc:
            if isinstance(exc.__cause__, self._engine.dialect.loaded_dbapi.IntegrityError):
                return False
            raise
        return True

    def get(self, session_id: str) -> Record | None:
        row = self._execute(self._select_one, {"b_id": session_id}, fetch=True)
        return None if row is None else self._row(row)

    def add(self, record: Record) -> None:
        params = self._values(record)
        for _ in range(3):
            if self._execute(self._update_one, params) == 1:
                return
            if self._insert(record):
                return
            # An insert raced ours: update it on the next round.
        raise BusyRetry(f"{self._shown}: could not store session {record.session_id}")

    def iter_records(self) -> Iterator[Record]:
        # Page by id: a large table streams without one long transaction.
        t, last = self.table, ""
        while True:
            query = sa.select(t).where(t.c.id > last).order_by(t.c.id).limit(_BATCH)
            rows = self._run(lambda conn: conn.execute(query).all())  # noqa: B023
            yield from (self._row(row) for row in rows)
            if len(rows) < _BATCH:
                return
            last = rows[-1].id

    def user_sessions(self, user: str) -> list[Record]:
        query = sa.select(self.table).where(self.table.c.user_id == user)
        return [self._row(row) for row in self._run(lambda conn: conn.execute(query).all())]

    def _rowcount(self, statement: Any) -> int:
        return int(self._run(lambda conn: conn.execute(statement).rowcount))

    def delete(self, session_id: str) -> int:
        return int(self._execute(self._delete_one, {"b_id": session_id}))

    def delete_many(self, session_ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(session_ids))
        deleted = 0
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start : start + _BATCH]
            deleted += self._rowcount(self.table.delete().where(self.table.c.id.in_(chunk)))
        return deleted

    def delete_all(self) -> int:
        return self._delete_batches(None, None)

    def delete_expired(self, now: float | None = None, limit: int | None = None) -> int:
        now = time.time() if now is None else now
        return self._delete_batches(self.table.c.expires_at <= now, limit)

    def _delete_batches(self, condition: Any, limit: int | None) -> int:
        """Delete the rows matching ``condition`` (all: ``None``), at most
        ``limit`` of them (``None``: every one), ``_BATCH`` per statement, so
        no statement holds locks or runs for long."""
        t, deleted = self.table, 0
        while limit is None or deleted < limit:
            size = _BATCH if limit is None else min(_BATCH, limit - deleted)
            if family_of(self._engine.url) == "mysql":
                statement = t.delete().with_dialect_options(mysql_limit=size)
                if condition is not None:
                    statement = statement.where(condition)
            else:
                chosen = sa.select(t.c.id).limit(size).with_for_update(skip_locked=True)
                if condition is not None:
                    chosen = chosen.where(condition)
                statement = t.delete().where(t.c.id.in_(chosen.scalar_subquery()))
            count = self._rowcount(statement)
            deleted += count
            if count < size:
                break
        return deleted

    def count(self) -> int:
        query = sa.select(sa.func.count()).select_from(self.table)
        return int(self._run(lambda conn: conn.execute(query).scalar_one()))

    def __repr__(self) -> str:
        return f"<SqlBackend {self._shown} table={self.table.name!r}>"
