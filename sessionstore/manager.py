"""The parts every request shares: settings, backend, codecs, clock.

Nothing here holds per-request state; that lives in
:class:`~sessionstore.session.Session`.
"""

from __future__ import annotations

import os
import random
import threading
import weakref
from collections.abc import Callable

from .backends.base import Backend
from .config import Settings
from .cookies import CookieCodec
from .errors import BusyRetry
from .payload import PayloadCodec
from .stats import Counters

#: Commit locks are striped: sessions share this many locks by hash.
_STRIPES = 64

_live: weakref.WeakSet[SessionManager] = weakref.WeakSet()


def _renew_locks_after_fork() -> None:
    for manager in list(_live):
        manager._new_locks()


os.register_at_fork(after_in_child=_renew_locks_after_fork)


class SessionManager:
    """What a middleware's requests share; immutable after start-up except
    for the commit locks, which are coordination, not state, and the
    counters, which each thread keeps for itself."""

    __slots__ = (
        "settings",
        "backend",
        "clock",
        "chance",
        "cookies",
        "payloads",
        "counters",
        "_locks",
        "__weakref__",
    )

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        clock: Callable[[], float],
        chance: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.clock = clock
        #: Returns a float in [0, 1); decides probabilistic cleanup.
        self.chance = chance
        self.cookies = CookieCodec(settings, clock)
        self.payloads = PayloadCodec(settings.secret)
        #: What happened since start (``SessionMiddleware.stats()``).
        self.counters = Counters()
        self._new_locks()
        # A lock held at fork time would stay held in the child: it gets new ones.
        _live.add(self)

    def _new_locks(self) -> None:
        self._locks = [threading.Lock() for _ in range(_STRIPES)]

    def commit_lock(self, session_id: str) -> threading.Lock:
        """Take and return this process's commit lock of one session; the
        caller releases it.

        Threads of one process then take turns instead of racing (under the
        GIL a thread can lose the race again and again); compare-and-swap
        still settles races with other processes and machines.  (A plain
        acquire and release: a context manager cost more than the lock.)
        """
        lock = self._locks[hash(session_id) % _STRIPES]
        if not lock.acquire(False) and not lock.acquire(timeout=self.settings.busy_timeout):
            raise BusyRetry(f"session {session_id}: other requests kept it busy")
        return lock

    def deadline(self, created_at: float, accessed_at: float, expiry: float | None) -> float:
        """When a session expires: its explicit expiry, else idle timeout;
        capped by ``max_lifetime``."""
        settings = self.settings
        end = expiry if expiry is not None else accessed_at + settings.timeout
        lifetime = settings.max_lifetime
        if lifetime and created_at + lifetime < end:
            return created_at + lifetime
        return end
