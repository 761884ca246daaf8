"""Signed payloads: how a session's data is stored in any backend.

A payload is ``HMAC-SHA256(key, body) + body`` where ``body`` is a pickle of
``(FORMAT, explicit_expiry, {app: {key: pickled value}})``.  The key is derived
from each configured secret, and the MAC is checked before anything is
unpickled, so whoever can write to the storage (a shared Redis, a database
table, the pickle file) but does not know the secret cannot make us unpickle
what they planted.

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
import pickle
from typing import Any

from .errors import BackendError

FORMAT = 1
MAC_SIZE = 32
PROTOCOL = pickle.HIGHEST_PROTOCOL
_PURPOSE = b"sessionstore.payload.v1"

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
        self._memo: dict[str, tuple[bytes, AppData, float | None, bool]] = {}

    def dumps(self, apps: AppData, expiry: float | None, session_id: str | None = None) -> bytes:
        """Sign ``apps`` and ``expiry``; with ``session_id``, remember the result."""
        body = pickle.dumps((FORMAT, expiry, apps), PROTOCOL)
        payload = self._macs[0](body) + body
        if session_id is not None:
            self._remember(session_id, payload, apps, expiry, False)
        return payload

    def _remember(
        self, session_id: str, payload: bytes, apps: AppData, expiry: float | None, stale: bool
    ) -> None:
        if len(payload) <= MEMO_MAX_PAYLOAD:
            memo = self._memo
            if len(memo) >= MEMO_SESSIONS and session_id not in memo:
                memo.clear()
            memo[session_id] = (payload, apps, expiry, stale)

    def loads(self, payload: bytes, session_id: str) -> tuple[AppData, float | None]:
        """Verify then unpickle; a bad payload is a :class:`BackendError`."""
        apps, expiry, _ = self.loads_checked(payload, session_id)
        return apps, expiry

    def loads_checked(self, payload: bytes, session_id: str) -> tuple[AppData, float | None, bool]:
        """Like :meth:`loads`, and also whether an older secret signed it."""
        known = self._memo.get(session_id)
        if known is not None and known[0] == payload:
            return known[1], known[2], known[3]
        mac, body = payload[:MAC_SIZE], payload[MAC_SIZE:]
        signer = -1
        for index, sign in enumerate(self._macs):
            if hmac.compare_digest(sign(body), mac):
                signer = index
                break
        if signer < 0:
            raise BackendError(
                f"stored session {session_id} has a bad signature "
                "(damaged, planted, or written with an unknown secret)"
            )
        try:
            fmt, expiry, apps = pickle.loads(body)
        except Exception as exc:
            raise BackendError(f"stored session {session_id} cannot be read", exc) from exc
        if fmt != FORMAT:
            raise BackendError(f"stored session {session_id} has unknown format {fmt!r}")
        self._remember(session_id, payload, apps, expiry, signer > 0)
        return apps, expiry, signer > 0


def dump_value(value: Any) -> bytes:
    """Pickle one user value (the snapshot taken by ``Store.set``)."""
    return pickle.dumps(value, PROTOCOL)


def load_value(data: bytes) -> Any:
    """A fresh copy of a value; only ever called on verified payload data."""
    return pickle.loads(data)
