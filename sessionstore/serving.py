"""What ``sessionstore serve`` wraps around the site: an access log and the stats page.

* :class:`AccessLog` logs one line per request to the ``sessionstore.access``
  logger, at INFO, when the response is finished (its body closed), in the
  Combined Log Format followed by the time taken::

      127.0.0.1 - - [30/Nov/2026:21:40:00 +0000] "GET /shop HTTP/1.1" 200 1234 "-" "curl/8.5" 2.1ms

  The size is the bytes of the body actually sent (``-`` when none). A request
  whose application raised is logged with status 500 and the exception is
  re-raised for the server to answer.
* :func:`serve` runs a site with waitress behind both, printing its address.
* :class:`StatsPage` answers ``GET /__sessionstore__/stats`` with
  ``SessionMiddleware.stats()`` as a JSON object, and passes every other
  request through.  ``sessionstore serve --stats`` turns it on; it is off by
  default, as the counters say how busy the site is.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .middleware import SessionMiddleware

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

STATS_PATH = "/__sessionstore__/stats"

access_log = logging.getLogger("sessionstore.access")

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _clf_time(epoch: float) -> str:
    # Month names spelled out here: strftime's %b follows the locale.
    t = time.gmtime(epoch)
    return (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{time.strftime('%H:%M:%S', t)} +0000"
    )


def _quoted(value: str) -> str:
    if not value:
        return "-"
    return value.replace("\\", "\\\\").replace('"', '\\"')


class AccessLog:
    """WSGI middleware: one Combined Log Format line per request (see the module)."""

    def __init__(
        self,
        app: WSGIApp,
        *,
        logger: logging.Logger = access_log,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.logger = logger
        self.clock = clock

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        started = self.clock()
        status = ["-"]

        def recording_start_response(
            status_line: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            status[0] = status_line.split(" ", 1)[0]
            return start_response(status_line, headers, exc_info)

        try:
            body = self.app(environ, recording_start_response)
        except BaseException:
            self._log(environ, "500", 0, started)
            raise
        return _LoggedBody(body, lambda size: self._log(environ, status[0], size, started))

    def _log(self, environ: dict[str, Any], status: str, size: int, started: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        if environ.get("QUERY_STRING"):
            path += "?" + environ["QUERY_STRING"]
        request = (
            f"{environ.get('REQUEST_METHOD', '-')} {path} {environ.get('SERVER_PROTOCOL', '-')}"
        )
        elapsed = (self.clock() - started) * 1000
        self.logger.info(
            '%s - %s [%s] "%s" %s %s "%s" "%s" %.1fms',
            environ.get("REMOTE_ADDR") or "-",
            environ.get("REMOTE_USER") or "-",
            _clf_time(started),
            _quoted(request),
            status,
            size or "-",
            _quoted(environ.get("HTTP_REFERER", "")),
            _quoted(environ.get("HTTP_USER_AGENT", "")),
            elapsed,
        )


class _LoggedBody:
    """The application's body, counted as it is sent; logged when closed."""

    def __init__(self, body: Iterable[bytes], done: Callable[[int], None]) -> None:
        self._body = body
        self._done = done
        self._size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._body:
            self._size += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._done(self._size)


def find_session_middleware(app: Any, depth: int = 20) -> SessionMiddleware | None:
    """The SessionMiddleware in a pipeline of filters that keep their ``app``."""
    for _ in range(depth):
        if isinstance(app, SessionMiddleware):
            return app
        inner = None
        for name in ("app", "application", "wrap_app", "_app"):
            inner = getattr(app, name, None)
            if inner is not None:
                break
        if inner is None:
            return None
        app = inner
    return None


class StatsPage:
    """WSGI middleware: ``GET`` :data:`STATS_PATH` answers ``middleware.stats()`` as JSON."""

    def __init__(self, app: WSGIApp, middleware: SessionMiddleware) -> None:
        self.app = app
        self.middleware = middleware

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") != STATS_PATH:
            return self.app(environ, start_response)
        method = environ.get("REQUEST_METHOD")
        if method not in ("GET", "HEAD"):
            start_response(
                "405 Method Not Allowed",
                [("Allow", "GET, HEAD"), ("Content-Type", "text/plain"), ("Content-Length", "0")],
            )
            return []
        stats = self.middleware.stats()  # type: ignore[attr-defined, unused-ignore]
        body = (json.dumps(stats, sort_keys=True, indent=1) + "\n").encode()
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [] if method == "HEAD" else [body]


def log_to_stderr(*, quiet: bool) -> None:
    """Access lines as they are; the site's own warnings with their level and logger."""
    access_log.propagate = False
    access_log.setLevel(logging.WARNING if quiet else logging.INFO)
    plain = logging.StreamHandler(sys.stderr)
    plain.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(plain)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def serve(
    app: WSGIApp, host: str, port: int, *, stats: SessionMiddleware | None, name: str
) -> None:
    """Serve ``app`` with waitress until interrupted; ``port`` 0 takes any free port.

    The first line on standard output gives the address actually bound.
    """
    import waitress

    if stats is not None:
        app = StatsPage(app, stats)
    server = waitress.create_server(AccessLog(app), host=host, port=port)
    bound = server.effective_port
    print(f"Serving {name} on http://{host}:{bound}/", flush=True)
    if stats is not None:
        print(f"Counters at http://{host}:{bound}{STATS_PATH}", flush=True)
    try:
        server.run()
    finally:
        server.close()
        middleware = find_session_middleware(app)
        if middleware is not None:
            middleware.close()  # its backend's connections and files
