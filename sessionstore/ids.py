"""Session ids: 256 random bits from :mod:`secrets`, URL-safe base64 (43 characters)."""

from __future__ import annotations

import re
import secrets

ID_BYTES = 32
_ID_RE = re.compile(r"[A-Za-z0-9_-]{43}")


def new_session_id() -> str:
    """Return a fresh random session id."""
    return secrets.token_urlsafe(ID_BYTES)


def is_valid_id(value: object) -> bool:
    """True when ``value`` has the exact shape of an id this library creates.

    Checked before any backend access, so no hostile value ever reaches a file
    name, a key or a query.
    """
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None
