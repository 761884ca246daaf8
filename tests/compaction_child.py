"""Children for the compaction tests.

python -m tests.compaction_child crash-loop PATH START
    commit forever with compaction after nearly every commit (SIGKILL test)
python -m tests.compaction_child no-room PATH COUNT
    COUNT commits to one session, in a directory where no new file can be made
"""

from __future__ import annotations

import logging
import os
import sys

from sessionstore.backends import picklecompact, picklefile

from .child import crash_loop


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.failed = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.failed += record.getMessage().startswith("could not compact")


def no_room(path: str, count: str) -> None:
    from sessionstore.backends.base import Record

    counter = _Counter()
    logging.getLogger("sessionstore").addHandler(counter)
    backend = picklefile.PickleBackend(path)
    backend.setup()
    session_id = "n" * 43
    current = backend.get(session_id)
    for _ in range(int(count)):
        version = 1 if current is None else current.version + 1
        record = Record(session_id, version, 1.0, 2.0, 4e9, os.urandom(20_000))
        expected = None if current is None else current.version
        if not backend.compare_and_swap(session_id, expected, record):
            raise SystemExit("lost a compare-and-swap with no other writer")
        current = record
    print("commits", count, "failed-compactions", counter.failed, flush=True)


def compacting_crash_loop(path: str, start: str) -> None:
    # Compact as soon as the log holds twice the live data: with 20
    # sessions of 40 KB that is every ~20 commits.
    picklecompact.COMPACT_SLACK = 0
    crash_loop("pickle", path, start)


COMMANDS = {"crash-loop": compacting_crash_loop, "no-room": no_room}

if __name__ == "__main__":
    command, *args = sys.argv[1:]
    COMMANDS[command](*args)
