"""The demo, as a newcomer runs it: ``sessionstore serve examples/demo.ini``."""

from __future__ import annotations

import http.cookiejar
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def demo(tmp_path):
    # A copy of the ini, so the demo's database lands in tmp_path.
    ini = tmp_path / "demo.ini"
    shutil.copy(ROOT / "examples" / "demo.ini", ini)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionstore.cli", "serve", str(ini), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    assert match, line + proc.stderr.read()
    yield f"http://127.0.0.1:{match.group(1)}"
    proc.terminate()
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()


class Browser:
    def __init__(self, base):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path):
        with self.opener.open(self.base + path, timeout=30) as response:
            return response.read().decode()

    def post(self, path, **form):
        # Every form carries the CSRF token of the page it came from.
        form.setdefault("csrf", re.search(r'name="csrf" value="([^"]+)"', self.get("/"))[1])
        data = urllib.parse.urlencode(form).encode()
        with self.opener.open(self.base + path, data=data, timeout=30) as response:
            return response.read().decode()

    def cookie(self):
        return {c.name: c.value for c in self.jar}.get("session")

    def session_id(self):
        match = re.search(r'id="session-id">([^<]+)<', self.get("/session"))
        return match.group(1) if match else None


def test_walk_the_demo(demo):
    browser = Browser(demo)
    assert "not signed in" in browser.get("/")
    assert browser.cookie() is None  # looking around stores nothing
    cart = browser.post("/shop/add", item="book")
    assert "A book on WSGI" in cart.split('id="cart"')[1]
    browser.post("/prefs", theme="dark")
    first_id = browser.session_id()
    first_cookie = browser.cookie()
    assert first_id and first_cookie

    # Log in: the id changes, the data stays.
    page = browser.post("/login", user="ada")
    assert "signed in as <b>ada</b>" in page and 'class="dark"' in page
    assert browser.session_id() not in (None, first_id)
    assert "A book on WSGI" in browser.get("/shop").split('id="cart"')[1]

    # The pre-login cookie is dead.
    stale = Browser(demo)
    stale.jar.set_cookie(_cookie("session", first_cookie))
    assert "No session yet" in stale.get("/session")

    # Log out: the session is gone, and its cookie with it.
    logged_in_cookie = browser.cookie()
    assert "not signed in" in browser.post("/logout")
    assert browser.cookie() is None
    replay = Browser(demo)
    replay.jar.set_cookie(_cookie("session", logged_in_cookie))
    assert "No session yet" in replay.get("/session")
    assert "Shop (0)" in replay.get("/")


def _cookie(name, value):
    return http.cookiejar.Cookie(
        0,
        name,
        value,
        None,
        False,
        "127.0.0.1",
        False,
        False,
        "/",
        True,
        False,
        None,
        True,
        None,
        None,
        {},
        False,
    )
