"""Instructions per request, counted by valgrind: a cost that noise cannot move.

    python benchmarks/instructions.py [--against DIR] [--rows memory:/write,...]

Wall-clock overhead (``overhead.py``) on a shared two-core machine moves by
10-50% from one run to the next, which hides a 10% regression.  This counts
the instructions one request executes instead (``valgrind --tool=callgrind``,
from Debian's ``valgrind`` package): the same figure for the same code, what
ever else the machine is doing.  It does not see time spent waiting on the
disk or a server, so pair it with ``overhead.py`` for stores that do I/O.

Each row runs ``overhead.py``'s application (``/read``, ``/write``,
``/update``) on one backend, twice, with 500 and 2,500 requests after a
warm-up; the difference over 2,000 is the cost of one request, start-up
excluded.  ``--against DIR`` counts the same rows with the ``sessionstore``
package of another checkout (for example ``git worktree add /tmp/before
REV``) and prints the ratio: the issue-12 target is a write overhead within
1.10 of the code before it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ROWS = "memory:/read,memory:/write,memory:/update,pickle:/write,sqlite:/write"

# A child's start (shared with against.py): TREE's sessionstore, this
# checkout's benchmark app, as ``app``, ``backend`` and ``client``.
CHILD_SETUP = r"""
import importlib.util, os, sys, tempfile
tree, bench, kind, path = sys.argv[1:5]
sys.path.insert(0, tree)
import sessionstore, sessionstore.backends  # TREE's, before overhead.py puts its own first
assert sessionstore.__file__.startswith(os.path.join(tree, "")), sessionstore.__file__
# Loaded from its file: the benchmarks folder on the path would hide the
# standard library's http package behind http.py.
spec = importlib.util.spec_from_file_location("overhead", os.path.join(bench, "overhead.py"))
overhead = importlib.util.module_from_spec(spec)
spec.loader.exec_module(overhead)
directory = tempfile.mkdtemp()
options = {"memory": {}, "pickle": {"filename": os.path.join(directory, "s.dat")},
           "sqlite": {"filename": os.path.join(directory, "s.db")}}[kind]
app, backend = overhead.sessionstore_app(kind, options)
client = overhead.Client(app)
"""
# What runs under valgrind.
CHILD = (
    CHILD_SETUP
    + r"""
for _ in range(50 + int(sys.argv[5])):
    client.request(path)
backend.close()
"""
)


def count(tree: str, kind: str, path: str, requests: int) -> int:
    """Instructions of a whole run of ``requests`` requests (with start-up)."""
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-c",
            CHILD,
            tree,
            HERE,
            kind,
            path,
            str(requests),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict layouts every run
    )
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{result.stderr[-2000:]}")
    return int(found.group(1))


def per_request(tree: str, kind: str, path: str) -> float | None:
    """Instructions per request, or None when that checkout cannot serve the
    row (an older one without ``Store.update``, say)."""
    try:
        return (count(tree, kind, path, 2500) - count(tree, kind, path, 500)) / 2000
    except subprocess.CalledProcessError:
        return None


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="another checkout to compare with")
    parser.add_argument("--rows", default=ROWS, help=f"backend:path pairs (default {ROWS})")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    against = os.path.abspath(args.against) if args.against else None
    print("instructions per request (valgrind callgrind), 2,000 requests per row")
    header = f"{'row':<18}{'this checkout':>15}"
    if against:
        header += f"{'--against':>15}{'ratio':>8}"
    print(header)
    for row in args.rows.split(","):
        kind, path = row.strip().split(":")
        ours = per_request(ROOT, kind, path)
        line = f"{row:<18}{_shown(ours):>15}"
        if against:
            theirs = per_request(against, kind, path)
            ratio = f"{ours / theirs:.2f}" if ours and theirs else "-"
            line += f"{_shown(theirs):>15}{ratio:>8}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
