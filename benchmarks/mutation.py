"""Mutation testing, run by hand: do the tests catch small deliberate bugs?

    python benchmarks/mutation.py                       # every target, every mutant
    python benchmarks/mutation.py --module session --module memory --limit 40 --jobs 2
    python benchmarks/mutation.py --module session --lines 170-200 --list

Each target is a module of the package (``sessionstore/*.py`` except the edge
modules in ``EDGE``: so a new commit-protocol module is picked up by itself)
or one backend's ``compare_and_swap``.  One small AST mutation at a time is
applied to a private copy of the checkout (comparison flipped or moved by
one, ``and``/``or`` swapped, a condition negated or a ``not`` dropped, a
constant changed, a call or state assignment or ``raise`` removed, a
``return`` made to return ``None``, a ``with`` lock unwrapped, ``+``/``-``
swapped), then the test files mapped to that target run with ``pytest -x``
under a timeout.  A mutant is *killed* when a test fails (or the run times
out: a hang is a detected bug too); it *survives* when every test passes.

Prints, per target, the mutants run, killed, survivors and the score
(killed / run), then every survivor as ``file:line  mutation  | source``.
``--limit N`` samples N mutants per target (``--seed``), to keep a run short
on a small machine; ``--list`` only prints the mutants.  The score is a
measurement, not a test: nothing here runs in the test suite except a
``--list`` smoke run.

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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

# The benchmarks' folder must not shadow the standard library (http.py).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sessionstore"

#: Modules at the edge of the package: not part of the commit path.
EDGE = {"__init__", "cli", "config", "demo", "errors", "ids", "paste", "testing"}

#: Tests for the session, its commit protocol, store, middleware and manager;
#: fastest and most pointed first, since ``-x`` stops at the first failure.
CORE_TESTS = [
    "tests/test_commit_protocol.py",
    "tests/test_store.py",
    "tests/test_middleware.py",
    "tests/test_expiry.py",
    "tests/test_payload.py",
    "tests/test_security.py",
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
        {"compare_and_swap", "_put_records", "_delete_ids", "_append", "_read_frames"},
        ["tests/test_backend_contract.py::TestPickleBackend", "tests/test_durability.py"],
    ),
    "sqlite": (
        {"compare_and_swap", "_open"},
        [
            "tests/test_backend_contract.py::TestSqliteBackend",
            "tests/test_backend_contract.py::TestSqliteMemoryBackend",
            "tests/test_durability.py",
        ],
    ),
    "redis": ({"compare_and_swap"}, ["tests/test_servers.py"]),
    "sql": ({"compare_and_swap", "_insert"}, ["tests/test_servers.py"]),
}

#: Calls whose removal is not a behaviour change anyone tests for.
QUIET_CALLS = {"log", "logging", "warnings"}

_NEGATED: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.Gt: ast.LtE,
    ast.LtE: ast.Gt,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_BOUNDARY: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
}
_SYMBOL = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
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


@dataclass
class _Site:
    line: int
    description: str


@dataclass
class Mutator(ast.NodeTransformer):
    """Walks a module offering mutation sites; applies the one numbered ``apply``.

    Both the counting walk and the applying walk visit nodes in the same
    order, so a site's number names the same mutation in both.
    """

    functions: frozenset[str] | None
    apply: int | None = None
    sites: list[_Site] = field(default_factory=list)
    #: Names of the enclosing functions (module and class level code, which
    #: is tables and settings, is never mutated).
    _stack: list[str] = field(default_factory=list)

    # -- bookkeeping ----------------------------------------------------------------

    def _in_scope(self) -> bool:
        if not self._stack:
            return False
        return self.functions is None or any(name in self.functions for name in self._stack)

    def _offer(
        self, node: ast.AST, description: str, make: Callable[[], ast.AST]
    ) -> ast.AST | None:
        if not self._in_scope():
            return None
        index = len(self.sites)
        self.sites.append(_Site(getattr(node, "lineno", 0), description))
        if index == self.apply:
            return make()
        return None

    # -- what is never mutated ----------------------------------------------------------

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST:
        self._stack.append(node.name)
        # Decorators, defaults and annotations stay as they are; the body is mutated.
        body = node.body
        if body and _is_docstring(body[0]):
            node.body = [body[0], *self._statements(body[1:])]
        else:
            node.body = self._statements(body)
        self._stack.pop()
        return node

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        node.body = self._statements(node.body)
        return node

    def visit_Module(self, node: ast.Module) -> ast.AST:
        node.body = self._statements(node.body)
        return node

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        return node  # type narrowing and internal checks

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        if node.value is not None:
            node.value = self.visit(node.value)
        return node

    def visit_If(self, node: ast.If) -> ast.AST:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return node
        node.test = self.visit(node.test)
        node.body = self._statements(node.body)
        node.orelse = self._statements(node.orelse)
        negated = self._offer(node, "condition negated", lambda: _negate(node.test))
        if negated is not None:
            node.test = negated  # type: ignore[assignment]
        return node

    def visit_While(self, node: ast.While) -> ast.AST:
        node.test = self.visit(node.test)
        node.body = self._statements(node.body)
        node.orelse = self._statements(node.orelse)
        negated = self._offer(node, "loop condition negated", lambda: _negate(node.test))
        if negated is not None:
            node.test = negated  # type: ignore[assignment]
        return node

    # -- statements ---------------------------------------------------------------------

    def _statements(self, body: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for statement in body:
            result = self.visit(statement)
            if isinstance(result, list):
                out.extend(result)
            elif result is not None:
                out.append(result)
        return out or [ast.Pass()]

    def _removable(self, node: ast.stmt, what: str) -> ast.AST | list[ast.stmt]:
        removed = self._offer(node, f"{what} removed", ast.Pass)
        return node if removed is None else removed

    def visit_Expr(self, node: ast.Expr) -> ast.AST | list[ast.stmt]:
        node.value = self.visit(node.value)
        if isinstance(node.value, ast.Call) and _root_name(node.value.func) not in QUIET_CALLS:
            return self._removable(node, f"call {_short(node.value.func)}()")
        return node

    def visit_Assign(self, node: ast.Assign) -> ast.AST | list[ast.stmt]:
        node.value = self.visit(node.value)
        if all(isinstance(t, (ast.Attribute, ast.Subscript)) for t in node.targets):
            return self._removable(node, f"assignment to {_short(node.targets[0])}")
        return node

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST | list[ast.stmt]:
        node.value = self.visit(node.value)
        return self._removable(node, f"update of {_short(node.target)}")

    def visit_Raise(self, node: ast.Raise) -> ast.AST | list[ast.stmt]:
        return self._removable(node, "raise")

    def visit_Continue(self, node: ast.Continue) -> ast.AST | list[ast.stmt]:
        return self._removable(node, "continue")

    def visit_Break(self, node: ast.Break) -> ast.AST | list[ast.stmt]:
        return self._removable(node, "break")

    def visit_Return(self, node: ast.Return) -> ast.AST:
        if node.value is not None:
            node.value = self.visit(node.value)
            if not (isinstance(node.value, ast.Constant) and node.value.value is None):
                changed = self._offer(node, "returns None", lambda: ast.Return(ast.Constant(None)))
                if changed is not None:
                    return changed
        return node

    def visit_With(self, node: ast.With) -> ast.AST | list[ast.stmt]:
        for item in node.items:
            item.context_expr = self.visit(item.context_expr)
        node.body = self._statements(node.body)
        if any(item.optional_vars is not None for item in node.items):
            return node
        managers = ", ".join(_short(item.context_expr) for item in node.items)
        unwrapped = self._offer(node, f"'with {managers}' unwrapped", lambda: ast.Pass())
        return node if unwrapped is None else node.body

    # -- expressions ---------------------------------------------------------------------

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        for position, op in enumerate(node.ops):
            for table, kind in ((_NEGATED, "flipped"), (_BOUNDARY, "boundary")):
                other = table.get(type(op))
                if other is None:
                    continue
                text = f"'{_SYMBOL[type(op)]}' -> '{_SYMBOL[other]}' ({kind})"
                changed = self._offer(
                    node, text, lambda p=position, o=other: _with_op(node, p, o())
                )
                if changed is not None:
                    return changed
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        swapped: ast.boolop = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        names = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
        changed = self._offer(
            node, f"'{names[0]}' -> '{names[1]}'", lambda: ast.BoolOp(swapped, node.values)
        )
        return node if changed is None else changed

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            changed = self._offer(node, "'not' dropped", lambda: node.operand)
            if changed is not None:
                return changed
        return node

    def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
        self.generic_visit(node)
        changed = self._offer(node, "conditional expression negated", lambda: _negate(node.test))
        if changed is not None:
            node.test = changed  # type: ignore[assignment]
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        swap = {ast.Add: (ast.Sub, "+", "-"), ast.Sub: (ast.Add, "-", "+")}.get(type(node.op))
        if swap is not None:
            op_class, old, new = swap
            changed = self._offer(
                node, f"'{old}' -> '{new}'", lambda: ast.BinOp(node.left, op_class(), node.right)
            )
            if changed is not None:
                return changed
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        value = node.value
        if isinstance(value, bool):
            changed = self._offer(node, f"{value} -> {not value}", lambda: ast.Constant(not value))
        elif isinstance(value, (int, float)):
            changed = self._offer(
                node, f"{value!r} -> {value + 1!r}", lambda: ast.Constant(value + 1)
            )
        else:
            return node  # strings and bytes: messages, SQL, formats
        return node if changed is None else changed

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if _root_name(node.func) in QUIET_CALLS:
            return node  # a log call's arguments are its message
        self.generic_visit(node)
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "compare_and_swap"
            and len(node.args) == 3
        ):
            # The version check dropped: expect whatever is stored right now.
            changed = self._offer(node, "compare_and_swap made unconditional", lambda: _blind(node))
            if changed is not None:
                return changed
        return node

    def visit_List(self, node: ast.List) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.ctx, ast.Load) and 0 < len(node.elts) <= 4:
            for position, element in enumerate(node.elts):
                text = f"list item {_short(element)} removed"
                changed = self._offer(
                    node,
                    text,
                    lambda p=position: ast.List(node.elts[:p] + node.elts[p + 1 :], ast.Load()),
                )
                if changed is not None:
                    return changed
        return node


def _is_docstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def _negate(test: ast.expr) -> ast.expr:
    return ast.UnaryOp(ast.Not(), test)


def _with_op(node: ast.Compare, position: int, op: ast.cmpop) -> ast.Compare:
    ops = list(node.ops)
    ops[position] = op
    return ast.Compare(node.left, ops, node.comparators)


def _blind(call: ast.Call) -> ast.Call:
    """``b.compare_and_swap(id, v, r)`` -> ``b.compare_and_swap(id, <stored version>, r)``."""
    assert isinstance(call.func, ast.Attribute)
    session_id, _, record = call.args
    stored = ast.Call(ast.Attribute(call.func.value, "get", ast.Load()), [session_id], [])
    version = ast.parse("(lambda r: None if r is None else r.version)", mode="eval").body
    return ast.Call(call.func, [session_id, ast.Call(version, [stored], []), record], [])


def _root_name(node: ast.expr) -> str:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else ""


def _short(node: ast.expr) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 40 else text[:37] + "..."


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
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
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


def select(all_mutants: list[Mutant], args: argparse.Namespace) -> list[Mutant]:
    chosen = all_mutants
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
        with ThreadPoolExecutor(args.jobs) as executor:
            list(executor.map(check_baseline, [t for t, m in plan if m]))
            every = [m for _, chosen in plan for m in chosen]
            return list(executor.map(one, every))
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
