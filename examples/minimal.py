"""The smallest sessionstore site: a page that counts your visits.

Run it with ``python examples/minimal.py`` and open http://127.0.0.1:8080/.
The secret comes from ``$SESSIONSTORE_SECRET`` (``sessionstore secret`` prints
one); without it, a random one lasts until the process stops.
"""

from __future__ import annotations

import os
import secrets
from wsgiref.simple_server import make_server

from sessionstore import SessionMiddleware


def counter(environ, start_response):
    store = environ["session"].store("counter")
    visits = store.get_default("visits", 0) + 1
    store["visits"] = visits
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [f"You have been here {visits} time(s).\n".encode()]


app = SessionMiddleware(
    counter,
    secret=os.environ.get("SESSIONSTORE_SECRET") or secrets.token_urlsafe(32),
    backend="sqlite",
    backend_options={"filename": "sessions.db"},
)

if __name__ == "__main__":
    with make_server("127.0.0.1", 8080, app) as server:
        print("Serving on http://127.0.0.1:8080/ (Ctrl-C to stop)")
        server.serve_forever()
