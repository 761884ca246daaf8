"""``sessionstore serve``: the access log, ``--quiet`` and the ``--stats`` page."""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import logging
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from sessionstore import SessionMiddleware
from sessionstore.serving import STATS_PATH, AccessLog, StatsPage, find_session_middleware

from .conftest import ROOT, consume

LINE = re.compile(
    r'^(?P<host>\S+) - - \[(?P<when>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) '
    r'(?P<size>\d+|-) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)" (?P<ms>\d+\.\d)ms$'
)


@contextlib.contextmanager
def served(tmp_path, *flags):
    """``sessionstore serve`` on a copy of the demo ini; yields (base url, log lines)."""
    ini = tmp_path / "demo.ini"
    shutil.copy(ROOT / "examples" / "demo.ini", ini)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionstore.cli", "serve", str(ini), "--port", "0", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []
    # The log is read as it is written: a line comes when its response is
    # finished, which can be after the client has read all of it.
    reader = threading.Thread(target=lambda: log.extend(line.rstrip("\n") for line in proc.stderr))
    reader.start()
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line
        yield f"http://127.0.0.1:{match.group(1)}", log
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
        reader.join(timeout=30)


def access_lines(log, count):
    """Wait until ``count`` access lines have come to ``log`` (10 s at most:
    the assertions on them then say what is missing)."""
    deadline = time.monotonic() + 10
    while len([line for line in _own(log) if LINE.match(line)]) < count:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)  # waiting on another process's output, not on a clock


def _own(log):
    # waitress warns when a request waits for a free thread: on a busy machine;
    # the demo says once that it wrote a secret into its ini.
    return [
        line
        for line in log
        if " WARNING waitress.queue: " not in line and not line.startswith("demo: ")
    ]


def fetch(url, method="GET"):
    request = urllib.request.Request(url, method=method, headers={"User-Agent": "test/1"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def test_serve_logs_one_line_per_request(tmp_path):
    with served(tmp_path) as (base, log):
        assert fetch(base + "/shop?sort=price")[0] == 200
        assert fetch(base + "/nosuch")[0] == 404
        assert fetch(base + "/", method="HEAD") == (200, b"")
        access_lines(log, 3)
    lines = [LINE.match(line) for line in _own(log)]
    assert all(lines), log  # nothing but access lines: no warning, no traceback
    # A line is written when its response is finished: not always in request order.
    got = {m["request"]: (m["host"], m["status"], m["size"], m["agent"]) for m in lines}
    assert len(got) == len(lines) == 3
    shop = got.pop("GET /shop?sort=price HTTP/1.1")
    assert shop[:2] == ("127.0.0.1", "200") and int(shop[2]) > 500
    assert got == {
        "GET /nosuch HTTP/1.1": ("127.0.0.1", "404", got["GET /nosuch HTTP/1.1"][2], "test/1"),
        "HEAD / HTTP/1.1": ("127.0.0.1", "200", "-", "test/1"),
    }


def test_serve_quiet_logs_no_requests(tmp_path):
    with served(tmp_path, "--quiet") as (base, log):
        assert fetch(base + "/")[0] == 200
    assert _own(log) == []


def test_stats_page_only_with_the_flag(tmp_path):
    with served(tmp_path) as (base, _):
        assert fetch(base + STATS_PATH)[0] == 404


def test_stats_page_serves_the_counters(tmp_path):
    with served(tmp_path, "--stats") as (base, _):
        status, body = fetch(base + STATS_PATH)
        assert status == 200
        before = json.loads(body)
        assert isinstance(before, dict) and before
        assert all(isinstance(v, int) for v in before.values())
        # A visitor logs in: the form's CSRF token, then a session is made.
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        with opener.open(base + "/", timeout=30) as response:
            token = re.search(r'name="csrf" value="([^"]+)"', response.read().decode())[1]
        data = urllib.parse.urlencode({"user": "ada", "csrf": token}).encode()
        with opener.open(base + "/login", data=data, timeout=30) as response:
            assert response.status == 200
        after = json.loads(fetch(base + STATS_PATH)[1])
    assert after.keys() == before.keys()
    assert after["created"] == before["created"] + 1  # a session was made and committed
    assert after["commits"] > before["commits"]


def test_stats_needs_a_session_middleware(tmp_path):
    ini = tmp_path / "bare.ini"
    ini.write_text("[app:main]\nuse = egg:sessionstore#demo\n")
    proc = subprocess.run(
        [sys.executable, "-m", "sessionstore.cli", "serve", str(ini), "--stats"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        f"sessionstore: error: --stats: no session middleware in [main] of {ini}\n"
    )


# -- the pieces, in process ------------------------------------------------------------


def hello(environ, start_response):
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("boom")
    start_response("201 Created", [("Content-Type", "text/plain")])
    return [b"hello ", b"world"]


def test_access_line_format(caplog):
    times = iter([1_800_000_000.0, 1_800_000_000.0123])
    app = AccessLog(hello, clock=lambda: next(times))
    environ = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "/site",
        "PATH_INFO": "/a b",
        "QUERY_STRING": "x=1",
        "SERVER_PROTOCOL": "HTTP/1.0",
        "REMOTE_ADDR": "10.0.0.1",
        "HTTP_REFERER": "http://x/",
        "HTTP_USER_AGENT": 'say "hi"',
    }
    with caplog.at_level(logging.INFO, logger="sessionstore.access"):
        body = app(environ, lambda status, headers, exc_info=None: None)
        assert caplog.records == []  # logged when the response is finished
        assert consume(body) == b"hello world"
    assert [r.getMessage() for r in caplog.records] == [
        '10.0.0.1 - - [15/Jan/2027:08:00:00 +0000] "POST /site/a b?x=1 HTTP/1.0" 201 11 '
        '"http://x/" "say \\"hi\\"" 12.3ms'
    ]


def test_a_failing_app_is_logged_as_500(caplog):
    app = AccessLog(hello, clock=lambda: 0.0)
    with caplog.at_level(logging.INFO, logger="sessionstore.access"), pytest.raises(RuntimeError):
        app({"REQUEST_METHOD": "GET", "PATH_INFO": "/boom"}, lambda *a: None)
    (record,) = caplog.records
    assert '"GET /boom -" 500 -' in record.getMessage()


def test_find_session_middleware_through_filters():
    middleware = SessionMiddleware(hello, secret="s" * 32, backend="memory")

    class Filter:
        def __init__(self, app):
            self.app = app

        def __call__(self, environ, start_response):
            return self.app(environ, start_response)

    assert find_session_middleware(Filter(Filter(middleware))) is middleware
    assert find_session_middleware(Filter(hello)) is None
    assert find_session_middleware(StatsPage(middleware, middleware)) is middleware


def test_minimal_example_takes_a_port(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "minimal.py"), "--port", "0"],
        cwd=tmp_path,  # its sessions.db lands here
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", proc.stdout.readline())
        assert match and match.group(1) != "0"
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        pages = []
        for _ in range(2):
            with opener.open(f"http://127.0.0.1:{match.group(1)}/", timeout=30) as response:
                pages.append(response.read().decode())
        assert pages == ["You have been here 1 time(s).\n", "You have been here 2 time(s).\n"]
        assert (tmp_path / "sessions.db").exists()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
