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
from sessionstore.payload import load_value
from sessionstore.testing import in_forked_child

from .apps import make_app
from .conftest import consume

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


def stored(mw) -> tuple[int, dict[str, dict[str, object]]]:
    """The version and the decoded stores of the middleware's only session."""
    [record] = mw.backend.get_all().values()
    apps, _ = mw._manager.payloads.loads(record)
    values = {app: {k: load_value(v) for k, v in keys.items()} for app, keys in apps.items()}
    return record.version, values


def run_threads(target, count: int) -> None:
    threads = [threading.Thread(target=target, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive()


@pytest.fixture
def server_for(tmp_path):
    servers = []

    def start(kind: str, **settings):
        filename = str(tmp_path / FILES[kind]) if FILES[kind] else None
        app = make_app(kind, filename, **settings)
        server = StopableWSGIServer.create(app, threads=8)
        servers.append(server)
        return server.effective_port

    yield start
    for server in servers:
        server.shutdown()


def write_own_keys(ports: list[int], cookie: str, results: Counter) -> None:
    """THREADS threads x REQUESTS requests, each thread its own keys, two apps."""

    def worker(n: int) -> None:
        clients = [Client(port, cookie) for port in ports]
        try:
            for i in range(REQUESTS):
                client = clients[i % len(clients)]  # alternate between servers
                status, headers, _ = client.get(f"/write?app=app{n % 2}&key=t{n}-{i}&value={i}")
                results[status] += 1
                assert "Set-Cookie" not in headers or cookie in headers["Set-Cookie"]
        finally:
            for client in clients:
                client.close()

    run_threads(worker, THREADS)


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
    port = server_for(kind, on_conflict="error")
    cookie = start_session(port)
    results: Counter = Counter()

    def worker(n: int) -> None:
        client = Client(port, cookie)
        try:
            for _ in range(REQUESTS):
                status, headers, _ = client.get("/incr?app=c&key=n")
                results[status] += 1
                if status == 409:
                    assert "Set-Cookie" not in headers
        finally:
            client.close()

    run_threads(worker, 2)
    client = Client(port, cookie)
    _, _, body = client.get("/read?app=c&key=n")
    client.close()
    final = int(body)
    assert set(results) <= {200, 409}
    assert results[200] + results[409] == 2 * REQUESTS
    assert final == results[200]


# -- deterministic races, with real threads and events ------------------------------


def racing_pair(backend="memory", same_key=False, **settings):
    """A middleware whose /slow requests read, then wait for a signal, then write.

    With ``same_key`` every request reads key ``k`` and writes its own path there.
    """
    reading, go = threading.Event(), threading.Event()

    def app(environ, start_response):
        session = environ["session"]
        store = session.store("a")
        if same_key:
            store.get_default("k")
            if environ["PATH_INFO"] == "/slow":
                reading.set()
                assert go.wait(10)
            store.set("k", environ["PATH_INFO"])
        elif environ["PATH_INFO"] == "/slow":
            store.get_default("x")  # read the session now...
            reading.set()
            assert go.wait(10)  # ...and write after the other request finished
            store.set("slow", "written late")
        elif environ["PATH_INFO"] == "/logout":
            session.destroy()
        elif environ["PATH_INFO"] == "/login":
            session.regenerate()
        else:
            store.set("x", environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    settings.setdefault("cleanup_probability", 0)
    mw = SessionMiddleware(
        app, secret="s-0123456789abcdefghijklmnopqrst", backend=backend, **settings
    )
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
    return responses


def _race_an_existing_session(other_path):
    """Start a session, then race a slow write against ``other_path`` on it."""
    mw, reading, go = racing_pair()
    web = TestApp(mw)
    web.get("/first")
    [old_id] = mw.backend.get_all()
    return mw, old_id, race(mw, reading, go, web.cookies["session"], other_path)


def test_logout_racing_with_a_write_does_not_resurrect():
    mw, old_id, responses = _race_an_existing_session("/logout")
    assert mw.backend.get(old_id) is None
    assert mw.backend.count() == 0  # the late write was dropped, not stored anew
    # ...and its request says so: 409, never a 200 for a write that was dropped,
    # and the cookie naming the dead session is cleared.
    assert responses["slow"].status_int == 409
    assert "Max-Age=0" in responses["slow"].headers["Set-Cookie"]
    assert "Max-Age=0" in responses["fast"].headers["Set-Cookie"]


def test_regenerate_racing_with_a_write_keeps_the_old_id_dead():
    mw, old_id, responses = _race_an_existing_session("/login")
    assert mw.backend.get(old_id).is_tombstone  # no session, to everyone
    [new_id] = [i for i, r in mw.backend.get_all().items() if not r.is_tombstone]
    assert new_id != old_id
    assert responses["slow"].status_int == 409  # its write went with the old id


@pytest.mark.parametrize("on_conflict", ["merge", "error"])
def test_writes_to_different_keys_merge_in_both_modes(on_conflict):
    mw, reading, go = racing_pair(on_conflict=on_conflict)
    web = TestApp(mw)
    web.get("/first")
    race(mw, reading, go, web.cookies["session"], "/second")
    version, values = stored(mw)
    assert version == 3
    assert values["a"] == {"x": "/second", "slow": "written late"}


def test_same_key_later_commit_wins_in_merge_mode():
    mw, reading, go = racing_pair(same_key=True)
    web = TestApp(mw)
    web.get("/first")
    race(mw, reading, go, web.cookies["session"], "/fast")
    assert stored(mw)[1]["a"]["k"] == "/slow"


def test_same_key_in_error_mode_is_a_409_and_writes_nothing():
    mw, reading, go = racing_pair(same_key=True, on_conflict="error")
    web = TestApp(mw)
    web.get("/first")
    responses = race(mw, reading, go, web.cookies["session"], "/fast")
    assert responses["slow"].status_int == 409
    assert "Set-Cookie" not in responses["slow"].headers
    assert stored(mw) == (2, {"a": {"k": "/fast"}})


def test_explicit_commit_raises_concurrent_update():
    mw, reading, go = racing_pair(on_conflict="error")
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
        SessionMiddleware(
            app, secret="s-0123456789abcdefghijklmnopqrst", backend=mw.backend, on_conflict="error"
        ),
        cookiejar=web.cookiejar,
    )
    assert explicit.get("/").status_int == 200
    assert [exc.keys for exc in caught] == [[("a", "x")]]
    assert stored(mw)[1]["a"]["x"] == "/changed-meanwhile"


def test_read_only_requests_never_revert_a_write():
    """Beaker writes back what a read-only request loaded; we never do."""
    mw, reading, go = racing_pair()
    web = TestApp(mw)
    web.get("/first")
    cookie = web.cookies["session"]

    reader_done = threading.Event()

    def reader_app(environ, start_response):
        environ["session"].store("a").get_default("x")
        reading.set()
        assert go.wait(10)
        start_response("200 OK", [])
        reader_done.set()
        return [b""]

    reader = TestApp(
        SessionMiddleware(reader_app, secret="s-0123456789abcdefghijklmnopqrst", backend=mw.backend)
    )
    reader.set_cookie("session", cookie)
    thread = threading.Thread(target=lambda: reader.get("/"))
    thread.start()
    assert reading.wait(10)
    web.get("/second")
    go.set()
    thread.join(10)
    assert reader_done.is_set()
    assert stored(mw) == (2, {"a": {"x": "/second"}})


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
