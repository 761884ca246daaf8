"""The Store: one application's namespace inside a session."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .errors import InvalidAppName
from .payload import dump_value, load_value

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
        self._app = check_app_name(app)

    @property
    def app(self) -> str:
        """The application name; assign another valid name to retarget the store."""
        return self._app

    @app.setter
    def app(self, name: str) -> None:
        self._app = check_app_name(name)

    def set(self, key: str, value: Any) -> bool:
        """Store a snapshot of ``value``; True if ``key`` was new, False if overwritten.

        An unpicklable value raises :class:`TypeError` and nothing changes.
        """
        _check_key(key)
        try:
            data = dump_value(value)
        except Exception as exc:
            raise TypeError(
                f"cannot store key {key!r} of application {self._app!r}: "
                f"value is not picklable ({exc})"
            ) from exc
        return self._session._write(self._app, key, data)

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """The value of ``key``; ``KeyError`` when missing and no default is given."""
        data = self._session._read(self._app).get(_check_key(key))
        if data is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return load_value(data)

    def get_default(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` (``None``)."""
        return self.get(key, default)

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
        value = self.get(key, default)
        self._session._remove(self._app, key)
        return value

    def pop_default(self, key: str, default: Any = None) -> Any:
        """Get then delete ``key``, or return ``default`` (``None``)."""
        return self.pop(key, default)

    def has_key(self, key: str) -> bool:
        """True when ``key`` is stored."""
        return _check_key(key) in self._session._read(self._app)

    exists = has_key

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._session._read(self._app)

    def keys(self) -> list[str]:
        """A snapshot list of the keys (order undefined)."""
        return list(self._session._read(self._app))

    def values(self) -> list[Any]:
        """A snapshot list of copies of the values."""
        return [load_value(d) for d in self._session._read(self._app).values()]

    def items(self) -> list[tuple[str, Any]]:
        """A snapshot list of ``(key, value)`` pairs."""
        return [(k, load_value(d)) for k, d in self._session._read(self._app).items()]

    def empty(self) -> None:
        """Remove every key of this application; other applications' stores stay."""
        self._session._clear(self._app)

    flush = empty

    def __getitem__(self, key: str) -> Any:
        return self.get(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: str) -> None:
        self.delete(key)

    def __len__(self) -> int:
        return len(self._session._read(self._app))

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __repr__(self) -> str:
        return f"<Store app={self._app!r}>"
