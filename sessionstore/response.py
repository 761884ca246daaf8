"""One request's response, as the middleware passes it on.

The application's ``start_response`` is held back until the session is
committed (or its idle clock refreshed), so a failed commit can still become
an error response instead: 409 on a conflict (and a cleared cookie when
another request ended the session), 503 with ``Retry-After`` when the
backend is busy, 500 when it is broken.  Every response the middleware
touches carries ``Vary: Cookie``; a session cookie's ``Cache-Control``
replaces the application's.

Writes made after the headers went out (while the body iterates, or after
the legacy ``write()`` callable) are committed before the last chunk of the
body reaches the server: :class:`Body` holds one chunk back.  If that commit
fails the body raises, so the server aborts the response rather than
completing one whose writes were not stored.  A 2xx therefore means every
write is stored; an error status means none is.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

from . import commit as protocol
from .commit import SessionEnded
from .config import Settings
from .errors import BackendError, BusyRetry, ConcurrentUpdate, SessionStoreError
from .manager import SessionManager
from .session import Session

log = logging.getLogger("sessionstore")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType]
StartResponse = Callable[..., Callable[[bytes], object]]


class Response:
    """One request's response: holds the headers until the session is committed."""

    __slots__ = (
        "manager",
        "session",
        "environ",
        "server_start_response",
        "server_write",
        "status",
        "code",
        "headers",
        "exc_info",
        "failed",
        "sent",
        "replaced",
        "replaced_body",
    )

    def __init__(
        self,
        manager: SessionManager,
        session: Session,
        environ: dict[str, Any],
        start_response: StartResponse,
    ) -> None:
        self.manager = manager
        self.session = session
        self.environ = environ
        self.server_start_response = start_response
        self.server_write: Callable[[bytes], object] | None = None
        self.status: str | None = None
        self.code = 0  # the status code, parsed once; 0 until start_response
        self.headers: list[tuple[str, str]] = []
        self.exc_info: ExcInfo | None = None
        self.failed = False
        self.sent = False
        self.replaced = False
        self.replaced_body = b""

    # -- what the application calls ---------------------------------------------

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            self.failed = True
            if self.sent:
                raise exc_info[1].with_traceback(exc_info[2])
        self.status = status
        try:
            self.code = int(status[:3])
        except ValueError:
            self.code = 0
        self.headers = list(headers)
        self.exc_info = exc_info
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy ``write()`` callable of PEP 3333."""
        if not self.sent:
            self.send_headers()
        if not self.replaced and self.server_write is not None:
            self.server_write(data)

    # -- what the middleware does -------------------------------------------------

    def finish(self, app_iter: Iterable[bytes]) -> Iterable[bytes]:
        iterator: Iterator[bytes] | None = None
        buffered: Sequence[bytes] = ()  # (no list made for the usual response)
        early = self.sent  # the application used write(): headers are gone
        if self.status is None:
            # A generator application calls start_response on its first step.
            iterator = iter(app_iter)
            buffered = chunks = []
            try:
                for chunk in iterator:
                    chunks.append(chunk)
                    if self.status is not None:
                        break
            except BaseException:
                self.failed = True
                _close(app_iter)
                raise
            if self.status is None:
                _close(app_iter)
                raise RuntimeError("the application never called start_response")
        if not self.sent:
            self.send_headers()
        if self.replaced:
            _close(app_iter)
            return [self.replaced_body]
        if iterator is None and type(app_iter) in (list, tuple):
            # A ready body runs no application code while it is sent; only
            # writes made after the write() callable sent the headers are
            # left to commit, and they are committed before it goes out.
            if early:
                self.after_body()
            return app_iter
        return Body(self, app_iter, iterator, buffered)

    def ok(self) -> bool:
        """No exception so far, and a status below 500."""
        return not self.failed and 0 < self.code < 500

    def send_headers(self) -> None:
        """Commit the session (or refresh its idle clock when nothing
        changed), then pass the headers on to the server."""
        assert self.status is not None
        session = self.session
        headers = self.headers
        if session._loaded:
            cookie_headers: Sequence[tuple[str, str]] = ()  # usually: the cookie stands
            if not self.failed and 0 < self.code < 500:  # self.ok(), inline
                if session._dirty():
                    try:
                        protocol.commit(session)
                    except SessionStoreError as exc:
                        self.replace(exc)
                        return
                else:
                    self._touch()  # a commit refreshes the clock by itself
                if session._send_cookie or session._clear_cookie:
                    cookie_headers = session._cookie_headers(self.is_secure())
            headers = _with_session_headers(headers, cookie_headers)
        self.sent = True
        session._late = True
        self.server_write = self.server_start_response(self.status, headers, self.exc_info)

    def is_secure(self) -> bool:
        secure = self.manager.settings.secure
        if secure == "auto":
            return bool(self.environ.get("wsgi.url_scheme") == "https")
        return bool(secure)

    def _touch(self) -> None:
        try:
            self.session._touch()
        except SessionStoreError:
            log.warning(
                "session %s: could not refresh its idle clock",
                _shown_id(self.session),
                exc_info=True,
            )

    def replace(self, exc: SessionStoreError) -> None:
        """Answer with an error instead of the application's response."""
        status, headers, body = _error_response(exc, self.manager.settings, _shown_id(self.session))
        counters = self.manager.counters
        if isinstance(exc, BusyRetry):
            counters.add("busy")
        elif isinstance(exc, BackendError):
            counters.add("backend_errors")
        if isinstance(exc, SessionEnded):
            # Ended by another request: the cookie naming it goes too.
            headers.extend(self.session._cookie_headers(self.is_secure()))
        self.replaced = True
        self.failed = True
        self.sent = True
        self.replaced_body = body
        self.server_write = self.server_start_response(status, headers)

    def error(self, exc: SessionStoreError) -> list[bytes]:
        self.replace(exc)
        return [self.replaced_body]

    def after_body(self) -> None:
        """Commit writes the application made after the headers were sent.

        Runs before the last chunk of the body goes to the server.  A
        failure raises, so the server aborts the response: a client never
        receives a complete response whose writes were not stored.
        Conflicts are merged here (a 409 is no longer possible).
        """
        session = self.session
        if not self.ok() or not session._dirty():
            return
        if session._record is None:
            log.error(
                "session %s: data written after the response headers were sent cannot "
                "start a new session (its cookie can no longer be set); response aborted",
                _shown_id(session),
            )
            raise SessionStoreError("a write after the headers cannot start a session")
        try:
            session.commit()
        except SessionStoreError:
            log.exception(
                "session %s: commit after the response headers failed; response aborted",
                _shown_id(session),
            )
            raise


class Body:
    """The response body: marks the response failed if iteration raises, and
    holds the last chunk back until the writes made while the body iterated
    are committed, so a client that has the whole response finds them
    stored whatever the server does after (gunicorn closes the body only
    after the response is sent).  A streamed body is therefore one chunk
    behind the application."""

    __slots__ = ("_response", "_app_iter", "_iterator", "_buffered", "_app_closed")

    def __init__(
        self,
        response: Response,
        app_iter: Iterable[bytes],
        iterator: Iterator[bytes] | None,
        buffered: Sequence[bytes],
    ) -> None:
        self._response = response
        self._app_iter = app_iter
        self._iterator = iterator
        self._buffered = buffered
        self._app_closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks()

    def _chunks(self) -> Iterator[bytes]:
        source = self._app_iter if self._iterator is None else self._iterator
        last: bytes | None = None
        try:
            for chunk in self._buffered:
                if last is not None:
                    yield last
                last = chunk
            for chunk in source:
                if last is not None:
                    yield last
                last = chunk
        except Exception:
            self._response.failed = True
            raise
        self._close_app()
        self._response.after_body()
        if last is not None:
            yield last

    def _close_app(self) -> None:
        if not self._app_closed:
            self._app_closed = True
            _close(self._app_iter)

    def close(self) -> None:
        """The server is done (or gave up early): close the application's
        body and commit what it wrote if the body did not run to its end."""
        if self._app_closed:
            return
        try:
            self._close_app()
        finally:
            with contextlib.suppress(SessionStoreError):  # logged; the response is over
                self._response.after_body()


def _close(app_iter: Iterable[bytes]) -> None:
    close = getattr(app_iter, "close", None)
    if close is not None:
        close()


def _with_session_headers(
    headers: list[tuple[str, str]], cookie_headers: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The app's headers plus ``Vary: Cookie`` and the session's cookie headers.

    A session cookie's ``Cache-Control`` replaces the application's, so no
    shared cache keeps a response that carries someone's session.
    ``headers`` is the response's own copy (``start_response`` made it): it
    is extended in place, not copied again, when nothing is left out.
    """
    for name, _ in cookie_headers:  # (loops: no generator on every request)
        if name == "Cache-Control":
            headers = [header for header in headers if header[0].lower() != "cache-control"]
            break
    for name, value in headers:
        if name.lower() == "vary" and any(
            token.strip().lower() in ("cookie", "*") for token in value.split(",")
        ):
            break
    else:
        headers.append(("Vary", "Cookie"))
    headers.extend(cookie_headers)
    return headers


def _shown_id(session: Session) -> str:
    """The session's id for a log line, without loading it."""
    record = session._record
    shown = record.session_id if record is not None else session._new_id
    return shown or getattr(session, "_loading", None) or "(none yet)"


def _error_response(
    exc: SessionStoreError, settings: Settings, session_id: str
) -> tuple[str, list[tuple[str, str]], bytes]:
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Vary", "Cookie")]
    # SPEC 11: every warning and error names the session (once).
    about = "%s" if session_id in str(exc) else f"session {session_id}: %s"
    if isinstance(exc, ConcurrentUpdate):
        log.info(about, exc)
        return "409 Conflict", headers, b"The session was changed by another request.\n"
    if isinstance(exc, BusyRetry):
        log.warning(about, exc)
        headers.append(("Retry-After", str(max(1, round(settings.busy_timeout)))))
        return "503 Service Unavailable", headers, b"The session store is busy; retry.\n"
    log.error("session %s: the session store failed", session_id, exc_info=exc)
    return "500 Internal Server Error", headers, b"The session store failed; nothing was saved.\n"
