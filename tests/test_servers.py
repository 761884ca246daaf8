"""Redis, PostgreSQL and MariaDB: the same contract, concurrency and outage tests.

The servers are found through environment variables (defaults: this machine's
servers on their default ports):

* ``SESSIONSTORE_TEST_REDIS_URL``       redis://127.0.0.1:6379/15
* ``SESSIONSTORE_TEST_POSTGRESQL_URL``  postgresql+psycopg://postgres@127.0.0.1:5432/test
* ``SESSIONSTORE_TEST_MYSQL_URL``       mysql+pymysql://root@127.0.0.1:3306/test

Without a server these tests skip; with ``CI=true`` a missing server fails.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import socket
from collections import Counter
from typing import Any

import pytest
from webtest import TestApp

from sessionstore import BackendError, BusyRetry, ConfigurationError, SessionMiddleware
from sessionstore.testing import PersistentBackendContract, make_record

from .apps import make_app
from .conftest import IN_CI
from .proxy import FaultProxy
from .test_concurrency import REQUESTS, THREADS, found_writes, start_session, write_own_keys

pytestmark = pytest.mark.server

URLS = {
    "redis": os.environ.get("SESSIONSTORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
    "postgresql": os.environ.get(
        "SESSIONSTORE_TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get(
        "SESSIONSTORE_TEST_MYSQL_URL",
        "mysql+pymysql://root@127.0.0.1:3306/test",
    ),
}


#: What a backend's setup() raises when its server is not there: an
#: unreachable server is busy (BusyRetry), a refused one a BackendError.
UNAVAILABLE = (BackendError, BusyRetry, ConfigurationError)


def _unavailable(name: str, exc: Exception):
    message = f"{name} server at {URLS[name]} is not reachable: {exc}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def make_backend(name: str, unique: str, url: str | None = None):
    """A backend of kind ``name`` on its own key prefix or table."""
    if name == "redis":
        from sessionstore.backends.redis import RedisBackend

        return RedisBackend(url or URLS[name], prefix=f"test-{unique}:")
    from sessionstore.backends.sql import SqlBackend

    return SqlBackend(url or URLS[name], table=f"sessions_{unique}")


def options_for(name: str, unique: str) -> dict[str, str]:
    if name == "redis":
        return {"url": URLS[name], "prefix": f"test-{unique}:"}
    return {"url": URLS[name], "table": f"sessions_{unique}"}


def kind_of(name: str) -> str:
    return "redis" if name == "redis" else "sql"


def drop_store(backend) -> None:
    """Delete a test's sessions, and its table on an SQL server; close it."""
    try:
        backend.delete_all()
        if hasattr(backend, "table"):
            with backend._engine.begin() as conn:
                backend.table.drop(conn, checkfirst=True)
    finally:
        backend.close()


class TablePool:
    """SQL tables made once per run and lent to one test at a time.

    Making a table with its indexes and dropping it again cost each test
    about 60 ms on PostgreSQL and MariaDB.  A table given back is emptied
    (``DELETE``, not the backend's own ``delete_all``), so the next test finds
    it as a new one would be: set up, with no rows.  Tests that change a
    table's shape make their own.  Redis needs no pool: a new key prefix
    costs nothing.
    """

    def __init__(self) -> None:
        self._free: dict[str, list[str]] = {}
        self._made: dict[str, list[str]] = {}
        self._engines: dict[str, Any] = {}  # one per server, to empty tables

    def lend(self, name: str) -> str:
        """The unique part of a free table's name (``sessions_<unique>``)."""
        free = self._free.setdefault(name, [])
        if free:
            return free.pop()
        unique = secrets.token_hex(4)
        _set_up(name, unique).close()
        self._made.setdefault(name, []).append(unique)
        return unique

    def give_back(self, name: str, unique: str) -> None:
        import sqlalchemy as sa

        if name not in self._engines:
            self._engines[name] = sa.create_engine(URLS[name], pool_size=1)
        with self._engines[name].begin() as conn:
            conn.exec_driver_sql(f"DELETE FROM sessions_{unique}")
        self._free[name].append(unique)

    def drop_all(self) -> None:
        for engine in self._engines.values():
            engine.dispose()
        for name, made in self._made.items():
            for unique in made:
                drop_store(make_backend(name, unique))


def set_up_or_skip(name: str, backend):
    """``backend`` (of server ``name``) after its setup(); skips (or, in CI,
    fails) when the server is not reachable."""
    try:
        backend.setup()
    except UNAVAILABLE as exc:
        backend.close()
        _unavailable(name, exc)
    return backend


def _set_up(name: str, unique: str):
    """A backend of server ``name`` with its store made (or a skip)."""
    return set_up_or_skip(name, make_backend(name, unique))


@pytest.fixture(params=["redis", "postgresql", "mysql"])
def server(request, sql_tables):
    """(name, unique prefix) for a reachable server: a key prefix of the
    test's own (deleted after), or a table lent by ``sql_tables``."""
    name = request.param
    if name != "redis":
        unique = sql_tables.lend(name)
        yield name, unique
        sql_tables.give_back(name, unique)
        return
    unique = secrets.token_hex(4)
    backend = _set_up(name, unique)
    yield name, unique
    backend.delete_all()
    backend.close()


class TestServerBackends(PersistentBackendContract):
    @pytest.fixture
    def backend(self, server):
        backend = make_backend(*server)
        backend.setup()
        yield backend
        backend.close()

    @pytest.fixture
    def reopen(self, server):
        return lambda: make_backend(*server)


def test_two_server_processes_sharing_one_store_lose_no_write(server, two_server_processes):
    name, unique = server
    ports = two_server_processes(kind_of(name), where=json.dumps(options_for(name, unique)))
    cookie = start_session(ports[0])
    results: Counter = Counter()
    write_own_keys(ports, cookie, results)
    assert results == {200: THREADS * REQUESTS}
    assert found_writes(ports[1], cookie) == THREADS * REQUESTS


def test_session_expiry_sets_the_redis_ttl(clock):
    unique = secrets.token_hex(4)
    backend = _set_up("redis", unique)
    from sessionstore.backends.redis import EXPIRY_GRACE

    web = TestApp(make_app("redis", options=options_for("redis", unique), timeout=600))
    web.get("/write", {"app": "a", "key": "k", "value": "v"})
    [key] = backend._client.keys(f"test-{unique}:*")
    ttl = backend._client.ttl(key)
    assert 600 + EXPIRY_GRACE - 5 <= ttl <= 600 + EXPIRY_GRACE
    backend.delete_all()
    backend.close()
    web.app.close()


@pytest.mark.parametrize("fsync, expected", [(False, "off"), (True, "on")])
def test_postgresql_commits_wait_for_the_flush_only_with_fsync(fsync, expected):
    from sessionstore.backends.sql import SqlBackend

    backend = SqlBackend(URLS["postgresql"], table=f"sessions_{secrets.token_hex(4)}", fsync=fsync)
    set_up_or_skip("postgresql", backend)
    with backend._engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == expected
        backend.table.drop(conn)
    backend.close()


@pytest.mark.parametrize("server", ["postgresql", "mysql"], indirect=True)
def test_a_dropped_pooled_connection_costs_no_request(server):
    """The server ends the pooled connection (a restart, an idle timeout):
    the next request reconnects by itself instead of failing."""
    import sqlalchemy as sa

    name, unique = server
    app = make_app("sql", options=options_for(name, unique))
    web = TestApp(app)
    assert web.get("/write", {"app": "a", "key": "k", "value": "1"}).status_int == 200
    which = "pg_backend_pid()" if name == "postgresql" else "CONNECTION_ID()"
    with app.backend._engine.connect() as conn:  # the one pooled connection
        pooled = int(conn.exec_driver_sql(f"SELECT {which}").scalar())
    end = "SELECT pg_terminate_backend({})" if name == "postgresql" else "KILL {}"
    with sa.create_engine(URLS[name], poolclass=sa.pool.NullPool).connect() as other:
        other.exec_driver_sql(end.format(pooled))
    for value in ("2", "3"):
        assert web.get("/write", {"app": "a", "key": "k", "value": value}).status_int == 200
    assert web.get("/read", {"app": "a", "key": "k"}).text == "'3'"
    app.close()


def test_pickle_planted_in_the_store_is_never_unpickled(server, tmp_path):
    name, unique = server
    app = make_app(kind_of(name), options=options_for(name, unique))
    web = TestApp(app)
    web.get("/write", {"app": "a", "key": "k", "value": "v"})
    [record] = app.backend.get_all().values()
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    planted = record._replace(payload=b"\0" * 32 + pickle.dumps(Exploit()))
    app.backend.add(planted)
    try:
        response = web.get("/read", {"app": "a", "key": "k"}, expect_errors=True)
        kept = app.backend.get(record.session_id)
    finally:
        app.close()
    # "No session" for its visitor; the record is kept untouched for an administrator.
    assert (response.status_int, response.text) == (200, "None")
    assert kept == planted
    assert not marker.exists()


@pytest.mark.parametrize(
    ("url", "extra"),
    [
        pytest.param("postgresql+pg8000://u@127.0.0.1/db", "postgresql", id="postgresql"),
        pytest.param("mysql+mysqldb://u@127.0.0.1/db", "mysql", id="mysql"),
    ],
)
def test_a_missing_driver_names_the_extra_to_install(url, extra):
    with pytest.raises(ConfigurationError) as info:
        SessionMiddleware(
            lambda e, s: [],
            secret="s-0123456789abcdefghijklmnopqrst",
            backend="sql",
            backend_options={"url": url},
        )
    assert info.value.key == "backend.url"
    assert f"sessionstore[{extra}]" in str(info.value)


@pytest.mark.parametrize(
    ("backend", "options", "key"),
    [
        pytest.param("redis", {"url": "http://x"}, "backend.url", id="redis-bad-url"),
        pytest.param("redis", {"prefix": "a b"}, "backend.prefix", id="redis-bad-prefix"),
        pytest.param("sql", {"url": "sqlite:///x.db"}, "backend.url", id="sql-unsupported"),
        pytest.param("sql", {"table": "x; drop"}, "backend.table", id="sql-bad-table"),
    ],
)
def test_bad_server_options_are_refused_at_startup(backend, options, key):
    with pytest.raises(ConfigurationError) as info:
        SessionMiddleware(
            lambda e, s: [],
            secret="s-0123456789abcdefghijklmnopqrst",
            backend=backend,
            backend_options=options,
        )
    assert info.value.key == key


# -- outages -----------------------------------------------------------------------


def _proxied_url(name: str, port: int) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(URLS[name])
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    netloc = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
    return urlunsplit(parts._replace(netloc=netloc))


def test_server_gone_mid_way_gives_a_clear_error_then_recovers(server):
    name, unique = server
    from urllib.parse import urlsplit

    default_port = {"redis": 6379, "postgresql": 5432, "mysql": 3306}[name]
    proxy = FaultProxy(urlsplit(URLS[name]).port or default_port)
    options = options_for(name, unique)
    options["url"] = _proxied_url(name, proxy.port)
    app = make_app(kind_of(name), options=options, busy_timeout=2)
    web = TestApp(app)
    assert web.get("/write", {"app": "a", "key": "k", "value": "before"}).status_int == 200

    proxy.stop()
    for path in ("/read", "/write"):
        response = web.get(path, {"app": "a", "key": "k", "value": "during"}, expect_errors=True)
        # SPEC 6: a server that cannot be reached is "busy": 503, to be retried.
        assert response.status_int == 503
        assert response.headers["Retry-After"]
        assert "Set-Cookie" not in response.headers
        assert "session" in response.text.lower()

    proxy.start()
    assert web.get("/read", {"app": "a", "key": "k"}).text == "'before'"  # nothing half-written
    assert web.get("/write", {"app": "a", "key": "k", "value": "after"}).status_int == 200
    assert web.get("/read", {"app": "a", "key": "k"}).text == "'after'"
    proxy.close()
    app.close()


def test_unreachable_server_at_startup_is_a_backend_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(BackendError, match="Redis"):
        SessionMiddleware(
            lambda e, s: [],
            secret="s-0123456789abcdefghijklmnopqrst",
            backend="redis",
            backend_options={"url": f"redis://127.0.0.1:{closed_port}/0"},
            busy_timeout=1,
        )


def test_mysql_connections_share_one_default_tls_context(sql_tables, monkeypatch):
    """With no TLS options in the URL PyMySQL offers TLS, and its default
    context loads the system's CA certificates (~50 ms): built once per
    process, not for every connection each worker opens."""
    import ssl

    if "ssl" in URLS["mysql"]:
        pytest.skip("the test server's URL sets TLS options")
    built = []
    real = ssl.create_default_context

    def counted(*args, **kwargs):
        built.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    unique = sql_tables.lend("mysql")
    workers = [make_backend("mysql", unique) for _ in range(4)]  # an engine each
    record = make_record()
    workers[0].add(record)
    assert all(w.get(record.session_id) == record for w in workers)  # 4 connections
    for worker in workers:
        worker.close()
    assert len(built) <= 1  # 0 when an earlier test of this process built it
    sql_tables.give_back("mysql", unique)
