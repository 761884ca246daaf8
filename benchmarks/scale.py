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

    python benchmarks/scale.py --fleet [--sessions 1000,1000000] [--workers 4]
                               [--seconds 20] [--kinds pickle,sqlite] [--dir DIR]
                               [--slowest N]

The issue-14 targets: for each store size, WORKERS fresh processes open the
store and commit (read + compare-and-swap of a random session, as fast as they
can) for SECONDS and until the parent is done: halfway through, it runs a
compaction (pickle), then a purge of the 10% of sessions that are expired
(both).  Prints per backend and size: open time (max over workers), RSS per
worker (max), commit median and p99.9, the longest commit overall, how long
the compaction and the purge took and the longest commit during each, and
errors.  Targets: open <= 1 s, RSS <=
100 MB, longest <= 100 ms, 0 errors at 1,000,000; median at 1,000,000 <= 1.5x
the median at 1,000.  Stores are filled afresh for each run, in DIR (default
a temporary directory, removed at the end).  ``--slowest N`` lists the N slowest commits under
each row, with when each started (seconds from the compaction's start) and
in which phase: where to look first when the longest misses its target.

    python benchmarks/scale.py --wal 60 [--workers 4]

SQLite under WORKERS saturating writers for the given seconds: the largest
``-wal`` file seen (target <= 64 MB).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from array import array
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
# Not this folder on the path: its http.py would hide the standard library's.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, os.path.dirname(HERE))

import contextlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402

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
        backend.compact()
        result["compact_ms"] = (time.perf_counter() - start) * 1e3
        # It runs again once the log has grown by the live data plus 1 MiB.
        between = (os.path.getsize(path) + (1 << 20)) / per_commit
        result["compact_per_commit"] = result["compact_ms"] * 1e3 / between
    backend.close()
    return result


# -- the fleet: several worker processes on one big store -------------------------------


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fast_fill(kind: str, path: str, size: int) -> None:
    """``size`` sessions, the first tenth of them expired, written in batches."""
    backend = KINDS[kind][0](path)
    backend.setup()
    now = time.time()
    batch: list[Record] = []
    for n in range(size):
        expires = now - 10 if n < size // 10 else now + 86400
        batch.append(Record(f"{n:043d}", 1, now, now, expires, PAYLOAD))
        if len(batch) == 10_000 or n == size - 1:
            if isinstance(backend, PickleBackend):
                with backend._locked(exclusive=True):  # noqa: SLF001 - bulk fill
                    backend._put_records(batch)  # noqa: SLF001
            elif isinstance(backend, SqliteBackend):
                with backend._conn() as conn:  # noqa: SLF001 - one transaction per batch
                    conn.execute("BEGIN")
                    conn.executemany("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)", batch)
                    conn.execute("COMMIT")
            batch = []
    backend.close()


def worker(kind: str, path: str, size: int, seconds: float) -> None:
    """One worker process: open, then commit until the time is up; print JSON."""
    start = time.perf_counter()
    backend = KINDS[kind][0](path)
    backend.setup()
    choose = random.Random(os.getpid()).randrange
    backend.get(f"{choose(size // 10, size):043d}")
    opened = time.perf_counter() - start
    rss = rss_mb()
    # Arrays, not lists of floats: at ~250,000 commits a worker, two lists
    # held ~16 MB, counted in the RSS the benchmark reports for the store.
    stamps = array("d")
    costs = array("d")
    errors = 0
    deadline = time.time() + seconds
    done = path + ".done"  # the parent's compaction and purge are over
    while time.time() < deadline or not os.path.exists(done):
        session_id = f"{choose(size // 10, size):043d}"  # live sessions only
        begin = time.perf_counter()
        try:
            record = backend.get(session_id)
            assert record is not None
            new = record._replace(version=record.version + 1, accessed_at=time.time())
            backend.compare_and_swap(session_id, record.version, new)
        except Exception:
            errors += 1
        costs.append(time.perf_counter() - begin)
        stamps.append(time.time())
        rss = max(rss, rss_mb()) if len(costs) % 1000 == 0 else rss
    rss = max(rss, rss_mb())
    backend.close()
    json.dump({"open": opened, "rss": rss, "costs": costs.tolist(), "stamps": stamps.tolist(),
               "errors": errors}, sys.stdout)  # fmt: skip


def fleet_run(
    kind: str, path: str, size: int, workers: int, seconds: float, slow: int = 0
) -> dict[str, Any]:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path + ".done")
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", kind, path, str(size), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    time.sleep(seconds / 2 + 0.5)  # the workers are open and committing by then
    maintenance = KINDS[kind][0](path)
    maintenance.setup()
    begin = time.time()
    if isinstance(maintenance, PickleBackend):
        maintenance.compact()
    middle = time.time()
    purged = maintenance.delete_expired()
    end = time.time()
    maintenance.close()
    # The workers commit until then, however long the compaction took (15 s
    # at 1,000,000 sessions on a busy 2-core machine: more than they had left).
    open(path + ".done", "w").close()
    results = [json.loads(proc.communicate()[0]) for proc in procs]
    os.unlink(path + ".done")
    costs = sorted(c for r in results for c in r["costs"])

    def longest(start: float, stop: float) -> float:
        return max(
            (
                c
                for r in results
                for c, t in zip(r["costs"], r["stamps"], strict=True)
                if t >= start and t - c <= stop
            ),
            default=0.0,
        )

    # The slowest commits, each with when it started: seconds from the
    # compaction's start, and the worker's pid order.
    slowest = sorted(
        (c, t - c - begin, n)
        for n, r in enumerate(results)
        for c, t in zip(r["costs"], r["stamps"], strict=True)
    )[len(costs) - slow :]
    return {
        "slowest": slowest,
        "open_s": max(r["open"] for r in results),
        "rss_mb": max(r["rss"] for r in results),
        "median_us": statistics.median(costs) * 1e6,
        "p999_ms": costs[int(len(costs) * 0.999)] * 1e3,
        "max_ms": costs[-1] * 1e3,
        "compact_ms": longest(begin, middle) * 1e3,
        "compact_s": middle - begin,
        "purge_ms": longest(middle, end) * 1e3,
        "purge_s": end - middle,
        "purged": purged,
        "commits": len(costs),
        "errors": sum(r["errors"] for r in results),
    }


def fleet(args: argparse.Namespace) -> None:
    if args.dir:
        return fleet_in(args, args.dir)
    # (Removed afterwards: each run at 1,000,000 sessions leaves ~360 MB.)
    with tempfile.TemporaryDirectory(prefix="scale-") as directory:
        fleet_in(args, directory)


def fleet_in(args: argparse.Namespace, directory: str) -> None:
    sizes = [int(n) for n in args.sessions.split(",")]
    print(f"{args.workers} workers x {args.seconds:g} s; stores in {directory}")
    header = (
        f"{'backend':<8}{'sessions':>10}{'open s':>8}{'RSS MB':>8}{'median us':>11}"
        f"{'p99.9 ms':>10}{'max ms':>8}{'compaction: s, max ms':>23}"
        f"{'purge: s, max ms':>18}{'errors':>8}"
    )
    print(header)
    for kind in args.kinds.split(","):
        for size in sizes:
            path = os.path.join(directory, f"fleet-{kind}-{size}.{KINDS[kind][1]}")
            if not os.path.exists(path + ".filled"):
                for extra in (path, path + ".lock", path + "-wal", path + "-shm"):
                    if os.path.exists(extra):
                        os.unlink(extra)
                fast_fill(kind, path, size)
                open(path + ".filled", "w").close()
            r = fleet_run(kind, path, size, args.workers, args.seconds, args.slowest)
            print(
                f"{kind:<8}{size:>10,}{r['open_s']:>8.2f}{r['rss_mb']:>8.0f}"
                f"{r['median_us']:>11.0f}{r['p999_ms']:>10.1f}{r['max_ms']:>8.1f}"
                f"{r['compact_s']:>15.2f}{r['compact_ms']:>8.1f}"
                f"{r['purge_s']:>10.2f}{r['purge_ms']:>8.1f}{r['errors']:>8}",
                flush=True,
            )
            os.unlink(path + ".filled")  # the purge changed it: fill afresh next time
            for cost, at, worker_no in reversed(r["slowest"]):
                phase = (
                    "compaction" if 0 <= at < r["compact_s"]
                    else "purge" if 0 <= at - r["compact_s"] < r["purge_s"]
                    else "before" if at < 0 else "after"
                )  # fmt: skip
                print(f"    {cost * 1e3:7.1f} ms at {at:+7.2f} s ({phase}), worker {worker_no}")


def wal_worker(path: str, seconds: float) -> None:
    backend = SqliteBackend(path)
    backend.setup()
    deadline = time.time() + seconds
    n = 0
    while time.time() < deadline:
        session_id = f"{os.getpid()}-{n % 5000:036d}"[:43]
        now = time.time()
        backend.add(Record(session_id, 1, now, now, now + 86400, os.urandom(2000)))
        n += 1
    backend.close()
    print(n)


def wal(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "wal.db")
        SqliteBackend(path).setup()
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--wal-worker", path, str(args.wal)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(args.workers)
        ]
        largest = 0
        while any(p.poll() is None for p in procs):
            with contextlib.suppress(OSError):
                largest = max(largest, os.path.getsize(path + "-wal"))
            time.sleep(0.1)
        writes = sum(int(p.communicate()[0]) for p in procs)
    print(f"SQLite, {args.workers} saturating writers, {args.wal:g} s: {writes:,} writes")
    print(f"largest -wal file seen: {largest / 2**20:.1f} MB (target <= 64)")


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        kind, path, size, seconds = sys.argv[2:]
        return worker(kind, path, int(size), float(seconds))
    if sys.argv[1:2] == ["--wal-worker"]:
        return wal_worker(sys.argv[2], float(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=1000, help="per round")
    parser.add_argument("--rounds", type=int, default=3, help="the best round counts")
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    parser.add_argument("--fleet", action="store_true", help="the multi-process run")
    parser.add_argument("--sessions", default="1000,1000000", help="--fleet store sizes")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--kinds", default="pickle,sqlite")
    parser.add_argument("--dir", help="keep the filled --fleet stores here")
    parser.add_argument(
        "--slowest", type=int, default=0, help="--fleet: list the N slowest commits, and when"
    )
    parser.add_argument("--wal", type=float, help="seconds of the SQLite WAL run")
    args = parser.parse_args()
    if args.fleet:
        return fleet(args)
    if args.wal:
        return wal(args)
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
