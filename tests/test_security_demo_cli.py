"""Audit findings in the demo and the command line: CSRF, anonymous sessions,
the demo's secret, safe output, and no secret in any CLI output."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

import pytest
from webtest import TestApp

from sessionstore import SessionMiddleware
from sessionstore.config import Settings
from sessionstore.demo import make_app

from . import clirun
from .conftest import ROOT

SECRET = "s-0123456789abcdefghijklmnopqrst"
ENV = {k: v for k, v in os.environ.items() if k != "SESSIONSTORE_SECRET"}


def demo(tmp_path, **settings):
    settings.setdefault("secret", SECRET)
    settings.setdefault("backend", "memory")
    site = make_app({"__file__": str(tmp_path / "demo.ini"), "here": str(tmp_path)}, **settings)
    return site, TestApp(site)


def token(web, path="/shop", **kwargs):
    return web.get(path, **kwargs).html.find("input", {"name": "csrf"})["value"]


def stored(site):
    return site.plain.backend.count()


# -- CSRF and anonymous POSTs ------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "form"),
    [
        ("/login", {"user": "mallory"}),
        ("/logout", {}),
        ("/shop/add", {"item": "book"}),
        ("/shop/empty", {}),
        ("/prefs", {"theme": "dark"}),
    ],
)
def test_a_post_without_the_token_is_refused_and_stores_nothing(tmp_path, path, form):
    site, web = demo(tmp_path)
    response = web.post(path, form, status=403)
    assert "Set-Cookie" not in response.headers
    assert stored(site) == 0


def test_two_hundred_anonymous_posts_create_no_session(tmp_path):
    site, web = demo(tmp_path)
    for i in range(200):
        web.reset()
        web.post("/login", {"user": f"bot{i}", "csrf": "x" * 43}, status=403)
        web.post("/shop/add", {"item": "book"}, status=403)
    assert stored(site) == 0


@pytest.mark.parametrize("user", ["", "   "], ids=["empty", "blank"])
def test_an_empty_login_creates_no_session(tmp_path, user):
    site, web = demo(tmp_path)
    web.post("/login", {"user": user, "csrf": token(web)}, status=303)
    web.post("/shop/empty", {"csrf": token(web)}, status=303)
    assert stored(site) == 0 and "session" not in web.cookies


def test_looking_around_stores_nothing_but_gives_a_token_cookie(tmp_path):
    site, web = demo(tmp_path)
    for path in ("/", "/shop", "/prefs", "/session"):
        web.get(path)
    assert stored(site) == 0 and set(web.cookies) == {"demo_csrf"}


def test_the_token_moves_into_the_session_and_a_foreign_one_is_refused(tmp_path):
    site, web = demo(tmp_path)
    first = token(web)
    web.post("/shop/add", {"item": "book", "csrf": first}, status=303)
    assert stored(site) == 1
    assert "csrf" in web.get("/session").text and first in web.get("/session").text
    # The attacker's page posts a well-formed token of its own: refused.
    other_browser = TestApp(site)
    foreign = token(other_browser)
    web.post("/shop/add", {"item": "pen", "csrf": foreign}, status=403)
    web.post("/shop/add", {"item": "pen"}, status=403)
    assert web.get("/shop").text.count("A fountain pen") == 1  # listed, not in the cart
    # With a session, the session's token rules even if the cookie is replaced.
    web.set_cookie("demo_csrf", foreign)
    web.post("/shop/add", {"item": "pen", "csrf": foreign}, status=403)
    web.post("/shop/add", {"item": "pen", "csrf": first}, status=303)


def test_login_keeps_the_token_and_logout_falls_back_to_the_cookie(tmp_path):
    site, web = demo(tmp_path)
    web.post("/login", {"user": "ada", "csrf": token(web)}, status=303)
    assert "signed in as <b>ada</b>" in web.get("/").text
    web.post("/logout", {"csrf": token(web)}, status=303)
    assert stored(site) == 0
    assert "not signed in" in web.get("/").text


# -- cookie name over https -----------------------------------------------------------


def test_the_demo_uses_a_host_cookie_over_https(tmp_path):
    site, web = demo(tmp_path)
    https = {"wsgi.url_scheme": "https"}
    form = {"item": "book", "csrf": token(web, extra_environ=https)}
    response = web.post("/shop/add", form, extra_environ=https, status=303)
    [session_cookie] = [c for c in response.headers.getall("Set-Cookie") if "session" in c]
    assert session_cookie.startswith("__Host-session=")
    assert "secure" in session_cookie.lower() and "Domain" not in session_cookie
    plain = TestApp(site)
    response = plain.post("/shop/add", {"item": "book", "csrf": token(plain)}, status=303)
    assert response.headers["Set-Cookie"].startswith("session=")


# -- the demo's secret ----------------------------------------------------------------


def test_the_shipped_demo_ini_holds_no_secret():
    text = (ROOT / "examples" / "demo.ini").read_text()
    assert re.search(r"(?m)^secret =$", text)


def test_first_run_writes_a_random_secret_into_the_ini(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SESSIONSTORE_SECRET", raising=False)
    ini = tmp_path / "demo.ini"
    ini.write_text((ROOT / "examples" / "demo.ini").read_text())
    os.chmod(ini, 0o644)
    db = str(tmp_path / "demo.db")
    site, web = demo(tmp_path, secret="", backend="sqlite", **{"backend.filename": db})
    assert f"wrote a new random secret into {ini}" in capsys.readouterr().err
    [written] = re.findall(r"(?m)^secret = (\S+)$", ini.read_text())
    assert len(written) == 43 and site.plain.settings.secret == (written,)
    assert stat.S_IMODE(os.stat(ini).st_mode) == 0o600
    web.post("/login", {"user": "ada", "csrf": token(web)}, status=303)
    # The next run reads that secret: the same cookie still works.
    site2 = make_app(
        {"__file__": str(ini)}, secret=written, backend="sqlite", **{"backend.filename": db}
    )
    again = TestApp(site2)
    again.set_cookie("session", web.cookies["session"])
    assert "signed in as <b>ada</b>" in again.get("/").text
    assert capsys.readouterr().err == ""


def test_the_secret_can_come_from_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SESSIONSTORE_SECRET", "e" * 40)
    ini = tmp_path / "demo.ini"
    ini.write_text("[app:main]\nsecret =\n")
    site, _ = demo(tmp_path, secret="")
    assert site.plain.settings.secret == ("e" * 40,)
    assert "SESSIONSTORE_SECRET" in capsys.readouterr().err
    assert ini.read_text() == "[app:main]\nsecret =\n"


def test_without_a_secret_line_the_random_secret_lives_in_memory_only(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("SESSIONSTORE_SECRET", raising=False)
    ini = tmp_path / "demo.ini"
    ini.write_text("[app:main]\nuse = egg:sessionstore#demo\n")
    site = make_app({"__file__": str(ini)}, backend="memory")
    assert "until the server stops" in capsys.readouterr().err
    assert len(site.plain.settings.secret[0]) == 43
    assert ini.read_text() == "[app:main]\nuse = egg:sessionstore#demo\n"


# -- the command line ----------------------------------------------------------------


def cli(*args):
    return clirun.run(*args, text=False)


def test_secret_command_prints_a_fresh_usable_secret():
    first, second = cli("secret"), cli("secret")
    assert first.returncode == second.returncode == 0
    a, b = first.stdout.decode().strip(), second.stdout.decode().strip()
    assert a != b and len(a) == 43 and re.fullmatch(r"[A-Za-z0-9_-]+", a)
    assert Settings.from_mapping({"secret": a}).secret == (a,)


@pytest.fixture
def store_with_a_hostile_value(tmp_path):
    hostile = "\x1b[2J\x1b]0;owned\x07ada"

    def app(environ, start_response):
        environ["session"].store("auth")["user"] = hostile
        environ["session"].store("auth")["n"] = 7
        start_response("200 OK", [])
        return [b""]

    db = tmp_path / "s.db"
    mw = SessionMiddleware(app, secret=SECRET, backend="sqlite", backend_options={"filename": db})
    TestApp(mw).get("/")
    [session_id] = mw.backend.get_all()
    mw.close()
    where = ["--backend", "sqlite", "--option", f"filename={db}", "--secret", SECRET]
    return where, session_id, hostile


def test_get_prints_a_repr_never_raw_escape_sequences(store_with_a_hostile_value):
    where, session_id, hostile = store_with_a_hostile_value
    proc = cli(*where, "get", "-s", session_id, "-n", "auth", "-k", "user")
    assert proc.returncode == 0 and b"\x1b" not in proc.stdout and b"\x07" not in proc.stdout
    assert proc.stdout.decode() == repr(hostile) + "\n"


def test_get_raw_writes_the_bytes_and_refuses_other_types(store_with_a_hostile_value):
    where, session_id, hostile = store_with_a_hostile_value
    proc = cli(*where, "get", "--raw", "-s", session_id, "-n", "auth", "-k", "user")
    assert proc.returncode == 0 and proc.stdout == hostile.encode()
    proc = cli(*where, "get", "--raw", "-s", session_id, "-n", "auth", "-k", "n")
    assert proc.returncode == 1 and b"--raw prints str or bytes, not int" in proc.stderr


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("secrets = {s}\n", id="misspelt-key"),
        pytest.param("secret = {s} hunter2\n", id="short-second-secret"),
        pytest.param("secret = {s}\nsamesite = None\n", id="bad-other-setting"),
    ],
)
def test_no_secret_in_cli_errors(tmp_path, body):
    ini = tmp_path / "site.ini"
    ini.write_text(
        "[filter:session]\nuse = egg:sessionstore#session\nbackend = memory\n"
        + body.format(s=SECRET)
    )
    proc = cli("--config", str(ini), "stats")
    assert proc.returncode == 1 and proc.stderr.startswith(b"sessionstore: error: ")
    assert SECRET.encode() not in proc.stderr + proc.stdout
    assert b"hunter2" not in proc.stderr


def test_no_secret_in_cli_errors_from_the_command_line(tmp_path):
    proc = cli("--backend", "memory", "--secret", "hunter2-short", "stats")
    assert proc.returncode == 1 and b"hunter2" not in proc.stderr + proc.stdout


def test_the_minimal_example_starts_without_a_published_secret(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import runpy; runpy.run_path({str(ROOT / 'examples' / 'minimal.py')!r})",
        ],
        capture_output=True,
        timeout=60,
        env=ENV,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
