"""Requests per second through a real HTTP server: waitress on loopback.

    pip install -e '.[bench]'
    python benchmarks/http.py [--seconds S] [--rounds R] [--clients C] [--threads T]

Each configuration runs in its own waitress process (T threads).  This
process plays one visitor, then C visitors at once, each with a keep-alive
connection and its own session cookie, for S seconds per cell (the best of R
rounds); one thread drives them all without blocking (client threads would
fight over this process's GIL and measure that instead of the server).  Two
mixes:

* read: every request reads the visitor's counter;
* mixed: one request in five increments it, the others read it.

The bare application (no sessions) sets the ceiling.  After each run every
visitor's counter is fetched and compared with the increments that were
answered 200, so a lost write shows as a failed check.  Redis pairings are
skipped with a note when no server answers.  Run by hand, on a quiet machine;
compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
# Not this folder on the path: this http.py would hide the standard library's.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, os.path.dirname(HERE))

REDIS_URL = os.environ.get("SESSIONSTORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")


# -- the server side: python benchmarks/http.py --serve CONFIG_JSON -------------------------


def build_app(config: dict[str, Any]) -> Any:
    from benchmarks.overhead import bare, beakers, ours

    kind = config["kind"]
    if kind == "bare":
        return bare
    if kind == "sessionstore":
        from sessionstore import SessionMiddleware

        return SessionMiddleware(
            ours,
            secret="bench-secret-0123456789abcdefghi",
            backend=config["backend"],
            backend_options=config["options"],
        )
    from beaker.middleware import SessionMiddleware as BeakerMiddleware

    options = {f"session.{k}": v for k, v in config["options"].items()}
    return BeakerMiddleware(beakers, options)


def serve(config_json: str, threads: int) -> None:
    import logging

    from waitress.server import create_server

    # More visitors than threads queue up by design; that is not news.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)

    server = create_server(
        build_app(json.loads(config_json)), host="127.0.0.1", port=0, threads=threads
    )
    print(server.effective_port, flush=True)  # type: ignore[union-attr]
    server.run()


# -- the client side ------------------------------------------------------------------------


class Visitor:
    """One keep-alive HTTP/1.1 connection with a session cookie, driven
    without blocking so that one thread can run many."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.cookie = ""
        self.buffer = b""
        self.path = ""
        self.done = self.writes = self.errors = 0

    def send(self, path: str) -> None:
        self.path = path
        cookie = f"Cookie: {self.cookie}\r\n" if self.cookie else ""
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n{cookie}\r\n".encode("ascii"))

    def receive(self) -> bytes | None:
        """Read what has arrived; the body once a whole response is in."""
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk
        head, found, rest = self.buffer.partition(b"\r\n\r\n")
        if not found:
            return None
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.lower()
            if name == "content-length":
                length = int(value)
            elif name == "set-cookie":
                pair = value.strip().split(";", 1)[0]
                if pair.split("=", 1)[0] in ("session", "beaker.session.id"):
                    self.cookie = pair
        if len(rest) < length:
            return None
        self.buffer = rest[length:]
        if lines[0].split()[1] != "200":
            self.errors += 1
        elif self.path == "/write":
            self.writes += 1
        self.done += 1
        return rest[:length]

    def fetch(self, path: str) -> bytes:
        """One request, waiting for its answer (outside the timed run)."""
        self.send(path)
        while True:
            body = self.receive()
            if body is not None:
                return body


def load(
    port: int, clients: int, seconds: float, write_every: int, count: bool = True
) -> dict[str, Any]:
    """Run the visitors for ``seconds``; requests per second and the checks."""
    visitors = [Visitor(port) for _ in range(clients)]
    for visitor in visitors:
        visitor.fetch("/write")  # every visitor starts with a session and a counter of 1
        visitor.done = 0
    selector = selectors.DefaultSelector()
    for visitor in visitors:
        selector.register(visitor.sock, selectors.EVENT_READ, visitor)
        visitor.send("/read")
    start = time.perf_counter()
    stop = start + seconds
    busy = clients
    while busy:
        for key, _ in selector.select(timeout=10):
            visitor = key.data
            if visitor.receive() is None:
                continue
            if time.perf_counter() >= stop:
                selector.unregister(visitor.sock)
                busy -= 1
                continue
            n = visitor.done + 1
            visitor.send("/write" if write_every and n % write_every == 0 else "/read")
    elapsed = time.perf_counter() - start
    selector.close()
    done = sum(v.done for v in visitors)
    errors = sum(v.errors for v in visitors)
    expected = [v.writes for v in visitors]
    counted = [int(v.fetch("/count")) for v in visitors] if count else expected
    for visitor in visitors:
        visitor.sock.close()
    return {"rps": done / elapsed, "errors": errors, "counters_ok": counted == expected}


def redis_reachable() -> str | None:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception as exc:  # any failure means: skip these rows
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def configurations(directory: str) -> list[tuple[str, dict[str, Any], str | None]]:
    def path(name: str) -> str:
        return os.path.join(directory, name)

    redis_missing = redis_reachable()
    prefix = f"bench-http-{os.getpid()}:"
    return [
        ("bare app", {"kind": "bare"}, None),
        (
            "sessionstore sqlite",
            {"kind": "sessionstore", "backend": "sqlite", "options": {"filename": path("s.db")}},
            None,
        ),
        (
            "sessionstore pickle",
            {"kind": "sessionstore", "backend": "pickle", "options": {"filename": path("s.dat")}},
            None,
        ),
        (
            "sessionstore redis",
            {
                "kind": "sessionstore",
                "backend": "redis",
                "options": {"url": REDIS_URL, "prefix": prefix},
            },
            redis_missing,
        ),
        (
            "Beaker file",
            {
                "kind": "beaker",
                "options": {"type": "file", "data_dir": path("bf"), "lock_dir": path("bl")},
            },
            None,
        ),
        (
            "Beaker ext:database",
            {
                "kind": "beaker",
                "options": {"type": "ext:database", "url": f"sqlite:///{path('b.db')}"},
            },
            None,
        ),
        (
            "Beaker ext:redis",
            {"kind": "beaker", "options": {"type": "ext:redis", "url": REDIS_URL}},
            redis_missing,
        ),
    ]


def start_server(config: dict[str, Any], threads: int) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", json.dumps(config), "--threads", str(threads)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip():
        proc.kill()
        raise SystemExit(f"the server for {config} did not start")
    return proc, int(line)


def clean_redis(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per round and cell")
    parser.add_argument("--rounds", type=int, default=2, help="the best round counts")
    parser.add_argument("--clients", type=int, default=8, help="visitors at once")
    parser.add_argument("--threads", type=int, default=8, help="waitress threads")
    parser.add_argument(
        "--only", default="", help="comma-separated configurations to run (default: all)"
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.threads)
        return
    wanted = {name.strip() for name in args.only.split(",") if name.strip()}
    cells = [
        (mix, write_every, clients)
        for mix, write_every in (("read", 0), ("mixed", 5))
        for clients in (1, args.clients)
    ]
    print(
        f"Requests per second through waitress ({args.threads} threads, its own process); "
        f"best of {args.rounds} rounds of {args.seconds:g} s per cell"
    )
    print(f"{'':<22}" + "".join(f"{f'{m}, {c} visitor' + 's' * (c > 1):>18}" for m, _, c in cells))
    print(f"{'configuration':<22}" + f"{'rps  % bare':>18}" * len(cells) + "  checks")
    ceiling: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as directory:
        for label, config, unavailable in configurations(directory):
            if wanted and label not in wanted and config["kind"] != "bare":
                continue  # the bare app always runs: it is the ceiling
            if unavailable:
                print(f"{label:<22}skipped: {unavailable}")
                continue
            row, failures = [], []
            for mix, write_every, clients in cells:
                best = 0.0
                for _ in range(args.rounds):
                    proc, port = start_server(config, args.threads)
                    try:
                        result = load(
                            port, clients, args.seconds, write_every, config["kind"] != "bare"
                        )
                    finally:
                        proc.terminate()
                        proc.wait()
                    best = max(best, result["rps"])
                    if not result["counters_ok"] or result["errors"]:
                        failures.append(f"{mix}/{clients}: {result['errors']} errors")
                if config["kind"] == "bare":
                    ceiling[mix, clients] = best
                share = best / ceiling[mix, clients] * 100
                row.append(f"{best:>11.0f}{share:>6.0f}%")
            checks = (
                "-"
                if config["kind"] == "bare"
                else "FAILED " + "; ".join(failures)
                if failures
                else "ok"
            )
            print(f"{label:<22}" + "".join(row) + "  " + checks)
            if config.get("backend") == "redis":
                clean_redis(config["options"]["prefix"])


if __name__ == "__main__":
    main()
