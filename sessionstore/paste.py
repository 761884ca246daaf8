"""PasteDeploy entry points: ``use = egg:sessionstore#session``.

.. code-block:: ini

    [filter:session]
    use = egg:sessionstore#session
    secret = new-secret old-secret
    backend = sqlite
    backend.filename = %(here)s/sessions.db

Every value is converted once, strictly, when the ini is loaded; an unknown
key or a bad value raises :class:`~sessionstore.errors.ConfigurationError`
naming the key and the value.

``clock`` and ``chance`` take functions, which an ini file cannot hold (they
would arrive as strings and fail on the first request): they are refused
here, and stay keyword arguments for Python code and tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigurationError
from .middleware import SessionMiddleware, WSGIApp

#: Keyword arguments of SessionMiddleware that only Python can give.
_PYTHON_ONLY = ("clock", "chance")


def split_ini(conf: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a filter section into SessionMiddleware keyword arguments (a
    missing secret is left to SessionMiddleware, which names a misspelt key,
    ``secrte``, first)."""
    if "backend_options" in conf:
        # It would arrive as one string; each option has its own line.
        raise ConfigurationError(
            "backend_options",
            conf["backend_options"],
            "give each option as backend.NAME = value in an ini file",
            hide=True,
        )
    for key in _PYTHON_ONLY:
        if key in conf:
            raise ConfigurationError(
                key, conf[key], "takes a function: pass it to SessionMiddleware in Python"
            )
    kwargs: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in conf.items():
        if key.startswith("backend."):
            options[key[len("backend.") :]] = value
        else:
            kwargs[key] = value
    kwargs["backend_options"] = options
    return kwargs


def filter_factory(
    global_conf: Mapping[str, Any], **local_conf: Any
) -> Callable[[WSGIApp], SessionMiddleware]:
    """``paste.filter_factory``: returns a function that wraps an app."""
    kwargs = split_ini(local_conf)

    def make_filter(app: WSGIApp) -> SessionMiddleware:
        return SessionMiddleware(app, **kwargs)

    return make_filter


def filter_app_factory(
    app: WSGIApp, global_conf: Mapping[str, Any], **local_conf: Any
) -> SessionMiddleware:
    """``paste.filter_app_factory``: wraps ``app`` at once."""
    return SessionMiddleware(app, **split_ini(local_conf))


def make_session_middleware(app: WSGIApp, **conf: Any) -> SessionMiddleware:
    """Wrap ``app`` from ini-style string settings (``backend.x`` keys included)."""
    return SessionMiddleware(app, **split_ini(conf))
