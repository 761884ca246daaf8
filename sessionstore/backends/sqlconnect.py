"""Connections of the ``sql`` backend: engines whose every wait is bounded.

``busy_timeout`` bounds what a request can wait on a database server.  Each
round trip (and each connect) may take half of it, ``wire`` seconds: the other
half is for reading back a compare-and-swap whose reply was lost
(:meth:`Backend.settle`).  Per driver:

* psycopg 3: connections are :class:`_TimedConnection`, whose every wait for
  the server ends after ``wire`` seconds (psycopg has a timeout on its wait
  loop but no option for it); the connection is then closed, since a reply
  may still come.  A connect ends after ``wire`` seconds too (libpq's own
  ``connect_timeout``, whole seconds and at least 2, stays as a backstop).
  On the server, ``statement_timeout`` and ``lock_timeout`` a little shorter,
  so a live but busy server answers "busy" before the client gives up.
* PyMySQL: ``connect_timeout``, ``read_timeout`` and ``write_timeout``;
  ``innodb_lock_wait_timeout`` on the server (whole seconds, at least 1).
  With no TLS options in the URL, PyMySQL (2.2 and later) offers TLS when the
  server does, and built a new default context for every connection: it loads
  the system's CA certificates (~50 ms a connect here), which that mode never
  uses (it does not verify).  Connections are :func:`_pymysql_connection`'s,
  which builds that context once per process, the same way, and shares it.

:func:`answered_busy` and :func:`no_answer` sort the drivers' errors: both
are ``BusyRetry``, but only after a reply that never came can a statement
have been applied unseen.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import sqlalchemy as sa

_DRIVERS = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}


class ServerTimeout(Exception):  # noqa: N818 - mixed into each driver's error
    """Marks a driver error raised because the server did not answer in time."""


def _timed_psycopg_connection(wire: float) -> Any:
    import psycopg
    from psycopg import errors as pg_errors

    class TimedError(ServerTimeout, psycopg.OperationalError):
        pass

    class TimedConnection(psycopg.Connection[Any]):
        """A psycopg connection whose waits for the server end after ``wire`` s."""

        @classmethod
        def _connect_gen(cls, conninfo: str = "") -> Any:
            # psycopg resumes this generator every 0.1 s while it waits for
            # the server, so it can end a connect libpq would let run 2 s.
            deadline = time.monotonic() + wire
            steps = super()._connect_gen(conninfo)
            try:
                step = next(steps)
                while True:
                    if time.monotonic() > deadline:
                        steps.close()
                        raise pg_errors.ConnectionTimeout("connection timeout expired")
                    step = steps.send((yield step))
            except StopIteration as done:
                return done.value

        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            try:
                return super().wait(gen, interval, wire if timeout is None else timeout)
            except pg_errors._WaitTimeout as exc:
                # Mid-statement: a late reply would be read as the next one's.
                self.pgconn.finish()
                raise TimedError(f"the server did not answer within {wire:g} s") from exc

    return TimedConnection


def family_of(url: sa.engine.URL) -> str:
    """``postgresql`` or ``mysql`` (``""`` for anything else)."""
    return _DRIVERS.get(url.get_backend_name(), "")


def bound_engine(url: sa.engine.URL, busy_timeout: float, fsync: bool) -> sa.engine.Engine:
    """An autocommit engine on ``url`` with every wait bounded (module docstring)."""
    family = family_of(url)
    driver = url.get_driver_name()
    wire = busy_timeout / 2
    connect_args: dict[str, Any] = {}
    if family == "mysql" and driver == "pymysql":
        connect_args = {"connect_timeout": wire, "read_timeout": wire, "write_timeout": wire}
    engine = sa.create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        # Nothing is ever left open to roll back on return to the pool.
        pool_reset_on_return=None,
        pool_timeout=busy_timeout,
        connect_args=connect_args,
    )
    if family == "mysql" and driver == "pymysql":
        shared = _pymysql_connection()

        @sa.event.listens_for(engine, "do_connect")
        def connect_mysql(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
            return shared(*cargs, **cparams)

    if family == "postgresql" and driver == "psycopg":
        timed = _timed_psycopg_connection(wire)

        @sa.event.listens_for(engine, "do_connect")
        def connect(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
            cparams.setdefault("connect_timeout", max(2, math.ceil(wire)))
            return timed.connect(*cargs, **cparams)

    server_ms = max(1, int(wire * 800))  # the server answers "busy" first

    @sa.event.listens_for(engine, "connect")
    def configure(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if family == "postgresql":
            cursor.execute(f"SET lock_timeout = {server_ms}")
            cursor.execute(f"SET statement_timeout = {server_ms}")
            if not fsync:
                cursor.execute("SET synchronous_commit = off")
        else:
            seconds = max(1, round(wire * 0.8))
            cursor.execute(f"SET SESSION innodb_lock_wait_timeout = {seconds}")
        cursor.close()
        if family == "postgresql" and not dbapi_connection.autocommit:
            dbapi_connection.commit()

    return engine


@functools.cache
def _pymysql_connection() -> Any:
    """PyMySQL's connection class, with its no-options TLS context built once
    per process."""
    import pymysql.connections  # type: ignore[import-untyped]

    class SharedContextConnection(pymysql.connections.Connection):  # type: ignore[misc]
        shared_context: Any = None

        def _create_ssl_ctx(self, sslp: Any) -> Any:
            if sslp:  # TLS options from the URL: PyMySQL's own, every time
                return super()._create_ssl_ctx(sslp)
            cls = SharedContextConnection
            if cls.shared_context is None:  # two threads may both build one: harmless
                cls.shared_context = super()._create_ssl_ctx(sslp)
            return cls.shared_context

    return SharedContextConnection


def answered_busy(error: BaseException) -> bool:
    """Whether the server refused a statement as busy (a lock or statement
    timeout): it answered, and nothing was applied."""
    if type(error).__name__ in ("QueryCanceled", "LockNotAvailable"):
        return True  # psycopg: statement_timeout, lock_timeout
    code = error.args[0] if error.args else None
    return code in (1205, 3024, 1969)  # MySQL/MariaDB lock wait, statement time


#: What drivers say when the server is down or restarting (PyMySQL's codes
#: below; libpq's messages here): it may be back in a moment.
_UNREACHABLE = (
    "connection refused",
    "no route to host",
    "network is unreachable",
    "the database system is starting up",
    "the database system is shutting down",
    "server closed the connection",
)


def unreachable(error: BaseException) -> bool:
    """Whether a connect failed because the server is down or restarting,
    not because it refused us (a wrong password, an unknown database)."""
    code = error.args[0] if error.args else None
    if code in (2003, 2006, 2013):  # MySQL: cannot connect, gone away, lost
        return True
    text = str(error).lower()
    return any(marker in text for marker in _UNREACHABLE)


def no_answer(error: BaseException) -> bool:
    """Whether the server did not answer in time (a connect or a reply)."""
    if isinstance(error, ServerTimeout) or type(error).__name__ == "ConnectionTimeout":
        return True
    return "timed out" in str(error).lower()  # PyMySQL's socket timeouts
