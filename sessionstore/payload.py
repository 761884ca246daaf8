"""Signed payloads: how a session's data is stored in any backend.

A payload is ``HMAC-SHA256(key, body) + body`` where ``body`` is a pickle of
``(FORMAT, session_id, created_at, expires_at, explicit_expiry, token,
binding, apps)``: ``binding`` is ``None`` or a :class:`Binding` (the user the
session is bound to, with the user agent and address of the request that
bound it) and ``apps`` is ``{app: {key: pickled value}}``.  The key is derived from each
configured secret, and the MAC is checked before anything is unpickled, so
whoever can write to the storage (a shared Redis, a database table, the
pickle file) but does not know the secret cannot make us unpickle what they
planted.

Invariants checked on every read, beyond the MAC:

* the payload names the id it is stored under, and the record's
  ``created_at`` and ``expires_at`` are exactly the signed ones (finite), so
  a payload copied to another id, or given a longer life by editing the
  record's times, is refused like a forged one;
* ``token`` is 16 bytes unique to each payload signed (8 random bytes drawn
  per process, redrawn in a forked child, then a counter), so no two
  commits ever store the same bytes: a backend that lost the reply to a
  write can read back and tell whether *its* write was applied.  (A
  counter, not 16 fresh random bytes each time: the token needs to be
  unique, not unpredictable, and ``os.urandom`` is a system call per
  commit.)

Format 1 payloads (before 0.2: no binding) are refused, so an upgrade ends
the sessions that were open; the visitor starts a fresh one.

Values stay pickled individually: a request unpickles only the keys it reads,
and each read returns a fresh copy.

Each codec remembers, per session id, the last payload it verified or signed
and what it decoded to.  A request that finds those same bytes stored again
(the usual case: the same visitor's next request) skips the MAC and the
unpickling.  Only an exact byte-for-byte match is trusted, so a payload
changed in the store is always verified afresh.  The remembered data is
shared by requests and must never be mutated: sessions copy before writing.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
import os
import pickle
import struct
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from .errors import DamagedRecord

if TYPE_CHECKING:
    from .backends.base import Record

FORMAT = 2
TOKEN_SIZE = 16
#: A token's bytes: the process's random prefix, then the counter, big-endian
#: (one call to pack them costs a third of to_bytes() and a concatenation).
_pack_token = struct.Struct(f">{TOKEN_SIZE // 2}sQ").pack
MAC_SIZE = 32
PROTOCOL = pickle.HIGHEST_PROTOCOL
_PURPOSE = b"sessionstore.payload.v1"  # the key derivation, not the format

AppData = dict[str, dict[str, bytes]]


class _Tokens:
    """Commit tokens: this process's random prefix, then a counter."""

    __slots__ = ("prefix", "counter")

    def __init__(self) -> None:
        self.renew()
        os.register_at_fork(after_in_child=self.renew)

    def renew(self) -> None:
        self.prefix = os.urandom(TOKEN_SIZE // 2)
        self.counter = itertools.count()

    def __call__(self) -> bytes:
        # next() on an itertools.count is atomic: threads never share a value.
        return _pack_token(self.prefix, next(self.counter))


new_token = _Tokens()

#: Sessions whose last payload is remembered, and the largest payload kept.
MEMO_SESSIONS = 10_000
MEMO_MAX_PAYLOAD = 16 * 1024


def _derive(secret: str) -> bytes:
    return hmac.digest(secret.encode("utf-8"), _PURPOSE, "sha256")


class _Mac:
    """HMAC-SHA256 (RFC 2104) under one key, the padded key blocks hashed once.

    Each MAC then costs two hash copies instead of a fresh HMAC set-up: a
    quarter of the time of :func:`hmac.digest` here, with the same output.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            raise ValueError("HMAC-SHA256 keys longer than the block are hashed first")
        block = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def sign(self, message: bytes) -> bytes:
        # A method, not __call__: calling an instance goes through the
        # type's call slot, a few hundred instructions more on every write.
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class Binding(NamedTuple):
    """Who a session belongs to (``session.bind_user()``) and the request
    that bound it: kept in the signed payload, never in application data."""

    user: str
    agent: str
    address: str
    bound_at: float


#: A verified payload: ``(apps, expiry, binding, stale)``, ``stale`` when an
#: older secret signed it (re-sign before the response leaves).  A plain
#: tuple, unpacked where it is used: one is made on every write, and a named
#: tuple costs several times more to make, to free and to read.
Decoded: TypeAlias = "tuple[AppData, float | None, Binding | None, bool]"


class PayloadCodec:
    """Signs and verifies stored payloads; ``secrets`` newest first."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self._macs = [_Mac(_derive(s)) for s in secrets]
        #: session id -> (payload, what it decoded to, created_at, expires_at)
        self._memo: dict[str, tuple[bytes, Decoded, float, float]] = {}

    def dumps(
        self,
        apps: AppData,
        expiry: float | None,
        session_id: str,
        created_at: float,
        expires_at: float,
        binding: Binding | None = None,
    ) -> bytes:
        """Sign ``apps``, ``expiry`` and ``binding``, bound to the id and
        times of the record they will be stored in; remember the result."""
        token = _pack_token(new_token.prefix, next(new_token.counter))  # new_token(), inline
        plain = None if binding is None else tuple(binding)  # no class name in storage
        fields = (FORMAT, session_id, created_at, expires_at, expiry, token, plain, apps)
        body = pickle.dumps(fields, PROTOCOL)
        payload = self._macs[0].sign(body) + body
        if len(payload) <= MEMO_MAX_PAYLOAD:  # self._remember(), inline: every write
            memo = self._memo
            if len(memo) >= MEMO_SESSIONS and session_id not in memo:
                memo.clear()
            memo[session_id] = (
                payload,
                (apps, expiry, binding, False),
                created_at,
                expires_at,
            )
        return payload

    def _remember(
        self, session_id: str, payload: bytes, decoded: Decoded, created: float, expires: float
    ) -> None:
        if len(payload) <= MEMO_MAX_PAYLOAD:
            memo = self._memo
            if len(memo) >= MEMO_SESSIONS and session_id not in memo:
                memo.clear()
            memo[session_id] = (payload, decoded, created, expires)

    def loads(self, record: Record) -> tuple[AppData, float | None]:
        """Verify then unpickle; a bad payload is a :class:`DamagedRecord`."""
        apps, expiry, _, _ = self.decode(record)
        return apps, expiry

    def decode(self, record: Record) -> Decoded:
        """Verify then unpickle everything; a bad payload is a :class:`DamagedRecord`."""
        session_id, payload = record.session_id, record.payload
        known = self._memo.get(session_id)
        if known is not None and known[0] == payload:
            if known[2] != record.created_at or known[3] != record.expires_at:
                raise DamagedRecord(session_id, "its times differ from the signed ones")
            return known[1]
        mac, body = payload[:MAC_SIZE], payload[MAC_SIZE:]
        signer = -1
        for index, key in enumerate(self._macs):
            if hmac.compare_digest(key.sign(body), mac):
                signer = index
                break
        if signer < 0:
            raise DamagedRecord(
                session_id, "bad signature (damaged, planted, or written with an unknown secret)"
            )
        try:
            fields = pickle.loads(body)
        except Exception as exc:
            raise DamagedRecord(session_id, "cannot be read", exc) from exc
        decoded = self._check(record, fields, signer > 0)
        self._remember(session_id, payload, decoded, record.created_at, record.expires_at)
        return decoded

    @staticmethod
    def _check(record: Record, fields: object, stale: bool) -> Decoded:
        session_id = record.session_id
        if not isinstance(fields, tuple) or not fields or fields[0] != FORMAT:
            fmt = fields[0] if isinstance(fields, tuple) and fields else None
            raise DamagedRecord(session_id, f"unknown payload format {fmt!r:.20}")
        if len(fields) != 8:
            raise DamagedRecord(session_id, "malformed payload")
        _, bound_id, created_at, expires_at, expiry, _token, binding, apps = fields
        if bound_id != session_id:
            raise DamagedRecord(session_id, "its payload belongs to another session")
        if created_at != record.created_at or expires_at != record.expires_at:
            raise DamagedRecord(session_id, "its times differ from the signed ones")
        if expiry is not None and not (isinstance(expiry, float) and math.isfinite(expiry)):
            raise DamagedRecord(session_id, "bad explicit expiry")
        if not isinstance(apps, dict):
            raise DamagedRecord(session_id, "malformed payload")
        if binding is not None:
            if not (isinstance(binding, tuple) and len(binding) == 4):
                raise DamagedRecord(session_id, "malformed user binding")
            binding = Binding(*binding)
        return (apps, expiry, binding, stale)


def dump_value(value: Any) -> bytes:
    """Pickle one user value (the snapshot taken by ``Store.set``)."""
    return pickle.dumps(value, PROTOCOL)


def load_value(data: bytes) -> Any:
    """A fresh copy of a value; only ever called on verified payload data."""
    return pickle.loads(data)
