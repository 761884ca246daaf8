"""Races between two requests on one session, with real threads and events
(SPEC section 6): each interleaving is forced, not hoped for.

A /slow request reads, signals, and waits; the other request runs to its
end in between; then the slow one writes and commits.  Regenerate races use a
backend that runs the other request at the exact moment between
regenerate()'s insert of the new id and its delete of the old one.
"""

from __future__ import annotations

import json
import threading

import pytest
from webtest import TestApp

from sessionstore import ConcurrentUpdate, SessionMiddleware
from sessionstore.backends.memory import MemoryBackend
from sessionstore.commit import MAX_ATTEMPTS

from .apps import SECRET
from .conftest import Clock, SessionClient


def stored(mw, cookie: str) -> tuple[int, dict[str, dict[str, object]]]:
    """The version and the stores of the session named by ``cookie``, read
    back through a request (the racing app's ``/dump``)."""
    web = TestApp(mw)
    web.set_cookie("session", cookie)
    dumped = web.get("/dump").json
    record = mw.backend.get(dumped["id"])
    assert record is not None
    return record.version, dumped["apps"]


def racing_pair(backend="memory", same_key=False, **settings):
    """A middleware whose /slow requests read, then wait for a signal, then write.

    With ``same_key`` every request reads key ``k`` and writes its own path there.
    ``/dump`` answers the session's id and stores as JSON.  The clock is
    injected (``settings["clock"]``, default a fixed :class:`Clock`).
    """
    reading, go = threading.Event(), threading.Event()

    def app(environ, start_response):
        session = environ["session"]
        store = session.store("a")
        path = environ["PATH_INFO"]
        if path == "/dump":
            apps = {name: dict(session.store(name).items()) for name in session.apps()}
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps({"id": session.id, "apps": apps}).encode()]
        if same_key:
            store.get_default("k")
            if path == "/slow":
                reading.set()
                assert go.wait(10)
            store.set("k", path)
        elif path == "/slow":
            store.get_default("x")  # read the session now...
            reading.set()
            assert go.wait(10)  # ...and write after the other request finished
            store.set("slow", "written late")
        elif path == "/logout":
            session.destroy()
        else:
            store.set("x", path)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    settings.setdefault("cleanup_probability", 0)
    settings.setdefault("clock", Clock())
    mw = SessionMiddleware(app, secret=SECRET, backend=backend, **settings)
    return mw, reading, go


def race(mw, reading, go, cookie, other_path):
    slow = TestApp(mw)
    fast = TestApp(mw)
    for web in (slow, fast):
        web.set_cookie("session", cookie)
    responses = {}

    def run_slow():
        responses["slow"] = slow.get("/slow", expect_errors=True)

    thread = threading.Thread(target=run_slow)
    thread.start()
    assert reading.wait(10)
    responses["fast"] = fast.get(other_path)
    go.set()
    thread.join(10)
    assert not thread.is_alive()
    assert "slow" in responses  # it answered rather than raised
    return responses


def test_logout_racing_with_a_write_does_not_resurrect():
    mw, reading, go = racing_pair()
    web = TestApp(mw)
    web.get("/first")
    [old_id] = mw.backend.get_all()
    responses = race(mw, reading, go, web.cookies["session"], "/logout")
    assert mw.backend.get(old_id) is None
    assert mw.backend.count() == 0  # the late write was dropped, not stored anew
    # ...and its request says so (SPEC 6): 409, never a 200 for a dropped
    # write, and the cookie naming the dead session is cleared.
    assert responses["slow"].status_int == 409
    assert "Max-Age=0" in responses["slow"].headers["Set-Cookie"]
    assert "Max-Age=0" in responses["fast"].headers["Set-Cookie"]


def live_ids(backend) -> set[str]:
    """Ids of stored sessions, without the tombstones of retired ids."""
    return {i for i, record in backend.get_all().items() if not record.is_tombstone}


class InterruptedInserts(MemoryBackend):
    """The memory backend, running ``hook`` once right after an insert of a new
    id succeeds: for regenerate(), between its insert of the new id and its
    compare-and-swap delete of the old one.  Records every id it inserted."""

    def __init__(self) -> None:
        super().__init__()
        self.hook = None
        self.inserted: list[str] = []

    def compare_and_swap(self, session_id, expected_version, record):
        swapped = super().compare_and_swap(session_id, expected_version, record)
        if swapped and expected_version is None and record is not None:
            self.inserted.append(session_id)
            hook, self.hook = self.hook, None
            if hook is not None:
                hook()
        return swapped


def test_regenerate_racing_with_a_write_keeps_the_write_and_the_old_id_dead(clock):
    """A write to the old id lands between regenerate()'s insert of the new id
    and its delete of the old one: regenerate must notice (the delete is a
    compare-and-swap), drop its new id, catch up with the write and retry."""
    client = SessionClient(InterruptedInserts(), clock=clock)
    client.run(lambda s: s.store("a").set("x", "before"))
    [old_id] = client.backend.get_all()
    old_cookie = client.cookie()
    # Another process (its own middleware and commit locks) on the same store.
    other = SessionClient(client.backend, clock=clock, cookiejar=client.web.cookiejar)

    def concurrent_write():
        _, response = other.run(lambda s: s.store("b").set("late", "kept"))
        assert response.status_int == 200

    client.backend.inserted.clear()
    client.backend.hook = concurrent_write
    new_id, response = client.run(lambda s: (s.regenerate(), s.id)[1])
    assert response.status_int == 200
    undone, retried = client.backend.inserted  # the retry path ran, once
    assert client.backend.get(undone) is None
    assert new_id == retried and live_ids(client.backend) == {retried}
    assert client.backend.get(old_id).is_tombstone  # "no session" to everyone
    assert client.cookie() != old_cookie
    dumped = client.run(lambda s: {a: dict(s.store(a).items()) for a in s.apps()})[0]
    assert dumped == {"a": {"x": "before"}, "b": {"late": "kept"}}


@pytest.fixture
def attempts(monkeypatch):
    """The commit's lost attempts, in order, without the random wait after
    each (up to 20 ms; about 0.45 s over the 50 attempts of a commit that
    keeps losing, and nothing to do with what these tests check)."""
    from sessionstore import commit

    made: list[int] = []
    monkeypatch.setattr(commit, "backoff", made.append)
    return made


def test_regenerate_that_keeps_losing_answers_503_and_leaves_the_session_alive(clock, attempts):
    """Every attempt of regenerate() loses to a new write: it gives up with
    BusyRetry (503), every new id it made is undone, and the old session,
    with every concurrent write, is still there."""
    client = SessionClient(InterruptedInserts(), clock=clock)
    client.run(lambda s: s.store("a").set("x", "before"))
    [old_id] = client.backend.get_all()
    other = SessionClient(client.backend, clock=clock, cookiejar=client.web.cookiejar)
    writes: list[int] = []

    def concurrent_write():
        writes.append(len(writes) + 1)
        _, response = other.run(lambda s: s.store("b").set("n", writes[-1]))
        assert response.status_int == 200
        client.backend.hook = concurrent_write  # again at the next attempt

    client.backend.hook = concurrent_write
    _, response = client.run(lambda s: s.regenerate(), expect_errors=True)
    client.backend.hook = None
    assert response.status_int == 503
    assert "Set-Cookie" not in response.headers
    assert len(writes) > 1 and set(client.backend.get_all()) == {old_id}
    # Every attempt lost (the other client's commits each win at attempt 0).
    assert attempts == list(range(1, MAX_ATTEMPTS + 1))
    dumped = client.run(lambda s: {a: dict(s.store(a).items()) for a in s.apps()})[0]
    assert dumped == {"a": {"x": "before"}, "b": {"n": writes[-1]}}


class InterruptedUndo(InterruptedInserts):
    """``InterruptedInserts``, also running ``undo_hook`` once when a new id
    is deleted again (regenerate() undoing its insert after a lost race)."""

    def __init__(self) -> None:
        super().__init__()
        self.undo_hook = None

    def compare_and_swap(self, session_id, expected_version, record):
        if record is None and session_id in self.inserted:
            hook, self.undo_hook = self.undo_hook, None
            if hook is not None:
                hook()
        return super().compare_and_swap(session_id, expected_version, record)


def test_a_login_that_lost_reads_the_session_after_undoing_its_new_id(clock, attempts):
    """regenerate() loses once; another commit lands while it undoes its
    new id.  It reads the session after that, so its next try wins (read
    before, it lost again, and steady updates starved logins on MariaDB)."""
    client = SessionClient(InterruptedUndo(), clock=clock)
    client.run(lambda s: s.store("a").set("n", 0))
    other = SessionClient(client.backend, clock=clock, cookiejar=client.web.cookiejar)

    def add_one():
        _, response = other.run(lambda s: s.store("a").update("n", lambda n: n + 1))
        assert response.status_int == 200

    client.backend.hook = add_one  # after the first insert: the login loses
    client.backend.undo_hook = add_one  # while it undoes that insert
    _, response = client.run(lambda s: s.regenerate())
    assert response.status_int == 200
    assert attempts == [1]  # one lost race, then a win
    assert client.run(lambda s: s.store("a").get("n"))[0] == 2


class InterruptedUpdates(MemoryBackend):
    """The memory backend, running ``hook`` once right before an update
    (a compare-and-swap of an existing version)."""

    def __init__(self) -> None:
        super().__init__()
        self.hook = None

    def compare_and_swap(self, session_id, expected_version, record):
        if expected_version is not None and record is not None:
            hook, self.hook = self.hook, None
            if hook is not None:
                hook()
        return super().compare_and_swap(session_id, expected_version, record)


def test_a_commit_that_keeps_losing_answers_503_and_writes_nothing(clock, attempts):
    """Another process commits right before every attempt: the commit gives
    up with BusyRetry (503, Retry-After) and none of its writes is stored."""
    client = SessionClient(InterruptedUpdates(), clock=clock)
    client.run(lambda s: s.store("a").set("x", "before"))
    other = SessionClient(client.backend, clock=clock, cookiejar=client.web.cookiejar)
    writes: list[int] = []

    def concurrent_write():
        writes.append(len(writes) + 1)
        _, response = other.run(lambda s: s.store("b").set("n", writes[-1]))
        assert response.status_int == 200
        client.backend.hook = concurrent_write  # and before the next attempt

    client.backend.hook = concurrent_write
    _, response = client.run(lambda s: s.store("a").set("x", "lost"), expect_errors=True)
    client.backend.hook = None
    assert response.status_int == 503 and "Retry-After" in response.headers
    dumped = client.run(lambda s: {a: dict(s.store(a).items()) for a in s.apps()})[0]
    assert len(writes) > 1 and dumped == {"a": {"x": "before"}, "b": {"n": writes[-1]}}
    # Every attempt lost (the other client's commits each win at attempt 0).
    assert attempts == list(range(1, MAX_ATTEMPTS + 1))


def test_a_lost_commit_reads_the_session_again_after_its_wait(clock, monkeypatch):
    """Other commits made while a loser waits do not make it lose again: it
    reads the session after the wait, not before (read before, its next
    swap was stale by every commit of the wait, and four busy processes
    made a commit lose 50 times in a row)."""
    from sessionstore import commit

    client = SessionClient(InterruptedUpdates(), clock=clock)
    client.run(lambda s: s.store("a").set("n", 0))
    other = SessionClient(client.backend, clock=clock, cookiejar=client.web.cookiejar)

    def add_one(session):
        session.store("a").update("n", lambda n: n + 1)

    waits: list[int] = []

    def wait_while_another_commits(attempt):
        waits.append(attempt)
        assert other.run(add_one)[1].status_int == 200

    monkeypatch.setattr(commit, "backoff", wait_while_another_commits)
    client.backend.hook = lambda: other.run(add_one)
    assert client.run(add_one)[1].status_int == 200
    assert waits == [1]  # lost once (to the hook's commit), then won
    assert client.run(lambda s: s.store("a").get("n"))[0] == 3


@pytest.mark.parametrize("on_conflict", ["merge", "error"])
def test_writes_to_different_keys_merge_in_both_modes(on_conflict):
    mw, reading, go = racing_pair(on_conflict=on_conflict)
    web = TestApp(mw)
    web.get("/first")
    race(mw, reading, go, web.cookies["session"], "/second")
    version, values = stored(mw, web.cookies["session"])
    assert version == 3
    assert values["a"] == {"x": "/second", "slow": "written late"}


def test_same_key_later_commit_wins_in_merge_mode():
    mw, reading, go = racing_pair(same_key=True)
    web = TestApp(mw)
    web.get("/first")
    race(mw, reading, go, web.cookies["session"], "/fast")
    assert stored(mw, web.cookies["session"])[1]["a"]["k"] == "/slow"


def test_same_key_in_error_mode_is_a_409_and_writes_nothing():
    mw, reading, go = racing_pair(same_key=True, on_conflict="error")
    web = TestApp(mw)
    web.get("/first")
    responses = race(mw, reading, go, web.cookies["session"], "/fast")
    assert responses["slow"].status_int == 409
    assert responses["slow"].headers["Vary"] == "Cookie"
    assert "Set-Cookie" not in responses["slow"].headers
    assert stored(mw, web.cookies["session"]) == (2, {"a": {"k": "/fast"}})


def test_explicit_commit_raises_concurrent_update(clock):
    mw, reading, go = racing_pair(on_conflict="error", clock=clock)
    web = TestApp(mw)
    web.get("/first")
    # Read, let another request change the key, then write it and commit.
    other = TestApp(mw, cookiejar=web.cookiejar)
    caught = []

    def app(environ, start_response):
        session = environ["session"]
        session.store("a").get_default("x")
        other.get("/changed-meanwhile")
        session.store("a").set("x", "mine")
        try:
            session.commit()
        except ConcurrentUpdate as exc:
            caught.append(exc)
        start_response("200 OK", [])
        return [b""]

    explicit = TestApp(
        SessionMiddleware(app, secret=SECRET, backend=mw.backend, on_conflict="error", clock=clock),
        cookiejar=web.cookiejar,
    )
    assert explicit.get("/").status_int == 200
    assert [exc.keys for exc in caught] == [[("a", "x")]]
    assert stored(mw, web.cookies["session"])[1]["a"]["x"] == "/changed-meanwhile"


def test_read_only_requests_never_revert_a_write(clock):
    """Beaker writes back what a read-only request loaded; we never do, not
    even when that request is due to refresh the idle clock (its touch)."""
    mw, reading, go = racing_pair(clock=clock, touch_interval=60)
    web = TestApp(mw)
    web.get("/first")
    cookie = web.cookies["session"]
    clock.advance(61)  # a read-only request from now on is due for a touch

    reader_done = threading.Event()

    def reader_app(environ, start_response):
        environ["session"].store("a").get_default("x")
        reading.set()
        assert go.wait(10)
        start_response("200 OK", [])
        reader_done.set()
        return [b""]

    reader = TestApp(
        SessionMiddleware(
            reader_app, secret=SECRET, backend=mw.backend, clock=clock, touch_interval=60
        )
    )
    reader.set_cookie("session", cookie)
    thread = threading.Thread(target=lambda: reader.get("/"))
    thread.start()
    assert reading.wait(10)
    web.get("/second")  # commits while the reader holds version 1
    go.set()
    thread.join(10)
    assert not thread.is_alive()
    assert reader_done.is_set()
    assert stored(mw, cookie) == (2, {"a": {"x": "/second"}})
    # The reader's touch is live in this setting: 61 s on, a read refreshes.
    [record] = mw.backend.get_all().values()
    clock.advance(61)
    go.set()
    reader.get("/")
    touched = mw.backend.get(record.session_id)
    assert touched is not None and touched.version == 3 and touched.accessed_at == clock.now
