"""The command line reads an ini as PasteDeploy does, and its errors are one line.

A site's ini is the source of truth: the command finds the same filter,
the same settings and the same secret as the server would, refuses what
the site would refuse, and never prints a secret, even in an error.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from paste.deploy import loadapp
from webtest import TestApp

from sessionstore import SessionMiddleware

from . import clirun
from .apps import SECRET

OTHER_SECRET = "o-0123456789abcdefghijklmnopqrstuvwx"


def one_line_error(ran, code=1):
    assert ran.returncode == code, ran.stdout
    assert ran.stderr.startswith("sessionstore: error: ") or ran.stderr.startswith(
        "sessionstore serve: error: "
    ), ran.stderr
    assert ran.stderr.count("\n") == 1, ran.stderr
    return ran.stderr


@pytest.fixture
def store(tmp_path):
    """An SQLite store holding one session, written by the middleware."""
    db = tmp_path / "s.db"

    def app(environ, start_response):
        environ["session"].store("shop")["cart"] = "book"
        start_response("200 OK", [])
        return [b""]

    mw = SessionMiddleware(app, secret=SECRET, backend="sqlite", backend_options={"filename": db})
    TestApp(mw).get("/")
    [session_id] = mw.backend.get_all()
    mw.close()
    return db, session_id


def write_ini(tmp_path, body):
    ini = tmp_path / "site.ini"
    ini.write_text(textwrap.dedent(body))
    return str(ini)


def test_a_percent_sign_in_the_secret_is_one_line_that_never_shows_it(tmp_path):
    secret = "p%" + SECRET
    ini = write_ini(
        tmp_path,
        f"""
        [app:main]
        use = egg:sessionstore#demo
        filter-with = session

        [filter:session]
        use = egg:sessionstore#session
        backend = memory
        secret = {secret}
        """,
    )
    for args in (["--config", ini, "stats"], ["serve", ini, "--port", "0"]):
        message = one_line_error(clirun.run(*args))
        assert "secret" in message and "%%" in message
        assert SECRET[:10] not in message


def test_filter_app_sections_set_and_get_lines_are_read_as_pastedeploy_reads_them(tmp_path, store):
    db, session_id = store
    ini = write_ini(
        tmp_path,
        f"""
        [DEFAULT]
        the_secret = {SECRET}

        [filter-app:session]
        use = egg:sessionstore#session
        next = shop
        set debug = true
        get secret = the_secret
        backend = sqlite
        backend.filename = {db}

        [app:shop]
        use = egg:sessionstore#demo
        """,
    )
    assert isinstance(loadapp(f"config:{ini}", name="session"), SessionMiddleware)
    shown = json.loads(clirun.run("--config", ini, "--json", "show", session_id).stdout)
    assert shown["stores"] == {"shop": {"cart": "book"}}
    ran = clirun.run("--config", ini, "--section", "session", "stats")
    assert ran.returncode == 0, ran.stderr


def test_the_inis_secret_comes_before_the_environment_variable(tmp_path, store):
    db, session_id = store
    ini = write_ini(
        tmp_path,
        f"""
        [filter:session]
        use = egg:sessionstore#session
        secret = {SECRET}
        backend = sqlite
        backend.filename = {db}
        """,
    )
    ran = clirun.run("--config", ini, "show", session_id, secret_variable=OTHER_SECRET)
    assert ran.returncode == 0 and "'book'" in ran.stdout, ran.stderr
    # Without an ini, the variable is the secret: the wrong one here.
    where = ["--backend", "sqlite", "--option", f"filename={db}"]
    ran = clirun.run(*where, "show", session_id, secret_variable=OTHER_SECRET)
    assert ran.returncode == 1
    assert clirun.run(*where, "show", session_id, secret_variable=SECRET).returncode == 0


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        pytest.param("max_value_size", "x" * 200, "max_value_size is 100", id="value"),
        pytest.param("max_session_size", "x" * 450, "max_session_size is 600", id="session"),
    ],
)
def test_set_keeps_the_sites_size_limits(tmp_path, store, setting, value, message):
    db, session_id = store
    limits = {
        "max_value_size": "max_value_size = 100\n",
        "max_session_size": "max_value_size = 500\nmax_session_size = 600\n",
    }[setting]
    ini = write_ini(
        tmp_path,
        "[filter:session]\nuse = egg:sessionstore#session\n"
        f"secret = {SECRET}\nbackend = sqlite\nbackend.filename = {db}\n" + limits,
    )
    before = db.read_bytes()
    ran = clirun.run("--config", ini, "set", "-s", session_id, "-n", "shop", "-k", "k", "-V", value)
    assert message in one_line_error(ran)
    assert db.read_bytes() == before
    ran = clirun.run("--config", ini, "set", "-s", session_id, "-n", "shop", "-k", "k", "-V", "ok")
    assert ran.returncode == 0 and ran.stdout == "new\n"


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["serve", "site.ini", "--port", "99999"], id="port-too-large"),
        pytest.param(["serve", "site.ini", "--port", "-1"], id="negative-port"),
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param(["--config"], id="option-without-value"),
    ],
)
def test_command_line_mistakes_are_one_line_without_the_usage_block(args):
    ran = clirun.run(*args)
    assert ran.returncode == 2 and ran.stderr.count("\n") == 1, ran.stderr
    assert "usage:" not in ran.stderr and "error:" in ran.stderr


def test_serve_reports_an_ini_it_cannot_load_in_one_line(tmp_path):
    ini = write_ini(tmp_path, "[app:main]\nuse = egg:no_such_package_here\n")
    assert "cannot load [main]" in one_line_error(clirun.run("serve", ini, "--port", "0"))
    ini = write_ini(tmp_path, "[app:other]\nuse = egg:sessionstore#demo\n")
    assert "cannot load [main]" in one_line_error(clirun.run("serve", ini, "--port", "0"))


def test_a_secret_never_starts_with_a_dash(monkeypatch):
    drawn = iter(["-" + "a" * 42, "-" + "b" * 42, "c" * 43])
    monkeypatch.setattr("sessionstore.cli.secrets.token_urlsafe", lambda n: next(drawn))
    assert clirun.run("secret").stdout == "c" * 43 + "\n"
