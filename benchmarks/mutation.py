"""Mutation testing, run by hand: do the tests catch small deliberate bugs?

    python benchmarks/mutation.py                       # every target, every mutant
    python benchmarks/mutation.py --module session --module memory --limit 40 --jobs 2
    python benchmarks/mutation.py --module session --lines 170-200 --list

Each target is a module of the package (``sessionstore/*.py`` except the edge
modules in ``EDGE``: so a new commit-protocol module is picked up by itself)
or one backend's ``compare_and_swap`` with what it runs to make a write stick
(``BACKENDS``).  One small AST mutation at a time (the operators are listed in
``mutants.py``) is applied to a private copy of the checkout, then the test
files mapped to that target run with ``pytest -x`` under a timeout.  A
mutant is *killed* when a test fails (or the run times out: a hang is a
detected bug too); it *survives* when every test passes.

Prints, per target, the mutants run, killed, survivors and the score
(killed / run), then every survivor as ``file:line  mutation  | source``.
``--limit N`` samples N mutants per target (``--seed``), to keep a run short
on a small machine; ``--list`` only prints the mutants.  The score is a
measurement, not a test: the suite only checks that the mutants are built
and listed (tests/test_mutation_runner.py).

Written for this project (no mutmut): a mutant is the module parsed,
changed at one node, and printed back with :func:`ast.unparse`, so comments
and layout differ from the original but nothing else does (a run first
checks that the unmutated round trip passes its tests).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# The benchmarks' folder must not shadow the standard library (http.py); it
# goes last, where only mutants.py is found in it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.append(str(Path(__file__).resolve().parent))

from mutants import Mutator  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sessionstore"

#: Modules at the edge of the package: not part of the commit path.
EDGE = {
    "__init__",
    "cli",
    "clitarget",
    "config",
    "demo",
    "demostyle",
    "errors",
    "ids",
    "paste",
    "testing",
}

#: Tests for the session, its commit protocol, store, middleware and manager;
#: fastest and most pointed first, since ``-x`` stops at the first failure.
CORE_TESTS = [
    "tests/test_commit_protocol.py",
    "tests/test_store.py",
    "tests/test_middleware.py",
    "tests/test_expiry.py",
    "tests/test_payload.py",
    "tests/test_security.py",
    "tests/test_races.py",
    "tests/test_atomic.py",
    "tests/test_users.py",
    "tests/test_concurrency.py",
]
TESTS = {
    "cookies": ["tests/test_middleware.py", "tests/test_security.py", "tests/test_expiry.py"],
    "payload": ["tests/test_payload.py", "tests/test_security.py", "tests/test_store.py"],
    "store": ["tests/test_store.py", "tests/test_commit_protocol.py", "tests/test_middleware.py"],
}

#: Backends: module -> (functions mutated: compare_and_swap and what it runs
#: to make a write stick; the tests of that backend).
BACKENDS = {
    "memory": (
        {"compare_and_swap"},
        ["tests/test_backend_contract.py::TestMemoryBackend"],
    ),
    "picklefile": (
        {"compare_and_swap", "_put_record", "_put_records", "_delete_ids", "get"},
        [
            "tests/test_backend_contract.py::TestPickleBackend",
            "tests/test_durability.py",
            "tests/test_pickle_unlocked.py",
        ],
    ),
    "picklefiles": (
        {"_append"},
        ["tests/test_backend_contract.py::TestPickleBackend", "tests/test_durability.py"],
    ),
    "pickleindex": (
        {"get"},
        ["tests/test_pickle_index.py", "tests/test_backend_contract.py::TestPickleBackend"],
    ),
    "picklesync": (
        {"_sync", "_read_frames", "_apply"},
        [
            "tests/test_backend_contract.py::TestPickleBackend",
            "tests/test_durability.py",
            "tests/test_pickle_unlocked.py",
        ],
    ),
    "sqlite": (
        {"compare_and_swap", "_swap"},
        [
            "tests/test_backend_contract.py::TestSqliteBackend",
            "tests/test_backend_contract.py::TestSqliteMemoryBackend",
            "tests/test_durability.py",
        ],
    ),
    "sqlitefile": (
        {"_open", "_thread_connection", "_file_changed"},
        [
            "tests/test_backend_contract.py::TestSqliteBackend",
            "tests/test_embedded_faults.py",
            "tests/test_durability.py",
        ],
    ),
    "redis": ({"compare_and_swap"}, ["tests/test_servers.py"]),
    "sql": ({"compare_and_swap", "_insert"}, ["tests/test_servers.py"]),
}


@dataclass(frozen=True)
class Target:
    name: str
    path: Path
    tests: list[str]
    #: Mutate only inside functions of these names (None: the whole module).
    functions: frozenset[str] | None = None


@dataclass(frozen=True)
class Mutant:
    target: Target
    index: int
    line: int
    description: str

    def where(self) -> str:
        return f"{self.target.path.relative_to(ROOT)}:{self.line}"


@dataclass
class Result:
    mutant: Mutant
    outcome: str  # killed, survived, timeout
    seconds: float


# -- targets and mutants -------------------------------------------------------------------


def targets() -> list[Target]:
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem in EDGE:
            continue
        found.append(Target(path.stem, path, TESTS.get(path.stem, CORE_TESTS)))
    for name, (functions, tests) in BACKENDS.items():
        path = PACKAGE / "backends" / f"{name}.py"
        if path.exists():
            found.append(Target(name, path, tests, frozenset(functions)))
    return found


def mutants(target: Target) -> list[Mutant]:
    tree = ast.parse(target.path.read_text())
    walker = Mutator(target.functions)
    walker.visit(tree)
    return [
        Mutant(target, index, site.line, site.description)
        for index, site in enumerate(walker.sites)
    ]


def mutated_source(mutant: Mutant) -> str:
    tree = ast.parse(mutant.target.path.read_text())
    walker = Mutator(mutant.target.functions, apply=mutant.index)
    tree = ast.fix_missing_locations(walker.visit(tree))
    return ast.unparse(tree) + "\n"


def round_trip_source(target: Target) -> str:
    return ast.unparse(ast.parse(target.path.read_text())) + "\n"


# -- running -------------------------------------------------------------------------------


class Workspace:
    """A private copy of the checkout that one job mutates, one file at a time."""

    def __init__(self, parent: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mutation-", dir=parent))
        ignore = shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "*.egg-info", ".mypy_cache", ".ruff_cache", "*.db*"
        )
        for name in ("sessionstore", "tests", "benchmarks", "examples"):
            if (ROOT / name).exists():
                shutil.copytree(ROOT / name, self.root / name, ignore=ignore)
        for path in ROOT.glob("*.*"):
            if path.is_file():
                shutil.copy2(path, self.root / path.name)

    def run(self, target: Target, source: str, timeout: float) -> tuple[str, float]:
        path = self.root / target.path.relative_to(ROOT)
        original = path.read_bytes()
        path.write_text(source)
        tests = [t for t in target.tests if (self.root / t.split("::")[0]).exists()]
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(self.root))
        # "-n 0": one process per mutant; --jobs already runs mutants side by side.
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:cacheprovider"]
        command += tests
        started = time.monotonic()
        proc = subprocess.Popen(
            command,
            cwd=self.root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # so a timeout ends the servers the tests started too
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout", time.monotonic() - started
        finally:
            path.write_bytes(original)
        seconds = time.monotonic() - started
        if code == 5:
            raise SystemExit(f"no tests collected for {target.name}: {tests}")
        return ("survived" if code == 0 else "killed"), seconds


def survivors_in(path: str) -> set[tuple[str, str]]:
    """(``file:line``, mutation) of each survivor an earlier run printed."""
    found = set()
    for line in Path(path).read_text().splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0].startswith("[") and parts[1] == "survived":
            where, _, description = parts[2].partition("  ")
            found.add((where, description.strip()))
    return found


def select(all_mutants: list[Mutant], args: argparse.Namespace) -> list[Mutant]:
    chosen = all_mutants
    if args.survivors:
        earlier = survivors_in(args.survivors)
        chosen = [m for m in chosen if (m.where(), m.description) in earlier]
    if args.lines:
        low, _, high = args.lines.partition("-")
        chosen = [m for m in chosen if int(low) <= m.line <= int(high or low)]
    if args.match:
        chosen = [m for m in chosen if args.match.lower() in m.description.lower()]
    if args.limit and len(chosen) > args.limit:
        chosen = sorted(random.Random(args.seed).sample(chosen, args.limit), key=lambda m: m.index)
    return chosen


def source_line(mutant: Mutant) -> str:
    lines = mutant.target.path.read_text().splitlines()
    return lines[mutant.line - 1].strip() if 0 < mutant.line <= len(lines) else ""


def run_all(plan: list[tuple[Target, list[Mutant]]], args: argparse.Namespace) -> list[Result]:
    scratch = Path(tempfile.mkdtemp(prefix="sessionstore-mutation-"))
    pool: list[Workspace] = [Workspace(scratch) for _ in range(args.jobs)]
    free = list(pool)
    guard = threading.Lock()
    done = 0
    total = sum(len(m) for _, m in plan)

    def lease() -> Workspace:
        with guard:
            return free.pop()

    def give_back(space: Workspace) -> None:
        with guard:
            free.append(space)

    def check_baseline(target: Target) -> None:
        space = lease()
        try:
            outcome, seconds = space.run(target, round_trip_source(target), args.timeout)
        finally:
            give_back(space)
        if outcome != "survived":
            raise SystemExit(f"{target.name}: its tests fail before any mutation ({outcome})")
        print(f"# {target.name}: unmutated round trip passes in {seconds:.1f} s", flush=True)

    def one(mutant: Mutant) -> Result:
        nonlocal done
        space = lease()
        try:
            outcome, seconds = space.run(mutant.target, mutated_source(mutant), args.timeout)
        finally:
            give_back(space)
        with guard:
            done += 1
            if outcome != "killed" or args.verbose:
                print(
                    f"[{done}/{total}] {outcome:8} {mutant.where()}  {mutant.description}",
                    flush=True,
                )
        return Result(mutant, outcome, seconds)

    try:
        executor = ThreadPoolExecutor(args.jobs)
        try:
            list(executor.map(check_baseline, [t for t, m in plan if m]))
            every = [m for _, chosen in plan for m in chosen]
            return list(executor.map(one, every))
        finally:
            # On Ctrl-C, run no more mutants (the running ones finish).
            executor.shutdown(wait=True, cancel_futures=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def report(plan: list[tuple[Target, list[Mutant]]], results: list[Result], took: float) -> None:
    by_target: dict[str, list[Result]] = {}
    for result in results:
        by_target.setdefault(result.mutant.target.name, []).append(result)
    print()
    print(
        f"{'target':<14}{'mutants':>9}{'run':>6}{'killed':>8}{'timeout':>9}{'survived':>10}"
        f"{'score':>8}"
    )
    sums = [0, 0, 0, 0, 0]
    for target, _ in plan:
        rows = by_target.get(target.name, [])
        killed = sum(r.outcome == "killed" for r in rows)
        timeouts = sum(r.outcome == "timeout" for r in rows)
        survived = sum(r.outcome == "survived" for r in rows)
        available = len(mutants(target))
        for i, value in enumerate((available, len(rows), killed, timeouts, survived)):
            sums[i] += value
        score = f"{(killed + timeouts) / len(rows):.0%}" if rows else "-"
        print(
            f"{target.name:<14}{available:>9}{len(rows):>6}{killed:>8}{timeouts:>9}"
            f"{survived:>10}{score:>8}"
        )
    run = sums[1]
    score = f"{(sums[2] + sums[3]) / run:.0%}" if run else "-"
    print(f"{'all':<14}{sums[0]:>9}{run:>6}{sums[2]:>8}{sums[3]:>9}{sums[4]:>10}{score:>8}")
    print(f"\n{run} mutants in {took:.0f} s")
    survivors = [r for r in results if r.outcome == "survived"]
    if survivors:
        print("\nSurvivors:")
        for r in sorted(survivors, key=lambda r: (r.mutant.where(), r.mutant.index)):
            print(f"  {r.mutant.where():<34} {r.mutant.description:<44} | {source_line(r.mutant)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", help="target name (repeatable)")
    parser.add_argument("--limit", type=int, default=0, help="at most N mutants per target")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit sample")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant")
    parser.add_argument("--lines", help="only mutants on lines LOW-HIGH")
    parser.add_argument("--match", help="only mutants whose description contains this")
    parser.add_argument("--tests", nargs="+", help="run these tests instead of the mapped ones")
    parser.add_argument(
        "--survivors", metavar="OUTPUT", help="only the survivors an earlier run printed"
    )
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--verbose", action="store_true", help="print killed mutants too")
    args = parser.parse_args(argv)
    available = {t.name: t for t in targets()}
    if args.tests:
        available = {n: dataclasses.replace(t, tests=args.tests) for n, t in available.items()}
    names = args.module or list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"unknown target {unknown}; choose from {sorted(available)}")
    plan = [(available[n], select(mutants(available[n]), args)) for n in names]
    if args.list:
        for target, chosen in plan:
            for m in chosen:
                print(f"{m.where():<34} {m.description:<44} | {source_line(m)}")
            print(f"# {target.name}: {len(chosen)} of {len(mutants(target))} mutants")
        return
    started = time.monotonic()
    results = run_all(plan, args)
    report(plan, results, time.monotonic() - started)


if __name__ == "__main__":
    main()
