"""Wall-clock overhead of this checkout against another, measured in turns.

    python benchmarks/against.py DIR [--rows memory:/write,...] [--turns 7]

``overhead.py`` times one checkout; comparing two of its tables taken minutes
apart on a shared two-core machine compares the machine's load as much as
the code.  This runs both checkouts in turns instead: each turn starts one
child process per checkout and row (the order flips every turn), and each
child times 1,000 requests of ``overhead.py``'s application against 1,000
of the bare application, best of 5 rounds.  The table gives each
checkout's median over the turns, in microseconds of overhead per request,
and the ratio of the medians and of the best turns (a busy machine only ever
adds time, in bursts that can move a median by 10-15% from run to run).
Issue 12's target is a write overhead within 1.10 of the code before it
(``git worktree add /tmp/before 18627a4``).

Pair it with ``instructions.py``, which counts instructions and so cannot be
moved by load, but does not see system calls.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

from instructions import CHILD_SETUP  # this folder is on the path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ROWS = "memory:/write,pickle:/write,sqlite:/write"

# One child: instructions.py's start, then timing.
CHILD = (
    CHILD_SETUP
    + r"""
import time
bare = overhead.Client(overhead.bare)
for _ in range(100):
    client.request(path)
best = best_bare = float("inf")
for _ in range(5):
    start = time.perf_counter()
    for _ in range(1000):
        bare.request(path)
    best_bare = min(best_bare, time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(1000):
        client.request(path)
    best = min(best, time.perf_counter() - start)
backend.close()
print((best - best_bare) * 1000)  # microseconds per request
"""
)


def overhead_us(tree: str, kind: str, path: str) -> float:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, tree, HERE, kind, path],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("against", help="the other checkout")
    parser.add_argument("--rows", default=ROWS, help=f"backend:path pairs (default {ROWS})")
    parser.add_argument("--turns", type=int, default=7, help="child runs per checkout and row")
    args = parser.parse_args()
    trees = {"this": ROOT, "against": os.path.abspath(args.against)}
    rows = [row.strip() for row in args.rows.split(",")]
    found: dict[tuple[str, str], list[float]] = {}
    for turn in range(args.turns):
        for row in rows:
            kind, path = row.split(":")
            for name in ("this", "against") if turn % 2 else ("against", "this"):
                found.setdefault((row, name), []).append(overhead_us(trees[name], kind, path))
    load = os.getloadavg()[0]
    print(f"overhead per request, us: median of {args.turns} turns (load {load:.1f} at the end)")
    print(
        f"{'row':<18}{'this checkout':>15}{'--against':>12}{'ratio':>8}{'best ratio':>12}"
        "   spread (this; against)"
    )
    for row in rows:
        ours, theirs = found[(row, "this")], found[(row, "against")]
        mine, other = statistics.median(ours), statistics.median(theirs)
        spread = f"{min(ours):.1f}-{max(ours):.1f}; {min(theirs):.1f}-{max(theirs):.1f}"
        # Load only ever adds time: the best turns are the least disturbed.
        best = min(ours) / min(theirs)
        print(
            f"{row:<18}{mine:>15.1f}{other:>12.1f}{mine / other:>8.2f}{best:>12.2f}   {spread}",
            flush=True,
        )


if __name__ == "__main__":
    main()
