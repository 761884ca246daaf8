"""The commit protocol seen from outside (SPEC sections 2, 5 and 6), races made deterministic.

Two requests on one session are interleaved in one thread by nesting: request
A's application runs request B, on the same cookie and through the same
middleware, between A's read and A's commit.  B commits first; A then loses
its compare-and-swap and must replay its own changes on B's data, or answer
409 in ``on_conflict = error`` mode.  Everything is checked through requests
and the backend's public methods, so these tests hold for any implementation
of the protocol.
"""

from __future__ import annotations

import sqlite3

import pytest

from .conftest import SessionClient


def dump(session):
    """Every store of the session, as plain dicts."""
    return {app: dict(session.store(app).items()) for app in session.apps()}


def start(client, data):
    """Create a session holding ``data`` ({app: {key: value}}); its cookie stays in the jar."""

    def write(session):
        for app, values in data.items():
            for key, value in values.items():
                session.store(app).set(key, value)

    _, response = client.run(write)
    assert response.status_int == 200 and client.cookie()
    return client.run(lambda s: s.id)[0]


def nested(client, first, then):
    """Run ``first(session)``, then a whole request ``then(session)`` on the same
    cookie (it commits), then return: the outer request commits last."""

    def outer(session):
        first(session)
        _, response = client.run(then)
        assert response.status_int == 200
        return session

    return client.run(outer, expect_errors=True)[1]


# -- replay after a lost race: this request's own changes, on the winner's data -----------


def test_replay_keeps_this_requests_empty(client):
    start(client, {"a": {"x": 1, "y": 2}})
    response = nested(
        client,
        lambda s: (s.store("a").get_default("x"), s.store("a").empty()),
        lambda s: s.store("b").set("k", "other app"),
    )
    assert response.status_int == 200
    # The emptied keys stay gone; the winner's write to another app stays.
    assert client.run(dump)[0] == {"b": {"k": "other app"}}


def test_replay_keeps_this_requests_deletes(client):
    start(client, {"a": {"x": 1, "y": 2}})
    response = nested(
        client,
        lambda s: s.store("a").delete("x"),
        lambda s: s.store("a").set("z", 3),
    )
    assert response.status_int == 200
    assert client.run(dump)[0] == {"a": {"y": 2, "z": 3}}


def test_replay_keeps_this_requests_sets_and_the_winners(client):
    start(client, {"a": {"x": 1}})
    response = nested(
        client,
        lambda s: s.store("a").set("mine", "outer"),
        lambda s: s.store("a").set("theirs", "inner"),
    )
    assert response.status_int == 200
    assert client.run(dump)[0] == {"a": {"x": 1, "mine": "outer", "theirs": "inner"}}


@pytest.mark.parametrize(
    ("mine", "expected"),
    [pytest.param(None, 3600, id="the-winners"), pytest.param(100, 100, id="this-requests")],
)
def test_replay_keeps_the_right_expiry(client, clock, mine, expected):
    """An explicit expiry set by the request that won the race survives the
    loser's replay, unless the loser set one itself (then its own wins)."""
    start(client, {"a": {"x": 1}})

    def loser(session):
        session.store("a").set("y", 2)
        if mine is not None:
            session.set_expiry(clock.now + mine)

    response = nested(client, loser, lambda s: s.set_expiry(clock.now + 3600))
    assert response.status_int == 200
    assert client.run(lambda s: (s.expires_at, dump(s)))[0] == (
        clock.now + expected,
        {"a": {"x": 1, "y": 2}},
    )


# -- on_conflict = error ---------------------------------------------------------------------


@pytest.fixture
def strict(clock):
    return SessionClient(clock=clock, on_conflict="error")


def test_error_mode_sees_a_conflict_on_empty(strict):
    """Emptying a store whose key another request changed since the read is a
    conflict like overwriting that key: 409, and nothing of it is written."""
    start(strict, {"a": {"x": 1}})
    response = nested(
        strict,
        lambda s: (s.store("a").get_default("x"), s.store("a").empty()),
        lambda s: s.store("a").set("x", 2),
    )
    assert response.status_int == 409
    assert response.headers["Vary"] == "Cookie"
    assert "Set-Cookie" not in response.headers
    assert strict.run(dump)[0] == {"a": {"x": 2}}


def test_error_mode_empty_does_not_conflict_with_another_apps_change(strict):
    start(strict, {"a": {"x": 1}, "b": {"k": 1}})
    response = nested(
        strict,
        lambda s: (s.store("a").get_default("x"), s.store("a").empty()),
        lambda s: s.store("b").set("k", 2),
    )
    assert response.status_int == 200
    assert strict.run(dump)[0] == {"b": {"k": 2}}


def test_error_mode_overwriting_a_changed_key_is_a_409(strict):
    start(strict, {"a": {"x": 1}})
    response = nested(
        strict,
        lambda s: s.store("a").set("x", s.store("a").get("x") + 10),
        lambda s: s.store("a").set("x", 2),
    )
    assert response.status_int == 409
    assert strict.run(dump)[0] == {"a": {"x": 2}}


def test_error_mode_deleting_a_changed_key_is_a_409(strict):
    start(strict, {"a": {"x": 1}})
    response = nested(
        strict,
        lambda s: s.store("a").delete("x"),
        lambda s: s.store("a").set("x", 2),
    )
    assert response.status_int == 409
    assert strict.run(dump)[0] == {"a": {"x": 2}}


# -- the idle-clock refresh ("touch") ----------------------------------------------------------


def test_a_touch_never_reverts_a_write_made_after_its_read(clock):
    client = SessionClient(clock=clock, timeout=1000, touch_interval=60)
    session_id = start(client, {"a": {"x": "old"}})
    # The refresh is live here: a read-only request 61 s later writes the new idle clock.
    clock.advance(61)
    assert client.run(lambda s: s.store("a")["x"])[0] == "old"
    touched = client.backend.get(session_id)
    assert touched is not None and touched.accessed_at == clock.now
    # 61 s later a read-only request is due for a refresh again; while it holds
    # what it read, another request writes.  Its refresh must not undo that.
    clock.advance(61)
    response = nested(
        client,
        lambda s: s.store("a")["x"],
        lambda s: s.store("a").set("x", "new"),
    )
    assert response.status_int == 200
    assert client.run(dump)[0] == {"a": {"x": "new"}}


# -- the middleware's own error responses --------------------------------------------------------


def _locked_sqlite(tmp_path, clock):
    """A SQLite store that another connection holds write-locked: commits time out."""
    path = str(tmp_path / "sessions.db")
    client = SessionClient("sqlite", {"filename": path}, clock=clock, busy_timeout=0.05)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    return client, locker.close


def _table_dropped(tmp_path, clock):
    """A SQLite store whose table is gone: commits fail outright."""
    path = str(tmp_path / "sessions.db")
    client = SessionClient("sqlite", {"filename": path}, clock=clock)
    with sqlite3.connect(path) as other:
        other.execute("DROP TABLE sessions")
    return client, lambda: None


@pytest.mark.parametrize(
    ("make", "status"),
    [
        pytest.param(_locked_sqlite, 503, id="busy-503"),
        pytest.param(_table_dropped, 500, id="broken-500"),
    ],
)
def test_the_middlewares_own_error_responses_vary_on_cookie(tmp_path, clock, make, status):
    client, release = make(tmp_path, clock)
    try:
        _, response = client.run(lambda s: s.store("a").set("k", "v"), expect_errors=True)
    finally:
        release()
        client.middleware.close()
    assert response.status_int == status
    assert response.headers.getall("Vary") == ["Cookie"]
    assert "Set-Cookie" not in response.headers
