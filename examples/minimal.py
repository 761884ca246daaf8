"""The smallest sessionstore site: a page that counts your visits.

Run it with ``python examples/minimal.py`` and open http://127.0.0.1:8080/
(``--port 9000`` for another port, ``--port 0`` for any free one).
"""

from __future__ import annotations

import argparse
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
    secret="change-me-to-a-long-random-string",
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
