"""Shared fixtures: a clock to inject instead of sleeping, and app helpers."""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

IN_CI = os.environ.get("CI", "").lower() == "true"


class Clock:
    """A settable clock: ``clock()`` is the time, ``clock.advance(s)`` moves it."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def consume(body) -> bytes:
    """Read a WSGI response body and close it, as a server does (PEP 3333)."""
    try:
        return b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()


def read_line(stream, timeout: float = 30.0) -> str:
    """One line from a child process's pipe; fails after ``timeout`` seconds
    instead of hanging the run when the child hangs or never writes."""
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise AssertionError(f"no line from the child process in {timeout} s")
    line = stream.readline()
    if not line:
        raise AssertionError("the child process closed its output without a line")
    return line


def pytest_collection_finish(session):
    """Start test_readme's wheel build now, if that test is to run: it then
    builds (one core, ~3 s of pip) while the tests before it run.  Not in an
    xdist worker: each collects every test, and only one runs this one (two
    builds at once would share the tree's build folder)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for item in session.items:
        if item.name == "test_the_wheel_carries_the_license":
            item.module.start_building_the_wheel()


def pytest_sessionfinish(session):
    from . import test_readme

    test_readme.stop_building_the_wheel()  # if the run ended before the test


@pytest.fixture
def clock() -> Clock:
    return Clock()


class SessionClient:
    """A WebTest browser on a SessionMiddleware whose app runs a callback.

    ``client.run(fn)`` sends one request; the app calls ``fn(session)`` and
    the return value comes back with the response.  Cookies persist between
    requests like in a browser.
    """

    def __init__(self, backend="memory", backend_options=None, *, cookiejar=None, **settings):
        from webtest import TestApp

        from sessionstore import SessionMiddleware

        settings.setdefault("secret", "test-secret-0123456789abcdefghij")
        settings.setdefault("cleanup_probability", 0)
        self.clock = settings.get("clock")
        self.middleware = SessionMiddleware(
            self._app, backend=backend, backend_options=backend_options, **settings
        )
        self.backend = self.middleware.backend
        # A shared cookie jar makes two middlewares (two "processes") one browser.
        self.web = TestApp(self.middleware, cookiejar=cookiejar)

    @staticmethod
    def _app(environ, start_response):
        fn = environ["test.fn"]
        environ["test.result"].append(fn(environ["session"]))
        status = environ.get("test.status", "200 OK")
        start_response(status, [("Content-Type", "text/plain")])
        return [b"ok"]

    def run(self, fn, *, status="200 OK", expect_errors=False, **kwargs):
        results = []
        extra = {"test.fn": fn, "test.result": results, "test.status": status}
        extra.update(kwargs.pop("extra_environ", {}))
        response = self.web.get(
            kwargs.pop("url", "/"), extra_environ=extra, expect_errors=expect_errors, **kwargs
        )
        return (results[0] if results else None), response

    def cookie(self):
        return self.web.cookies.get("session")


@pytest.fixture
def client(clock):
    return SessionClient(clock=clock)


@pytest.fixture
def two_server_processes(tmp_path):
    """``start(kind, on_conflict, where)``: two waitress processes serving
    ``tests.child serve`` on one store; their ports.  Forked from the warm
    server of ``tests.forked``, each opens the store after the fork."""
    from . import forked

    procs = []

    def start(kind: str, on_conflict: str = "merge", where: str | None = None) -> list[int]:
        path = where or str(tmp_path / {"pickle": "sessions.dat", "sqlite": "sessions.db"}[kind])
        procs.extend(forked.start("child", "serve", kind, path, on_conflict) for _ in range(2))
        return [int(read_line(proc.stdout)) for proc in procs[-2:]]

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        proc.stdout.close()


@pytest.fixture(autouse=True)
def close_every_backend():
    """Close each backend a test built, however it was built, when the test ends.

    Tests build middlewares (directly, through SessionClient, from ini files with
    PasteDeploy) and drop them; a dropped SQLite connection is a ResourceWarning
    on Python 3.13, turned into an error at some later test's garbage collection.
    """
    from sessionstore.backends.base import Backend

    built = []
    original = Backend.__init__

    def tracked(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self)

    Backend.__init__ = tracked
    try:
        yield
    finally:
        Backend.__init__ = original
        for backend in built:
            # A backend whose __init__ failed half-way (a missing driver) has
            # nothing to close, and may lack what close() looks at.
            with contextlib.suppress(AttributeError):
                backend.close()


#: Every backend, embedded and on this machine's servers.
BACKENDS = ["memory", "pickle", "sqlite", "redis", "postgresql", "mysql"]


@pytest.fixture(scope="session")
def sql_tables():
    """The run's pool of SQL tables (``test_servers.TablePool``), dropped at its end."""
    from .test_servers import TablePool

    pool = TablePool()
    yield pool
    pool.drop_all()


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path, sql_tables):
    """``(kind, options)`` for a SessionMiddleware on each backend: files in
    tmp_path, Redis on a key prefix of the test's own (deleted after), SQL
    servers on a table lent for the test (emptied after).  Without a server
    the test skips; with ``CI=true`` it fails."""
    from .test_servers import UNAVAILABLE, _unavailable, drop_store, make_backend, options_for

    name = request.param
    if name == "memory":
        yield "memory", None
    elif name in ("pickle", "sqlite"):
        yield name, {"filename": str(tmp_path / f"sessions.{name}")}
    elif name != "redis":
        unique = sql_tables.lend(name)
        yield "sql", options_for(name, unique)
        sql_tables.give_back(name, unique)
    else:
        unique = secrets.token_hex(4)
        probe = make_backend(name, unique)
        try:
            probe.setup()
        except UNAVAILABLE as exc:
            probe.close()
            _unavailable(name, exc)
        yield "redis", options_for(name, unique)
        drop_store(probe)
