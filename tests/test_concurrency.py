"""Concurrent requests on one session never lose each other's writes (SPEC section 6).

Real waitress servers, real client threads over loopback HTTP, and for the
cross-process cases two server processes sharing one store file.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from webtest import TestApp
from webtest.http import StopableWSGIServer

from sessionstore import ConcurrentUpdate, SessionMiddleware
from sessionstore.backends.memory import MemoryBackend
from sessionstore.testing import in_forked_child, run_threads

from .apps import SECRET, make_app
from .conftest import Clock, SessionClient, consume

ROOT = Path(__file__).resolve().parent.parent
FILES = {"memory": None, "pickle": "sessions.dat", "sqlite": "sessions.db"}
THREADS, REQUESTS = 8, 50


class Client:
    """One keep-alive HTTP connection that sends a fixed session cookie."""

    def __init__(self, port: int, cookie: str | None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.cookie = cookie

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        headers = {"Cookie": f"session={self.cookie}"} if self.cookie else {}
        self.conn.request("GET", path, headers=headers)
        response = self.conn.getresponse()
        body = response.read()
        return response.status, dict(response.getheaders()), body

    def close(self) -> None:
        self.conn.close()


def session_cookie(headers: dict[str, str]) -> str:
    jar = SimpleCookie()
    jar.load(headers["Set-Cookie"])
    return jar["session"].value


def start_session(port: int) -> str:
    client = Client(port, None)
    status, headers, _ = client.get("/write?app=setup&key=k&value=v")
    client.close()
    assert status == 200
    return session_cookie(headers)


def stored(mw, cookie: str) -> tuple[int, dict[str, dict[str, object]]]:
    """The version and the stores of the session named by ``cookie``, read
    back through a request (the racing app's ``/dump``)."""
    web = TestApp(mw)
    web.set_cookie("session", cookie)
    dumped = web.get("/dump").json
    record = mw.backend.get(dumped["id"])
    assert record is not None
    return record.version, dumped["apps"]


@pytest.fixture
def server_for(tmp_path):
    servers = []

    def start(kind: str, app=None, **settings):
        filename = str(tmp_path / FILES[kind]) if FILES[kind] else None
        if app is None:
            app = make_app(kind, filename, **settings)
        else:
            options = {"filename": filename} if filename else None
            app = SessionMiddleware(
                app, secret=SECRET, backend=kind, backend_options=options, **settings
            )
        server = StopableWSGIServer.create(app, threads=8)
        servers.append(server)
        return server.effective_port

    yield start
    for server in servers:
        server.shutdown()


def write_own_keys(ports: list[int], cookie: str, results: Counter) -> None:
    """THREADS threads x REQUESTS requests, each thread its own keys, two apps;
    counts the statuses into ``results``."""
    tally = threading.Lock()  # the threads share the counter

    def worker(n: int) -> None:
        clients = [Client(port, cookie) for port in ports]
        try:
            for i in range(REQUESTS):
                client = clients[i % len(clients)]  # alternate between servers
                status, headers, _ = client.get(f"/write?app=app{n % 2}&key=t{n}-{i}&value={i}")
                with tally:
                    results[status] += 1
                assert "Set-Cookie" not in headers or cookie in headers["Set-Cookie"]
        finally:
            for client in clients:
                client.close()

    run_threads(worker, THREADS, timeout=120)


def found_writes(port: int, cookie: str) -> int:
    client = Client(port, cookie)
    status, _, body = client.get("/dump")
    client.close()
    assert status == 200
    apps = json.loads(body)["apps"]
    expected = {f"app{n % 2}": {} for n in range(THREADS)}
    for n in range(THREADS):
        for i in range(REQUESTS):
            expected[f"app{n % 2}"][f"t{n}-{i}"] = str(i)
    found = sum(
        1 for app, keys in expected.items() for k, v in keys.items() if apps[app].get(k) == v
    )
    assert apps["setup"] == {"k": "v"}
    return found


@pytest.mark.parametrize("kind", ["memory", "pickle", "sqlite"])
def test_eight_threads_on_one_session_lose_no_write(server_for, kind):
    port = server_for(kind)
    cookie = start_session(port)
    results: Counter = Counter()
    write_own_keys([port], cookie, results)
    assert results == {200: THREADS * REQUESTS}
    assert found_writes(port, cookie) == THREADS * REQUESTS


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pickle", "sqlite"])
def test_two_server_processes_sharing_one_file_lose_no_write(two_server_processes, kind):
    ports = two_server_processes(kind)
    cookie = start_session(ports[0])
    results: Counter = Counter()
    write_own_keys(ports, cookie, results)
    assert results == {200: THREADS * REQUESTS}
    assert found_writes(ports[1], cookie) == THREADS * REQUESTS


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_on_conflict_error_counts_add_up(server_for, kind):
    """Two visitors increment one key, every round overlapping: both requests
    read before either writes.  The later commit of each round is a lost
    update, so exactly one request in two answers 409 and writes nothing."""
    both_read = threading.Barrier(2, timeout=30)

    def increment_app(environ, start_response):
        store = environ["session"].store("c")
        if environ["PATH_INFO"] == "/incr":
            value = store.get_default("n", 0) + 1
            both_read.wait()  # the other request of this round has read n too
            store.set("n", value)
        elif environ["PATH_INFO"] == "/start":
            store.set("started", True)
        body = repr(store.get_default("n", 0)).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    port = server_for(kind, app=increment_app, on_conflict="error")
    first = Client(port, None)
    status, headers, _ = first.get("/start")
    first.close()
    assert status == 200
    cookie = session_cookie(headers)
    results: Counter = Counter()
    tally = threading.Lock()

    def worker(n: int) -> None:
        client = Client(port, cookie)
        try:
            for _ in range(REQUESTS):
                status, headers, _ = client.get("/incr")
                with tally:
                    results[status] += 1
                if status == 409:
                    assert "Set-Cookie" not in headers
                    assert headers["Vary"] == "Cookie"
        finally:
            client.close()

    run_threads(worker, 2, timeout=120)
    client = Client(port, cookie)
    _, _, body = client.get("/read")
    client.close()
    assert results == {200: REQUESTS, 409: REQUESTS}
    assert int(body) == REQUESTS  # every 200 stored its increment, no 409 did


# -- deterministic races, with real threads and events ------------------------------


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
    assert "Set-Cookie" not in responses["slow"].headers  # no cookie for the dead id
    assert "Max-Age=0" in responses["fast"].headers["Set-Cookie"]


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
    assert new_id == retried and set(client.backend.get_all()) == {retried}
    assert client.backend.get(old_id) is None
    assert client.cookie() != old_cookie
    dumped = client.run(lambda s: {a: dict(s.store(a).items()) for a in s.apps()})[0]
    assert dumped == {"a": {"x": "before"}, "b": {"late": "kept"}}


def test_regenerate_that_keeps_losing_answers_503_and_leaves_the_session_alive(clock):
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
    dumped = client.run(lambda s: {a: dict(s.store(a).items()) for a in s.apps()})[0]
    assert dumped == {"a": {"x": "before"}, "b": {"n": writes[-1]}}


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


def test_a_commit_lock_held_at_fork_does_not_block_the_child(tmp_path):
    """A thread of the parent holds a session's commit lock when the process
    forks (as a pre-fork server may); the child must still commit to it."""
    mw = make_app("sqlite", str(tmp_path / "s.db"), busy_timeout=0.5)
    web = TestApp(mw)
    web.get("/write", {"app": "a", "key": "k", "value": "parent"})
    cookie = web.cookies["session"]
    [session_id] = mw.backend.get_all()
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/write",
        "QUERY_STRING": "app=a&key=k&value=child",
        "HTTP_COOKIE": f"session={cookie}",
        "wsgi.url_scheme": "http",
    }
    statuses: list[str] = []

    def write_in_child():
        consume(mw(environ, lambda status, headers, exc_info=None: statuses.append(status)))
        return statuses == ["200 OK"]

    lock = mw._manager.commit_lock(session_id)  # held across the fork
    try:
        assert in_forked_child(write_in_child)
    finally:
        lock.release()
    assert web.get("/read", {"app": "a", "key": "k"}).text == "'child'"
