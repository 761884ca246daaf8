"""The parts every request shares: settings, backend, codecs, clock.

Nothing here holds per-request state; that lives in
:class:`~sessionstore.session.Session`.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
from collections.abc import Callable, Iterator

from .backends.base import Backend
from .config import Settings
from .cookies import CookieCodec
from .errors import BusyRetry
from .payload import PayloadCodec

#: Commit locks are striped: sessions share this many locks by hash.
_STRIPES = 64


class SessionManager:
    """What a middleware's requests share; immutable after start-up except
    for the commit locks, which are coordination, not state."""

    __slots__ = ("settings", "backend", "clock", "chance", "cookies", "payloads", "_locks", "_pid")

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
        self._new_locks()

    def _new_locks(self) -> None:
        self._pid = os.getpid()
        self._locks = [threading.Lock() for _ in range(_STRIPES)]

    @contextlib.contextmanager
    def committing(self, session_id: str) -> Iterator[None]:
        """Serialise this process's commits to one session.

        Threads of one process then take turns instead of racing (under the
        GIL a thread can lose the race again and again); compare-and-swap
        still settles races with other processes and machines.
        """
        if self._pid != os.getpid():
            self._new_locks()  # a lock held at fork time stays held in the child
        lock = self._locks[hash(session_id) % _STRIPES]
        if not lock.acquire(timeout=self.settings.busy_timeout):
            raise BusyRetry(f"session {session_id}: other requests kept it busy")
        try:
            yield
        finally:
            lock.release()

    def deadline(self, created_at: float, accessed_at: float, expiry: float | None) -> float:
        """When a session expires: its explicit expiry, else idle timeout;
        capped by ``max_lifetime``."""
        end = expiry if expiry is not None else accessed_at + self.settings.timeout
        if self.settings.max_lifetime:
            end = min(end, created_at + self.settings.max_lifetime)
        return end
