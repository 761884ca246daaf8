"""A user's sessions, listed and destroyed (SPEC section 12), on every backend."""

from __future__ import annotations

import contextlib
import time

import pytest
from webtest import TestApp

from sessionstore import SessionMiddleware

from .conftest import Clock
from .test_atomic import SECRET


class Site:
    """A middleware whose application runs ``fn(session)`` from the test, with
    one TestApp per "device" (its own cookie jar, user agent and address)."""

    def __init__(self, store, clock, **settings):
        kind, options = store
        self.clock = clock
        self.mw = SessionMiddleware(
            self._app,
            secret=SECRET,
            backend=kind,
            backend_options=options,
            clock=clock,
            cleanup_probability=0,
            **settings,
        )
        self.devices = {}

    def _app(self, environ, start_response):
        environ["test.out"].append(environ["test.fn"](environ["session"]))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    def run(self, device, fn, **kwargs):
        web = self.devices.setdefault(device, TestApp(self.mw))
        out = []
        environ = {
            "test.fn": fn,
            "test.out": out,
            "HTTP_USER_AGENT": f"Browser on {device}",
            "REMOTE_ADDR": f"192.0.2.{len(self.devices)}",
        }
        response = web.get("/", extra_environ=environ, expect_errors=True, **kwargs)
        return (out[0] if out else None), response


def login(user):
    def step(session):
        session.store("shop").set("cart", ["book"])
        session.regenerate()
        session.bind_user(user)
        return session.id

    return step


@pytest.fixture
def site(backend):
    made = Site(backend, Clock())
    yield made
    made.mw.close()


def test_sessions_of_lists_each_device_newest_first(site):
    ids = []
    for device in ("laptop", "phone", "tablet"):
        ids.append(site.run(device, login("alice"))[0])
        site.clock.advance(10)
    site.run("other", login("bob"))
    listed = site.mw.sessions_of("alice")
    assert [s.session_id for s in listed] == ids[::-1]
    newest = listed[0]
    assert newest.user_agent == "Browser on tablet" and newest.address == "192.0.2.3"
    assert newest.created_at == newest.bound_at and newest.expires_at > site.clock()
    assert [s.session_id for s in site.mw.sessions_of("nobody")] == []
    assert site.run("laptop", lambda s: s.user)[0] == "alice"


def test_destroy_user_keeps_one_and_ends_the_rest_at_once(site):
    ids = {device: site.run(device, login("alice"))[0] for device in ("laptop", "phone", "pc")}
    site.run("other", login("bob"))
    assert site.mw.destroy_user("alice", keep=ids["laptop"]) == 2
    assert [s.session_id for s in site.mw.sessions_of("alice")] == [ids["laptop"]]
    # The other devices have no session any more: their next request starts afresh.
    assert site.run("phone", lambda s: (s.id, s.user))[0] == (None, None)
    assert site.run("laptop", lambda s: s.store("shop").get("cart"))[0] == ["book"]
    assert len(site.mw.sessions_of("bob")) == 1
    assert site.mw.destroy_user("alice") == 1
    assert site.mw.sessions_of("alice") == []


def test_logins_that_outrun_a_logout_are_logged_by_session_id(caplog):
    """Every round of destroy_user() finds a new login (a device logging in
    again each time): it stops after its rounds and the warning names the
    session still there."""
    from sessionstore.backends.memory import MemoryBackend

    class LoginEachRound(MemoryBackend):
        def delete_many(self, session_ids):
            deleted = super().delete_many(session_ids)
            rounds.append(site.run(f"device {len(rounds)}", login("alice"))[0])
            return deleted

    rounds: list[str] = []
    site = Site((LoginEachRound(), None), Clock())
    site.run("laptop", login("alice"))
    with caplog.at_level("WARNING", "sessionstore"):
        site.mw.destroy_user("alice")
    [record] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "kept getting new sessions" in record.getMessage()
    assert rounds[-1] in record.getMessage()
    site.mw.close()


def test_destroy_user_counts_the_live_sessions_it_ended(site):
    site.run("old laptop", login("alice"))
    site.clock.advance(2 * 86400)  # expired, perhaps still stored
    for device in ("phone", "pc"):
        site.run(device, login("alice"))
    assert site.mw.destroy_user("alice") == 2
    assert site.mw.sessions_of("alice") == []


def test_the_binding_survives_regenerate_and_unbinding_removes_it(site):
    first = site.run("laptop", login("alice"))[0]
    second = site.run("laptop", lambda s: (s.regenerate(), s.id)[1])[0]
    assert second != first
    assert [s.session_id for s in site.mw.sessions_of("alice")] == [second]
    site.run("laptop", lambda s: s.bind_user(None))
    assert site.mw.sessions_of("alice") == []
    assert site.run("laptop", lambda s: (s.user, s.store("shop").get("cart")))[0] == (
        None,
        ["book"],
    )


def test_expired_and_destroyed_sessions_are_never_listed(site):
    site.run("laptop", login("alice"))
    kept = site.run("phone", login("alice"))[0]
    site.run("laptop", lambda s: s.destroy())
    assert [s.session_id for s in site.mw.sessions_of("alice")] == [kept]
    site.clock.advance(86400 + 1)  # the idle timeout
    assert site.mw.sessions_of("alice") == []


def test_binding_the_same_user_again_writes_nothing(site):
    site.run("laptop", login("alice"))
    before = site.mw.stats()["commits"]
    site.run("laptop", lambda s: s.bind_user("alice"))
    assert site.mw.stats()["commits"] == before


def test_a_request_in_flight_never_brings_a_destroyed_session_back(site):
    sid = site.run("laptop", login("alice"))[0]

    def write_while_logged_out_everywhere(session):
        session.store("shop").update("cart", lambda cart: [*cart, "pen"], [])
        assert site.mw.destroy_user("alice") == 1  # e.g. a password change elsewhere
        return session.id

    _, response = site.run("laptop", write_while_logged_out_everywhere)
    assert response.status_int == 409
    assert "Max-Age=0" in response.headers["Set-Cookie"]
    assert site.mw.sessions_of("alice") == []
    record = site.mw.backend.get(sid)
    assert record is None


def test_an_sqlite_table_from_before_the_user_index_is_migrated(tmp_path):
    import sqlite3

    from sessionstore.backends.sqlite import SqliteBackend
    from sessionstore.testing import make_record

    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "CREATE TABLE sessions (id TEXT PRIMARY KEY NOT NULL, version INTEGER NOT NULL,"
            " created_at REAL NOT NULL, accessed_at REAL NOT NULL, expires_at REAL NOT NULL,"
            " payload BLOB NOT NULL)"
        )
        old = make_record()
        conn.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?)", old[:6])
    store = SqliteBackend(str(path))
    try:
        store.setup()
        assert store.get(old.session_id) == old
        bound = make_record(session_id="B" * 44)._replace(user="alice")
        assert store.compare_and_swap(bound.session_id, None, bound)
        assert store.user_sessions("alice") == [bound]
    finally:
        store.close()


def test_the_redis_user_set_expires_with_its_sessions_and_drops_dead_ids():
    from sessionstore.testing import make_record

    from .test_servers import make_backend, set_up_or_skip

    store = set_up_or_skip("redis", make_backend("redis", "users-ttl"))
    try:
        store.delete_all()
        late = make_record(expires_at=4_000_000_000.0)._replace(user="alice")
        soon = make_record()._replace(user="alice")
        for record in (soon, late):
            assert store.compare_and_swap(record.session_id, None, record)
        client = store._client
        users = f"{store.prefix}user:alice"
        # The set lives as long as its longest-lived session's key.
        assert client.pttl(users) >= client.pttl(store._key(late.session_id)) > 0
        client.delete(store._key(soon.session_id))  # as Redis does when a TTL runs out
        assert [r.session_id for r in store.user_sessions("alice")] == [late.session_id]
        assert client.smembers(users) == {late.session_id.encode()}
        # Nobody reads the sets: a purge drops the dead ids all the same.
        again = make_record()._replace(user="alice")
        bobs = make_record()._replace(user="bob")
        for record in (again, bobs):
            assert store.compare_and_swap(record.session_id, None, record)
            client.delete(store._key(record.session_id))
        assert store.delete_expired() == 0  # (no session was expired-but-stored)
        assert client.smembers(users) == {late.session_id.encode()}
        assert not client.exists(f"{store.prefix}user:bob")  # (emptied: gone)
        assert store.delete(late.session_id) == 1
        assert not client.exists(users)
    finally:
        store.delete_all()
        store.close()


@pytest.mark.parametrize("name", ["postgresql", "mysql"])
def test_an_sql_table_from_before_the_user_index_is_migrated(name):
    import secrets

    import sqlalchemy as sa

    from sessionstore.testing import make_record

    from .test_servers import _unavailable, drop_store, make_backend

    store = make_backend(name, secrets.token_hex(4))
    old_table = sa.Table(
        store.table.name,
        sa.MetaData(),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("accessed_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False, index=True),
        sa.Column("payload", sa.LargeBinary(length=2**24 - 1), nullable=False),
    )
    try:
        with store._engine.begin() as conn:
            old_table.create(conn)
            old = make_record()
            conn.execute(
                old_table.insert().values(**dict(zip(old_table.c.keys(), old[:6], strict=True)))
            )
    except sa.exc.OperationalError as exc:
        store.close()
        _unavailable(name, exc)
    try:
        store.setup()
        store.setup()  # a second start finds it done
        assert store.get(old.session_id) == old
        bound = make_record()._replace(user="alice")
        assert store.compare_and_swap(bound.session_id, None, bound)
        assert store.user_sessions("alice") == [bound]
    finally:
        drop_store(store)


def test_the_command_line_lists_and_logs_out_a_user(tmp_path):
    import json

    from . import clirun

    site = Site(("sqlite", {"filename": str(tmp_path / "s.db")}), Clock(time.time()))
    try:
        laptop = site.run("laptop", login("alice"))[0]
        phone = site.run("phone", login("alice"))[0]
    finally:
        site.mw.close()
    where = ["--backend", "sqlite", "--option", f"filename={tmp_path / 's.db'}"]

    def cli(*args):
        ran = clirun.run(*where, "--secret", SECRET, *args)
        assert ran.returncode == 0, ran.stderr
        return ran.stdout

    listed = [json.loads(line) for line in cli("--json", "sessions-of", "alice").splitlines()]
    assert {s["session_id"] for s in listed} == {laptop, phone}
    assert {s["user_agent"] for s in listed} == {"Browser on laptop", "Browser on phone"}
    assert json.loads(cli("--json", "logout-user", "alice", "--keep", laptop)) == {
        "user": "alice",
        "destroyed": 1,
    }
    assert laptop in cli("sessions-of", "alice") and phone not in cli("sessions-of", "alice")
    assert "no live session" in cli("sessions-of", "bob")


def test_the_demo_signs_a_user_out_everywhere_else(tmp_path):
    """Two browsers log in to the demo as one user; the first lists the
    second under "your other sessions" and signs it out."""
    import re

    from sessionstore.demo import make_app

    app = make_app(
        {}, secret=SECRET, backend="sqlite", **{"backend.filename": str(tmp_path / "d.db")}
    )
    browsers = {name: TestApp(app, extra_environ={"HTTP_USER_AGENT": name}) for name in "AB"}

    def csrf(web):
        return re.search(r'name="csrf" value="([^"]+)"', web.get("/").text)[1]

    for web in browsers.values():
        web.post("/login", {"user": "alice", "csrf": csrf(web)})
    page = browsers["A"].get("/session").text
    assert "Your other sessions" in page and ">B<" in page and ">A<" not in page
    page = browsers["A"].post("/session/others", {"csrf": csrf(browsers["A"])}).follow().text
    assert "None: you are signed in here only." in page
    assert 'action="/logout"' not in browsers["B"].get("/").text  # B is signed out
    assert 'action="/logout"' in browsers["A"].get("/").text  # A is not
    app.plain.close()


def test_editing_a_bound_session_from_the_command_line_keeps_its_user(tmp_path, capsys):
    from sessionstore.cli import main

    path = tmp_path / "s.db"
    site = Site(("sqlite", {"filename": str(path)}), Clock(time.time()))
    try:
        laptop = site.run("laptop", login("alice"))[0]
        where = ["--backend", "sqlite", "--option", f"filename={path}", "--secret", SECRET]
        assert main([*where, "set", "-s", laptop, "-n", "notes", "-k", "k", "-V", "x"]) == 0
        assert main([*where, "del", "-s", laptop, "-n", "notes", "-k", "k"]) == 0
        capsys.readouterr()
        assert main([*where, "--json", "sessions-of", "alice"]) == 0
        assert laptop in capsys.readouterr().out  # still in the user's index
        # ... and still bound in its signed payload, which has the last word.
        assert site.run("laptop", lambda s: (s.id, s.user))[0] == (laptop, "alice")
    finally:
        site.mw.close()
