"""Signed payloads: how a session's data is stored in any backend.

A payload is ``HMAC-SHA256(key, body) + body`` where ``body`` is a pickle of
``(FORMAT, explicit_expiry, {app: {key: pickled value}})``.  The key is derived
from each configured secret, and the MAC is checked before anything is
unpickled, so whoever can write to the storage (a shared Redis, a database
table, the pickle file) but does not know the secret cannot make us unpickle
what they planted.

Values stay pickled individually: a request unpickles only the keys it reads,
and each read returns a fresh copy.
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


def _derive(secret: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), _PURPOSE, hashlib.sha256).digest()


class PayloadCodec:
    """Signs and verifies stored payloads; ``secrets`` newest first."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self._keys = [_derive(s) for s in secrets]

    def dumps(self, apps: AppData, expiry: float | None) -> bytes:
        body = pickle.dumps((FORMAT, expiry, apps), PROTOCOL)
        return hmac.new(self._keys[0], body, hashlib.sha256).digest() + body

    def loads(self, payload: bytes, session_id: str) -> tuple[AppData, float | None]:
        """Verify then unpickle; a bad payload is a :class:`BackendError`."""
        apps, expiry, _ = self.loads_checked(payload, session_id)
        return apps, expiry

    def loads_checked(self, payload: bytes, session_id: str) -> tuple[AppData, float | None, bool]:
        """Like :meth:`loads`, and also whether an older secret signed it."""
        mac, body = payload[:MAC_SIZE], payload[MAC_SIZE:]
        signer = next(
            (
                index
                for index, key in enumerate(self._keys)
                if hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), mac)
            ),
            None,
        )
        if signer is None:
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
        return apps, expiry, signer > 0


def dump_value(value: Any) -> bytes:
    """Pickle one user value (the snapshot taken by ``Store.set``)."""
    return pickle.dumps(value, PROTOCOL)


def load_value(data: bytes) -> Any:
    """A fresh copy of a value; only ever called on verified payload data."""
    return pickle.loads(data)
