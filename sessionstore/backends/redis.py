"""The ``redis`` backend: sessions shared by several machines through Redis.

Storage format: each session is a hash at ``<prefix><id>`` with fields ``v``
(version, a decimal integer), ``c``, ``a``, ``e`` (created, accessed, expires:
``repr`` of a float), ``p`` (the signed payload) and, for a session bound to a
user, ``u`` (the user).  Each user with sessions has a set at
``<prefix>user:<user>`` of their session ids, changed by the same script as
the hash (so in the same atomic step) and expiring no sooner than the last of
its sessions; an id whose session expired by TTL is dropped from the set the
next time the set is read (``user_sessions``) or by the next ``purge``,
whichever comes first.  Invariants: ``v`` is
present in every session hash and only ever grows; the key expires by itself
``EXPIRY_GRACE`` seconds after its session does (the middleware never loads an
expired session; the grace leaves ``purge`` something to count).  Only hashes
under the prefix whose name ends in a session id and that hold ``v`` are
sessions: anything else under the prefix is foreign and left alone by every
management command.  The prefix must be non-empty (an empty one would make
``purge --all`` a ``FLUSHDB``).

The compare-and-swap runs as one Lua script on the server
(:mod:`~sessionstore.backends.redisscripts`), so it is atomic
however many machines write.  Its outcome is settled by reading back when the
reply is lost (:meth:`Backend.settle`); redis-py's own retries are off, since
a blind resend of a swap that had applied would report it lost.  The script
refuses (-1) a swap arriving after its fence, a deadline on the server's
``TIME`` (see :mod:`.base`).

Timeouts: every round trip (and every connect) may take half of
``busy_timeout``; the other half is for reading back a swap whose reply never
came.  A timeout is :class:`BusyRetry`.  A connection the server closed (a
restart, an idle ``timeout``, ``CLIENT KILL``) is reconnected once,
transparently.  Expired sessions are removed by Redis itself (TTL): a request's
cleanup (``delete_expired`` with a ``limit``) does nothing; ``purge`` scans.

Each thread talks to Redis over a connection of its own, held for as long as
the thread lives: taking one from the shared pool and putting it back cost a
third of a round trip on every command.  A forked child opens its own.

Needs redis-py: ``pip install 'sessionstore[redis]'`` (which brings the
hiredis reply parser too).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..errors import BackendError, BusyRetry, ConfigurationError, DamagedRecord
from . import redisscripts
from .base import Backend, OutcomeUnknown, Record, ServerClock, checked_record

try:
    import redis
    from redis import exceptions as redis_errors
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ConfigurationError(
        "backend", "redis", "needs redis-py: pip install 'sessionstore[redis]'"
    ) from exc

#: Seconds a key outlives its session before Redis drops it.
EXPIRY_GRACE = 300
_BATCH = 500
_T = TypeVar("_T")
_SESSION_ID = re.compile(rb"[A-Za-z0-9_-]{1,128}")
_FIELDS = (b"v", b"c", b"a", b"e", b"p")
#: A swap's fence for commands that take none (``add``, ``delete``).
_NO_FENCE = 2**53


def _as_url(key: str, value: object) -> str:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            key, _shown(value), "expected a redis://, rediss:// or unix:// URL"
        )
    return value


def _as_prefix(key: str, value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[\x21-\x7e]{1,100}", value):
        raise ConfigurationError(key, value, "expected 1 to 100 printable characters")
    return value


def _shown(url: object) -> object:
    """The URL without its password, for messages."""
    if not isinstance(url, str):
        return url
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<a malformed URL>"
    if password:
        user, _, host = parts.netloc.rpartition("@")
        user = user.split(":", 1)[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    return url


def _glob_escaped(text: str) -> str:
    """``text`` as a SCAN pattern matching itself only."""
    return "".join(c if c.isalnum() else "\\" + c for c in text)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBackend(Backend):
    """Sessions in Redis (``url``, default ``redis://127.0.0.1:6379/0``)."""

    options = {"url": _as_url, "prefix": _as_prefix}

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "sessionstore:",
        busy_timeout: float = 5.0,
    ) -> None:
        super().__init__(busy_timeout=busy_timeout)
        self.url = url
        self.prefix = _as_prefix("backend.prefix", prefix)
        self._shown = str(_shown(url))
        wire = busy_timeout / 2
        # redis-py's pool notices a fork and opens new connections in the child.
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=wire,
            socket_connect_timeout=wire,
            retry=Retry(NoBackoff(), 0),  # our retries know which commands are safe
        )
        self._cas = self._client.register_script(redisscripts.CAS)
        self._prune = self._client.register_script(redisscripts.PRUNE)
        self._local = threading.local()
        self._server_clock = ServerClock(self._server_time)
        self._wire = wire

    def _server_time(self) -> float:
        seconds, micros = self._call(lambda: self._own().time())
        return float(seconds) + micros / 1e6

    def _own(self) -> redis.Redis:
        """This thread's client on a connection of its own (per process)."""
        local = self._local
        pid = os.getpid()
        if getattr(local, "pid", None) != pid:
            local.client = redis.Redis(
                connection_pool=self._client.connection_pool, single_connection_client=True
            )
            local.pid = pid
        client: redis.Redis = local.client
        return client

    def _call(self, work: Callable[..., _T], *args: Any) -> _T:
        """Run ``work(*args)`` (safe to repeat), reconnecting once after a
        dropped connection; errors translated."""
        for attempt in range(2):
            try:
                return work(*args)
            except redis_errors.ConnectionError as exc:
                # redis-py closed the broken connection: the next command opens one.
                if attempt == 0 and not isinstance(exc, redis_errors.AuthenticationError):
                    continue
                raise self._failure(exc) from exc
            except redis_errors.RedisError as exc:
                raise self._failure(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _failure(self, exc: Exception) -> BackendError | BusyRetry:
        if isinstance(exc, (redis_errors.TimeoutError, redis_errors.BusyLoadingError)):
            return BusyRetry(f"Redis at {self._shown} did not answer in time: {exc}")
        if isinstance(exc, redis_errors.ConnectionError) and not isinstance(
            exc, redis_errors.AuthenticationError
        ):
            # Down or restarting (SPEC 6: unreachable is busy, a 503 to retry).
            return BusyRetry(f"Redis at {self._shown} is unreachable: {exc}")
        return BackendError(f"Redis at {self._shown} failed", exc)

    def _key(self, session_id: str) -> str:
        return self.prefix + session_id

    def _record(self, session_id: str, fields: dict[Any, Any]) -> Record | None:
        if not fields:
            return None
        try:
            values = [fields[name] for name in _FIELDS]
            user = fields.get(b"u")
            return checked_record(
                session_id,
                int(values[0]),
                float(values[1]),
                float(values[2]),
                float(values[3]),
                values[4],
                None if user is None else user.decode(),
            )
        except (KeyError, ValueError) as exc:  # UnicodeDecodeError included
            # Damaged, not failed: "no session" for its visitor, kept as it is.
            raise DamagedRecord(session_id, f"not a readable session ({exc})", exc) from exc

    def _session_keys(self, probe_version: bool = True) -> Iterator[list[bytes]]:
        """Batches of the keys that are sessions (see the module docstring);
        without ``probe_version``, hashes lacking ``v`` are left in, for a
        caller that reads every field anyway."""
        pattern = _glob_escaped(self.prefix) + "*"
        start = len(self.prefix.encode())
        batch: list[bytes] = []

        def checked(keys: list[bytes]) -> list[bytes]:
            def probe() -> list[Any]:
                pipe = self._client.pipeline(transaction=False)
                for key in keys:
                    pipe.hexists(key, "v")
                return pipe.execute()

            return [key for key, has in zip(keys, self._call(probe), strict=True) if has]

        cursor = 0
        while True:
            cursor, keys = self._call(self._scan, cursor, pattern)
            batch += [k for k in keys if _SESSION_ID.fullmatch(k, start)]
            if len(batch) >= _BATCH or (cursor == 0 and batch):
                if found := checked(batch) if probe_version else batch:
                    yield found
                batch = []
            if cursor == 0:
                return

    def _scan(self, cursor: int, pattern: str) -> tuple[int, list[bytes]]:
        cursor, keys = self._client.scan(cursor, match=pattern, count=_BATCH, _type="hash")
        return cursor, [k if isinstance(k, bytes) else k.encode() for k in keys]

    # -- Backend ---------------------------------------------------------------------

    def setup(self) -> None:
        self._call(lambda: self._own().ping())

    def close(self) -> None:
        # Every thread's connection too: they all come from this pool.
        self._client.connection_pool.disconnect()
        self._client.close()

    def compare_and_swap(
        self, session_id: str, expected_version: int | None, record: Record | None
    ) -> bool:
        expected = "" if expected_version is None else str(expected_version)
        args = self._script_args(session_id, expected, record)
        key = self._key(session_id)

        def swap() -> bool:
            for fresh_clock in (False, True):
                args[2] = int(self._server_clock.deadline(self._wire) * 1000)
                try:
                    done = int(self._cas(keys=[key], args=args, client=self._own()))
                except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
                    raise OutcomeUnknown(session_id) from exc
                except redis_errors.RedisError as exc:
                    raise self._failure(exc) from exc
                if done >= 0:
                    return done == 1
                if not fresh_clock:
                    self._server_clock.calibrate()  # refused on arrival: the clocks moved
            raise BusyRetry(f"Redis at {self._shown}: swaps arrive after their deadline")

        return self.settle(session_id, expected_version, record, swap)

    def _script_args(self, session_id: str, expected: str, record: Record | None) -> list[Any]:
        """The script's ARGV (module docstring); the fence is set by the caller."""
        head: list[Any] = [expected, "del" if record is None else "put", _NO_FENCE]
        head += [session_id, self.prefix + "user:"]
        if record is None:
            return head
        return [
            *head,
            record.version,
            repr(record.created_at),
            repr(record.accessed_at),
            repr(record.expires_at),
            record.payload,
            int((record.expires_at + EXPIRY_GRACE) * 1000),
            record.user or "",
        ]

    def get(self, session_id: str) -> Record | None:
        fields = self._call(lambda: self._own().hgetall(self._key(session_id)))
        return self._record(session_id, fields)

    def add(self, record: Record) -> None:
        key = self._key(record.session_id)
        args = self._script_args(record.session_id, "*", record)
        self._call(lambda: self._cas(keys=[key], args=args, client=self._own()))

    def user_sessions(self, user: str) -> list[Record]:
        users = f"{self.prefix}user:{user}"
        ids = sorted(_text(i) for i in self._call(lambda: self._own().smembers(users)))
        if not ids:
            return []
        records = list(self._fetch([self._key(i).encode() for i in ids]))
        found = {r.session_id for r in records}
        if gone := [i for i in ids if i not in found]:
            # Expired by TTL (or deleted outside the backend): drop them now.
            self._call(lambda: self._own().srem(users, *gone))
        return [r for r in records if r.user == user]

    def iter_records(self) -> Iterator[Record]:
        for keys in self._session_keys(probe_version=False):
            yield from self._fetch(keys)

    def _fetch(self, keys: list[bytes]) -> Iterator[Record]:
        def fetch() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            return pipe.execute()

        start = len(self.prefix.encode())
        for key, fields in zip(keys, self._call(fetch), strict=True):
            if fields and b"v" not in fields:
                continue  # not a session (foreign, or replaced since the scan)
            record = self._record(_text(key[start:]), fields)
            if record is not None:  # expired or deleted since the scan
                yield record

    def delete(self, session_id: str) -> int:
        return self.delete_many([session_id])

    def delete_many(self, session_ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(session_ids))
        deleted = 0
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start : start + _BATCH]

            def remove(chunk: list[str] = chunk) -> list[Any]:
                # The script, not DEL: the user index changes with the key.
                pipe = self._client.pipeline(transaction=False)
                for session_id in chunk:
                    args = self._script_args(session_id, "*", None)
                    self._cas(keys=[self._key(session_id)], args=args, client=pipe)
                return pipe.execute()

            deleted += sum(int(done) == 1 for done in self._call(remove))
        return deleted

    def delete_all(self) -> int:
        start = len(self.prefix.encode())
        deleted = 0
        for keys in self._session_keys():
            deleted += self.delete_many(_text(key[start:]) for key in keys)
        return deleted

    def delete_expired(self, now: float | None = None, limit: int | None = None) -> int:
        """Redis drops a session's key by itself (TTL), so a request's cleanup
        (``limit`` given) does nothing at all.  Without ``limit`` (``purge``),
        the sessions expired but still in their grace period are deleted, a
        batch at a time, each only at the version seen expired."""
        if limit is not None:
            return 0
        now = time.time() if now is None else now
        deleted = 0
        for keys in self._session_keys(probe_version=False):
            expired = [r for r in self._fetch(keys) if r.is_expired(now)]
            if not expired:
                continue

            def purge(batch: list[Record] = expired) -> list[Any]:
                pipe = self._client.pipeline(transaction=False)
                fence = int(self._server_clock.deadline(self._wire) * 1000)
                for r in batch:
                    args = self._script_args(r.session_id, str(r.version), None)
                    args[2] = fence
                    self._cas(keys=[self._key(r.session_id)], args=args, client=pipe)
                return pipe.execute()

            deleted += sum(int(done) == 1 for done in self._call(purge))
        self._prune_user_sets()
        return deleted

    def _prune_user_sets(self) -> None:
        """Drop from every user's set the ids whose session expired by TTL."""
        pattern = _glob_escaped(self.prefix + "user:") + "*"
        cursor = 0
        while True:
            cursor, keys = self._call(
                lambda c=cursor: self._client.scan(c, match=pattern, count=_BATCH, _type="set")
            )
            if keys:

                def prune(batch: list[Any] = keys) -> list[Any]:
                    # A batch of sets in one round trip, each pruned atomically.
                    pipe = self._client.pipeline(transaction=False)
                    for key in batch:
                        self._prune(keys=[key], args=[self.prefix], client=pipe)
                    return pipe.execute()

                self._call(prune)
            if cursor == 0:
                return

    def count(self) -> int:
        return sum(len(keys) for keys in self._session_keys())

    def __repr__(self) -> str:
        return f"<RedisBackend {self._shown} prefix={self.prefix!r}>"
