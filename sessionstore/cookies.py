"""The session cookie: reading candidate ids, signing them, building headers.

The cookie carries nothing but the session id, signed with itsdangerous.
``Set-Cookie`` headers are built by WebOb.  Reading needs only the values of
one cookie name: the header is split at ``;`` and only the pairs that
contain the name are looked at (a full parse of every cookie cost more than
the rest of a read, and a regular expression for the name, tried at every
position of the header, cost 70,000 instructions for a dozen cookies where
this costs 15,000); whatever it finds must still pass the signature check.

Several cookies may carry our name: a stale one on another path, or one
planted from a sibling subdomain ("cookie tossing").  Values that cannot be a
signed id (wrong length or alphabet) are skipped before anything is counted,
so junk cannot crowd the real cookie out; up to :data:`MAX_CANDIDATES`
well-shaped values are then verified, and *every* one that verifies is
returned, in header order.  Choosing among them needs the backend (only live
sessions count) and is the Session's job: two different live sessions mean
the request gets neither.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import NamedTuple

from itsdangerous import BadData, TimestampSigner
from webob.cookies import make_cookie

from .config import Settings
from .ids import ID_PATTERN, is_valid_id

SALT = "sessionstore.cookie"
#: The shape of a signed id: id, base64 timestamp, base64 HMAC-SHA256 (43
#: characters; the last carries 4 bits and 2 unused ones, which must be zero:
#: otherwise four spellings of one signature verify, and a tampered cookie
#: is taken for the real one).
_SIGNED_ID_RE = re.compile(
    ID_PATTERN + r"\.[A-Za-z0-9_-]{0,12}\.[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]"
)
#: At most this many well-shaped cookies with our name are verified (each
#: costs one HMAC); junk of the wrong shape is not counted.
MAX_CANDIDATES = 16
#: Verified cookie values remembered, so a repeat visitor costs no HMAC.
_MEMO_SIZE = 10_000


class CookieId(NamedTuple):
    """A session id read from a cookie whose signature verified."""

    session_id: str
    signed_at: int
    #: Signed with an older secret: the response re-signs it with the newest.
    stale_secret: bool


class _ClockSigner(TimestampSigner):
    """A TimestampSigner that asks an injected clock for the time, and derives
    each signing key once instead of on every call."""

    def __init__(self, keys: list[str], clock: Callable[[], float]) -> None:
        super().__init__(keys, salt=SALT, key_derivation="hmac", digest_method=hashlib.sha256)
        self._clock = clock
        self._derived: dict[bytes, bytes] = {}

    def get_timestamp(self) -> int:
        return int(self._clock())

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        key = self.secret_keys[-1] if secret_key is None else secret_key
        key = key.encode() if isinstance(key, str) else key
        derived = self._derived.get(key)
        if derived is None:
            derived = self._derived[key] = super().derive_key(secret_key)
        return derived


class CookieCodec:
    """Signs session ids into cookie values and reads them back.

    ``settings.secret`` is newest first; the newest signs, all verify.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float]) -> None:
        self._settings = settings
        self._clock = clock
        self._newest = _ClockSigner([settings.secret[0]], clock)
        # itsdangerous wants its key list oldest first.
        older = list(reversed(settings.secret[1:]))
        self._older = _ClockSigner(older, clock) if older else None
        self._verified: dict[str, CookieId] = {}
        self._name = settings.cookie_name

    def sign(self, session_id: str) -> str:
        return self._newest.sign(session_id).decode("ascii")

    def read(self, cookie_header: str) -> list[CookieId]:
        """Every verified id among the cookies named ``cookie_name``, in header
        order (the same id may appear twice).

        Values that cannot be a signed id are skipped before counting; among
        the first :data:`MAX_CANDIDATES` well-shaped ones, tampered, forged
        and future-dated values are dropped silently: they mean "no session".
        How old a signature may be depends on its session (``Session._load``).
        """
        found = []
        tried = 0
        name = self._name
        for pair in cookie_header.split(";"):
            if name not in pair:
                continue  # (most pairs: one substring search each)
            # Exactly cookie_name before the first "=", spaces and tabs aside
            # (so "xsession=" or a name inside another value never matches).
            key, equals, value = pair.partition("=")
            if not equals or key.strip(" \t") != name:
                continue
            value = value.strip(" \t")
            if value.endswith('"') and len(value) > 1 and value.startswith('"'):
                value = value[1:-1]  # a quoted value (RFC 6265 allows DQUOTEs)
            # A value whose signature verified once is remembered (only those:
            # junk cannot fill the memo); its age is still checked every time.
            known = self._verified.get(value)
            if known is None and _SIGNED_ID_RE.fullmatch(value) is None:
                continue  # junk: not counted, so it cannot hide the real cookie
            tried += 1
            if tried > MAX_CANDIDATES:
                break
            if known is None:
                known = self._verify(value)
            if known is not None and known.signed_at <= self._clock():
                found.append(known)
        return found

    def _verify(self, value: str) -> CookieId | None:
        """The id ``value`` signs, remembered, or None when it does not verify."""
        found = self._verify_signature(value)
        if found is not None:
            if len(self._verified) >= _MEMO_SIZE:
                self._verified.clear()
            self._verified[value] = found
        return found

    def _verify_signature(self, value: str) -> CookieId | None:
        # The signature's age is judged with the session (Session._load): a
        # session given an explicit expiry keeps its cookie good until then.
        stale = False
        try:
            raw, signed = self._newest.unsign(value, return_timestamp=True)
        except BadData:
            if self._older is None:
                return None
            try:
                raw, signed = self._older.unsign(value, return_timestamp=True)
            except BadData:
                return None
            stale = True
        if signed.timestamp() > self._clock():
            return None  # signed in the future: not by us
        try:
            session_id = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
        if not is_valid_id(session_id):
            return None
        return CookieId(session_id, int(signed.timestamp()), stale)

    def set_cookie_header(self, session_id: str, secure: bool, max_age: int | None) -> str:
        return self._header(self.sign(session_id), secure, max_age)

    def delete_cookie_header(self, secure: bool) -> str:
        return self._header(None, secure, None)  # WebOb sends Max-Age=0 and a past date

    def _header(self, value: str | None, secure: bool, max_age: int | None) -> str:
        s = self._settings
        header: str = make_cookie(
            s.cookie_name,
            value,
            max_age=max_age,
            path=s.cookie_path,
            domain=s.cookie_domain,
            secure=secure,
            httponly=s.httponly,
            samesite=s.samesite,
        )
        return header
