"""Per-request cost of each embedded backend, with and without ``fsync``.

    python benchmarks/backends.py [--requests N]

Direct WSGI calls, no test client: the numbers are the middleware's and the
backend's own.  Commit cost against the store's size is ``scale.py``.  Run by
hand; figures vary with the machine, so compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# Not this folder on the path: its http.py would hide the standard library's.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.overhead import bare, ours  # noqa: E402
from sessionstore import SessionMiddleware  # noqa: E402


def run(app, path: str, cookie: str | None, count: int) -> tuple[float, str | None]:
    """Microseconds per request; returns the session cookie it ended with."""
    headers: list = []

    def start_response(status, response_headers, exc_info=None):
        headers[:] = response_headers

    start = time.perf_counter()
    for _ in range(count):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.url_scheme": "http"}
        if cookie:
            environ["HTTP_COOKIE"] = cookie
        body = app(environ, start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close:
            close()
        for name, value in headers:
            if name == "Set-Cookie" and value.startswith("session="):
                cookie = value.split(";", 1)[0]
    return (time.perf_counter() - start) / count * 1e6, cookie


def request_table(count: int, directory: str) -> None:
    base = run(bare, "/", None, count)[0]
    print(
        f"\nPer request, {count} requests each (microseconds; overhead = minus the bare app's "
        f"{base:.1f})"
    )
    print(f"{'backend':<16}{'untouched':>12}{'read-only':>12}{'write':>12}{'writes ok':>11}")
    for kind, options in [
        ("memory", {}),
        ("pickle", {"filename": os.path.join(directory, "r.dat")}),
        ("pickle fsync", {"filename": os.path.join(directory, "rf.dat"), "fsync": True}),
        ("sqlite", {"filename": os.path.join(directory, "r.db")}),
        ("sqlite fsync", {"filename": os.path.join(directory, "rf.db"), "fsync": True}),
    ]:
        mw = SessionMiddleware(
            ours,
            secret="bench-0123456789abcdefghijklmnop",
            backend=kind.split()[0],
            backend_options=options,
            cleanup_probability=0,
        )
        n = count if "fsync" not in kind else max(count // 10, 50)
        untouched = run(mw, "/", None, n)[0] - base
        write, cookie = run(mw, "/write", None, n)
        read = run(mw, "/read", cookie, n)[0] - base
        [record] = mw.backend.get_all().values()
        stored = mw._manager.payloads.loads(record)[0]
        import pickle

        ok = pickle.loads(stored["bench"]["n"]) == n
        print(f"{kind:<16}{untouched:>12.1f}{read:>12.1f}{write - base:>12.1f}{str(ok):>11}")
        mw.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        request_table(args.requests, directory)


if __name__ == "__main__":
    main()
