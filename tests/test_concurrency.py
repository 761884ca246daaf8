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

from sessionstore import SessionMiddleware
from sessionstore.testing import in_forked_child, run_threads

from .apps import SECRET, make_app
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
