"""Counters of what the middleware did, for :meth:`SessionMiddleware.stats`.

Each thread counts in a dict of its own, so the request path takes no lock
and no two threads ever write the same object; :meth:`Counters.snapshot`
adds the dicts up.  A thread's counts stay after the thread ends.
"""

from __future__ import annotations

import threading

#: The counters, in the order ``stats()`` lists them.
NAMES = (
    "requests",  # requests that loaded a stored session
    "commits",  # successful commits (inserts, updates, regenerations)
    "retries",  # compare-and-swap attempts lost to another request
    "conflicts",  # ConcurrentUpdate (a session ended elsewhere too): 409, or raised to the app
    "lost_updates",  # read-then-set overwrites merged under on_conflict = merge
    "busy",  # BusyRetry: 503 at response time, or raised to the app
    "backend_errors",  # storage failures (500 at response time)
    "damaged_records",  # stored sessions refused as damaged ("no session")
    "created",
    "destroyed",
    "regenerated",
    "cleanup_deleted",  # expired sessions removed by request-time cleanup
)


class _PerThread(threading.local):
    """Each thread's counts; made on a thread's first count (threading.local
    runs ``__init__`` once per thread) and registered for snapshots."""

    def __init__(self, every: list[dict[str, int]], register: threading.Lock) -> None:
        self.counts = dict.fromkeys(NAMES, 0)
        with register:
            every.append(self.counts)


class Counters:
    """Lock-free per-thread counters.

    ``counters.add(name)``, or on the hottest paths (one Python call less)
    ``counters.thread.counts[name] += 1``.
    """

    __slots__ = ("thread", "_all", "_register")

    def __init__(self) -> None:
        self._all: list[dict[str, int]] = []
        self._register = threading.Lock()  # taken once per thread, not per count
        self.thread = _PerThread(self._all, self._register)

    def add(self, name: str, amount: int = 1) -> None:
        self.thread.counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        total = dict.fromkeys(NAMES, 0)
        with self._register:
            every = list(self._all)
        for counts in every:
            for name, value in list(counts.items()):
                total[name] += value
        return total
