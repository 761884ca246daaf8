"""What cleanup costs on the network backends: a request's share, and purge.

    python benchmarks/cleanup.py [--sessions 100000] [--rounds 5] [--only redis,postgresql,mysql]

Each backend gets N stored sessions (200-byte payloads), half of them expired,
in a fresh key prefix or table.  Then it times what a request that draws
cleanup runs, ``delete_expired(now, limit=100)`` (best of R; on Redis, whose
keys expire by TTL, it must not scan at all; elsewhere it deletes one small
batch), and once what ``sessionstore purge`` runs, ``delete_expired(now)``.
Servers as in tests/test_servers.py (``SESSIONSTORE_TEST_*_URL``); an
unreachable one is skipped.  Everything written is deleted afterwards.

Run by hand; the figures vary with the machine, so compare within one run.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# Not this folder on the path: its http.py would hide the standard library's.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, os.path.dirname(HERE))

from sessionstore.backends.base import Backend, Record  # noqa: E402
from sessionstore.errors import SessionStoreError  # noqa: E402
from sessionstore.ids import new_session_id  # noqa: E402

PAYLOAD = os.urandom(200)
URLS = {
    "redis": os.environ.get("SESSIONSTORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
    "postgresql": os.environ.get(
        "SESSIONSTORE_TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get(
        "SESSIONSTORE_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
    ),
}
LIMIT = 100


def open_backend(name: str, unique: str) -> Backend:
    if name == "redis":
        from sessionstore.backends.redis import RedisBackend

        return RedisBackend(URLS[name], prefix=f"bench-{unique}:")
    from sessionstore.backends.sql import SqlBackend

    return SqlBackend(URLS[name], table=f"bench_{unique}")


def records(count: int, now: float) -> list[Record]:
    return [
        Record(new_session_id(), 1, now - 7200, now - 3600, now + (-60 if i % 2 else 3600), PAYLOAD)
        for i in range(count)
    ]


def fill(backend: Backend, count: int, now: float) -> None:
    """Store ``count`` sessions in bulk (the backends' own add() is one
    round trip each)."""
    batch = records(count, now)
    if backend.__class__.__name__ == "RedisBackend":
        from sessionstore.backends.redis import EXPIRY_GRACE

        client = backend._client  # type: ignore[attr-defined]
        for start in range(0, count, 1000):
            pipe = client.pipeline(transaction=False)
            for r in batch[start : start + 1000]:
                key = backend._key(r.session_id)  # type: ignore[attr-defined]
                fields = {"v": 1, "c": repr(r.created_at), "a": repr(r.accessed_at)}
                pipe.hset(key, mapping={**fields, "e": repr(r.expires_at), "p": r.payload})
                pipe.pexpireat(key, int((r.expires_at + EXPIRY_GRACE) * 1000))
            pipe.execute()
        return
    rows = [
        {
            "id": r.session_id,
            "version": 1,
            "created_at": r.created_at,
            "accessed_at": r.accessed_at,
            "expires_at": r.expires_at,
            "payload": r.payload,
        }
        for r in batch
    ]
    with backend._engine.begin() as conn:  # type: ignore[attr-defined]
        for start in range(0, count, 5000):
            conn.execute(backend.table.insert(), rows[start : start + 5000])  # type: ignore[attr-defined]


def measure(name: str, sessions: int, rounds: int) -> tuple[str, ...]:
    unique = secrets.token_hex(4)
    backend = open_backend(name, unique)
    try:
        backend.setup()
    except SessionStoreError as exc:
        return (name, f"skipped: {str(exc).splitlines()[0]}", "", "", "")
    try:
        now = time.time()
        fill(backend, sessions, now)
        best = float("inf")
        removed_by_requests = 0
        for _ in range(rounds):
            started = time.perf_counter()
            removed_by_requests += backend.delete_expired(now, limit=LIMIT)
            best = min(best, time.perf_counter() - started)
        started = time.perf_counter()
        purged = backend.delete_expired(now)
        purge_seconds = time.perf_counter() - started
        left = backend.count()
        expected_left = sessions - sessions // 2
        checked = removed_by_requests + purged == sessions // 2 and left == expected_left
        return (
            name,
            f"{best * 1000:.2f} ms ({removed_by_requests} deleted)",
            f"{purge_seconds:.2f} s ({purged} deleted)",
            f"{left}",
            "ok" if checked else "FAILED",
        )
    finally:
        backend.delete_all()
        if name != "redis":
            with backend._engine.begin() as conn:  # type: ignore[attr-defined]
                backend.table.drop(conn)  # type: ignore[attr-defined]
        backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="redis,postgresql,mysql")
    args = parser.parse_args()
    header = ("backend", f"request cleanup, best of {args.rounds}", "purge", "left", "check")
    rows = [header] + [measure(n, args.sessions, args.rounds) for n in args.only.split(",")]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print(f"{args.sessions} sessions, half expired; a request's cleanup is limit={LIMIT}")
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
