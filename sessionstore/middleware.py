"""The WSGI middleware.

.. code-block:: python

    from sessionstore import SessionMiddleware

    def app(environ, start_response):
        cart = environ["session"].store("shop")
        cart.update("items", lambda items: items + ["book"], [])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    app = SessionMiddleware(app, secret=os.environ["SESSIONSTORE_SECRET"],
                            backend="sqlite", backend_options={"filename": "sessions.db"})

Each request gets a lazy :class:`~sessionstore.session.Session` in
``environ["session"]``.  The application's ``start_response`` is held back
until the session is committed, so a failed commit can still turn into an
error response (409 on a conflict, 503 when the backend is busy, 500 when it
is broken) and nothing half-written is stored.  Writes made while the body
iterates are committed before its last chunk is handed to the server.  How
a response is held, committed and passed on is
:mod:`sessionstore.response`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from . import users
from .backends import load_backend
from .backends.base import Backend
from .config import Settings
from .errors import (
    BackendError,
    BusyRetry,
    ConcurrentUpdate,
    ConfigurationError,
)
from .manager import SessionManager
from .response import Response, StartResponse
from .session import Session
from .users import UserSession

log = logging.getLogger("sessionstore")

WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class SessionMiddleware:
    """Give every request a server-side session in ``environ[environ_key]``.

    :param app: the WSGI application to wrap.
    :param secret: one secret, or several (a list, or a whitespace-separated
        string), newest first.  The newest signs; all verify (rotation).
    :param backend: a name (``memory``, ``pickle``, ``sqlite``, ``redis``,
        ``sql``), a ``module:Class`` path, or a backend instance.
        Default: ``"sqlite"`` with ``filename = sessions.db``.
    :param backend_options: keyword options for the backend.
    :param clock: returns epoch seconds; default :func:`time.time`.
        Tests inject one instead of sleeping.

    The other keywords are the settings of :class:`~sessionstore.config.Settings`
    (cookie attributes, ``timeout``, ``max_lifetime``, ``touch_interval``,
    ``cleanup_probability``, ``on_conflict``, ``busy_timeout``,
    ``environ_key``, ``cache_control``); see the README's table for defaults.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        secret: str | list[str] | tuple[str, ...] | None = None,
        backend: str | Backend = "sqlite",
        backend_options: Mapping[str, object] | None = None,
        clock: Callable[[], float] | None = None,
        chance: Callable[[], float] | None = None,
        **settings: Any,
    ) -> None:
        self.app = app
        for name, given in (("clock", clock), ("chance", chance)):
            if given is not None and not callable(given):
                raise ConfigurationError(name, given, "expected a function (called per request)")
        self.settings = Settings.from_mapping({"secret": secret, **settings})
        #: The backend instance in use.
        self.backend = load_backend(
            backend, backend_options, busy_timeout=self.settings.busy_timeout
        )
        extra = {} if chance is None else {"chance": chance}
        self._manager = SessionManager(self.settings, self.backend, clock or time.time, **extra)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        session = Session(self._manager, environ)
        environ[self.settings.environ_key] = session
        response = Response(self._manager, session, environ, start_response)
        try:
            app_iter = self.app(environ, response.start_response)
        except (ConcurrentUpdate, BusyRetry, BackendError) as exc:
            # A session error the application did not catch (a commit() that
            # lost, a store that failed while loading): answer as at response time.
            if response.sent:
                raise
            return response.error(exc)
        return response.finish(app_iter)

    def stats(self) -> dict[str, int]:
        """Counters since start (SPEC section 11): requests that loaded a
        session, commits, compare-and-swap retries, conflicts, lost updates,
        busy (503), backend errors, damaged records, sessions created,
        destroyed and regenerated, and expired sessions removed by cleanup.

        Per process (each worker of a pre-fork server counts its own); cheap
        enough to poll.
        """
        return self._manager.counters.snapshot()

    def sessions_of(self, user_id: str) -> list[UserSession]:
        """The live sessions bound to ``user_id`` (``session.bind_user()``),
        newest first: id, created, last access, expiry, and the user agent
        and address of the request that bound it."""
        return users.sessions_of(self._manager, user_id)

    def destroy_user(self, user_id: str, keep: str | None = None) -> int:
        """Destroy every session of ``user_id`` except ``keep`` (a session id,
        e.g. the current one after a password change); how many.  Each is
        dead at once, and no request in flight brings it back."""
        return users.destroy_user(self._manager, user_id, keep)

    def close(self) -> None:
        """Close the backend (connections, file handles)."""
        self.backend.close()
