"""The parts every request shares: settings, backend, codecs, clock.

Nothing here changes after start-up; per-request state lives in
:class:`~sessionstore.session.Session`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from .backends.base import Backend
from .config import Settings
from .cookies import CookieCodec
from .payload import PayloadCodec


@dataclass(frozen=True)
class SessionManager:
    settings: Settings
    backend: Backend
    clock: Callable[[], float]
    #: Returns a float in [0, 1); decides probabilistic cleanup.
    chance: Callable[[], float] = random.random
    cookies: CookieCodec = field(init=False)
    payloads: PayloadCodec = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cookies", CookieCodec(self.settings, self.clock))
        object.__setattr__(self, "payloads", PayloadCodec(self.settings.secret))

    def deadline(self, created_at: float, accessed_at: float, expiry: float | None) -> float:
        """When a session expires: its explicit expiry, else idle timeout;
        capped by ``max_lifetime``."""
        end = expiry if expiry is not None else accessed_at + self.settings.timeout
        if self.settings.max_lifetime:
            end = min(end, created_at + self.settings.max_lifetime)
        return end
