"""Session ids: random, URL-safe, at least 256 bits from :mod:`secrets`.

An id is 33 random bytes in URL-safe base64 (44 characters, 264 bits), drawn
again when it would start with ``-``, so that it is never mistaken for an
option on a command line (that costs 0.02 bits, leaving 263.9).
"""

from __future__ import annotations

import re
import secrets

ID_BYTES = 33
ID_LENGTH = 44
#: The exact shape of an id (a regular expression), also used by the cookie reader.
ID_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_-]{43}"
_ID_RE = re.compile(ID_PATTERN)


def new_session_id() -> str:
    """Return a fresh random session id."""
    while True:
        session_id = secrets.token_urlsafe(ID_BYTES)
        if session_id[0] != "-":
            return session_id


def is_valid_id(value: object) -> bool:
    """True when ``value`` has the exact shape of an id this library creates.

    Checked before any backend access, so no hostile value ever reaches a file
    name, a key or a query.
    """
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None
