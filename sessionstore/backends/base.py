"""The interface every backend implements.

A backend stores :class:`Record` envelopes: timestamps and a version beside an
opaque, signed payload it never unpickles.  It offers the Linesman-style
management methods (``setup``, ``add``, ``get``, ``get_all``, ``delete``,
``delete_many``, ``delete_all``) plus ``delete_expired``, ``close`` and one
concurrency primitive, :meth:`Backend.compare_and_swap`, on which sessions
build their commits.

Honest outcomes (SPEC section 6): a network backend whose compare-and-swap
was sent but whose reply never came (the connection broke, a read timed out)
raises :class:`OutcomeUnknown` from its wire-level swap and lets
:meth:`Backend.settle` decide by reading the record back over a fresh
connection.  A commit is identified by its record: the stored version equals
``record.version`` *and* the stored payload bytes equal ``record.payload``
(every payload carries a random per-commit token, so two commits never write
the same bytes).  For a delete, "applied" means the id is absent.  Applied is a
success; not applied with the version still the expected one is sent once
more; anything else is a lost swap (False), exactly as if another request had
committed first.  A swap whose outcome stays unknown raises
:class:`BusyRetry` naming the session.

A swap sent to a stalled server can sit in its socket buffer and run after
the client gave up.  Network backends therefore *fence* each swap: it carries
a deadline on the server's clock (:class:`ServerClock`) past which the server
refuses it, so a swap given up on cannot apply much later behind the
middleware's back.
"""

from __future__ import annotations

import abc
import difflib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, NamedTuple

from ..errors import BusyRetry, ConfigurationError, DamagedRecord

#: Times :meth:`Backend.settle` sends one compare-and-swap whose outcome stays unknown.
SEND_ATTEMPTS = 2


class OutcomeUnknown(Exception):  # noqa: N818 - a state, not a failure of ours
    """A compare-and-swap was sent and no reply came back; raised by a
    backend's wire-level swap for :meth:`Backend.settle` to resolve."""


class Record(NamedTuple):
    """One stored session.  Times are epoch seconds; ``version`` starts at 1.

    Immutable; ``record._replace(expires_at=...)`` makes a changed copy.  (A
    named tuple rather than a frozen dataclass: every request builds one, and
    a tuple is built three times faster.)
    """

    session_id: str
    version: int
    created_at: float
    accessed_at: float
    expires_at: float
    payload: bytes
    #: The user the session is bound to (``session.bind_user()``), for the
    #: index behind ``sessions_of()``; the signed payload has the last word.
    user: str | None = None

    def is_expired(self, now: float) -> bool:
        return self.expires_at <= now

    @property
    def is_tombstone(self) -> bool:
        """A marker left for a short while under an id that ``regenerate()``
        retired (an empty payload, or :data:`RETIRED` and what the session
        held when retired: a real payload starts with its MAC).  It is "no
        session" to everyone; a concurrent ``regenerate()`` of the same
        session reads it to tell a login that won from a logout, and starts
        from what it holds."""
        return not self.payload or self.payload.startswith(RETIRED)


#: How the payload of a tombstone that keeps the retired session's data
#: starts (:attr:`Record.is_tombstone`).
RETIRED = b"sessionstore retired\n"


def checked_record(
    session_id: object,
    version: object,
    created_at: object,
    accessed_at: object,
    expires_at: object,
    payload: object,
    user: object = None,
) -> Record:
    """A :class:`Record` from fields read out of storage, each type-checked.

    Storage is not trusted to hand back what was written (a TEXT value in a
    REAL column, an integer where the payload belongs, a hand-edited row): a
    field of the wrong type or a non-finite time is a :class:`DamagedRecord`
    naming the id, never a ``TypeError`` deeper down or a huge allocation
    (``bytes(10**9)``).  ``memoryview`` and ``bytearray`` payloads become bytes.
    """
    if (  # what every backend hands back for a sound record, checked at C speed
        type(session_id) is str
        and type(version) is int
        and version > 0
        and type(created_at) is float
        and type(accessed_at) is float
        and type(expires_at) is float
        # All three finite in one expression: x - x is 0.0 for a finite
        # float only (inf - inf and anything with NaN are NaN).
        and created_at - created_at + accessed_at - accessed_at + expires_at - expires_at == 0.0
        and type(payload) is bytes
        and (user is None or type(user) is str)
    ):
        # tuple.__new__: the named tuple's own __new__ is a Python frame.
        return tuple.__new__(
            Record, (session_id, version, created_at, accessed_at, expires_at, payload, user)
        )
    shown = session_id if isinstance(session_id, str) else repr(session_id)[:80]
    if not isinstance(session_id, str):
        raise DamagedRecord(shown, "the id is not text")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DamagedRecord(shown, f"bad version {version!r:.40}")
    times = []
    for name, value in (
        ("created_at", created_at),
        ("accessed_at", accessed_at),
        ("expires_at", expires_at),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DamagedRecord(shown, f"{name} is not a number")
        if not math.isfinite(value):
            raise DamagedRecord(shown, f"{name} is not finite")
        times.append(float(value))
    if isinstance(payload, (bytearray, memoryview)):
        payload = bytes(payload)
    if not isinstance(payload, bytes):
        raise DamagedRecord(shown, "the payload is not bytes")
    if user is not None and not isinstance(user, str):
        raise DamagedRecord(shown, "the user is not text")
    return Record(session_id, version, times[0], times[1], times[2], payload, user)


class ServerClock:
    """The database server's clock, estimated here: ``read()`` asks the
    server for its time (epoch seconds), once a minute at most.

    ``deadline(seconds)`` is the server time ``seconds`` from now, for a
    swap's fence.  The offset is measured against the monotonic clock, so a
    step of this machine's wall clock does not move deadlines.  Threads may
    measure at the same time: any of their results will do, so no lock (a
    lock held across ``fork`` would hang the child).
    """

    RECALIBRATE = 60.0

    def __init__(self, read: Callable[[], float]) -> None:
        self._read = read
        self._offset: float | None = None
        self._measured = 0.0

    def deadline(self, seconds: float) -> float:
        now = time.monotonic()
        offset = self._offset
        if offset is None or now - self._measured > self.RECALIBRATE:
            offset = self.calibrate()
        return now + offset + seconds

    def calibrate(self) -> float:
        """Measure the offset now (after a fence refused a fresh swap)."""
        before = time.monotonic()
        server = self._read()
        after = time.monotonic()
        offset = self._offset = server - (before + after) / 2
        self._measured = after
        return offset


def is_applied(stored: Record | None, record: Record | None) -> bool:
    """Whether ``stored`` (read back) is the result of writing ``record``
    (``None``: a delete, applied when nothing is stored)."""
    if record is None:
        return stored is None
    return (
        stored is not None and stored.version == record.version and stored.payload == record.payload
    )


class Backend(abc.ABC):
    """Base class of the storage backends.

    Subclasses list their constructor options in ``options`` (name to a
    converter that also accepts the ini string), so a configuration error is
    caught at start-up and names the key.
    """

    #: Option name -> ``converter(key, value)`` returning the typed value.
    options: ClassVar[Mapping[str, Callable[[str, object], Any]]] = {}

    def __init__(self, *, busy_timeout: float = 5.0) -> None:
        self.busy_timeout = busy_timeout

    @classmethod
    def from_options(cls, options: Mapping[str, object], *, busy_timeout: float) -> Backend:
        """Instantiate from configuration, converting and checking every option."""
        kwargs = {}
        for key, value in options.items():
            convert = cls.options.get(key)
            if convert is None:
                # Hidden: a misspelt option may hold a password.
                close = difflib.get_close_matches(key, cls.options, n=1)
                hint = f" (did you mean backend.{close[0]}?)" if close else ""
                raise ConfigurationError(
                    f"backend.{key}", value, f"unknown option for {cls.__name__}{hint}", hide=True
                )
            kwargs[key] = convert(f"backend.{key}", value)
        return cls(busy_timeout=busy_timeout, **kwargs)

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Create what the storage needs (tables, files); safe to call twice."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and file handles."""

    # -- the concurrency primitive ------------------------------------------

    @abc.abstractmethod
    def compare_and_swap(
        self, session_id: str, expected_version: int | None, record: Record | None
    ) -> bool:
        """Atomically replace what is stored under ``session_id``.

        ``expected_version`` is the version the caller read (``None``: the id
        must be absent).  ``record`` is the new envelope (``None``: delete).
        Succeeds, returning True, only when the stored version equals
        ``expected_version`` exactly; otherwise changes nothing and returns
        False.  The caller sets ``record.version`` (read version + 1).
        """

    def settle(
        self,
        session_id: str,
        expected_version: int | None,
        record: Record | None,
        swap: Callable[[], bool],
    ) -> bool:
        """Run ``swap`` (one compare-and-swap on the wire) with an unknown
        outcome resolved by reading back (see the module docstring).

        After an unknown outcome, a swap that then loses is read back too: a
        late copy of the first send may have applied it, and it must count as
        this commit's success, never be replayed on top of itself.
        """
        uncertain = False
        for _ in range(SEND_ATTEMPTS):
            try:
                if swap():
                    return True
                if not uncertain:
                    return False
            except OutcomeUnknown:
                uncertain = True
            stored = self.get(session_id)  # on a fresh connection; may raise BusyRetry
            if is_applied(stored, record):
                return True
            if (None if stored is None else stored.version) != expected_version:
                return False  # another commit came first: a plain lost swap
        raise BusyRetry(f"session {session_id}: the store did not confirm the commit")

    # -- management ----------------------------------------------------------

    @abc.abstractmethod
    def get(self, session_id: str) -> Record | None:
        """The stored record, expired or not, or ``None``."""

    @abc.abstractmethod
    def add(self, record: Record) -> None:
        """Store ``record`` unconditionally, replacing any record of its id."""

    @abc.abstractmethod
    def iter_records(self) -> Iterator[Record]:
        """Every stored record, streamed (order undefined)."""

    def get_all(self) -> dict[str, Record]:
        """A mapping of every session id to its record."""
        return {record.session_id: record for record in self.iter_records()}

    @abc.abstractmethod
    def delete(self, session_id: str) -> int:
        """Delete one session; 1 if it existed, else 0."""

    def delete_many(self, session_ids: Iterable[str]) -> int:
        """Delete several sessions; the number that existed."""
        return sum(self.delete(session_id) for session_id in session_ids)

    @abc.abstractmethod
    def delete_all(self) -> int:
        """Delete every session; the number deleted."""

    def delete_expired(self, now: float | None = None, limit: int | None = None) -> int:
        """Delete the sessions expired at ``now``; the number deleted.

        ``limit`` bounds the records examined and deleted in one call (a
        request's cleanup passes a small one); ``None`` deletes every expired
        session.  Each deletion is conditional on the version seen expired,
        so a session refreshed in the meantime survives.
        """
        now = time.time() if now is None else now
        expired = []
        for seen, record in enumerate(self.iter_records()):
            if limit is not None and seen >= limit:
                break
            if record.is_expired(now):
                expired.append(record)
        return sum(self.compare_and_swap(r.session_id, r.version, None) for r in expired)

    def count(self) -> int:
        """How many sessions are stored, expired ones included."""
        return sum(1 for _ in self.iter_records())

    def user_sessions(self, user: str) -> list[Record]:
        """The stored records bound to ``user`` (expired ones included).

        Backends keep an index from user to session ids, updated in the same
        atomic step as the record, so this costs O(sessions of the user);
        this fallback scans everything."""
        return [record for record in self.iter_records() if record.user == user]

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
