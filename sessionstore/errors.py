"""The exceptions ``sessionstore`` raises, all importable from the top level."""

from __future__ import annotations


class SessionStoreError(Exception):
    """Base class of every error raised by ``sessionstore``."""


class ConfigurationError(SessionStoreError, ValueError):
    """A setting is missing or has a bad value.

    ``key`` and ``value`` name the offending setting; both also appear in the
    message, so a log line is enough to fix the ini file.  A secret's value
    (and any value given with ``hide=True``) is never kept or shown.
    """

    #: What ``value`` holds when the real value must not be shown.
    HIDDEN = "<hidden>"

    def __init__(self, key: str, value: object, reason: str, *, hide: bool = False) -> None:
        self.key = key
        #: The offending value, or :attr:`HIDDEN` for a secret (or for the value
        #: of an unknown key, which may be a misspelt secret).
        self.value = self.HIDDEN if hide else value
        self.reason = reason
        shown = self.HIDDEN if hide else repr(value)
        super().__init__(f"{key} = {shown}: {reason}")


class InvalidAppName(SessionStoreError, ValueError):
    """An application name does not match ``[A-Za-z0-9_.-]{1,255}``."""

    def __init__(self, name: object) -> None:
        self.name = name
        super().__init__(
            f"invalid application name {name!r}: use 1 to 255 characters "
            "from A-Z, a-z, 0-9, '_', '.' and '-'"
        )


class ConcurrentUpdate(SessionStoreError):
    """Another request changed a key this request wrote (``on_conflict = error``).

    Nothing of this request was written.  ``keys`` lists the ``(app, key)``
    pairs in conflict (``key`` is ``None`` for a conflicting ``empty()``).
    """

    def __init__(self, session_id: str, keys: list[tuple[str, str | None]]) -> None:
        self.session_id = session_id
        self.keys = keys
        shown = ", ".join(f"{app}:{key}" if key else f"{app}:*" for app, key in keys)
        super().__init__(f"session changed by another request since it was read ({shown})")


class BusyRetry(SessionStoreError):
    """The backend stayed locked (or contended) past ``busy_timeout``; retry later."""


class BackendError(SessionStoreError):
    """Storage failed: corrupt or unreadable data, a full disk, a lost server.

    ``original_error`` carries the exception that caused it, if any.
    """

    def __init__(self, message: str, original_error: BaseException | None = None) -> None:
        self.original_error = original_error
        if original_error is not None:
            message = f"{message}: {original_error}"
        super().__init__(message)


class DamagedRecord(BackendError):
    """One stored session cannot be trusted: a bad signature, a payload bound
    to another id or other times, a field of the wrong type.

    Its visitor gets "no session"; the record is kept for an administrator
    (``sessionstore check``).  ``session_id`` names it.
    """

    def __init__(
        self, session_id: str, reason: str, original_error: BaseException | None = None
    ) -> None:
        self.session_id = session_id
        super().__init__(f"stored session {session_id}: {reason}", original_error)
