"""The change log: what one request did to a session, kept so it can be replayed.

A request works on a snapshot of the stored session.  When its commit loses
the compare-and-swap to another request, the commit re-reads the record and
replays this log on the fresh data instead of writing back the stale snapshot.

Per application the log holds an ``empty()`` flag and, per key, the
operations in the order they were made:

* a set, kept as its pickled value itself (``bytes``, no wrapper: a named
  tuple made per write cost more than the rest of the write's logging);
  replay stores the same bytes.
* ``Delete``: replay removes the key (absent already is fine).
* ``Update(fn, default)``: replay applies ``fn`` again to the fresh value, so
  two concurrent ``update()`` calls on one key compose instead of one
  overwriting the other.

A set or ``Delete`` makes the earlier operations on that key irrelevant,
and ``empty()`` makes every earlier operation of the application irrelevant,
so they are dropped: a key's list only ever starts with one of them, followed
by updates.

The log also remembers what the request *read* (the key, or the whole
application for ``keys()``, ``len()`` and the like).  A plain read-then-``set``
of a key that another request changed after it was read is a lost update:
logged under ``on_conflict = merge``, refused under ``error``.  A blind write
(of a key never read) conflicts with nothing, and an ``update()`` never
conflicts: it is replayed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .errors import SessionStoreError
from .payload import AppData, dump_value, load_value

#: Marks an application whose every key was read (``keys()``, ``len()``...).
ALL: Any = None


class Delete(NamedTuple):
    pass


class Update(NamedTuple):
    fn: Callable[[Any], Any]
    default: Any


Op = bytes | Delete | Update  # bytes: a set of that value
DELETE = Delete()


class UpdateFailed(SessionStoreError):
    """An ``update()`` function raised (or returned something unpicklable)
    while its change was replayed on fresh data; nothing was committed.

    ``app`` and ``key`` name the update; the function's exception is chained.
    """

    def __init__(self, app: str, key: str, reason: str) -> None:
        self.app = app
        self.key = key
        super().__init__(f"update() of key {key!r} of application {app!r} failed: {reason}")


def apply_update(
    app: str, key: str, fn: Callable[[Any], Any], default: Any, data: bytes | None
) -> tuple[Any, bytes]:
    """Run ``fn`` on the value stored as ``data`` (or on ``default``); the
    new value and its pickle.  A failure is an :class:`UpdateFailed`."""
    current = default if data is None else load_value(data)
    try:
        value = fn(current)
    except Exception as exc:
        raise UpdateFailed(app, key, f"the function raised {exc!r}") from exc
    try:
        return value, dump_value(value)
    except Exception as exc:
        raise UpdateFailed(app, key, f"its result is not picklable ({exc})") from exc


def _replay(app: str, ops: dict[str, list[Op]], values: dict[str, bytes]) -> dict[str, bytes]:
    """``ops`` (one application's) applied to ``values``, in place."""
    for key, key_ops in ops.items():
        for op in key_ops:
            if type(op) is bytes:
                values[key] = op
            elif isinstance(op, Update):
                values[key] = apply_update(app, key, op.fn, op.default, values.get(key))[1]
            else:
                values.pop(key, None)
    return values


_NO_APPS: frozenset[str] = frozenset()


class ChangeLog:
    """Per application, what this request changed and what it read.

    Plain dicts, no object per application, and a shared empty frozenset
    until an application is emptied: a log is filled on every write
    request, and each object made there costs more than the rest of the
    logging.
    """

    __slots__ = ("apps", "emptied", "reads")

    def __init__(self) -> None:
        #: app -> key -> its operations, for every application changed.
        self.apps: dict[str, dict[str, list[Op]]] = {}
        #: Applications emptied (``empty()``) before the operations they hold.
        self.emptied = _NO_APPS
        #: app -> keys read, or ALL when the whole application was read.
        self.reads: dict[str, set[str] | None] = {}

    def __bool__(self) -> bool:
        return bool(self.apps)

    def clear(self) -> None:
        """Forget every change and read (after a commit): cheaper than a new log."""
        self.apps = {}
        self.emptied = _NO_APPS
        self.reads = {}

    def empty(self, app: str) -> None:
        """Record ``empty()`` of ``app``: its earlier operations are dropped."""
        self.apps[app] = {}
        self.emptied = self.emptied | {app}

    def record(self, app: str, key: str, op: Op) -> None:
        """Add ``op`` on ``key`` of ``app``: an update joins the key's list,
        a set or delete replaces it."""
        ops = self.apps.get(app)
        if ops is None:
            ops = self.apps[app] = {}
        if type(op) is Update and key in ops:
            ops[key].append(op)
        else:
            ops[key] = [op]

    def read(self, app: str, key: str | None) -> None:
        """Remember a read of ``key`` (``None``: of the whole application)."""
        if app not in self.reads:
            self.reads[app] = ALL if key is None else {key}
            return
        keys = self.reads[app]
        if keys is None:
            return  # already read whole
        if key is None:
            self.reads[app] = ALL
        else:
            keys.add(key)

    def snapshot(self) -> ChangeLog:
        clone = ChangeLog()
        clone.apps = {
            app: {key: list(key_ops) for key, key_ops in ops.items()}
            for app, ops in self.apps.items()
        }
        clone.emptied = self.emptied  # immutable: shared
        clone.reads = {app: (None if k is None else set(k)) for app, k in self.reads.items()}
        return clone

    def replay(self, fresh: AppData) -> AppData:
        """This request's changes applied to another request's data (which
        is not modified)."""
        apps = dict(fresh)
        for app, ops in self.apps.items():
            values = {} if app in self.emptied else dict(fresh.get(app) or {})
            apps[app] = _replay(app, ops, values)
        return apps

    def overwrites(self, app: str) -> list[str | None]:
        """Keys of ``app`` whose stored value this log replaces without
        replaying a function on it (``None`` stands for the whole application)."""
        found: list[str | None] = [None] if app in self.emptied else []
        ops = self.apps.get(app) or {}
        found.extend(key for key, key_ops in ops.items() if not isinstance(key_ops[0], Update))
        return found

    def lost_updates(self, base: AppData, fresh: AppData) -> list[tuple[str, str | None]]:
        """Keys this request read, then overwrote, that another request
        changed in between (``(app, None)``: an ``empty()``)."""
        found: list[tuple[str, str | None]] = []
        for app in self.apps:
            if app not in self.reads:
                continue
            read = self.reads[app]
            then = base.get(app) or {}
            now = fresh.get(app) or {}
            for key in self.overwrites(app):
                if key is None:
                    # empty(): every key read (or any, after a whole read) counts.
                    keys = set(then) | set(now) if read is None else read
                    if any(then.get(k) != now.get(k) for k in keys):
                        found.append((app, None))
                elif (read is None or key in read) and then.get(key) != now.get(key):
                    found.append((app, key))
        return found


def changed_since(
    seen: dict[tuple[str, str], bytes | None], fresh: AppData
) -> list[tuple[str, str | None]]:
    """The ``(app, key)`` pairs whose value in ``fresh`` is not what was seen."""
    return [
        (app, key) for (app, key), data in seen.items() if (fresh.get(app) or {}).get(key) != data
    ]


__all__ = [
    "ALL",
    "DELETE",
    "ChangeLog",
    "Delete",
    "Update",
    "UpdateFailed",
    "apply_update",
    "changed_since",
    "dump_value",
]
