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
import sys

import pytest
from webtest import TestApp

from sessionstore import BackendError, ConcurrentUpdate, SessionMiddleware
from sessionstore.backends.base import OutcomeUnknown
from sessionstore.backends.memory import MemoryBackend

from .conftest import SessionClient

SECRET = "test-secret-0123456789abcdefghij"  # SessionClient's


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
    assert "changed by another request" in response.text
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
        lambda s: (s.store("a").get("x"), s.store("a").delete("x")),  # read, then delete
        lambda s: s.store("a").set("x", 2),
    )
    assert response.status_int == 409
    assert strict.run(dump)[0] == {"a": {"x": 2}}


def test_error_mode_a_new_application_store_conflicts_with_nothing(strict):
    start(strict, {"a": {"x": 1}})
    response = nested(
        strict,
        lambda s: s.store("new").set("k", "mine"),
        lambda s: s.store("a").set("x", 2),
    )
    assert response.status_int == 200
    assert strict.run(dump)[0] == {"a": {"x": 2}, "new": {"k": "mine"}}


# -- an explicit commit() mid-request ----------------------------------------------------------


def test_an_explicit_commit_is_not_committed_again_at_response_time(client):
    """What commit() stored is done: a write another request makes after it
    is not overwritten when this request's response goes out."""
    start(client, {"a": {"x": 0}})

    def outer(session):
        session.store("a").set("x", 1)
        session.commit()
        _, response = client.run(lambda s: s.store("a").set("x", 2))
        assert response.status_int == 200

    _, response = client.run(outer)
    assert response.status_int == 200
    assert client.run(dump)[0] == {"a": {"x": 2}}


def test_after_a_conflict_the_session_reads_afresh(strict):
    start(strict, {"a": {"x": 1}})
    seen = []

    def outer(session):
        session.store("a").set("x", session.store("a")["x"] + 10)
        strict.run(lambda s: s.store("a").set("x", 2))
        with pytest.raises(ConcurrentUpdate):
            session.commit()
        seen.append(session.store("a")["x"])  # what is stored now, not this request's 11

    _, response = strict.run(outer)
    assert response.status_int == 200
    assert seen == [2]
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
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("DROP TABLE sessions")
    finally:
        other.close()  # ``with connect()`` commits but never closes
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
    # A busy store says when to come back (busy_timeout, at least 1 s).
    assert response.headers.get("Retry-After") == ("1" if status == 503 else None)


class ClosingBody:
    """An application body that records whether the server closed it."""

    def __init__(self):
        self.closed = False

    def __iter__(self):
        yield b"the application's page"

    def close(self):
        self.closed = True


def test_a_replaced_response_still_closes_the_applications_body(strict):
    """PEP 3333: close() is called on every body the application returned,
    also when a 409 replaced the application's response."""
    start(strict, {"a": {"x": 1}})
    bodies = []

    def app(environ, start_response):
        session = environ["session"]
        session.store("a").set("x", session.store("a").get("x") + 10)
        strict.run(lambda s: s.store("a").set("x", 2))  # changes x first
        start_response("200 OK", [("Content-Type", "text/plain")])
        bodies.append(ClosingBody())
        return bodies[-1]

    web = TestApp(
        SessionMiddleware(
            app, secret=SECRET, backend=strict.backend, on_conflict="error", clock=strict.clock
        ),
        cookiejar=strict.web.cookiejar,
    )
    response = web.get("/", expect_errors=True)
    assert response.status_int == 409
    assert b"the application's page" not in response.body
    assert [body.closed for body in bodies] == [True]


def test_an_error_reported_through_exc_info_commits_nothing(client):
    """An application that catches an error and answers through
    start_response(..., exc_info) failed, whatever status it chose."""
    start(client, {"a": {"x": 1}})

    def app(environ, start_response):
        environ["session"].store("a").set("x", "half-done")
        try:
            raise RuntimeError("the application failed")
        except RuntimeError:
            start_response("200 OK", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"sorry"]

    web = TestApp(
        SessionMiddleware(app, secret=SECRET, backend=client.backend, clock=client.clock),
        cookiejar=client.web.cookiejar,
    )
    assert web.get("/").status_int == 200
    assert client.run(dump)[0] == {"a": {"x": 1}}


# -- update() and the read-back of an unknown outcome -----------------------------------------


@pytest.mark.parametrize("on_conflict", ["merge", "error"])
def test_concurrent_updates_of_one_key_compose(clock, on_conflict):
    client = SessionClient(clock=clock, on_conflict=on_conflict)
    start(client, {"a": {"items": ["first"]}})
    response = nested(
        client,
        lambda s: s.store("a").update("items", lambda items: [*items, "outer"]),
        lambda s: s.store("a").update("items", lambda items: [*items, "inner"]),
    )
    assert response.status_int == 200
    assert client.run(dump)[0] == {"a": {"items": ["first", "inner", "outer"]}}


def test_update_returns_what_it_stores_and_starts_from_the_default(client):
    returned, _ = client.run(lambda s: s.store("a").update("n", lambda n: n + 1, default=41))
    assert returned == 42
    assert client.run(dump)[0] == {"a": {"n": 42}}


class LostAnswers(MemoryBackend):
    """The memory backend behaving like a network backend whose next update
    loses its connection, either after the command was applied (the answer
    never came back) or before it was sent; the outcome is then settled by
    reading back (``Backend.settle``), as the Redis and SQL backends do."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: str | None = None  # "after" or "before", once

    def compare_and_swap(self, session_id, expected_version, record):
        fail = None
        if expected_version is not None:  # inserts pass untouched
            fail, self.fail = self.fail, None
        if fail == "before":
            raise BackendError("connection lost before the command was sent")

        def swap():
            swapped = MemoryBackend.compare_and_swap(self, session_id, expected_version, record)
            if fail == "after":
                raise OutcomeUnknown(session_id)
            return swapped

        return self.settle(session_id, expected_version, record, swap)


def test_a_commit_applied_but_unacknowledged_is_a_success_applied_once(clock):
    client = SessionClient(LostAnswers(), clock=clock)
    session_id = start(client, {"a": {"n": 1}})
    before = client.backend.get(session_id)
    assert before is not None
    client.backend.fail = "after"
    _, response = client.run(
        lambda s: s.store("a").set("n", s.store("a")["n"] + 1), expect_errors=True
    )
    assert response.status_int == 200
    after = client.backend.get(session_id)
    assert after is not None and after.version == before.version + 1  # not replayed
    assert client.run(dump)[0] == {"a": {"n": 2}}


def test_a_commit_that_never_reached_the_store_is_retried_or_reported(clock):
    """Never a 2xx without the write stored; never the write stored under an error."""
    client = SessionClient(LostAnswers(), clock=clock)
    start(client, {"a": {"n": 1}})
    client.backend.fail = "before"
    _, response = client.run(lambda s: s.store("a").set("n", 2), expect_errors=True)
    stored = client.run(dump)[0]
    if response.status_int == 200:
        assert stored == {"a": {"n": 2}}
    else:
        assert response.status_int in (500, 503) and stored == {"a": {"n": 1}}
