"""STM-style reads and commits: ``Store.using()`` and ``Store.usevar()``.

A :class:`Collection` is a mutable mapping of some keys of one store to
snapshot values.  It remembers the bytes it read for each key (``None`` for
a key that was missing), and :meth:`Collection.commit` hands it to
:meth:`Store.set_values`, which writes what changed in one compare-and-swap
*now*, or raises :class:`~sessionstore.errors.ConcurrentUpdate` and writes
nothing when any of the keys read was changed by another request since.
A :class:`Value` is the same for one key.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from .payload import load_value

if TYPE_CHECKING:
    from .store import Store


class Collection(MutableMapping[str, Any]):
    """Snapshot values of the keys named in ``store.using(*keys)`` (missing
    keys absent); setting, deleting and adding keys changes only the
    collection until :meth:`commit`."""

    def __init__(self, store: Store, seen: dict[str, bytes | None]) -> None:
        self._store = store
        #: key -> the pickled value read (None: missing), for the conflict check.
        self.seen = seen
        self._values = {k: load_value(d) for k, d in seen.items() if d is not None}

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._values[key] = value

    def __delitem__(self, key: str) -> None:
        del self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def commit(self) -> None:
        """``store.set_values(self)``: write now, or raise ConcurrentUpdate."""
        self._store.set_values(self)

    def __repr__(self) -> str:
        return f"<Collection app={self._store.app!r} keys={sorted(self._values)!r}>"


class Value:
    """One key read STM-style: ``.value`` (``None`` when missing), ``.set(v)``
    and ``.commit()``."""

    __slots__ = ("_collection", "key")

    def __init__(self, collection: Collection, key: str) -> None:
        self._collection = collection
        self.key = key

    @property
    def value(self) -> Any:
        return self._collection.get(self.key)

    def set(self, value: Any) -> None:
        self._collection[self.key] = value

    def delete(self) -> None:
        self._collection.pop(self.key, None)

    def commit(self) -> None:
        self._collection.commit()

    def __repr__(self) -> str:
        return f"<Value key={self.key!r} value={self.value!r}>"
