"""The Session: one request's view of one stored session.

A Session reads nothing until the application touches it.  It keeps the data
as read (``_base``), the current view (``_apps``) and a log of this request's
own changes (``_changes``: per application, an ``empty()`` flag and the keys
set or deleted).  A commit is a compare-and-swap on the record's version; when
another request committed in between, the log is replayed on the fresh data
and the swap tried again, so requests writing different keys never lose each
other's writes.
"""

from __future__ import annotations

import logging
import random
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .backends.base import Record
from .errors import BackendError, BusyRetry, ConcurrentUpdate
from .ids import new_session_id
from .payload import AppData
from .store import Store

if TYPE_CHECKING:
    from .cookies import CookieId
    from .manager import SessionManager

log = logging.getLogger("sessionstore")

#: Compare-and-swap attempts before a commit gives up with BusyRetry.
MAX_ATTEMPTS = 50


def _backoff(attempt: int) -> None:
    """Wait a random moment, growing with each lost race (at most 20 ms), so
    that requests contending for one session do not starve each other."""
    if attempt:
        time.sleep(random.uniform(0, min(0.0005 * 2**attempt, 0.02)))


class _Changes:
    """This request's changes to one application's store."""

    __slots__ = ("cleared", "ops")

    def __init__(self) -> None:
        self.cleared = False
        #: key -> pickled value, or None for a deletion.
        self.ops: dict[str, bytes | None] = {}


class Session:
    """The session of one request, found in ``environ["session"]``."""

    __slots__ = (
        "_manager",
        "_environ",
        "_loaded",
        "_cookie",
        "_record",
        "_base",
        "_apps",
        "_changes",
        "_expiry",
        "_expiry_changed",
        "_is_new",
        "_send_cookie",
        "_clear_cookie",
        "_stale_secret",
    )

    def __init__(self, manager: SessionManager, environ: dict[str, Any]) -> None:
        self._manager = manager
        self._environ = environ
        self._loaded = False
        self._cookie: CookieId | None = None
        self._record: Record | None = None
        self._base: AppData = {}
        self._apps: AppData = {}
        self._changes: dict[str, _Changes] = {}
        self._expiry: float | None = None
        self._expiry_changed = False
        self._is_new = False
        self._send_cookie = False
        self._clear_cookie = False
        #: The cookie or the payload was signed with an older secret.
        self._stale_secret = False

    # -- public API -----------------------------------------------------------

    def store(self, app: str) -> Store:
        """The :class:`Store` of application ``app``."""
        return Store(self, app)

    @property
    def id(self) -> str | None:
        """The session id, or ``None`` while there is no session."""
        self._load()
        return None if self._record is None else self._record.session_id

    @property
    def is_new(self) -> bool:
        """True when the session was created during this request."""
        return self._is_new

    @property
    def exists(self) -> bool:
        """True when a stored session was loaded or created for this request."""
        self._load()
        return self._record is not None

    @property
    def created_at(self) -> float | None:
        self._load()
        return None if self._record is None else self._record.created_at

    @property
    def accessed_at(self) -> float | None:
        self._load()
        return None if self._record is None else self._record.accessed_at

    @property
    def expires_at(self) -> float | None:
        """When the session expires (epoch seconds), as of its last commit."""
        self._load()
        return None if self._record is None else self._record.expires_at

    def apps(self) -> list[str]:
        """Names of the applications whose stores hold data."""
        self._load()
        return [app for app, data in self._apps.items() if data]

    def create(self) -> None:
        """Make the session exist now: id, stored record and cookie."""
        self._load()
        if self._record is None:
            self._insert(self._manager.clock())

    def set_expiry(self, when: float | datetime) -> None:
        """Expire the session at ``when`` (epoch seconds or an aware datetime).

        This replaces the idle timeout for this session; ``max_lifetime``
        still caps it, and the cookie becomes persistent until ``when``.
        """
        if isinstance(when, datetime):
            if when.tzinfo is None:
                raise ValueError("set_expiry() needs an aware datetime")
            when = when.timestamp()
        elif isinstance(when, bool) or not isinstance(when, (int, float)):
            raise TypeError("set_expiry() takes epoch seconds or an aware datetime")
        now = self._manager.clock()
        if when <= now:
            raise ValueError(f"expiry {when} is in the past; use destroy() to end a session")
        limit = self._manager.settings.signature_max_age
        if when > now + limit:
            raise ValueError(
                f"expiry more than {limit} s away outlives the cookie signature; "
                "raise max_lifetime or cookie_max_age"
            )
        self._load()
        self._expiry = float(when)
        self._expiry_changed = True

    def regenerate(self) -> None:
        """Give the session a new id, keeping its data; the old id dies at once."""
        self._load()
        old = self._record
        if old is None:
            return  # no stored session: the next write gets a new id anyway
        lock = self._manager.commit_lock(old.session_id)
        try:
            self._regenerate(old)
        finally:
            lock.release()

    def _regenerate(self, old: Record) -> None:
        backend = self._manager.backend
        for attempt in range(MAX_ATTEMPTS):
            _backoff(attempt)
            now = self._manager.clock()
            new = self._build(new_session_id(), 0, old.created_at, now)
            if not backend.compare_and_swap(new.session_id, None, new):
                continue  # id collision: astronomically unlikely, just draw again
            if backend.compare_and_swap(old.session_id, old.version, None):
                self._committed(new)
                self._send_cookie = True
                return
            # Another request committed to the old id in between: undo, catch
            # up with its changes, and try again.
            backend.compare_and_swap(new.session_id, new.version, None)
            if not self._catch_up(now):
                return
            assert self._record is not None  # _catch_up() returned True
            old = self._record
        raise BusyRetry(f"session {old.session_id}: regenerate kept losing to other requests")

    def destroy(self) -> None:
        """Delete the session and every store in it; the cookie is cleared."""
        self._load()
        if self._record is not None:
            self._manager.backend.delete(self._record.session_id)
        self._reset()
        self._clear_cookie = True

    def commit(self) -> None:
        """Commit this request's changes now (it happens by itself at response time).

        Raises :class:`ConcurrentUpdate` (``on_conflict = error``) or
        :class:`BusyRetry`; after ConcurrentUpdate this request's changes are
        dropped and the next access reads the session afresh.
        """
        if not self._dirty():
            return
        now = self._manager.clock()
        if self._record is None:
            self._insert(now)
        else:
            lock = self._manager.commit_lock(self._record.session_id)
            try:
                self._update(now)
            finally:
                lock.release()

    def __repr__(self) -> str:
        if not self._loaded:
            return "<Session (not loaded)>"
        return f"<Session id={self.id!r} apps={self.apps()!r}>"

    # -- used by Store --------------------------------------------------------

    def _read(self, app: str) -> dict[str, bytes]:
        self._load()
        return self._apps.get(app) or {}

    def _writable(self, app: str) -> tuple[dict[str, bytes], _Changes]:
        self._load()
        changes = self._changes.get(app)
        if changes is None:
            # Copy on first write: _base keeps what was read.
            changes = self._changes[app] = _Changes()
            self._apps[app] = dict(self._apps.get(app) or {})
        return self._apps[app], changes

    def _write(self, app: str, key: str, data: bytes) -> bool:
        values, changes = self._writable(app)
        is_new = key not in values
        values[key] = changes.ops[key] = data
        return is_new

    def _remove(self, app: str, key: str) -> bool:
        if key not in self._read(app):
            return False
        values, changes = self._writable(app)
        del values[key]
        changes.ops[key] = None
        return True

    def _clear(self, app: str) -> None:
        values, changes = self._writable(app)
        values.clear()
        changes.cleared = True
        changes.ops.clear()

    # -- loading --------------------------------------------------------------

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        header = self._environ.get("HTTP_COOKIE")
        if not header:
            return
        manager = self._manager
        now = manager.clock()
        live: list[tuple[CookieId, Record, AppData, float | None, bool]] = []
        for cookie in manager.cookies.read(header):
            if any(cookie.session_id == found[0].session_id for found in live):
                continue  # the same session twice: one candidate
            record = manager.backend.get(cookie.session_id)
            if record is None or record.is_expired(now):
                continue
            apps, expiry, stale = manager.payloads.loads_checked(record.payload, record.session_id)
            if manager.deadline(record.created_at, record.accessed_at, expiry) <= now:
                continue  # expired under the current settings
            live.append((cookie, record, apps, expiry, stale))
        if len(live) > 1:
            # Two live sessions under our name: one was planted (cookie
            # tossing).  Trust neither, and clear the one our scope can reach.
            log.warning("%d live session cookies in one request; none used", len(live))
            self._clear_cookie = True
            return
        for cookie, record, apps, expiry, stale in live:
            self._cookie = cookie
            self._adopt(record, apps, expiry)
            # What an older secret signed is re-signed with the newest before
            # the response leaves, so the old secret can be retired.
            self._stale_secret = stale or cookie.stale_secret
            self._send_cookie = cookie.stale_secret
            return

    def _adopt(self, record: Record, apps: AppData, expiry: float | None) -> None:
        self._record = record
        self._base = apps
        self._apps = dict(apps)
        self._expiry = expiry

    def _reset(self) -> None:
        """Forget the stored session: no id, no data, no pending changes."""
        self._record = None
        self._base = {}
        self._apps = {}
        self._changes = {}
        self._expiry = None
        self._expiry_changed = False
        self._is_new = False
        self._send_cookie = False

    # -- committing -----------------------------------------------------------

    def _dirty(self) -> bool:
        return self._loaded and (bool(self._changes) or self._expiry_changed)

    def _build(self, session_id: str, read_version: int, created_at: float, now: float) -> Record:
        manager = self._manager
        apps = {app: values for app, values in self._apps.items() if values}
        return Record(
            session_id=session_id,
            version=read_version + 1,
            created_at=created_at,
            accessed_at=now,
            expires_at=manager.deadline(created_at, now, self._expiry),
            payload=manager.payloads.dumps(apps, self._expiry, session_id),
        )

    def _insert(self, now: float) -> None:
        for _ in range(3):
            record = self._build(new_session_id(), 0, now, now)
            if self._manager.backend.compare_and_swap(record.session_id, None, record):
                self._committed(record)
                self._is_new = True
                self._send_cookie = True
                self._clear_cookie = False
                return
        raise BackendError("could not allocate an unused session id")

    def _update(self, now: float) -> None:
        backend = self._manager.backend
        assert self._record is not None
        session_id = self._record.session_id
        for attempt in range(MAX_ATTEMPTS):
            _backoff(attempt)
            old = self._record
            if old is None:
                return  # destroyed by another request; _catch_up logged it
            new = self._build(old.session_id, old.version, old.created_at, now)
            if backend.compare_and_swap(old.session_id, old.version, new):
                self._committed(new)
                return
            if not self._catch_up(now):
                return
        raise BusyRetry(f"session {session_id}: too many concurrent updates")

    def _committed(self, record: Record) -> None:
        if self._expiry_changed:
            self._send_cookie = True  # the cookie's Max-Age follows the expiry
        self._record = record
        self._base = self._apps
        self._apps = dict(self._apps)  # _writable() copies inner dicts, not this one
        self._changes = {}
        self._expiry_changed = False
        self._refresh_cookie(record.accessed_at)
        self._maybe_cleanup(record.accessed_at)

    def _catch_up(self, now: float) -> bool:
        """Re-read the record after a lost swap and replay this request's changes.

        False when the session is gone (destroyed, regenerated or expired by
        another request): this request's changes are dropped, never written
        back under the dead id.
        """
        old = self._record
        assert old is not None
        manager = self._manager
        fresh = manager.backend.get(old.session_id)
        if fresh is None or fresh.is_expired(now):
            log.warning(
                "session %s ended by another request; dropping this request's changes to %s",
                old.session_id,
                sorted(self._changes) or "its expiry",
            )
            self._reset()
            return False
        fresh_apps, fresh_expiry = manager.payloads.loads(fresh.payload, fresh.session_id)
        if manager.settings.on_conflict == "error":
            conflicts = self._conflicts(fresh_apps)
            if conflicts:
                self._loaded = False  # the next access reads afresh
                self._reset()
                self._cookie = None
                raise ConcurrentUpdate(old.session_id, conflicts)
        apps = dict(fresh_apps)
        for app, changes in self._changes.items():
            values = {} if changes.cleared else dict(apps.get(app) or {})
            for key, data in changes.ops.items():
                if data is None:
                    values.pop(key, None)
                else:
                    values[key] = data
            apps[app] = values
        self._record = fresh
        self._base = fresh_apps
        self._apps = apps
        if not self._expiry_changed:
            self._expiry = fresh_expiry
        return True

    def _conflicts(self, fresh: AppData) -> list[tuple[str, str | None]]:
        """Keys this request wrote that another request changed since the read."""
        found: list[tuple[str, str | None]] = []
        for app, changes in self._changes.items():
            then = self._base.get(app) or {}
            now = fresh.get(app) or {}
            if changes.cleared and then != now:
                found.append((app, None))
                continue
            found.extend((app, key) for key in changes.ops if then.get(key) != now.get(key))
        return found

    # -- response time ----------------------------------------------------------

    def _touch(self) -> None:
        """Refresh the idle clock of a session read but not written, at most
        once per ``touch_interval`` (or at once when an older secret signed it);
        a lost race is fine: the winner refreshed it."""
        record = self._record
        if record is None or self._dirty():
            return
        manager = self._manager
        now = manager.clock()
        if now - record.accessed_at < manager.settings.touch_interval and not self._stale_secret:
            return
        payload = record.payload
        if self._stale_secret:
            payload = manager.payloads.dumps(self._base, self._expiry, record.session_id)
        fresh = Record(
            record.session_id,
            record.version + 1,
            record.created_at,
            now,
            manager.deadline(record.created_at, now, self._expiry),
            payload,
        )
        if manager.backend.compare_and_swap(record.session_id, record.version, fresh):
            self._record = fresh
            self._stale_secret = False
            self._refresh_cookie(now)
            self._maybe_cleanup(now)

    def _refresh_cookie(self, now: float) -> None:
        cookie = self._cookie
        interval = self._manager.settings.touch_interval
        if cookie is None or now - cookie.signed_at >= interval:
            self._send_cookie = True

    def _maybe_cleanup(self, now: float) -> None:
        manager = self._manager
        probability = manager.settings.cleanup_probability
        if probability and manager.chance() < probability:
            try:
                removed = manager.backend.delete_expired(now)
            except (BackendError, BusyRetry):
                log.exception("expired-session cleanup failed")
            else:
                log.info("removed %d expired sessions", removed)

    def _cookie_headers(self, secure: bool) -> list[tuple[str, str]]:
        """Set-Cookie (and Cache-Control) headers this response needs."""
        cookies = self._manager.cookies
        record = self._record
        if record is not None and self._send_cookie:
            settings = self._manager.settings
            if self._expiry is not None:
                max_age: int | None = max(0, int(self._expiry - self._manager.clock()))
            else:
                max_age = settings.cookie_max_age
            headers = [
                ("Set-Cookie", cookies.set_cookie_header(record.session_id, secure, max_age))
            ]
            if settings.cache_control:
                headers.append(("Cache-Control", settings.cache_control))
            return headers
        if record is None and self._clear_cookie:
            return [("Set-Cookie", cookies.delete_cookie_header(secure))]
        return []
