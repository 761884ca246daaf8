"""A user's sessions: ``sessions_of`` and ``destroy_user`` against a full scan.

    python benchmarks/users.py [--sessions 100000] [--users 1000] [--only sqlite,redis]

Fills each backend with ``--sessions`` sessions spread over ``--users`` users
(so 100 each by default), then times, per backend:

* ``user_sessions(user)``: the backend's index, the median over 20 users (or
  half of them when fewer than 40): O(that user's sessions);
* a full scan (``iter_records()`` filtered by user): what it would cost
  without the index, once;
* ``sessions_of(user)``: the index plus verifying each payload;
* ``destroy_user(user)``: the median over 20 other users.

Prints milliseconds and the scan / index ratio, and checks every listing's
count.  Servers that are not reachable are skipped with a note.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
# Not this folder on the path: its http.py would hide the standard library's.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, os.path.dirname(HERE))

from sessionstore import SessionMiddleware  # noqa: E402
from sessionstore.backends.base import Record  # noqa: E402
from sessionstore.ids import new_session_id  # noqa: E402
from sessionstore.payload import Binding  # noqa: E402

SECRET = "bench-secret-for-the-user-index-0123456789"
SERVERS = {
    "redis": (
        "redis",
        {
            "url": os.environ.get("SESSIONSTORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/14"),
            "prefix": "bench-users:",
        },
    ),
    "postgresql": (
        "sql",
        {
            "url": os.environ.get(
                "SESSIONSTORE_TEST_POSTGRESQL_URL",
                "postgresql+psycopg://postgres@127.0.0.1:5432/test",
            ),
            "table": "bench_users",
        },
    ),
    "mysql": (
        "sql",
        {
            "url": os.environ.get(
                "SESSIONSTORE_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
            ),
            "table": "bench_users",
        },
    ),
}


def configurations(directory: str) -> dict[str, tuple[str, dict[str, Any] | None]]:
    return {
        "memory": ("memory", None),
        "pickle": ("pickle", {"filename": os.path.join(directory, "s.dat")}),
        "sqlite": ("sqlite", {"filename": os.path.join(directory, "s.db")}),
        **SERVERS,
    }


def fill(mw: SessionMiddleware, sessions: int, users: int) -> None:
    """Store ``sessions`` bound sessions, round robin over the users."""
    codec, now = mw._manager.payloads, time.time()
    batch = []
    for n in range(sessions):
        user = f"user{n % users}"
        sid, expires = new_session_id(), now + 86400
        binding = Binding(user, "bench", "127.0.0.1", now)
        payload = codec.dumps({"a": {"k": b"v"}}, None, sid, now, expires, binding)
        batch.append(Record(sid, 1, now, now, expires, payload, user))
    for record in batch:
        mw.backend.add(record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--only", default="", help="comma-separated backends (default: all)")
    args = parser.parse_args()
    per_user = args.sessions // args.users
    wanted = {name for name in args.only.split(",") if name}
    print(f"{args.sessions} sessions, {args.users} users ({per_user} each); milliseconds")
    print(
        f"{'backend':<12}{'fill s':>9}{'index':>9}{'full scan':>11}"
        f"{'ratio':>8}{'sessions_of':>13}{'destroy':>10}"
    )
    with tempfile.TemporaryDirectory() as directory:
        for name, (kind, options) in configurations(directory).items():
            if wanted and name not in wanted:
                continue
            try:
                mw = SessionMiddleware(
                    lambda e, s: [], secret=SECRET, backend=kind, backend_options=options
                )
                mw.backend.delete_all()
            except Exception as exc:  # a server that is not here
                print(f"{name:<12}skipped: {str(exc).splitlines()[0][:70]}")
                continue
            try:
                start = time.perf_counter()
                fill(mw, args.sessions, args.users)
                filled = time.perf_counter() - start
                indexed, listed = [], []
                sample = max(1, min(20, args.users // 2))
                for u in range(sample):
                    start = time.perf_counter()
                    found = mw.backend.user_sessions(f"user{u}")
                    indexed.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    verified = mw.sessions_of(f"user{u}")
                    listed.append(time.perf_counter() - start)
                    assert len(found) == len(verified) == per_user, (name, len(found))
                start = time.perf_counter()
                scanned = [r for r in mw.backend.iter_records() if r.user == "user0"]
                scan = time.perf_counter() - start
                assert len(scanned) == per_user
                destroyed = []
                for u in range(sample, 2 * sample):
                    start = time.perf_counter()
                    assert mw.destroy_user(f"user{u}") == per_user
                    destroyed.append(time.perf_counter() - start)
                assert mw.sessions_of(f"user{sample}") == []
                index = statistics.median(indexed)
                print(
                    f"{name:<12}{filled:>9.1f}{index * 1e3:>9.2f}{scan * 1e3:>11.1f}"
                    f"{scan / index:>8.0f}{statistics.median(listed) * 1e3:>13.2f}"
                    f"{statistics.median(destroyed) * 1e3:>10.2f}"
                )
            finally:
                mw.backend.delete_all()
                if kind == "sql":
                    with mw.backend._engine.begin() as conn:  # type: ignore[attr-defined]
                        mw.backend.table.drop(conn, checkfirst=True)  # type: ignore[attr-defined]
                mw.close()


if __name__ == "__main__":
    main()
