"""The ``redis`` backend: sessions shared by several machines through Redis.

Each session is a hash at ``<prefix><id>`` with fields ``v`` (version),
``c``, ``a``, ``e`` (created, accessed, expires) and ``p`` (the signed
payload).  The compare-and-swap runs as one Lua script on the server, so it is
atomic however many machines write.  A key expires by itself
``EXPIRY_GRACE`` seconds after its session does (the middleware never loads an
expired session; the grace leaves ``purge`` something to count).

Each thread talks to Redis over a connection of its own, held for as long as
the thread lives: taking one from the shared pool and putting it back cost a
third of a round trip on every command.  A forked child opens its own.

Needs redis-py: ``pip install 'sessionstore[redis]'`` (which brings the
hiredis reply parser too).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import BackendError, BusyRetry, ConfigurationError
from .base import Backend, Record

try:
    import redis
    from redis import exceptions as redis_errors
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ConfigurationError(
        "backend", "redis", "needs redis-py: pip install 'sessionstore[redis]'"
    ) from exc

#: Seconds a key outlives its session before Redis drops it.
EXPIRY_GRACE = 300
_BATCH = 500

# KEYS[1] the key; ARGV: expected version ('' = must be absent), 'put' or
# 'del', then for 'put': version, created, accessed, expires, payload, and the
# key's expiry time in milliseconds.
_CAS = """
local current = redis.call('HGET', KEYS[1], 'v')
if ARGV[1] == '' then
    if current then return 0 end
elseif current ~= ARGV[1] then
    return 0
end
if ARGV[2] == 'del' then
    redis.call('DEL', KEYS[1])
    return 1
end
redis.call('HSET', KEYS[1], 'v', ARGV[3], 'c', ARGV[4], 'a', ARGV[5], 'e', ARGV[6], 'p', ARGV[7])
redis.call('PEXPIREAT', KEYS[1], ARGV[8])
return 1
"""


def _as_url(key: str, value: object) -> str:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(key, value, "expected a redis://, rediss:// or unix:// URL")
    return value


def _as_prefix(key: str, value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[\x21-\x7e]{0,100}", value):
        raise ConfigurationError(key, value, "expected up to 100 printable characters")
    return value


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


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
        self.prefix = prefix
        # redis-py's pool notices a fork and opens new connections in the child.
        self._client = redis.Redis.from_url(
            url, socket_timeout=busy_timeout, socket_connect_timeout=busy_timeout
        )
        self._cas = self._client.register_script(_CAS)
        self._local = threading.local()

    def _own(self) -> redis.Redis[bytes]:
        """This thread's client on a connection of its own (per process)."""
        local = self._local
        pid = os.getpid()
        if getattr(local, "pid", None) != pid:
            local.client = redis.Redis(
                connection_pool=self._client.connection_pool, single_connection_client=True
            )
            local.pid = pid
        client: redis.Redis[bytes] = local.client
        return client

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (redis_errors.TimeoutError, redis_errors.BusyLoadingError) as exc:
            raise BusyRetry(f"Redis at {_shown(self.url)} did not answer in time: {exc}") from exc
        except redis_errors.RedisError as exc:
            raise BackendError(f"Redis at {_shown(self.url)} failed", exc) from exc

    def _key(self, session_id: str) -> str:
        return self.prefix + session_id

    def _record(self, session_id: str, fields: dict[Any, Any]) -> Record | None:
        if not fields:
            return None
        try:
            return Record(
                session_id,
                int(fields[b"v"]),
                float(fields[b"c"]),
                float(fields[b"a"]),
                float(fields[b"e"]),
                bytes(fields[b"p"]),
            )
        except (KeyError, ValueError) as exc:
            raise BackendError(
                f"Redis key {self._key(session_id)} is not a readable session", exc
            ) from exc

    def _keys(self) -> Iterator[str]:
        pattern = self.prefix.replace("[", "\\[").replace("*", "\\*").replace("?", "\\?") + "*"
        with self._errors():
            for key in self._client.scan_iter(match=pattern, count=_BATCH):
                yield _text(key)

    # -- Backend ---------------------------------------------------------------------

    def setup(self) -> None:
        with self._errors():
            self._client.ping()

    def close(self) -> None:
        # Every thread's connection too: they all come from this pool.
        self._client.connection_pool.disconnect()
        self._client.close()

    def compare_and_swap(
        self, session_id: str, expected_version: int | None, record: Record | None
    ) -> bool:
        expected = "" if expected_version is None else str(expected_version)
        if record is None:
            args: list[Any] = [expected, "del"]
        else:
            expire_ms = int((record.expires_at + EXPIRY_GRACE) * 1000)
            args = [
                expected,
                "put",
                record.version,
                repr(record.created_at),
                repr(record.accessed_at),
                repr(record.expires_at),
                record.payload,
                expire_ms,
            ]
        with self._errors():
            return bool(self._cas(keys=[self._key(session_id)], args=args, client=self._own()))

    def get(self, session_id: str) -> Record | None:
        with self._errors():
            fields = self._own().hgetall(self._key(session_id))
        return self._record(session_id, fields)

    def add(self, record: Record) -> None:
        key = self._key(record.session_id)
        with self._errors():
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(key)
            pipe.hset(
                key,
                mapping={
                    "v": record.version,
                    "c": repr(record.created_at),
                    "a": repr(record.accessed_at),
                    "e": repr(record.expires_at),
                    "p": record.payload,
                },
            )
            pipe.pexpireat(key, int((record.expires_at + EXPIRY_GRACE) * 1000))
            pipe.execute()

    def iter_records(self) -> Iterator[Record]:
        batch: list[str] = []
        for key in self._keys():
            batch.append(key)
            if len(batch) >= _BATCH:
                yield from self._fetch(batch)
                batch = []
        if batch:
            yield from self._fetch(batch)

    def _fetch(self, keys: list[str]) -> Iterator[Record]:
        with self._errors():
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            results = pipe.execute()
        for key, fields in zip(keys, results, strict=True):
            record = self._record(key[len(self.prefix) :], fields)
            if record is not None:  # expired or deleted since the scan
                yield record

    def delete(self, session_id: str) -> int:
        with self._errors():
            return int(self._client.delete(self._key(session_id)))

    def delete_many(self, session_ids: Iterable[str]) -> int:
        keys = [self._key(i) for i in dict.fromkeys(session_ids)]
        deleted = 0
        with self._errors():
            for start in range(0, len(keys), _BATCH):
                deleted += int(self._client.delete(*keys[start : start + _BATCH]))
        return deleted

    def delete_all(self) -> int:
        return self.delete_many([key[len(self.prefix) :] for key in self._keys()])

    def count(self) -> int:
        return sum(1 for _ in self._keys())

    def __repr__(self) -> str:
        return f"<RedisBackend {_shown(self.url)} prefix={self.prefix!r}>"
