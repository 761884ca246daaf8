"""benchmarks/scale.py --fleet and --wal run (briefly); nothing is timed here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import ROOT


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        pytest.param(
            # Workers commit for 0.5 s, from ~0.3 s after their start (imports and
            # opening the store); the compaction and purge run at 0.75 s, among them.
            ["--fleet", "--sessions", "300", "--seconds", "0.5", "--workers", "2"],
            id="fleet",
        ),
        pytest.param(["--wal", "0.4", "--workers", "2"], id="wal"),
    ],
)
def test_scale_modes_run_and_report_no_errors(args):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scale.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    if args[0] == "--fleet":
        rows = [line.split() for line in result.stdout.splitlines() if line.endswith(" 0")]
        assert {row[0] for row in rows} == {"pickle", "sqlite"}, result.stdout  # 0 errors each
    else:
        assert "largest -wal file seen" in result.stdout
