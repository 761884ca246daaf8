"""The Session: one request's view of one stored session.

A Session reads nothing until the application touches it.  It keeps the data
as read (``_base``), the current view (``_apps``) and a log of this request's
own changes and reads (``_log``, :mod:`sessionstore.changes`).  What the
Store methods call (reads, writes, size limits) is its base class, in
:mod:`sessionstore.sessiondata`; committing the log is
:mod:`sessionstore.commit`'s work.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import commit as protocol
from . import regeneration
from .backends.base import RETIRED, Record
from .changes import ChangeLog
from .config import MAX_SPAN
from .errors import DamagedRecord
from .ids import new_session_id
from .payload import AppData, Binding, Decoded
from .sessiondata import SessionData, _delta
from .store import Store

if TYPE_CHECKING:
    from .cookies import CookieId
    from .manager import SessionManager

log = logging.getLogger("sessionstore")


class Session(SessionData):
    """The session of one request, found in ``environ["session"]``."""

    __slots__ = (
        "_manager",
        "_cookie_header",
        "_agent",
        "_address",
        "_loaded",
        "_cookie",
        "_record",
        "_expiry",
        "_expiry_changed",
        "_is_new",
        "_new_id",
        "_send_cookie",
        "_clear_cookie",
        "_stale_secret",
        "_late",
        "_binding",
        "_binding_changed",
        "_loading",  # the id being loaded, for log lines (set only then)
        "_retired",
    )

    def __init__(self, manager: SessionManager, environ: dict[str, Any]) -> None:
        self._manager = manager
        # What the session needs of the request, taken now: holding the
        # environ, which holds the session, would make each request a
        # reference cycle left to the garbage collector.
        self._cookie_header = environ.get("HTTP_COOKIE")
        self._agent = environ.get("HTTP_USER_AGENT")
        self._address = environ.get("REMOTE_ADDR")
        self._loaded = False
        self._cookie: CookieId | None = None
        self._record: Record | None = None
        self._base: AppData = {}
        self._apps: AppData = {}
        self._log = ChangeLog()
        self._expiry: float | None = None
        self._expiry_changed = False
        self._is_new = False
        #: The id drawn at the first write of a session not stored yet.
        self._new_id: str | None = None
        self._send_cookie = False
        self._clear_cookie = False
        #: The cookie or the payload was signed with an older secret.
        self._stale_secret = False
        #: The response headers are gone: a conflict can no longer be a 409.
        self._late = False
        self._binding: Binding | None = None
        self._binding_changed = False
        self._size = 0  # what it weighs (sessionstore.sessiondata)
        #: The tombstone the cookie named, if any (sessionstore.regeneration).
        self._retired: Record | None = None

    # -- public API -----------------------------------------------------------

    def store(self, app: str) -> Store:
        """The :class:`Store` of application ``app``."""
        return Store(self, app)

    @property
    def id(self) -> str | None:
        """The session id; ``None`` while there is no session and nothing was
        written.  From the first write on, the id it will be stored under."""
        self._load()
        return self._new_id if self._record is None else self._record.session_id

    @property
    def is_new(self) -> bool:
        """True when this request created the session, or will at commit."""
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

    @property
    def user(self) -> str | None:
        """The user this session is bound to, or ``None``."""
        self._load()
        return None if self._binding is None else self._binding.user

    def bind_user(self, user_id: str | None) -> None:
        """Bind the session to ``user_id`` (call it at login, after
        :meth:`regenerate`); ``None`` unbinds.

        Committed like any write and kept through ``regenerate()``.  The
        user agent and address of this request, as it reached the middleware
        (a middleware that takes ``REMOTE_ADDR`` from a proxy's headers goes
        outside it), are kept with the binding for
        :meth:`SessionMiddleware.sessions_of`.
        """
        if user_id is not None and not (isinstance(user_id, str) and 0 < len(user_id) <= 255):
            raise ValueError("bind_user() takes a user id of 1 to 255 characters, or None")
        self._load()
        if user_id is None:
            binding = None
        else:
            binding = Binding(
                user_id,
                str(self._agent or "")[:256],
                str(self._address or "")[:64],
                self._manager.clock(),
            )
            same = self._binding
            if same is not None and same[:3] == binding[:3]:
                return  # nothing changes: no write
        if binding is None and self._binding is None:
            return
        self._binding = binding
        self._binding_changed = True
        self._starting()

    def apps(self) -> list[str]:
        """Names of the applications whose stores hold data."""
        self._load()
        return [app for app, data in self._apps.items() if data]

    def create(self) -> None:
        """Make the session exist now: id, stored record and cookie."""
        self._load()
        if self._record is None:
            self._starting()
            protocol.insert(self, self._manager.clock())

    def set_expiry(self, when: float | datetime) -> None:
        """Expire the session at ``when`` (epoch seconds or an aware datetime).

        This replaces the idle timeout for this session; ``max_lifetime``
        still caps it, and the cookie becomes persistent until ``when``: its
        signature stays good until then, however long the visitor is away
        ("remember me for 30 days").
        """
        if isinstance(when, datetime):
            if when.tzinfo is None:
                raise ValueError("set_expiry() needs an aware datetime")
            when = when.timestamp()
        elif isinstance(when, bool) or not isinstance(when, (int, float)):
            raise TypeError("set_expiry() takes epoch seconds or an aware datetime")
        if not math.isfinite(when):
            raise ValueError(f"expiry {when} is not a time")
        now = self._manager.clock()
        if when <= now:
            raise ValueError(f"expiry {when} is in the past; use destroy() to end a session")
        if when - now > MAX_SPAN:
            # Refused now, in the app's code: an infinite or far-off time
            # would be stored and then fail the cookie (a 500 after a commit).
            raise ValueError(f"expiry {when} is more than 100 years away")
        self._load()
        self._expiry = float(when)
        self._expiry_changed = True
        self._starting()

    def regenerate(self) -> None:
        """Give the session a new id, keeping its data; the old id dies at once.

        Commits now (with this request's changes so far).  Call it at login.
        """
        self._load()
        if self._record is None:
            # A cookie naming an id another regenerate() retired just now:
            # the other click of a double-clicked login won.
            if self._retired is not None and regeneration.inherit(self, self._retired):
                return
            if self._new_id is not None:
                self._new_id = new_session_id()  # nothing stored yet: just redraw
            return
        regeneration.regenerate(self)

    def destroy(self) -> None:
        """Delete the session and every store in it; the cookie is cleared."""
        self._load()
        if self._record is not None:
            self._manager.backend.delete(self._record.session_id)
            self._manager.counters.add("destroyed")
        self._end()

    def commit(self) -> None:
        """Commit this request's changes now (it happens by itself at response time).

        Raises :class:`ConcurrentUpdate` (``on_conflict = error``; also when
        another request ended the session) or :class:`BusyRetry`.  After a
        ConcurrentUpdate this request's changes are dropped and the next
        access reads the session afresh.
        """
        if self._dirty():
            protocol.commit(self)

    def __repr__(self) -> str:
        if not self._loaded:
            return "<Session (not loaded)>"
        return f"<Session id={self.id!r} apps={self.apps()!r}>"

    # -- loading --------------------------------------------------------------

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        header = self._cookie_header
        if not header:
            return
        manager = self._manager
        now = manager.clock()
        live: list[tuple[CookieId, Record, Decoded]] = []
        retired: Record | None = None  # a tombstone named (sessionstore.regeneration)
        tombstones = 0
        for cookie in manager.cookies.read(header):
            session_id = cookie.session_id
            if live and any(session_id == found[0].session_id for found in live):
                continue  # the same session twice: one candidate
            self._loading = session_id
            try:
                record = manager.backend.get(session_id)
            except DamagedRecord as exc:
                self._damaged(exc)
                continue
            if record is None or record.expires_at <= now:
                continue
            payload = record.payload
            if not payload or payload.startswith(RETIRED):  # (is_tombstone, inline)
                # An id regenerate() retired: no session.  Remembered only if
                # its cookie would have been good for the live session.
                tombstones += 1
                if now - cookie.signed_at <= manager.settings.signature_max_age:
                    retired = record
                continue
            try:
                decoded = manager.payloads.decode(record)
            except DamagedRecord as exc:
                self._damaged(exc)
                continue
            _, expiry, _, _ = decoded
            if manager.deadline(record.created_at, record.accessed_at, expiry) <= now:
                continue  # expired under the current settings
            if expiry is None and now - cookie.signed_at > manager.settings.signature_max_age:
                # An old signature: good only for a session given an explicit
                # expiry (set_expiry(), "remember me"), until that expiry.
                continue
            live.append((cookie, record, decoded))
        if len(live) > 1:
            # Two live sessions under our name: one was planted (cookie
            # tossing).  Trust neither, and clear the one our scope can reach.
            log.warning(
                "%d live session cookies in one request (sessions %s); none used",
                len(live),
                ", ".join(found[0].session_id for found in live),
            )
            self._clear_cookie = True
            return
        if not live and tombstones == 1:
            self._retired = retired  # (one cookie only: a planted one is not trusted)
        for cookie, record, decoded in live:
            self._cookie = cookie
            self._adopt(record, decoded)
            next(manager.counters.requests)
            # What an older secret signed is re-signed with the newest before
            # the response leaves, so the old secret can be retired.
            _, _, _, stale = decoded
            self._stale_secret = stale or cookie.stale_secret
            self._send_cookie = cookie.stale_secret

    def _damaged(self, exc: DamagedRecord) -> None:
        """A stored session that cannot be trusted is "no session" for its
        visitor; it stays untouched for an administrator."""
        self._manager.counters.add("damaged_records")
        log.error("%s; treated as no session, kept for `sessionstore check`", exc)

    def _adopt(self, record: Record, decoded: Decoded, apps: AppData | None = None) -> None:
        """Build on ``record`` from now on; ``apps`` is the view (its data
        with this request's changes replayed; by default its data as is).
        What this request changed of the expiry and the binding stays."""
        base, expiry, binding, _ = decoded
        self._record = record
        self._base = base
        # The view's size: the record's, plus what replayed changes add.
        self._size = len(record.payload)
        if apps is None:
            apps = base  # the first write copies it (SessionData._writable)
        else:
            self._size += _delta(base, apps)
        self._apps = apps
        if not self._expiry_changed:
            self._expiry = expiry
        if not self._binding_changed:
            self._binding = binding

    def _starting(self) -> None:
        """The first write of a session not stored yet draws its id."""
        if self._record is None and self._new_id is None:
            self._new_id = new_session_id()
            self._is_new = True

    def _reset(self) -> None:
        """Forget the stored session: no id, no data, no pending changes."""
        self._record = None
        self._base = {}
        self._apps = {}
        self._size = 0
        self._log = ChangeLog()
        self._expiry = None
        self._expiry_changed = False
        self._binding = None
        self._binding_changed = False
        self._is_new = False
        self._new_id = None
        self._send_cookie = False
        self._retired = None

    def _end(self) -> None:
        """The session is gone (destroyed here or elsewhere): clear the cookie."""
        self._reset()
        self._clear_cookie = True

    def _discard(self) -> None:
        """Drop this request's changes; the next access reads afresh."""
        self._reset()
        self._loaded = False
        self._cookie = None

    def _dirty(self) -> bool:
        return self._loaded and bool(
            self._log.apps or self._expiry_changed or self._binding_changed
        )

    # -- response time ----------------------------------------------------------

    def _touch(self) -> None:
        protocol.touch(self)

    def _cookie_headers(self, secure: bool) -> list[tuple[str, str]]:
        """Set-Cookie (and Cache-Control) headers this response needs."""
        cookies = self._manager.cookies
        settings = self._manager.settings
        record = self._record
        headers = []
        if record is not None and self._send_cookie:
            if self._expiry is not None:
                max_age: int | None = max(0, int(self._expiry - self._manager.clock()))
            else:
                max_age = settings.cookie_max_age
            headers.append(
                ("Set-Cookie", cookies.set_cookie_header(record.session_id, secure, max_age))
            )
        elif record is None and self._clear_cookie:
            headers.append(("Set-Cookie", cookies.delete_cookie_header(secure)))
        if headers and settings.cache_control:
            headers.append(("Cache-Control", settings.cache_control))
        return headers
