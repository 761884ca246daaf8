"""Per-request overhead: sessionstore against Beaker and the bare application.

    pip install -e '.[bench]'
    python benchmarks/overhead.py [--requests N] [--rounds R]

Direct WSGI calls, N requests per row and request kind:

* untouched: the application never looks at the session;
* read-only: it reads a counter (the cookie of an existing session is sent);
* write: it increments the counter (and carries the cookie forward);
* update: the same with ``Store.update()`` (Beaker has no such thing: its row
  repeats its plain read-modify-write).

Each cell is the best of several rounds (this kind of machine is noisy; the
minimum is the least disturbed run).  Prints microseconds of overhead per
request (minus the bare application's time), the ratio sessionstore / Beaker,
and checks that each counter really reached every write.  Both libraries run
with their defaults, plus sessionstore with ``fsync = true``.  Pairings whose
server (Redis, PostgreSQL) is not reachable are skipped with a note.  Backend
writes during read-only requests are counted for sessionstore.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
# Not this folder on the path: its http.py would hide the standard library's.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, os.path.dirname(HERE))

from sessionstore import SessionMiddleware  # noqa: E402
from sessionstore.backends import backend_class  # noqa: E402

REDIS_URL = os.environ.get("SESSIONSTORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
PG_URL = os.environ.get(
    "SESSIONSTORE_TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

WSGIApp = Callable[..., Any]
KINDS = ("untouched", "read", "write", "update")


def bare(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def ours(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    path = environ["PATH_INFO"]
    if path == "/read":
        environ["session"].store("bench").get_default("n")
    elif path == "/write":
        store = environ["session"].store("bench")
        store["n"] = store.get_default("n", 0) + 1
    elif path == "/update":
        environ["session"].store("bench").update("n", _increment, 0)
    elif path == "/count":
        body = str(environ["session"].store("bench").get_default("n", 0)).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _increment(n: int) -> int:
    return n + 1


def beakers(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    path = environ["PATH_INFO"]
    if path == "/read":
        environ["beaker.session"].get("n")
    elif path in ("/write", "/update"):
        session = environ["beaker.session"]
        session["n"] = session.get("n", 0) + 1
        session.save()
    elif path == "/count":
        body = str(environ["beaker.session"].get("n", 0)).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


class Client:
    """Calls a WSGI app directly and keeps its cookies, like a browser."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.cookies: dict[str, str] = {}
        self.headers: list[tuple[str, str]] = []

    def _start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None):
        self.headers = headers

    def request(self, path: str) -> bytes:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "wsgi.url_scheme": "http",
        }
        if self.cookies:
            environ["HTTP_COOKIE"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = self.app(environ, self._start_response)
        data = b"".join(body)
        close = getattr(body, "close", None)
        if close is not None:
            close()
        for name, value in self.headers:
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                self.cookies[key] = rest.split(";", 1)[0]
        return data

    def time(self, path: str, count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            self.request(path)
        return (time.perf_counter() - start) / count * 1e6


def measure(app: WSGIApp, count: int, rounds: int) -> dict[str, float | bool]:
    """Times for one configured app: untouched, read, write (the best of
    ``rounds`` runs of ``count`` requests each), and whether the counter
    reached every write."""
    best = dict.fromkeys(KINDS, float("inf"))
    fresh = Client(app)
    writer = Client(app)
    for _ in range(rounds):
        best["untouched"] = min(best["untouched"], fresh.time("/", count))
        best["write"] = min(best["write"], writer.time("/write", count))
        best["update"] = min(best["update"], writer.time("/update", count))
        best["read"] = min(best["read"], writer.time("/read", count))
    ok = writer.request("/count") == str(2 * count * rounds).encode()
    return {**best, "ok": ok}


def sessionstore_app(backend: str, options: dict[str, Any]) -> tuple[WSGIApp, Any]:
    inner = backend_class(backend)(**options)
    counted = _count_writes(inner)
    app = SessionMiddleware(ours, secret="bench-secret-0123456789abcdefghi", backend=counted)
    return app, counted


def _count_writes(backend: Any) -> Any:
    original = backend.compare_and_swap

    def compare_and_swap(*args: Any) -> bool:
        backend.write_count += 1
        return bool(original(*args))

    backend.write_count = 0
    backend.compare_and_swap = compare_and_swap
    return backend


def beaker_app(options: dict[str, Any]) -> WSGIApp:
    from beaker.middleware import SessionMiddleware as BeakerMiddleware

    return BeakerMiddleware(beakers, {f"session.{k}": v for k, v in options.items()})


def reachable(kind: str) -> str | None:
    """None when the server answers, else why not."""
    try:
        if kind == "redis":
            import redis

            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
        else:
            import sqlalchemy as sa

            with sa.create_engine(PG_URL).connect() as conn:
                conn.execute(sa.text("select 1"))
    except Exception as exc:  # any failure means: skip this pairing
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def pairings(directory: str) -> list[tuple[str, Callable[[], Any], Callable[[], Any], str | None]]:
    def path(name: str) -> str:
        return os.path.join(directory, name)

    return [
        (
            "memory / memory",
            lambda: sessionstore_app("memory", {}),
            lambda: beaker_app({"type": "memory"}),
            None,
        ),
        (
            "pickle / file",
            lambda: sessionstore_app("pickle", {"filename": path("s.dat")}),
            lambda: beaker_app(
                {"type": "file", "data_dir": path("beaker"), "lock_dir": path("lock")}
            ),
            None,
        ),
        (
            "pickle fsync",
            lambda: sessionstore_app("pickle", {"filename": path("sf.dat"), "fsync": True}),
            None,
            None,
        ),
        (
            "sqlite / database",
            lambda: sessionstore_app("sqlite", {"filename": path("s.db")}),
            lambda: beaker_app({"type": "ext:database", "url": f"sqlite:///{path('b.db')}"}),
            None,
        ),
        (
            "sqlite fsync",
            lambda: sessionstore_app("sqlite", {"filename": path("sf.db"), "fsync": True}),
            None,
            None,
        ),
        (
            "redis / redis",
            lambda: sessionstore_app("redis", {"url": REDIS_URL, "prefix": "bench-ss:"}),
            lambda: beaker_app({"type": "ext:redis", "url": REDIS_URL}),
            reachable("redis"),
        ),
        (
            "sql pg / database",
            lambda: sessionstore_app("sql", {"url": PG_URL, "table": "bench_sessions"}),
            lambda: beaker_app(
                {"type": "ext:database", "url": PG_URL, "table_name": "bench_beaker"}
            ),
            reachable("sql"),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="per round and cell")
    parser.add_argument("--rounds", type=int, default=5, help="the best round counts")
    parser.add_argument(
        "--only", default="", help="comma-separated pairing names to run (default: all)"
    )
    args = parser.parse_args()
    n, rounds = args.requests, args.rounds
    base = min(Client(bare).time("/", n) for _ in range(rounds))
    print(
        f"sessionstore vs Beaker: overhead in microseconds per request over the bare app "
        f"({base:.1f} us); best of {rounds} rounds of {n} requests per cell"
    )
    print(
        f"{'pairing':<20}{'kind':<11}{'sessionstore':>13}{'Beaker':>10}{'ratio':>8}"
        f"{'counters ok':>13}{'read writes':>13}"
    )
    with tempfile.TemporaryDirectory() as directory:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        for label, make_ours, make_beaker, unavailable in pairings(directory):
            if wanted and label.split()[0] not in wanted:
                continue
            if unavailable:
                print(f"{label:<20}skipped: {unavailable}")
                continue
            app, backend = make_ours()
            rows = measure(app, n, rounds)
            backend.write_count = 0
            client = Client(app)
            client.request("/write")
            before = backend.write_count
            for _ in range(100):
                client.request("/read")
            read_writes = backend.write_count - before
            theirs = measure(make_beaker(), n, rounds) if make_beaker else None
            for kind in KINDS:
                mine = rows[kind] - base
                if theirs is not None:
                    other = theirs[kind] - base
                    ratio = f"{mine / other:.2f}" if other > 0 else "-"
                    other_s = f"{other:.1f}"
                    ok = f"{rows['ok']}/{theirs['ok']}"
                else:
                    other_s, ratio, ok = "-", "-", f"{rows['ok']}"
                extra = f"{read_writes}/100" if kind == "read" else ""
                print(
                    f"{label:<20}{kind:<11}{mine:>13.1f}{other_s:>10}{ratio:>8}{ok:>13}{extra:>13}"
                )
                label = ""
            backend.delete_all()
            backend.close()


if __name__ == "__main__":
    main()
