"""A child that commits with compaction after nearly every commit (for the SIGKILL test).

python -m tests.compaction_child PATH START
"""

from __future__ import annotations

import sys

from sessionstore.backends import picklefile

from .child import crash_loop

if __name__ == "__main__":
    # Compact as soon as the log holds twice the live data: with 20 sessions
    # of 40 KB that is every ~20 commits, and most of the time goes there.
    picklefile._COMPACT_SLACK = 0  # noqa: SLF001 - the knob this test turns
    crash_loop("pickle", *sys.argv[1:])
