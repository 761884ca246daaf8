"""benchmarks/mutation.py is run by hand; this checks it still lists and
builds its mutants (nothing is run against them here, and nothing is timed)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from .conftest import ROOT


def load_runner():
    spec = importlib.util.spec_from_file_location("mutation", ROOT / "benchmarks" / "mutation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutation"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["mutation"]
    return module


def test_every_mutant_compiles_and_changes_the_module():
    runner = load_runner()
    targets = {t.name: t for t in runner.targets()}
    assert {"session", "store", "payload", "cookies", "middleware", "memory", "sqlite"} <= set(
        targets
    )
    for name in ("store", "memory", "sqlite"):  # the small ones: each mutant re-parses
        target = targets[name]
        original = runner.round_trip_source(target)
        found = runner.mutants(target)
        assert found, target.name
        for mutant in found:
            source = runner.mutated_source(mutant)
            compile(source, str(target.path), "exec")
            assert source != original, mutant


def test_every_backend_function_named_for_mutation_exists():
    """A renamed function would silently leave its code unmutated."""
    import ast

    runner = load_runner()
    for name, (functions, _) in runner.BACKENDS.items():
        path = ROOT / "sessionstore" / "backends" / f"{name}.py"
        defined = {
            node.name
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef)
        }
        assert functions <= defined, (name, functions - defined)


def test_the_memory_lock_mutant_removes_the_lock():
    runner = load_runner()
    [memory] = [t for t in runner.targets() if t.name == "memory"]
    [unlocked] = [m for m in runner.mutants(memory) if "with self._lock" in m.description]
    locks = runner.round_trip_source(memory).count("with self._lock")
    assert runner.mutated_source(unlocked).count("with self._lock") == locks - 1


def test_list_prints_each_mutant_with_its_line():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "mutation.py"), "--list", "--module", "memory"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "sessionstore/backends/memory.py:" in result.stdout
    assert "'with self._lock' unwrapped" in result.stdout
