"""The Store: one application's namespace inside a session."""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .collection import Collection, Value
from .errors import InvalidAppName
from .payload import PROTOCOL, dump_value, load_value

if TYPE_CHECKING:
    from .session import Session

_APP_RE = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_MISSING: Any = object()


#: Names already checked (they come from code, so there are few).
_CHECKED: set[str] = set()


def check_app_name(name: object) -> str:
    """Return ``name`` if it is a valid application name, else raise InvalidAppName."""
    if not isinstance(name, str):
        raise InvalidAppName(name)
    if name in _CHECKED:
        return name
    if _APP_RE.fullmatch(name) is None:
        raise InvalidAppName(name)
    if len(_CHECKED) < 1024:
        _CHECKED.add(name)
    return name


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"session keys are str, not {type(key).__name__}")
    if not key:
        raise ValueError("session keys must not be empty")
    return key


class Store:
    """The keys of one application in one session.

    Values are stored as snapshots (pickled at :meth:`set`) and come back as
    copies: changing a returned object changes nothing stored until it is
    set again.  Nothing is read from the backend until first used.
    """

    __slots__ = ("_session", "_app")

    def __init__(self, session: Session, app: str) -> None:
        self._session = session
        self._app = app if type(app) is str and app in _CHECKED else check_app_name(app)

    @property
    def app(self) -> str:
        """The application name; assign another valid name to retarget the store."""
        return self._app

    @app.setter
    def app(self, name: str) -> None:
        self._app = check_app_name(name)

    def set(self, key: str, value: Any) -> bool:
        """Store a snapshot of ``value``; True if ``key`` was new, False if overwritten.

        An unpicklable value raises :class:`TypeError`, one larger than
        ``max_value_size`` (or a session past ``max_session_size``) raises
        :class:`ValueError`, and nothing changes.
        """
        if type(key) is not str or not key:
            _check_key(key)
        try:
            data = pickle.dumps(value, PROTOCOL)  # dump_value(), inline: every write
        except Exception:
            data = self._dump(key, value)  # raises, saying what and where
        return self._session._write(self._app, key, data)

    def _dump(self, key: str, value: Any) -> bytes:
        try:
            return dump_value(value)
        except Exception as exc:
            raise TypeError(
                f"cannot store key {key!r} of application {self._app!r}: "
                f"value is not picklable ({exc})"
            ) from exc

    def update(self, key: str, fn: Callable[[Any], Any], default: Any = None) -> Any:
        """Atomic read-modify-write: store ``fn(current value, or default)``
        and return it.

        If another request changes the session before this one commits,
        ``fn`` runs again on the fresh value, so concurrent updates of one
        key compose (two concurrent appends both survive).  ``fn`` must be a
        pure function of its argument: it may run more than once.  If it
        raises during such a replay, the commit is abandoned (500, nothing
        stored) and the failure logged with the application and key.
        """
        return self._session._update(self._app, _check_key(key), fn, default)

    def using(self, *keys: str) -> Collection:
        """STM-style read of ``keys``: a :class:`Collection` of snapshot
        values (missing keys absent) that remembers what it read."""
        seen = {key: self._session._read(self._app, _check_key(key)).get(key) for key in keys}
        return Collection(self, seen)

    def usevar(self, key: str) -> Value:
        """STM-style read of one key: a :class:`Value`."""
        return Value(self.using(key), key)

    def set_values(self, collection: Collection | Mapping[str, Any]) -> None:
        """Write a collection's keys now, in one compare-and-swap.

        From :meth:`using`: its keys set, and deleted where removed from it;
        raises :class:`~sessionstore.errors.ConcurrentUpdate` and writes
        nothing when another request changed any key it read since (a change
        this request made in between counts too), and
        :class:`~sessionstore.errors.BusyRetry` when the backend stays busy.
        A plain mapping only sets its keys, and conflicts with nothing.
        """
        writes: dict[str, bytes | None] = {}
        if isinstance(collection, Collection):
            seen: dict[str, bytes | None] | None = collection.seen
            assert seen is not None
            for key, value in collection.items():
                data = self._dump(_check_key(key), value)
                if data != seen.get(key):
                    writes[key] = data
            for key, was in seen.items():
                if was is not None and key not in collection:
                    writes[key] = None
        else:
            seen = None
            for key, value in collection.items():
                writes[_check_key(key)] = self._dump(key, value)
        self._session._set_values(self._app, writes, seen)

    def dump(self) -> dict[str, Any]:
        """A dict snapshot of every key and value of this application."""
        return dict(self.items())

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """The value of ``key``; ``KeyError`` when missing and no default is given."""
        if type(key) is not str or not key:
            _check_key(key)
        data = self._session._read(self._app, key).get(key)
        if data is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return load_value(data)

    def get_default(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` (``None``)."""
        if type(key) is not str or not key:
            _check_key(key)
        data = self._session._read(self._app, key).get(key)
        return default if data is None else pickle.loads(data)  # load_value(), inline

    def delete(self, key: str, ignore_keyerror: bool = False) -> bool:
        """Remove ``key``: True when removed; when missing, ``KeyError``, or
        False with ``ignore_keyerror=True``."""
        if self._session._remove(self._app, _check_key(key)):
            return True
        if ignore_keyerror:
            return False
        raise KeyError(key)

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        """Get then delete ``key``; ``KeyError`` when missing and no default."""
        value = self.get(key, default)  # a read, then a write of the key
        self._session._remove(self._app, key)
        return value

    def pop_default(self, key: str, default: Any = None) -> Any:
        """Get then delete ``key``, or return ``default`` (``None``)."""
        return self.pop(key, default)

    def has_key(self, key: str) -> bool:
        """True when ``key`` is stored."""
        return key in self._session._read(self._app, _check_key(key))

    exists = has_key

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._session._read(self._app, key)

    def keys(self) -> list[str]:
        """A snapshot list of the keys (order undefined)."""
        return list(self._session._read(self._app, None))

    def values(self) -> list[Any]:
        """A snapshot list of copies of the values."""
        return [load_value(d) for d in self._session._read(self._app, None).values()]

    def items(self) -> list[tuple[str, Any]]:
        """A snapshot list of ``(key, value)`` pairs."""
        return [(k, load_value(d)) for k, d in self._session._read(self._app, None).items()]

    def empty(self) -> None:
        """Remove every key of this application; other applications' stores stay."""
        self._session._clear(self._app)

    flush = empty

    # get() and set() themselves, not methods calling them: one Python call
    # less on every ``store[key]`` (set()'s return value is dropped).
    __getitem__ = get
    __setitem__ = set

    def __delitem__(self, key: str) -> None:
        self.delete(key)

    def __len__(self) -> int:
        return len(self._session._read(self._app, None))

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __repr__(self) -> str:
        return f"<Store app={self._app!r}>"
