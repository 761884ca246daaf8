"""Settings: parsed and checked once, at start-up.

Every setting goes through one strict converter that accepts the native value
(from Python) or its ini spelling (from PasteDeploy).  A bad value raises
:class:`~sessionstore.errors.ConfigurationError` naming the key and the value;
nothing is parsed per request.

Whatever would fail later, per request, fails here instead: ``SameSite=None``
without ``secure = true``, and numbers too large to use (a ``cookie_max_age``
that overflows a date, a ``busy_timeout`` longer than a lock can wait).

Secrets are never shown: not in an error, not in ``repr(settings)``, and the
value of an unknown key (perhaps a misspelt ``secret``) is not shown either.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, cast

from .errors import ConfigurationError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
# RFC 6265 cookie-name token: no separators, controls or whitespace.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Cookie attribute values (Path, Domain): printable ASCII without ';'.
_ATTRIBUTE_RE = re.compile(r"[\x21-\x3a\x3c-\x7e]+")
_ENVIRON_KEY_RE = re.compile(r"[A-Za-z0-9_.-]+")
#: The CGI variables of PEP 3333 and RFC 3875, which a WSGI server fills in.
_CGI_KEYS = frozenset(
    [
        "AUTH_TYPE",
        "CONTENT_LENGTH",
        "CONTENT_TYPE",
        "GATEWAY_INTERFACE",
        "PATH_INFO",
        "PATH_TRANSLATED",
        "QUERY_STRING",
        "REMOTE_ADDR",
        "REMOTE_HOST",
        "REMOTE_IDENT",
        "REMOTE_PORT",
        "REMOTE_USER",
        "REQUEST_METHOD",
        "REQUEST_URI",
        "SCRIPT_NAME",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "SERVER_SOFTWARE",
    ]
)

_DEFAULT_MAX_VALUE_SIZE = 1024 * 1024
#: The shortest secret accepted: 32 characters (``sessionstore secret`` prints 43).
MIN_SECRET_LENGTH = 32
#: Example secrets published in our README, SPEC and demo: known to everyone.
KNOWN_SECRETS = frozenset(
    {
        "change-me",
        "new-secret",
        "old-secret",
        "secret",
        "demo-secret-change-me-before-use",
        "change-me-to-a-long-random-string",
        "paste-the-output-of-sessionstore-secret-here",
    }
)
#: The longest time span accepted, in seconds (100 years): anything longer
#: overflows a cookie's expiry date or a backend's TTL.
MAX_SPAN = 100 * 365 * 86400
#: The longest ``busy_timeout``, in seconds: a request never waits longer.
MAX_BUSY_TIMEOUT = 3600.0


def as_bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigurationError(key, value, "expected true or false")


def as_number(
    key: str, value: object, *, integer: bool, minimum: float = 0, maximum: float = math.inf
) -> Any:
    """A finite number from ``minimum`` to ``maximum``; an int when ``integer``."""
    number: float
    if isinstance(value, bool):
        raise ConfigurationError(key, value, "expected a number")
    if isinstance(value, (int, float)):
        number = value
    elif isinstance(value, str):
        try:
            number = int(value.strip()) if integer else float(value.strip())
        except ValueError:
            kind = "a whole number" if integer else "a number"
            raise ConfigurationError(key, value, f"expected {kind}") from None
    else:
        raise ConfigurationError(key, value, "expected a number")
    if integer and isinstance(number, float):
        if not number.is_integer():
            raise ConfigurationError(key, value, "expected a whole number")
        number = int(number)
    if not math.isfinite(number) or number < minimum:
        raise ConfigurationError(key, value, f"expected a number >= {minimum:g}")
    if number > maximum:
        shown = f"{maximum:,.0f}" if float(maximum).is_integer() else f"{maximum:g}"
        raise ConfigurationError(key, value, f"too large: at most {shown}")
    return number


def _as_span(key: str, value: object, minimum: int = 0) -> int:
    """Whole seconds, from ``minimum`` to :data:`MAX_SPAN`."""
    result: int = as_number(key, value, integer=True, minimum=minimum, maximum=MAX_SPAN)
    return result


def as_choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    if isinstance(value, str):
        for choice in choices:
            if value.strip().lower() == choice.lower():
                return choice
    raise ConfigurationError(key, value, "expected one of " + ", ".join(choices))


def as_secrets(key: str, value: object) -> tuple[str, ...]:
    """One or more secrets, newest first: a list, or a whitespace-separated string.

    Each must be at least :data:`MIN_SECRET_LENGTH` characters and must not be
    one of the example values we publish.  No message shows a secret.
    """
    if value is None:
        raise ConfigurationError(
            key, None, "a secret is required; generate one with `sessionstore secret`"
        )
    if isinstance(value, str):
        secrets = tuple(value.split())
        if not secrets:
            raise ConfigurationError(key, "", "a secret is required")
        spaced = len(secrets) > 1
    elif isinstance(value, (list, tuple)) and all(isinstance(s, str) for s in value):
        secrets = tuple(s.strip() for s in value)
        if not secrets:
            raise ConfigurationError(key, "", "a secret is required")
        if not all(secrets):
            raise ConfigurationError(key, value, "an empty secret in the list", hide=True)
        spaced = False
    else:
        raise ConfigurationError(key, value, "expected a string or a list of strings", hide=True)
    for number, secret in enumerate(secrets, 1):
        which = f"secret {number} of {len(secrets)}" if len(secrets) > 1 else "the secret"
        if secret.lower() in KNOWN_SECRETS:
            raise ConfigurationError(
                key,
                value,
                f"{which} is an example value published with sessionstore; "
                "generate one with `sessionstore secret`",
                hide=True,
            )
        if len(secret) < MIN_SECRET_LENGTH:
            reason = f"{which} is shorter than {MIN_SECRET_LENGTH} characters"
            if spaced:
                reason += (
                    "; whitespace separates secrets (for rotation), so a passphrase "
                    "must not contain spaces"
                )
            raise ConfigurationError(
                key, value, reason + "; generate one with `sessionstore secret`", hide=True
            )
    return secrets


def _as_optional_seconds(key: str, value: object) -> int | None:
    """Whole seconds >= 1, or ``None``: 0 would make every cookie expire at once."""
    if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none"}):
        return None
    return _as_span(key, value, minimum=1)


def _as_touch_interval(key: str, value: object) -> int | None:
    """Seconds, or ``None`` (``auto``) for the default derived from ``timeout``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in {"", "auto"}):
        return None
    return _as_span(key, value)


def _as_size(key: str, value: object) -> int:
    """A size in bytes: a whole number >= 1."""
    result: int = as_number(key, value, integer=True, minimum=1)
    return result


def as_filename(key: str, value: object) -> str:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ConfigurationError(key, value, "expected a file name")
    return str(os.fspath(value))


def _as_secure(key: str, value: object) -> bool | str:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    return as_bool(key, value)


def _as_path(key: str, value: object) -> str | None:
    path = _as_attribute(key, value)
    if path is not None and not path.startswith("/"):
        # A browser ignores a Path that does not start with "/" and uses the
        # request's directory: a session would be lost from page to page.
        raise ConfigurationError(key, value, "must start with /")
    return path


def _as_attribute(key: str, value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _ATTRIBUTE_RE.fullmatch(value):
        raise ConfigurationError(
            key, value, "must be printable ASCII without spaces, ';', CR or LF"
        )
    return value


def _as_cookie_name(key: str, value: object) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise ConfigurationError(key, value, "not a valid cookie name")
    return value


def _as_environ_key(key: str, value: object) -> str:
    if not isinstance(value, str) or not _ENVIRON_KEY_RE.fullmatch(value):
        raise ConfigurationError(key, value, "expected letters, digits, '_', '.' or '-'")
    if value.lower().startswith("wsgi.") or value.upper() in _CGI_KEYS or value.startswith("HTTP_"):
        # The session would replace what the server put there (the request
        # body, a header, the path).
        raise ConfigurationError(key, value, "a key the WSGI server sets; use another name")
    return value


def _as_cache_control(key: str, value: object) -> str | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none"}):
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[\x20-\x7e]+", value):
        raise ConfigurationError(key, value, "must be printable ASCII without CR or LF")
    return value.strip()


_CONVERTERS: dict[str, Callable[[str, object], Any]] = {
    "secret": as_secrets,
    "cookie_name": _as_cookie_name,
    "cookie_path": _as_path,
    "cookie_domain": _as_attribute,
    "cookie_max_age": _as_optional_seconds,
    "secure": _as_secure,
    "httponly": as_bool,
    "samesite": lambda k, v: as_choice(k, v, ("Lax", "Strict", "None")),
    "timeout": lambda k, v: _as_span(k, v, minimum=1),
    "max_lifetime": _as_span,
    "touch_interval": _as_touch_interval,
    "cleanup_probability": lambda k, v: as_number(k, v, integer=False, maximum=1),
    "on_conflict": lambda k, v: as_choice(k, v, ("merge", "error")),
    "busy_timeout": lambda k, v: as_number(k, v, integer=False, maximum=MAX_BUSY_TIMEOUT),
    "environ_key": _as_environ_key,
    "cache_control": _as_cache_control,
    "max_value_size": _as_size,
    "max_session_size": _as_size,
}


@dataclass(frozen=True)
class Settings:
    """The middleware's settings, converted and cross-checked.

    Times are in seconds, sizes in bytes.  ``secret`` holds one or more
    secrets, newest first; it is left out of ``repr()``.  ``touch_interval``
    defaults to 60 s, or half the ``timeout`` when that is shorter.
    ``max_value_size`` (default 1 MiB) bounds one pickled value, and
    ``max_session_size`` (default 4 MiB) a session: its signed payload as
    stored, plus the keys and pickled values this request adds.
    """

    secret: tuple[str, ...] = field(repr=False, default=cast(tuple[str, ...], None))
    cookie_name: str = "session"
    cookie_path: str | None = "/"
    cookie_domain: str | None = None
    cookie_max_age: int | None = None
    secure: bool | str = "auto"
    httponly: bool = True
    samesite: str = "Lax"
    timeout: int = 86400
    max_lifetime: int = 0
    #: Default (``None`` or ``auto``): min(60, timeout // 2), set at start-up.
    touch_interval: int = cast(int, None)
    cleanup_probability: float = 0.001
    on_conflict: str = "merge"
    busy_timeout: float = 5.0
    environ_key: str = "session"
    cache_control: str | None = "no-store"
    max_value_size: int = _DEFAULT_MAX_VALUE_SIZE
    max_session_size: int = 4 * 1024 * 1024
    #: How long a cookie signature stays valid (a session given an explicit
    #: expiry keeps it valid until then); derived, not configurable.
    signature_max_age: int = field(init=False)

    def __post_init__(self) -> None:
        for name, convert in _CONVERTERS.items():
            object.__setattr__(self, name, convert(name, getattr(self, name)))
        if self.cookie_path is None:
            object.__setattr__(self, "cookie_path", "/")
        self._check_prefixes()
        if self.touch_interval is None:
            object.__setattr__(self, "touch_interval", min(60, self.timeout // 2))
        elif self.touch_interval >= self.timeout:
            raise ConfigurationError(
                "touch_interval", self.touch_interval, "must be shorter than timeout"
            )
        if self.samesite == "None" and self.secure is not True:
            # Browsers drop a SameSite=None cookie without Secure, and WebOb
            # refuses to build one: every plain-http response would fail.
            raise ConfigurationError(
                "samesite", "None", f"SameSite=None needs secure = true, not {self.secure}"
            )
        if self.max_value_size > self.max_session_size:
            if self.max_value_size == _DEFAULT_MAX_VALUE_SIZE:  # max_session_size was set
                raise ConfigurationError(
                    "max_session_size",
                    self.max_session_size,
                    f"must be at least max_value_size ({self.max_value_size}); lower that too",
                )
            raise ConfigurationError(
                "max_value_size",
                self.max_value_size,
                f"must not exceed max_session_size ({self.max_session_size})",
            )
        # A cookie is re-signed whenever the idle clock is refreshed, so its
        # signature never gets older than the longest span a session may live.
        longest = max(self.timeout, self.max_lifetime, self.cookie_max_age or 0)
        object.__setattr__(self, "signature_max_age", longest + self.touch_interval)

    def _check_prefixes(self) -> None:
        name = self.cookie_name
        if name.startswith("__Host-"):
            if self.cookie_domain is not None:
                raise ConfigurationError(
                    "cookie_domain", self.cookie_domain, "a __Host- cookie takes no domain"
                )
            if self.cookie_path != "/":
                raise ConfigurationError(
                    "cookie_path", self.cookie_path, "a __Host- cookie needs path /"
                )
        if name.startswith(("__Host-", "__Secure-")):
            if self.secure is False:
                raise ConfigurationError("secure", False, f"{name} cookies must be secure")
            object.__setattr__(self, "secure", True)

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> Settings:
        """Build from a mapping, rejecting keys that are not settings."""
        known = {f.name for f in fields(cls) if f.init}
        for key, value in values.items():
            if key not in known:
                # The value is not shown: a misspelt "secret" holds a secret.
                close = difflib.get_close_matches(key, known, n=3)
                if "secret" in close and values.get("secret") is None:
                    close = ["secret"]  # the likelier mistake: the missing one
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ConfigurationError(key, value, "unknown setting" + hint, hide=True)
        if "secret" not in values:
            raise ConfigurationError("secret", None, "a secret is required")
        return cls(**values)  # type: ignore[arg-type]
