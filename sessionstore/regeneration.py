"""``regenerate()``: a session moved to a new id, and the tombstone it leaves.

At login a session moves to a new id (the fixation defence) and its old id
dies at once: one compare-and-swap stores the new record, a second replaces
the old record by a *tombstone*, "no session" to everyone, kept for
:data:`TOMBSTONE_LIFETIME` seconds.

A tombstone keeps what the session held when it was retired: its payload is
:data:`~sessionstore.backends.base.RETIRED` followed by that data, signed and
bound to the tombstone's id and times like any payload, without the user
binding.  A double-clicked login reads it.  The click that lost, whether its
swap of the old id failed or its request only loaded the session after the
other click had retired it, starts its new session from that data plus its
own changes.  So whichever response the browser keeps last, its session
holds everything the session had before the login (SPEC 6).  The data is
what the holder of the old cookie could read until the login, never what
the login added, and no user binding; a tombstone is never loaded as a
session, and only a ``regenerate()`` starts from it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import commit as protocol
from .backends.base import RETIRED, Record
from .errors import BackendError, BusyRetry, DamagedRecord
from .ids import new_session_id

if TYPE_CHECKING:
    from .payload import Decoded
    from .session import Session

log = logging.getLogger("sessionstore")

#: How long the id retired by ``regenerate()`` keeps its tombstone (seconds).
TOMBSTONE_LIFETIME = 60.0


def regenerate(session: Session) -> None:
    """Move the stored session to a new id (with this request's changes) and
    retire the old id at once, by compare-and-swap."""
    manager = session._manager
    old = session._record
    assert old is not None
    lock = manager.commit_lock(old.session_id)
    try:
        _regenerate(session)
    finally:
        lock.release()


def _regenerate(session: Session) -> None:
    manager = session._manager
    backend = manager.backend
    for attempt in range(1, protocol.MAX_ATTEMPTS + 1):
        old = session._record
        assert old is not None
        now = manager.clock()
        new = protocol.build(session, new_session_id(), 0, old.created_at, now)
        if not backend.compare_and_swap(new.session_id, None, new):
            continue  # id collision: astronomically unlikely, just draw again
        if backend.compare_and_swap(old.session_id, old.version, _tombstone(session, old, now)):
            _regenerated(session, new)
            return
        manager.counters.add("retries")
        protocol.backoff(attempt)  # then read: see backoff()
        fresh = backend.get(old.session_id)
        if fresh is not None and fresh.is_tombstone and not fresh.is_expired(now):
            # Another regenerate() of this session won (a double-clicked
            # login): keep our new id, holding what the session had when the
            # other retired it (what we read may be older) plus our changes.
            retired = _retired_data(session, fresh)
            if retired is not None:
                new = _rebuilt(session, retired, new, now)
            _regenerated(session, new)
            return
        backend.compare_and_swap(new.session_id, new.version, None)
        protocol._catch_up(session, now, None, fresh)
    raise BusyRetry(f"session {session.id}: regenerate kept losing to other requests")


def inherit(session: Session, tombstone: Record) -> None:
    """``regenerate()`` in a request whose cookie named an id that another
    ``regenerate()`` retired moments ago (the other click of a double-clicked
    login won before this request loaded the session): a new session with
    what the retired one held plus this request's changes.  Without data in
    the tombstone, the request goes on without a session, as before."""
    retired = _retired_data(session, tombstone)
    if retired is None:
        if session._new_id is not None:
            session._new_id = new_session_id()  # nothing stored yet: just redraw
        return
    _start_from(session, retired)
    manager = session._manager
    now = manager.clock()
    for _ in range(3):
        new = protocol.build(session, new_session_id(), 0, tombstone.created_at, now)
        if manager.backend.compare_and_swap(new.session_id, None, new):
            _regenerated(session, new)
            return
    raise BackendError("could not allocate an unused session id")


def _tombstone(session: Session, old: Record, now: float) -> Record:
    """The record that retires ``old``, holding its data (not its binding)."""
    payloads = session._manager.payloads
    apps, expiry, _, _ = payloads.decode(old)  # (what the session read: remembered)
    expires_at = now + TOMBSTONE_LIFETIME
    data = payloads.dumps(apps, expiry, old.session_id, old.created_at, expires_at)
    return Record(old.session_id, old.version + 1, old.created_at, now, expires_at, RETIRED + data)


def _retired_data(session: Session, tombstone: Record) -> Decoded | None:
    """What ``tombstone`` keeps of the retired session, verified; None for
    an empty tombstone (or one that fails verification: logged)."""
    if not tombstone.payload.startswith(RETIRED):
        return None
    kept = tombstone._replace(payload=tombstone.payload[len(RETIRED) :])
    try:
        return session._manager.payloads.decode(kept)
    except DamagedRecord as exc:
        session._damaged(exc)
        return None


def _start_from(session: Session, retired: Decoded) -> None:
    """Make the retired session's data this request's base, with this
    request's changes replayed on it."""
    apps, expiry, _, _ = retired
    view = session._log.replay(apps)  # (an update() function may raise: nothing stored)
    session._base = apps
    session._apps = view
    if not session._expiry_changed:
        session._expiry = expiry


def _rebuilt(session: Session, retired: Decoded, new: Record, now: float) -> Record:
    """Our new record (nobody else knows its id yet) rebuilt on ``retired``."""
    backend = session._manager.backend
    try:
        _start_from(session, retired)
    except Exception:
        backend.compare_and_swap(new.session_id, new.version, None)
        session._discard()
        raise
    rebuilt = protocol.build(session, new.session_id, new.version, new.created_at, now)
    if not backend.compare_and_swap(new.session_id, new.version, rebuilt):
        raise BackendError(f"session {new.session_id} changed before its first response")
    return rebuilt


def _regenerated(session: Session, record: Record) -> None:
    session._manager.counters.add("regenerated")
    session._send_cookie = True
    protocol._committed(session, record)
