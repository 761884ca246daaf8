"""A user's sessions: listed, and destroyed ("log out everywhere").

``session.bind_user(user_id)`` puts the user into the session's signed
payload, and ``Record.user`` beside it, where each backend indexes it in the
same atomic step as the record.  The index only finds candidates: each one
is loaded and verified, and listed only when its signed payload names the
same user and it is live.  Cost: O(sessions of the user).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from .errors import DamagedRecord

if TYPE_CHECKING:
    from .backends.base import Backend
    from .manager import SessionManager
    from .payload import PayloadCodec

log = logging.getLogger("sessionstore")

#: Rounds of ``destroy_user``: a login racing it adds at most a session a round.
DESTROY_ROUNDS = 5


class UserSession(NamedTuple):
    """One live session of a user, as ``sessions_of()`` lists it."""

    session_id: str
    created_at: float
    accessed_at: float
    expires_at: float
    #: The ``User-Agent`` and ``REMOTE_ADDR`` of the request that bound it.
    user_agent: str
    address: str
    bound_at: float


def sessions_of(manager: SessionManager, user: str) -> list[UserSession]:
    """The live sessions bound to ``user``, newest first."""
    found, damaged = list_user(
        manager.backend, manager.payloads, user, manager.clock(), manager.deadline
    )
    if damaged:
        manager.counters.add("damaged_records", damaged)
    return found


def list_user(
    backend: Backend,
    payloads: PayloadCodec,
    user: str,
    now: float,
    deadline: Callable[[float, float, float | None], float] | None = None,
) -> tuple[list[UserSession], int]:
    """The live sessions of ``user`` in ``backend``, newest first, verified
    with ``payloads``, and how many were damaged (logged); ``deadline``
    recomputes expiry under current settings."""
    found: list[UserSession] = []
    damaged = 0
    for record in backend.user_sessions(user):
        if record.is_tombstone or record.is_expired(now):
            continue
        try:
            _, expiry, binding, _ = payloads.decode(record)
        except DamagedRecord as exc:
            log.error("%s; not listed for its user", exc)
            damaged += 1
            continue
        if binding is None or binding.user != user:
            continue  # the index is a hint; the signed payload decides
        if deadline and deadline(record.created_at, record.accessed_at, expiry) <= now:
            continue
        found.append(
            UserSession(
                record.session_id,
                record.created_at,
                record.accessed_at,
                record.expires_at,
                binding.agent,
                binding.address,
                binding.bound_at,
            )
        )
    found.sort(key=lambda s: (s.created_at, s.accessed_at), reverse=True)
    return found, damaged


def destroy_user(manager: SessionManager, user: str, keep: str | None = None) -> int:
    """See :func:`destroy_all_of`; counted in ``stats()``."""
    destroyed = destroy_all_of(manager.backend, user, keep, manager.clock())
    manager.counters.add("destroyed", destroyed)
    return destroyed


def destroy_all_of(
    backend: Backend, user: str, keep: str | None = None, now: float | None = None
) -> int:
    """Destroy every session bound to ``user`` except ``keep``; how many
    were live (expired ones still stored go too, uncounted).

    Each one dies at once, as with ``destroy()``: a request in flight on it
    finds it gone at commit and answers 409, never bringing it back.  The
    index is read again until nothing but ``keep`` is left, so a login that
    raced the first round (a ``regenerate()`` moving a session to a new id)
    is caught by the next.
    """
    now = time.time() if now is None else now
    destroyed = 0
    for _ in range(DESTROY_ROUNDS):
        doomed = [r for r in backend.user_sessions(user) if r.session_id != keep]
        if not doomed:
            break
        live = sum(not (r.is_expired(now) or r.is_tombstone) for r in doomed)
        # One round trip where the backend can; a session another request
        # ended meanwhile is not counted twice.
        deleted = backend.delete_many([r.session_id for r in doomed])
        destroyed += min(live, deleted)
    else:
        left = [r.session_id for r in backend.user_sessions(user) if r.session_id != keep]
        log.warning(
            "user %s kept getting new sessions while being logged out; still there: %s",
            user,
            ", ".join(left) or "none",
        )
    return destroyed
