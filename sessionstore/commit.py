"""The commit protocol: how one request's changes reach the backend.

Every stored session has a version; every commit is one
``compare_and_swap(id, version read, new record)``.  When it loses (another
request committed in between), :func:`_catch_up` re-reads the record and
replays this request's change log on the fresh data
(:mod:`sessionstore.changes`), then the swap is tried again, at most
``MAX_ATTEMPTS`` times with a growing random pause.

What a lost swap can reveal, and what happens then:

* the record is gone, expired, or a regenerate tombstone: the session ended
  under this request (a logout, a login elsewhere).  Its changes are never
  written back under the dead id: :class:`SessionEnded` (a 409 that clears
  the cookie), except for a ``regenerate()`` that lost to another
  ``regenerate()`` (a double-clicked login): it keeps its own new id
  (:mod:`sessionstore.regeneration`);
* a key this request read and then overwrote was changed in between: a lost
  update, logged (``merge``) or refused (``error``, before the headers);
* keys checked by ``set_values()`` changed since ``using()``: refused;
* an ``update()`` function fails on the fresh value: nothing is committed.

Nothing here keeps state between requests: the state is the Session's.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING, NamedTuple, TypeGuard

from .backends.base import Record
from .changes import ChangeLog, changed_since
from .errors import BackendError, BusyRetry, ConcurrentUpdate
from .ids import new_session_id

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger("sessionstore")

#: Compare-and-swap attempts before a commit gives up with BusyRetry.
MAX_ATTEMPTS = 50
#: Expired sessions removed by one request that draws cleanup, at most.
CLEANUP_BATCH = 100


class SessionEnded(ConcurrentUpdate):
    """The session was destroyed (or its id retired) by another request
    while this one was running; this request's changes were dropped."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id, [])
        self.args = (f"session {session_id} was ended by another request; changes dropped",)


class Strict(NamedTuple):
    """What ``set_values()`` checks: the values seen at ``using()``, and the
    change log as it was before the collection's writes joined it."""

    seen: dict[tuple[str, str], bytes | None]
    log_before: ChangeLog


def backoff(attempt: int) -> None:
    """Wait a random moment after the ``attempt``-th lost race, growing with
    each (at most 20 ms), so that requests contending for one session do not
    starve each other.

    The wait comes between the lost swap and the re-read, never between the
    re-read and the next swap: a version read before the wait is stale by
    every commit made during it.  (It was, once: four gunicorn workers
    appending to one session with ``update()`` then lost 50 races in a row
    on 1-3 of 800 requests, each a 503.)
    """
    time.sleep(random.uniform(0, min(0.0005 * 2**attempt, 0.02)))


def commit(session: Session, strict: Strict | None = None) -> None:
    """Commit ``session``'s pending changes (see the module docstring)."""
    manager = session._manager
    now = manager.clock()
    record = session._record
    if record is None:
        insert(session, now)
        return
    backend = manager.backend
    # A catch-up re-reads the same id; each field is read once (a named
    # tuple's fields cost a few hundred instructions a read on Python 3.11).
    session_id = record.session_id
    lock = manager.commit_lock(session_id)
    try:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            old = session._record
            assert old is not None
            version = old.version
            new = build(session, session_id, version, old.created_at, now)
            if backend.compare_and_swap(session_id, version, new):
                _committed(session, new)
                return
            manager.counters.add("retries")
            backoff(attempt)  # then read: see backoff()
            _catch_up(session, now, strict)
    finally:
        lock.release()
    raise BusyRetry(f"session {session.id}: too many concurrent updates")


def build(
    session: Session, session_id: str, read_version: int, created_at: float, now: float
) -> Record:
    """The record that stores ``session``'s current view under ``session_id``."""
    manager = session._manager
    apps = session._apps
    if not all(apps.values()):  # an emptied application is not stored
        apps = {app: values for app, values in apps.items() if values}
    expires_at = manager.deadline(created_at, now, session._expiry)
    binding = session._binding
    payload = manager.payloads.dumps(
        apps, session._expiry, session_id, created_at, expires_at, binding
    )
    # tuple.__new__ skips the named tuple's Python-level __new__ (a frame
    # per call, on every write).
    return tuple.__new__(
        Record,
        (
            session_id,
            read_version + 1,
            created_at,
            now,
            expires_at,
            payload,
            None if binding is None else binding.user,
        ),
    )


def insert(session: Session, now: float) -> None:
    """Store a new session under the id drawn at its first write."""
    retired = session._retired
    if retired is not None:
        # The cookie names an id a login retired while this request was on
        # its way (sessionstore.regeneration).  A new session's cookie would
        # replace the login's if this response arrived last: the browser
        # would be logged out.  So these writes are dropped, like any racing
        # a login, with a 409 that leaves the cookie alone.
        log.warning(
            "session %s moved to a new id by another request; dropping this "
            "request's changes to %s",
            retired.session_id,
            sorted(session._log.apps) or "its expiry",
        )
        session._reset()
        session._manager.counters.add("conflicts")
        raise SessionEnded(retired.session_id)
    backend = session._manager.backend
    for _ in range(3):
        session_id = session._new_id or new_session_id()
        record = build(session, session_id, 0, now, now)
        if backend.compare_and_swap(session_id, None, record):
            session._manager.counters.add("created")
            session._is_new = True
            session._send_cookie = True
            session._clear_cookie = False
            _committed(session, record)
            return
        session._new_id = None  # taken: astronomically unlikely, draw again
    raise BackendError("could not allocate an unused session id")


def _committed(session: Session, record: Record) -> None:
    next(session._manager.counters.commits)
    if session._expiry_changed:
        session._send_cookie = True  # the cookie's Max-Age follows the expiry
    session._record = record
    session._new_id = None
    session._base = session._apps  # the next write copies it (SessionData._writable)
    session._size = len(record.payload)
    session._log.clear()
    session._expiry_changed = False
    session._binding_changed = False
    session._stale_secret = False  # signed with the newest secret just now
    written(session, record.accessed_at)


def moved_by_login(record: Record | None, now: float) -> TypeGuard[Record]:
    """Whether ``record`` is the fresh tombstone of an id ``regenerate()``
    retired (:mod:`sessionstore.regeneration`)."""
    return record is not None and record.is_tombstone and not record.is_expired(now)


def _catch_up(
    session: Session, now: float, strict: Strict | None, fresh: Record | None = None
) -> None:
    """Re-read the record after a lost swap and replay this request's changes
    on it; raises when they must not be committed."""
    manager = session._manager
    old = session._record
    assert old is not None
    if fresh is None:
        fresh = manager.backend.get(old.session_id)
    if fresh is None or fresh.is_tombstone or fresh.is_expired(now):
        log.warning(
            "session %s ended by another request; dropping this request's changes to %s",
            old.session_id,
            sorted(session._log.apps) or "its expiry",
        )
        if moved_by_login(fresh, now):
            # Moved to a new id by a login: the browser has, or is getting,
            # that cookie from the login's response; clearing the cookie here
            # could log it out if this response arrived last.
            session._reset()
        else:
            session._end()
        manager.counters.add("conflicts")
        raise SessionEnded(old.session_id)
    decoded = manager.payloads.decode(fresh)
    fresh_apps = decoded[0]
    if strict is not None:
        view = strict.log_before.replay(fresh_apps)
        conflicts = changed_since(strict.seen, view)
        if conflicts:
            session._log = strict.log_before
            session._adopt(fresh, decoded, view)
            manager.counters.add("conflicts")
            raise ConcurrentUpdate(old.session_id, conflicts)
    lost = session._log.lost_updates(session._base, fresh_apps)
    if lost:
        if manager.settings.on_conflict == "error" and not session._late:
            session._discard()
            manager.counters.add("conflicts")
            raise ConcurrentUpdate(old.session_id, lost)
        manager.counters.add("lost_updates", len(lost))
        for app, key in lost:
            log.warning(
                "session %s: lost update of %s (changed by another request after this "
                "one read it; this request's value wins)",
                old.session_id,
                f"application {app!r}, key {key!r}" if key else f"every key of {app!r}",
            )
    try:
        apps = session._log.replay(fresh_apps)
    except Exception:
        session._discard()
        raise
    session._adopt(fresh, decoded, apps)


def touch(session: Session) -> None:
    """Refresh the idle clock of a session read but not written, at most once
    per ``touch_interval`` (or at once when an older secret signed it).  A
    compare-and-swap, so it never reverts a write; a lost race is fine: the
    winner refreshed it."""
    record = session._record
    if record is None or session._dirty():
        return
    manager = session._manager
    now = manager.clock()
    if now - record.accessed_at < manager.settings.touch_interval and not session._stale_secret:
        return
    expires_at = manager.deadline(record.created_at, now, session._expiry)
    payload = manager.payloads.dumps(
        session._base,
        session._expiry,
        record.session_id,
        record.created_at,
        expires_at,
        session._binding,
    )
    fresh = record._replace(
        version=record.version + 1, accessed_at=now, expires_at=expires_at, payload=payload
    )
    if manager.backend.compare_and_swap(record.session_id, record.version, fresh):
        session._record = fresh
        session._stale_secret = False
        written(session, now)


def written(session: Session, now: float) -> None:
    """After a write at ``now``: re-sign the cookie when it is older than
    ``touch_interval``, and now and then remove a small batch of expired
    sessions."""
    manager = session._manager
    settings = manager.settings
    cookie = session._cookie
    if cookie is None or now - cookie.signed_at >= settings.touch_interval:
        session._send_cookie = True
    probability = settings.cleanup_probability
    if probability and manager.chance() < probability:
        try:
            removed = manager.backend.delete_expired(now, limit=CLEANUP_BATCH)
        except (BackendError, BusyRetry):
            # (This request's own commit is done: it still answers 200.)
            log.exception("session %s: expired-session cleanup failed", session.id)
        else:
            manager.counters.add("cleanup_deleted", removed)
            log.info("removed %d expired sessions", removed)
