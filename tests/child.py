"""Child processes for the crash, multi-process and server tests.

python -m tests.child crash-loop KIND PATH START
python -m tests.child try-write KIND PATH
python -m tests.child mp-write KIND PATH COOKIE WORKER COUNT
python -m tests.child serve KIND PATH|OPTIONS_JSON [on_conflict]

race_setup() is a multiprocessing target (test_server_storage).
"""

from __future__ import annotations

import sys

PAYLOAD_SIZE = 40_000
IDS = [f"{n:043d}" for n in range(20)]


def backend_for(kind, path):
    from sessionstore.backends import backend_class

    backend = backend_class(kind)(path)
    backend.setup()
    return backend


def crash_loop(kind, path, start):
    """Commit forever, printing each acknowledged commit: ``step index version``."""
    from sessionstore.backends.base import Record

    backend = backend_for(kind, path)
    step = int(start)
    while True:
        index = step % len(IDS)
        current = backend.get(IDS[index])
        version = 1 if current is None else current.version + 1
        payload = f"{version}:".encode() + b"x" * PAYLOAD_SIZE
        record = Record(IDS[index], version, 1.0, float(step), 4e9, payload)
        expected = None if current is None else current.version
        if not backend.compare_and_swap(IDS[index], expected, record):
            raise SystemExit("lost a compare-and-swap with no other writer")
        print(step, index, version, flush=True)
        step += 1


def try_write(kind, path):
    """Read everything, then try one write; print what happened."""
    from sessionstore import BackendError
    from sessionstore.testing import make_record

    backend = backend_for(kind, path)
    print("records", len(backend.get_all()), flush=True)
    record = make_record(payload=b"x" * 1_000_000)
    try:
        backend.compare_and_swap(record.session_id, None, record)
    except BackendError as exc:
        print("BackendError", exc, flush=True)
    else:
        print("written", flush=True)


def mp_write(kind, path, cookie, worker, count):
    """Write COUNT keys of this worker's own through the middleware, one request each."""
    from tests.apps import make_app
    from tests.conftest import consume

    app = make_app(kind, path)
    for i in range(int(count)):
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/write",
            "QUERY_STRING": f"app=w{worker}&key=k{i}&value={i}",
            "HTTP_COOKIE": f"session={cookie}",
            "wsgi.url_scheme": "http",
        }
        statuses = []
        consume(
            app(environ, lambda status, headers, exc_info=None, seen=statuses: seen.append(status))
        )
        if statuses != ["200 OK"]:
            raise SystemExit(f"request {i} answered {statuses}")
    print("done", flush=True)


def serve(kind, where, on_conflict="merge"):
    """Serve the command app with waitress on a free port; print the port.

    ``where`` is a file name, or the backend options as a JSON object.
    """
    import json

    import waitress

    from tests.apps import make_app

    options = json.loads(where) if where.startswith("{") else {"filename": where}
    app = make_app(kind, options=options, on_conflict=on_conflict)
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=8)
    print(server.effective_port, flush=True)
    server.run()


def race_setup(url: str, tables: list[str], barrier, results) -> None:
    """A process starting on each table at the same moment as three others
    (test_server_storage, forked: outcomes go back through ``results``)."""
    from sessionstore.backends.sql import SqlBackend

    for table in tables:
        backend = SqlBackend(url, table=table)
        barrier.wait(timeout=60)
        try:
            backend.setup()
            results.put("ok")
        except Exception as exc:  # reported to the parent, which fails the test
            results.put(f"{type(exc).__name__}: {exc}")
        finally:
            backend.close()


COMMANDS = {"crash-loop": crash_loop, "try-write": try_write, "mp-write": mp_write, "serve": serve}

if __name__ == "__main__":
    command, *args = sys.argv[1:]
    COMMANDS[command](*args)
