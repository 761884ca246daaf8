"""What a Session does for its Stores: reads remembered, writes logged, sizes counted.

:class:`SessionData` is the base of :class:`~sessionstore.session.Session`,
split out along the line between the Session API and the data path the
:class:`~sessionstore.store.Store` methods call.  Every write goes to the
view (``_apps``, copied per application on its first write, so ``_base``
keeps what was read) and to the change log (:mod:`sessionstore.changes`),
after the size limits are checked: a refused write changes nothing.

The session's size (``_size``) is its signed payload as stored plus the keys
and pickled values this request added, minus those it removed: one addition
per write instead of a sum over the session.  It is set from the record at
each load, catch-up and commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from . import commit as protocol
from .changes import DELETE, ChangeLog, Op, Update, apply_update, changed_since
from .errors import ConcurrentUpdate
from .payload import AppData

if TYPE_CHECKING:
    from .backends.base import Record
    from .manager import SessionManager
    from .session import Session


class SessionData:
    """The Store-facing half of a Session (state: see Session.__init__)."""

    __slots__ = ("_base", "_apps", "_log", "_size")

    #: The data as read, the view (with this request's changes), the change
    #: log, and what the session weighs (module docstring).
    _base: AppData
    _apps: AppData
    _log: ChangeLog
    _size: int

    if TYPE_CHECKING:
        _manager: SessionManager
        _loaded: bool
        _record: Record | None
        _new_id: str | None

        @property
        def id(self) -> str | None: ...
        def _load(self) -> None: ...
        def _starting(self) -> None: ...
        def _dirty(self) -> bool: ...

    def _read(self, app: str, key: str | None) -> dict[str, bytes]:
        """The application's values; the read of ``key`` (``None``: of all
        keys) is remembered for lost-update detection."""
        if not self._loaded:
            self._load()
        self._log.read(app, key)
        return self._apps.get(app) or {}

    def _writable(self, app: str) -> dict[str, bytes]:
        if not self._loaded:
            self._load()
        if self._record is None and self._new_id is None:
            self._starting()
        if app not in self._log.apps:
            # Copy on first write: _base keeps what was read.  The view is
            # the data as read itself until then (after a load or a commit).
            apps = self._apps
            if apps is self._base:
                apps = self._apps = dict(apps)
            apps[app] = dict(apps.get(app) or {})
        return self._apps[app]

    def _change(self, app: str, key: str, op: Op, data: bytes | None) -> None:
        values = self._writable(app)
        self._log.record(app, key, op)
        if data is None:
            values.pop(key, None)
        else:
            values[key] = data

    def _write(self, app: str, key: str, data: bytes) -> bool:
        if not self._loaded:
            self._load()
        # self._check_size() and self._change(), inline: the most frequent write.
        settings = self._manager.settings
        old = (self._apps.get(app) or {}).get(key)
        size = self._size + len(data) + (len(key) if old is None else -len(old))
        if len(data) > settings.max_value_size or size > settings.max_session_size:
            self._check_size(app, key, data)  # raises, naming the limit
        values = self._apps[app] if app in self._log.apps else self._writable(app)
        is_new = key not in values
        self._log.record(app, key, data)  # a set
        values[key] = data
        self._size = size
        return is_new

    def _update(self, app: str, key: str, fn: Any, default: Any) -> Any:
        self._load()
        value, data = apply_update(app, key, fn, default, (self._apps.get(app) or {}).get(key))
        size = self._check_size(app, key, data)
        self._change(app, key, Update(fn, default), data)
        self._size = size
        return value

    def _remove(self, app: str, key: str) -> bool:
        """Delete ``key``: a blind write, not a read (``pop`` reads first)."""
        self._load()
        if key not in (self._apps.get(app) or {}):
            return False
        self._size = self._check_size(app, key, None)
        self._change(app, key, DELETE, None)
        return True

    def _clear(self, app: str) -> None:
        if not self._loaded:
            self._load()
        if self._record is None and self._new_id is None:
            return  # no session: nothing to empty, and none is started for it
        values = self._writable(app)
        self._size -= sum(len(key) + len(data) for key, data in values.items())
        values.clear()
        self._log.empty(app)

    def _set_values(self, app: str, writes: dict[str, bytes | None], seen: Any) -> None:
        """Write ``writes`` (None: delete) and commit now; with ``seen``
        (``{key: bytes or None}``), refuse if any of those keys changed."""
        self._load()
        size = self._size
        try:
            for key, data in writes.items():  # each checked with those before it
                self._size = self._check_size(app, key, data)
        finally:
            self._size = size  # the commit below sets it from what it stores
        strict = None
        if seen is not None:
            checked = {(app, key): data for key, data in seen.items()}
            conflicts = changed_since(checked, self._apps)
            if conflicts:
                self._manager.counters.add("conflicts")
                raise ConcurrentUpdate(self.id or "(new)", conflicts)
            strict = protocol.Strict(checked, self._log.snapshot())
        for key, data in writes.items():
            if data is None:
                if key in (self._apps.get(app) or {}):
                    self._change(app, key, DELETE, None)
            else:
                self._change(app, key, data, data)
        if self._dirty():
            protocol.commit(cast("Session", self), strict)

    def _check_size(self, app: str, key: str, data: bytes | None) -> int:
        """The session's size once ``key`` holds ``data`` (``None``: is
        deleted); ValueError past a limit, before anything changes.

        The size is that of the signed payload as stored (what the session
        costs pickled), plus the keys and values this request added, minus
        those it removed: one addition per write, not a sum over the session.
        """
        settings = self._manager.settings
        old = (self._apps.get(app) or {}).get(key)
        total = self._size - (0 if old is None else len(key) + len(old))
        if data is None:
            return total
        if len(data) > settings.max_value_size:
            raise ValueError(
                f"value of key {key!r} of application {app!r} is {len(data)} bytes "
                f"pickled; max_value_size is {settings.max_value_size}"
            )
        total += len(key) + len(data)
        if total > settings.max_session_size:
            raise ValueError(
                f"storing key {key!r} of application {app!r} would make the session "
                f"{total} bytes pickled; max_session_size is {settings.max_session_size}"
            )
        return total


def _delta(base: AppData, view: AppData) -> int:
    """Bytes of keys and values that ``view`` has and ``base`` has not, minus
    the other way round (zero when they are one object, as at a load)."""
    if base is view:
        return 0
    delta = 0
    for app in base.keys() | view.keys():
        before = base.get(app) or {}
        after = view.get(app) or {}
        if before is after:
            continue
        for key in before.keys() | after.keys():
            old, new = before.get(key), after.get(key)
            if old is not new:
                delta += (0 if new is None else len(key) + len(new)) - (
                    0 if old is None else len(key) + len(old)
                )
    return delta
