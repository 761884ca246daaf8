"""``regenerate()``: a session moved to a new id, and the tombstone it leaves.

At login a session moves to a new id (the fixation defence) and its old id
dies at once: one compare-and-swap stores the new record, a second replaces
the old record by a *tombstone*, "no session" to everyone, kept for
:data:`TOMBSTONE_LIFETIME` seconds.

The tombstone of a session not bound to a user (the usual login: before
it, nobody is logged in) keeps what the session held when it was retired:
its payload is :data:`~sessionstore.backends.base.RETIRED` followed by that
data, signed like any payload for the tombstone's times and for the id
``retired:<id>`` (so that, stripped of its prefix, it is no payload of the
live id).  A double-clicked login reads it.  The click that lost starts its
new session from that data plus its own changes, whether its swap of the
old id failed or its request only loaded the session after the other click
had retired it (then only within :data:`INHERIT_WINDOW` seconds, with a
cookie as fresh as a live session needs, and when it was the request's only
session cookie).  So whichever response the browser keeps last, its session
holds everything the session had before the login (SPEC 6).

What the old cookie can get that way is what its holder could read until
the login, never what the login added.  The tombstone of a bound session
(a logged-in user's, regenerated at a change of privileges) stays empty:
a stolen logged-in cookie gets nothing from it, and a tombstone holds no
user binding for ``destroy_user()`` to miss.  A tombstone is never loaded
as a session; only a ``regenerate()`` starts from one.
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
#: How long after the retirement a request carrying the old cookie that calls
#: ``regenerate()`` starts from the tombstone's data (the other click of a
#: double-clicked login is on its way by then).
INHERIT_WINDOW = 10.0
#: Payloads kept in tombstones are signed for this prefix and the old id.
_KEPT_FOR = "retired:"


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
        new = _inserted(session, old.created_at, now)
        if backend.compare_and_swap(old.session_id, old.version, _tombstone(session, old, now)):
            _regenerated(session, new)
            return
        manager.counters.add("retries")
        # Our new record goes first, then the wait, then the read: between
        # the read and the next swap of the old id there is only one round
        # trip (the next insert), where there were two.
        backend.compare_and_swap(new.session_id, new.version, None)
        protocol.backoff(attempt)
        fresh = backend.get(old.session_id)
        if protocol.moved_by_login(fresh, now):
            # Another regenerate() of this session won (a double-clicked
            # login): a new id of our own, holding what the session had when
            # the other retired it (what we read may be older) plus our
            # changes; from an empty tombstone, what we read plus our changes.
            retired = _retired_data(session, fresh)
            if retired is not None:
                _start_from(session, retired)  # (an update() may raise: nothing stored)
            _regenerated(session, _inserted(session, old.created_at, manager.clock()))
            return
        protocol._catch_up(session, now, None, fresh)
    raise BusyRetry(f"session {session.id}: regenerate kept losing to other requests")


def _inserted(session: Session, created_at: float, now: float) -> Record:
    """The session's view stored under a new id, not yet in any cookie."""
    for _ in range(3):
        new = protocol.build(session, new_session_id(), 0, created_at, now)
        if session._manager.backend.compare_and_swap(new.session_id, None, new):
            return new
    raise BackendError("could not allocate an unused session id")


def inherit(session: Session, tombstone: Record) -> bool:
    """``regenerate()`` in a request whose cookie named an id that another
    ``regenerate()`` retired moments ago (the other click of a double-clicked
    login won before this request loaded the session): a new session with
    what the retired one held plus this request's changes.  False (nothing
    done) when the tombstone has nothing to pass on."""
    manager = session._manager
    now = manager.clock()
    if now - tombstone.accessed_at > INHERIT_WINDOW:  # (accessed_at: when retired)
        return False
    retired = _retired_data(session, tombstone)
    if retired is None or manager.deadline(tombstone.created_at, now, retired[1]) <= now:
        return False  # empty, or past max_lifetime (or its explicit expiry) by now
    _start_from(session, retired)
    _regenerated(session, _inserted(session, tombstone.created_at, now))
    return True


def _tombstone(session: Session, old: Record, now: float) -> Record:
    """The record that retires ``old``: holding its data if it was bound to
    no user, empty if it was."""
    payloads = session._manager.payloads
    expires_at = now + TOMBSTONE_LIFETIME
    payload = b""
    if old.user is None:
        apps, expiry, binding, _ = payloads.decode(old)  # (what the session read: remembered)
        if binding is None:  # (the signed payload has the last word)
            kept_for = _KEPT_FOR + old.session_id
            payload = RETIRED + payloads.dumps(apps, expiry, kept_for, old.created_at, expires_at)
    return Record(old.session_id, old.version + 1, old.created_at, now, expires_at, payload)


def _retired_data(session: Session, tombstone: Record) -> Decoded | None:
    """What ``tombstone`` keeps of the retired session, verified; None for
    an empty tombstone (or one that fails verification: logged)."""
    if not tombstone.payload.startswith(RETIRED):
        return None
    kept = tombstone._replace(
        session_id=_KEPT_FOR + tombstone.session_id, payload=tombstone.payload[len(RETIRED) :]
    )
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


def _regenerated(session: Session, record: Record) -> None:
    session._manager.counters.add("regenerated")
    session._send_cookie = True
    protocol._committed(session, record)
