"""The smallest sessionstore site: a page that counts your visits.

Run it with ``python examples/minimal.py`` and open http://127.0.0.1:8080/
(``--port 9000`` for another port, ``--port 0`` for any free one).  The secret
comes from ``$SESSIONSTORE_SECRET`` (``sessionstore secret`` prints one);
without it, a random one lasts until the process stops.
"""

from __future__ import annotations

import argparse
import os
import secrets
from wsgiref.simple_server import make_server

from sessionstore import SessionMiddleware


def counter(environ, start_response):
    store = environ["session"].store("counter")
    visits = store.update("visits", lambda n: n + 1, 0)  # safe under concurrent requests
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [f"You have been here {visits} time(s).\n".encode()]


app = SessionMiddleware(
    counter,
    secret=os.environ.get("SESSIONSTORE_SECRET") or secrets.token_urlsafe(32),
    backend="sqlite",
    backend_options={"filename": "sessions.db"},
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    with make_server(args.host, args.port, app) as server:
        print(f"Serving on http://{args.host}:{server.server_port}/ (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            app.close()
