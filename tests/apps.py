"""A small WSGI application driven by its URL, for HTTP and multi-process tests.

``/write?app=A&key=K&value=V``, ``/incr?app=A&key=K``, ``/read?app=A&key=K``,
``/append?app=A&key=K&value=V`` (``update()``), ``/append-plain?...`` (the same
as a plain get-then-set), ``/dump`` (JSON of every store), ``/destroy``,
``/regenerate``, ``/id``.

``python -m gunicorn 'tests.apps:from_environment()'`` serves it with the
backend named by ``SESSIONSTORE_TEST_BACKEND`` (JSON: kind, options, settings).
"""

from __future__ import annotations

import json
import os
from urllib.parse import parse_qs

from sessionstore import SessionMiddleware

SECRET = "test-secret-shared-by-every-process"


def command_app(environ, start_response):
    session = environ["session"]
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    path = environ.get("PATH_INFO", "/")
    store = session.store(query.get("app", "test"))
    if path == "/write":
        body = str(store.set(query["key"], query["value"]))
    elif path == "/incr":
        value = store.get_default(query["key"], 0) + 1
        store.set(query["key"], value)
        body = str(value)
    elif path == "/append":
        body = str(len(store.update(query["key"], lambda items: [*items, query["value"]], [])))
    elif path == "/append-plain":
        store.set(query["key"], [*store.get_default(query["key"], []), query["value"]])
        body = "ok"
    elif path == "/read":
        body = repr(store.get_default(query["key"]))
    elif path == "/dump":
        apps = {app: dict(session.store(app).items()) for app in session.apps()}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"id": session.id, "apps": apps}).encode()]
    elif path == "/destroy":
        session.destroy()
        body = "destroyed"
    elif path == "/regenerate":
        session.regenerate()
        body = str(session.id)
    elif path == "/id":
        body = str(session.id)
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]


def make_app(backend, filename=None, options=None, **settings):
    """The command app behind a SessionMiddleware (``filename`` or ``options``)."""
    options = options or ({"filename": filename} if filename else None)
    settings.setdefault("cleanup_probability", 0)
    return SessionMiddleware(
        command_app, secret=SECRET, backend=backend, backend_options=options, **settings
    )


def from_environment():
    """The command app configured by ``SESSIONSTORE_TEST_BACKEND`` (for gunicorn)."""
    config = json.loads(os.environ["SESSIONSTORE_TEST_BACKEND"])
    return make_app(config["kind"], options=config["options"], **config.get("settings", {}))
