"""Commit cost against the number of stored sessions: pickle and SQLite.

    python benchmarks/scale.py [--commits N] [--rounds R] [--sizes 100,1000,10000,100000]

For each backend and store size, the store is filled with that many sessions
(200-byte payloads), reopened, and then timed over N commits (the best of R
rounds), each a read and a compare-and-swap of a random session: what a write
request costs the backend.  Prints microseconds per commit for each size and the ratio of the
largest to the smallest, then what a bigger store costs elsewhere: opening
it (the pickle backend reads its whole log; SQLite checks the file), its size
on disk, and for the pickle log the compaction that runs once the log holds
as many stale records as live ones (spread over the commits in between).

Run by hand; the figures vary with the machine, so compare within one run.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# Not this folder on the path: its http.py would hide the standard library's.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, os.path.dirname(HERE))

from sessionstore.backends.base import Backend, Record  # noqa: E402
from sessionstore.backends.picklefile import PickleBackend  # noqa: E402
from sessionstore.backends.sqlite import SqliteBackend  # noqa: E402
from sessionstore.ids import new_session_id  # noqa: E402

PAYLOAD = os.urandom(200)
KINDS = {"pickle": (PickleBackend, "dat"), "sqlite": (SqliteBackend, "db")}


def fill(kind: str, path: str, size: int) -> list[str]:
    """A store at ``path`` holding ``size`` sessions; their ids."""
    backend = KINDS[kind][0](path)
    backend.setup()
    now = time.time()
    ids = [new_session_id() for _ in range(size)]
    for session_id in ids:
        backend.add(Record(session_id, 1, now, now, now + 86400, PAYLOAD))
    backend.close()
    return ids


def commits(backend: Backend, ids: list[str], count: int, rounds: int) -> float:
    """Microseconds per read + compare-and-swap of a random stored session
    (the best of ``rounds`` runs of ``count``)."""
    choose = random.Random(1).choice
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(count):
            session_id = choose(ids)
            record = backend.get(session_id)
            assert record is not None
            new = record._replace(version=record.version + 1, accessed_at=time.time())
            if not backend.compare_and_swap(session_id, record.version, new):
                raise AssertionError("a compare-and-swap failed with nobody else writing")
        best = min(best, (time.perf_counter() - start) / count * 1e6)
    return best


def measure(
    kind: str, fsync: bool, size: int, count: int, rounds: int, directory: str
) -> dict[str, float]:
    path = os.path.join(directory, f"{kind}-{size}.{KINDS[kind][1]}")
    if not os.path.exists(path):
        fill(kind, path, size)
    start = time.perf_counter()
    backend = KINDS[kind][0](path, fsync=fsync)
    backend.setup()
    opened = (time.perf_counter() - start) * 1e3
    ids = list(backend.get_all())
    assert len(ids) == size, (len(ids), size)
    before = os.path.getsize(path)
    result = {
        "commit": commits(backend, ids, count, rounds),
        "open_ms": opened,
        "file_mb": before / 1e6,
    }
    if isinstance(backend, PickleBackend):
        per_commit = (os.path.getsize(path) - before) / (count * rounds)  # bytes appended
        start = time.perf_counter()
        backend._compact()  # noqa: SLF001 - timed on purpose
        result["compact_ms"] = (time.perf_counter() - start) * 1e3
        # It runs again once the log has grown by the live data plus 1 MiB.
        between = (os.path.getsize(path) + (1 << 20)) / per_commit
        result["compact_per_commit"] = result["compact_ms"] * 1e3 / between
    backend.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=1000, help="per round")
    parser.add_argument("--rounds", type=int, default=3, help="the best round counts")
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    rows = [("pickle", False), ("pickle", True), ("sqlite", False), ("sqlite", True)]
    results: dict[tuple[str, bool], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as directory:
        for kind, fsync in rows:
            count = args.commits if not fsync else max(args.commits // 10, 100)
            results[kind, fsync] = [
                measure(kind, fsync, size, count, args.rounds, directory) for size in sizes
            ]

    def label(kind: str, fsync: bool) -> str:
        return kind + (" fsync" if fsync else "")

    ratio = f"{sizes[-1]:,}/{sizes[0]:,}"
    print("Commit cost (read + compare-and-swap), microseconds, by sessions stored")
    print(f"{'backend':<14}" + "".join(f"{n:>11,}" for n in sizes) + f"{ratio:>16}")
    for key, cells in results.items():
        costs = [cell["commit"] for cell in cells]
        print(
            f"{label(*key):<14}"
            + "".join(f"{c:>11.1f}" for c in costs)
            + f"{costs[-1] / costs[0]:>16.2f}"
        )
    print("\nWhat else grows with the store")
    print(f"{'backend':<14}{'':<22}" + "".join(f"{n:>11,}" for n in sizes))
    for kind in ("pickle", "sqlite"):
        cells = results[kind, False]
        print(f"{kind:<14}{'open (ms)':<22}" + "".join(f"{c['open_ms']:>11.1f}" for c in cells))
        print(f"{'':<14}{'file (MB)':<22}" + "".join(f"{c['file_mb']:>11.2f}" for c in cells))
        if kind == "pickle":
            print(
                f"{'':<14}{'compaction (ms)':<22}"
                + "".join(f"{c['compact_ms']:>11.1f}" for c in cells)
            )
            print(
                f"{'':<14}{'  per commit (us)':<22}"
                + "".join(f"{c['compact_per_commit']:>11.2f}" for c in cells)
            )


if __name__ == "__main__":
    main()
