"""The cart example under real servers: 8 clients appending to one session.

Threads through waitress (one process) and pre-fork workers through gunicorn
(four processes), on every backend.  Each client appends its own items to
one list; afterwards every item whose request was answered 200 must be in
the list, and no item whose request failed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from webtest.http import StopableWSGIServer

from sessionstore.testing import run_threads

from .apps import make_app
from .test_concurrency import Client, start_session

ROOT = Path(__file__).resolve().parent.parent
CLIENTS, APPENDS = 8, 25

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def stopping():
    """gunicorns told to stop, reaped when the module ends.

    A gunicorn takes about half a second to stop (its workers finish and
    exit, its master looks every 0.1 s); nothing of the test waits for that.
    Each has closed its socket and stops serving once told to stop.
    """
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture
def serve(stopping):
    """Start a server on a store: ``serve("waitress"|"gunicorn", store, **settings)``."""
    running = []

    def start(how, store, **settings):
        kind, options = store
        settings.setdefault("cleanup_probability", 0)
        if how == "waitress":
            app = make_app(kind, options=options, **settings)
            server = StopableWSGIServer.create(app, threads=8)
            running.append(lambda: (server.shutdown(), app.close()))
            return server.effective_port, app
        if kind == "memory":
            pytest.skip("the memory backend is one process")
        port = _free_port()
        env = dict(
            os.environ,
            SESSIONSTORE_TEST_BACKEND=json.dumps(
                {"kind": kind, "options": options, "settings": settings}
            ),
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--workers",
                "4",
                "--bind",
                f"127.0.0.1:{port}",
                "--log-level",
                "warning",
                "--config",
                "tests/gunicorn_conf.py",
                "tests.apps:from_environment()",
            ],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        running.append(lambda: (proc.terminate(), stopping.append(proc)))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port, None
            except OSError:
                time.sleep(0.05)  # polling a child process for its socket; no clock to inject
        raise AssertionError("gunicorn did not start in 30 s")

    yield start
    for stop in running:
        stop()


def append_concurrently(port, cookie, path):
    """CLIENTS threads x APPENDS requests; the statuses, and the items answered 200."""
    statuses: Counter = Counter()
    acknowledged, failed = set(), set()
    lock = threading.Lock()

    def client(n):
        conn = Client(port, cookie)
        try:
            for i in range(APPENDS):
                item = f"c{n}-{i}"
                status, _, _ = conn.get(f"{path}?app=shop&key=cart&value={item}")
                with lock:
                    statuses[status] += 1
                    (acknowledged if status == 200 else failed).add(item)
        finally:
            conn.close()

    run_threads(client, CLIENTS)
    return statuses, acknowledged, failed


def cart(port, cookie):
    conn = Client(port, cookie)
    try:
        status, _, body = conn.get("/dump")
    finally:
        conn.close()
    assert status == 200
    return json.loads(body)["apps"].get("shop", {}).get("cart", [])


@pytest.mark.parametrize("how", ["waitress", "gunicorn"])
def test_concurrent_update_appends_are_never_lost(serve, backend, how):
    port, _ = serve(how, backend)
    cookie = start_session(port)
    statuses, acknowledged, failed = append_concurrently(port, cookie, "/append")
    found = cart(port, cookie)
    lost = len(acknowledged - set(found))
    print(
        f"update() {how} {backend[0]}: statuses {dict(statuses)}, stored {len(found)}, lost {lost}"
    )
    assert statuses[200] > 0 and set(statuses) <= {200, 503}
    assert acknowledged <= set(found)  # every 200 is stored...
    assert not failed & set(found)  # ...and no failed request's item
    assert len(found) == len(set(found))  # nothing applied twice


def test_plain_get_then_set_under_error_loses_nothing_acknowledged(serve, backend):
    port, _ = serve("waitress", backend, on_conflict="error")
    cookie = start_session(port)
    statuses, acknowledged, failed = append_concurrently(port, cookie, "/append-plain")
    found = cart(port, cookie)
    lost = len(acknowledged - set(found))
    print(f"get-then-set error {backend[0]}: statuses {dict(statuses)}, lost {lost}")
    # They collide (409s; almost every run, test_atomic forces it) and not one
    # acknowledged append is lost.
    assert set(statuses) <= {200, 409, 503}
    assert acknowledged <= set(found)
    assert not failed & set(found)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_plain_get_then_set_under_error_across_processes(serve, backend):
    """The same through gunicorn's pre-fork workers, on one embedded and one
    server backend (every backend runs it through waitress above)."""
    port, _ = serve("gunicorn", backend, on_conflict="error")
    cookie = start_session(port)
    statuses, acknowledged, failed = append_concurrently(port, cookie, "/append-plain")
    found = cart(port, cookie)
    assert set(statuses) <= {200, 409, 503}
    assert acknowledged <= set(found)
    assert not failed & set(found)


def test_plain_get_then_set_under_merge_logs_every_lost_update(serve, backend, caplog):
    port, app = serve("waitress", backend)
    cookie = start_session(port)
    with caplog.at_level(logging.WARNING, "sessionstore"):
        statuses, acknowledged, _ = append_concurrently(port, cookie, "/append-plain")
    missing = acknowledged - set(cart(port, cookie))
    assert statuses[200] == CLIENTS * APPENDS
    # Overwrites happen (this is what update() is for; almost every run), and
    # none goes unlogged: an acknowledged append is missing only if a lost
    # update was logged and counted.
    lost = app.stats()["lost_updates"]
    print(
        f"get-then-set merge {backend[0]}: {len(missing)} overwritten, {lost} lost updates logged"
    )
    assert caplog.text.count("lost update of application 'shop', key 'cart'") == lost
    assert lost > 0 or not missing
