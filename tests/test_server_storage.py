"""Network backends' storage rules: cleanup, Redis key hygiene, type-checked
reads, masked passwords, and table creation by processes racing at start-up."""

from __future__ import annotations

import secrets
import socket
import time

import pytest
import sqlalchemy as sa
from webtest import TestApp

from sessionstore import BackendError, ConfigurationError, DamagedRecord, SessionMiddleware
from sessionstore.cli import main as cli
from sessionstore.testing import make_record

from . import forked
from .apps import make_app
from .child import race_setup
from .test_servers import URLS, make_backend, server, set_up_or_skip

pytestmark = pytest.mark.server

__all__ = ["server"]  # the fixture, shared with test_servers

NOW = 1_800_000_000.0
SECRET = "s-0123456789abcdefghijklmnopqrst"


@pytest.fixture
def redis_backend():
    backend = set_up_or_skip("redis", make_backend("redis", secrets.token_hex(4)))
    yield backend
    backend.delete_all()
    backend.close()


def redis_cli(backend, *command: str) -> int:
    options = ["--option", f"url={URLS['redis']}", "--option", f"prefix={backend.prefix}"]
    return cli(["--backend", "redis", *options, *command])


# -- cleanup -----------------------------------------------------------------------


def test_redis_cleanup_from_a_request_leaves_expiry_to_the_ttl(redis_backend):
    expired = make_record(expires_at=NOW - 10)
    live = make_record(expires_at=NOW + 10)
    for record in (expired, live):
        redis_backend.add(record)
    assert redis_backend.delete_expired(NOW, limit=100) == 0  # no scan at all
    assert redis_backend.get(expired.session_id) == expired
    assert redis_backend.delete_expired(NOW) == 1  # purge: scans, in batches
    assert set(redis_backend.get_all()) == {live.session_id}


def test_redis_purge_spares_a_session_refreshed_meanwhile(redis_backend):
    record = make_record(expires_at=NOW - 10)
    redis_backend.add(record)
    refreshed = record._replace(version=2, expires_at=NOW + 100, payload=b"refreshed")
    assert redis_backend.compare_and_swap(record.session_id, 1, refreshed)
    assert redis_backend.delete_expired(NOW) == 0
    assert redis_backend.get(record.session_id) == refreshed


@pytest.mark.parametrize("server", ["postgresql", "mysql"], indirect=True)
def test_sql_cleanup_deletes_at_most_limit_rows_per_call(server):
    backend = make_backend(*server)
    backend.setup()
    try:
        for _ in range(7):
            backend.add(make_record(expires_at=NOW - 10))
        live = make_record(expires_at=NOW + 10)
        backend.add(live)
        assert backend.delete_expired(NOW, limit=3) == 3
        assert backend.count() == 5
        assert backend.delete_expired(NOW) == 4
        assert set(backend.get_all()) == {live.session_id}
    finally:
        backend.close()


@pytest.mark.parametrize("server", ["postgresql", "mysql"], indirect=True)
def test_sql_purge_and_delete_all_work_past_one_batch(server, monkeypatch):
    from sessionstore.backends import sql

    monkeypatch.setattr(sql, "_BATCH", 4)
    backend = make_backend(*server)
    backend.setup()
    try:
        for i in range(2 * 4 + 3):
            backend.add(make_record(expires_at=NOW - 10 if i % 2 else NOW + 10))
        assert backend.delete_expired(NOW) == 4 + 1
        assert backend.delete_all() == 4 + 2
        assert backend.count() == 0
    finally:
        backend.close()


# -- Redis keys ----------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", " "])
def test_redis_refuses_an_empty_prefix(prefix):
    with pytest.raises(ConfigurationError) as info:
        SessionMiddleware(
            lambda e, s: [],
            secret=SECRET,
            backend="redis",
            backend_options={"url": URLS["redis"], "prefix": prefix},
        )
    assert info.value.key == "backend.prefix"
    from sessionstore.backends.redis import RedisBackend

    with pytest.raises(ConfigurationError):
        RedisBackend(URLS["redis"], prefix=prefix)


def test_redis_management_touches_only_session_keys(redis_backend, capsys):
    session = make_record(expires_at=time.time() - 10)  # the CLI's purge uses the real clock
    redis_backend.add(session)
    raw = redis_backend._client
    prefix = redis_backend.prefix
    foreign = {
        f"{prefix}counter": "string",
        f"{prefix}queue": "list",
        f"{prefix}profile": "hash without a version",
        f"{prefix}a:b": "hash with a version, not a session id",
    }
    raw.set(f"{prefix}counter", 1)
    raw.rpush(f"{prefix}queue", "x")
    raw.hset(f"{prefix}profile", "name", "x")
    raw.hset(f"{prefix}a:b", mapping={"v": 1, "p": b"x"})
    try:
        assert redis_backend.count() == 1
        assert list(redis_backend.get_all()) == [session.session_id]
        assert redis_cli(redis_backend, "stats") == 0
        assert redis_cli(redis_backend, "list") == 0
        assert session.session_id in capsys.readouterr().out
        assert redis_cli(redis_backend, "purge") == 0
        assert redis_backend.count() == 0
        redis_backend.add(session)
        assert redis_cli(redis_backend, "purge", "--all") == 0
        assert redis_backend.count() == 0
        assert all(raw.exists(key) for key in foreign), "a foreign key was deleted"
    finally:
        raw.delete(*foreign)


@pytest.mark.parametrize("shape", ["back\\slash:", "star*:", "q?[x]:"])
def test_redis_prefix_is_literal_in_scans(shape):
    unique = secrets.token_hex(4)
    from sessionstore.backends.redis import RedisBackend

    mine = RedisBackend(URLS["redis"], prefix=f"t-{unique}-{shape}")
    # A prefix the pattern would match if the special characters were live.
    lookalike = RedisBackend(URLS["redis"], prefix=f"t-{unique}-{shape.replace(':', 'Z:')}")
    set_up_or_skip("redis", mine)
    try:
        mine.add(make_record())
        lookalike.add(make_record())
        assert mine.count() == 1
        assert mine.delete_all() == 1
        assert lookalike.count() == 1
    finally:
        lookalike.delete_all()
        mine.close()
        lookalike.close()


# -- type-checked reads ------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [("e", "nan"), ("c", "inf"), ("v", "x"), ("a", "")])
def test_redis_unreadable_fields_are_a_damaged_record_naming_the_id(redis_backend, field, value):
    record = make_record()
    redis_backend.add(record)
    redis_backend._client.hset(redis_backend._key(record.session_id), field, value)
    with pytest.raises(DamagedRecord, match=record.session_id):
        redis_backend.get(record.session_id)


@pytest.mark.parametrize(("field", "value"), [("c", "garbage"), ("v", "x"), ("e", "nan")])
def test_a_damaged_redis_record_is_no_session_for_its_visitor_and_kept(redis_backend, field, value):
    """Never a 500 on every request until an administrator steps in: the
    visitor starts afresh (a new id), the damaged hash stays as it was."""
    app = make_app("redis", options={"url": URLS["redis"], "prefix": redis_backend.prefix})
    web = TestApp(app)
    web.get("/write", {"app": "a", "key": "k", "value": "v"})
    [old_id] = app.backend.get_all()
    key = redis_backend._key(old_id)
    redis_backend._client.hset(key, field, value)
    damaged = redis_backend._client.hgetall(key)
    try:
        read = web.get("/read", {"app": "a", "key": "k"})
        write = web.get("/write", {"app": "a", "key": "k", "value": "w"})
        stats = app.stats()
    finally:
        app.close()
    assert (read.status_int, read.text) == (200, "None")
    assert write.status_int == 200
    assert stats["damaged_records"] == 2
    assert redis_backend._client.hgetall(key) == damaged
    assert old_id not in web.cookies.get("session", "")


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_sql_non_finite_time_is_a_backend_error_naming_the_id(server):
    backend = make_backend(*server)
    backend.setup()
    record = make_record()
    backend.add(record)
    with backend._engine.connect() as conn:
        conn.execute(backend.table.update().values(expires_at=float("nan")))
    try:
        with pytest.raises(BackendError, match=record.session_id):
            backend.get(record.session_id)
    finally:
        backend.close()


@pytest.mark.parametrize("server", ["postgresql", "mysql"], indirect=True)
def test_sql_text_payload_column_is_a_backend_error_naming_the_id(server):
    """A table made by hand with a TEXT payload: what comes back is a str."""
    from sessionstore.backends.sql import SqlBackend

    name, _ = server
    table = f"handmade_{secrets.token_hex(4)}"  # a shape of its own: never a lent table
    backend = SqlBackend(URLS[name], table=table)
    with backend._engine.connect() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE {table} (id VARCHAR(64) PRIMARY KEY, version BIGINT,"
            " created_at FLOAT, accessed_at FLOAT, expires_at FLOAT, payload TEXT,"
            " user_id VARCHAR(255))"
        )
        conn.exec_driver_sql(f"INSERT INTO {table} VALUES ('abc', 1, 1.0, 1.0, 2e9, 'text', NULL)")
    try:
        with pytest.raises(BackendError, match="abc"):
            backend.get("abc")
    finally:
        with backend._engine.connect() as conn:
            conn.exec_driver_sql(f"DROP TABLE {table}")
        backend.close()


# -- passwords ---------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("backend", "url"),
    [
        ("redis", "redis://user:hunter2pass@127.0.0.1:{port}/0"),
        ("sql", "postgresql+psycopg://user:hunter2pass@127.0.0.1:{port}/db"),
        ("sql", "mysql+pymysql://user:hunter2pass@127.0.0.1:{port}/db"),
        ("redis", "http://user:hunter2pass@127.0.0.1:{port}/0"),
        ("sql", "oracle://user:hunter2pass@127.0.0.1:{port}/db"),
    ],
)
def test_no_password_in_messages_or_reprs(backend, url, caplog):
    url = url.format(port=closed_port())
    with pytest.raises((BackendError, ConfigurationError)) as info:
        SessionMiddleware(
            lambda e, s: [],
            secret=SECRET,
            backend=backend,
            backend_options={"url": url},
            busy_timeout=1,
        )
    shown = f"{info.value} {info.value!r} {caplog.text}"
    assert "hunter2pass" not in shown
    assert "***" in shown


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:hunter2pass@127.0.0.1:6379/0",
        "postgresql+psycopg://user:hunter2pass@127.0.0.1/db",
        "mysql+pymysql://user:hunter2pass@127.0.0.1/db",
    ],
)
def test_no_password_in_a_backend_repr(url):
    if url.startswith("redis"):
        from sessionstore.backends.redis import RedisBackend

        backend = RedisBackend(url)
    else:
        from sessionstore.backends.sql import SqlBackend

        backend = SqlBackend(url)
    assert "hunter2pass" not in repr(backend)
    assert "user:***@127.0.0.1" in repr(backend)
    backend.close()


# -- start-up ---------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["postgresql", "mysql"], indirect=True)
def test_four_processes_creating_the_table_at_once_all_start(server):
    name, unique = server
    rounds, processes = 20, 4
    tables = [f"race_{secrets.token_hex(4)}_{i}" for i in range(rounds)]
    # Forked from the warm fork server, not from this (threaded) process.
    context = forked.CONTEXT
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(target=race_setup, args=(URLS[name], tables, barrier, results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in range(rounds * processes)]
    for worker in workers:
        worker.join(timeout=60)
    cleanup = make_backend(name, unique)
    with cleanup._engine.connect() as conn:
        for table in tables:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
    cleanup.close()
    failures = [o for o in outcomes if o != "ok"]
    print(f"{name}: {len(outcomes)} starts, {len(failures)} failed")
    assert failures == []


@pytest.mark.parametrize("server", ["postgresql", "mysql"], indirect=True)
@pytest.mark.parametrize("command", [["list"], ["stats"], ["purge"], ["show", "x" * 43]])
def test_a_command_never_creates_an_sql_table(server, command):
    """A mistyped table name is an error naming it, not a new empty table."""
    name, unique = server
    typo = f"sesions_{unique}"
    url = URLS[name]
    proc = cli(
        ["--backend", "sql", "--option", f"url={url}", "--option", f"table={typo}", *command]
    )
    assert proc == 1
    probe = make_backend(name, unique)
    try:
        assert not probe._run(lambda conn: sa.inspect(conn).has_table(typo))
    finally:
        probe.close()
