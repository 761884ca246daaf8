"""Signed payloads: how a session's data is stored in any backend.

A payload is ``HMAC-SHA256(key, body) + body`` where ``body`` is a pickle of
``(FORMAT, session_id, created_at, expires_at, explicit_expiry, token, apps)``
and ``apps`` is ``{app: {key: pickled value}}``.  The key is derived from each
configured secret, and the MAC is checked before anything is unpickled, so
whoever can write to the storage (a shared Redis, a database table, the
pickle file) but does not know the secret cannot make us unpickle what they
planted.

Invariants checked on every read, beyond the MAC:

* the payload names the id it is stored under, and the record's
  ``created_at`` and ``expires_at`` are exactly the signed ones (finite), so
  a payload copied to another id, or given a longer life by editing the
  record's times, is refused like a forged one;
* ``token`` is 16 random bytes drawn for each payload signed, so no two
  commits ever store the same bytes: a backend that lost the reply to a
  write can read back and tell whether *its* write was applied.

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
import math
import os
import pickle
from typing import TYPE_CHECKING, Any

from .errors import DamagedRecord

if TYPE_CHECKING:
    from .backends.base import Record

FORMAT = 2
TOKEN_SIZE = 16
MAC_SIZE = 32
PROTOCOL = pickle.HIGHEST_PROTOCOL
_PURPOSE = b"sessionstore.payload.v1"  # the key derivation, not the format

AppData = dict[str, dict[str, bytes]]

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

    def __call__(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class PayloadCodec:
    """Signs and verifies stored payloads; ``secrets`` newest first."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self._macs = [_Mac(_derive(s)) for s in secrets]
        #: session id -> (payload, apps, expiry, stale, created_at, expires_at)
        self._memo: dict[str, tuple[bytes, AppData, float | None, bool, float, float]] = {}

    def dumps(
        self,
        apps: AppData,
        expiry: float | None,
        session_id: str,
        created_at: float,
        expires_at: float,
    ) -> bytes:
        """Sign ``apps`` and ``expiry``, bound to the id and times of the
        record they will be stored in, and remember the result."""
        token = os.urandom(TOKEN_SIZE)
        body = pickle.dumps(
            (FORMAT, session_id, created_at, expires_at, expiry, token, apps), PROTOCOL
        )
        payload = self._macs[0](body) + body
        self._remember(session_id, payload, apps, expiry, False, created_at, expires_at)
        return payload

    def _remember(
        self,
        session_id: str,
        payload: bytes,
        apps: AppData,
        expiry: float | None,
        stale: bool,
        created_at: float,
        expires_at: float,
    ) -> None:
        if len(payload) <= MEMO_MAX_PAYLOAD:
            memo = self._memo
            if len(memo) >= MEMO_SESSIONS and session_id not in memo:
                memo.clear()
            memo[session_id] = (payload, apps, expiry, stale, created_at, expires_at)

    def loads(self, record: Record) -> tuple[AppData, float | None]:
        """Verify then unpickle; a bad payload is a :class:`DamagedRecord`."""
        apps, expiry, _ = self.loads_checked(record)
        return apps, expiry

    def loads_checked(self, record: Record) -> tuple[AppData, float | None, bool]:
        """Like :meth:`loads`, and also whether an older secret signed it."""
        session_id, payload = record.session_id, record.payload
        known = self._memo.get(session_id)
        if known is not None and known[0] == payload:
            if known[4] != record.created_at or known[5] != record.expires_at:
                raise DamagedRecord(session_id, "its times differ from the signed ones")
            return known[1], known[2], known[3]
        mac, body = payload[:MAC_SIZE], payload[MAC_SIZE:]
        signer = -1
        for index, sign in enumerate(self._macs):
            if hmac.compare_digest(sign(body), mac):
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
        apps, expiry = self._check(record, fields)
        self._remember(
            session_id, payload, apps, expiry, signer > 0, record.created_at, record.expires_at
        )
        return apps, expiry, signer > 0

    @staticmethod
    def _check(record: Record, fields: object) -> tuple[AppData, float | None]:
        session_id = record.session_id
        if not isinstance(fields, tuple) or not fields or fields[0] != FORMAT:
            fmt = fields[0] if isinstance(fields, tuple) and fields else None
            raise DamagedRecord(session_id, f"unknown payload format {fmt!r:.20}")
        if len(fields) != 7:
            raise DamagedRecord(session_id, "malformed payload")
        _, bound_id, created_at, expires_at, expiry, _token, apps = fields
        if bound_id != session_id:
            raise DamagedRecord(session_id, "its payload belongs to another session")
        if created_at != record.created_at or expires_at != record.expires_at:
            raise DamagedRecord(session_id, "its times differ from the signed ones")
        if expiry is not None and not (isinstance(expiry, float) and math.isfinite(expiry)):
            raise DamagedRecord(session_id, "bad explicit expiry")
        if not isinstance(apps, dict):
            raise DamagedRecord(session_id, "malformed payload")
        return apps, expiry


def dump_value(value: Any) -> bytes:
    """Pickle one user value (the snapshot taken by ``Store.set``)."""
    return pickle.dumps(value, PROTOCOL)


def load_value(data: bytes) -> Any:
    """A fresh copy of a value; only ever called on verified payload data."""
    return pickle.loads(data)
