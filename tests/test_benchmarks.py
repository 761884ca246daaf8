"""The benchmark scripts run (briefly): they are run by hand, so nothing else
would notice one breaking.  No timing is asserted here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import ROOT

RUNS = {
    # This checkout against itself: one turn of one row.
    "against": [".", "--turns", "1", "--rows", "memory:/write"],
    "overhead": ["--only", "memory,pickle,sqlite", "--requests", "20", "--rounds", "1"],
    "backends": ["--requests", "20"],
    "cleanup": ["--sessions", "300", "--rounds", "1"],
    "scale": ["--sizes", "10,30", "--commits", "10", "--rounds", "1"],
    # 8 servers of 0.05 s each (4 cells, with the bare app): still ~30 increments checked.
    "http": ["--only", "sessionstore sqlite", "--seconds", "0.05", "--rounds", "1"],
    "users": ["--sessions", "200", "--users", "10", "--only", "memory,sqlite"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_benchmark_runs_and_its_checks_pass(name):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *RUNS[name]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "False" not in result.stdout and "FAILED" not in result.stdout, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
