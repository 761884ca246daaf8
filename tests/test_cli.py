"""The sessionstore command against stores the tests filled.

The commands run in this process (``tests.clirun``: about 150 ms less per
command than a new interpreter); one test runs them as the separate process
a user starts, and checks the two agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from webtest import TestApp

from . import clirun
from .apps import SECRET, make_app

ENV = {k: v for k, v in os.environ.items() if k != "SESSIONSTORE_SECRET"}


def cli(*args, check=True):
    """``sessionstore ARGS`` in this process, without ``$SESSIONSTORE_SECRET``."""
    ran = clirun.run(*args)
    if check:
        assert ran.returncode == 0, ran.stderr
    return ran


def cli_process(*args):
    """``python -m sessionstore.cli ARGS`` as its own process."""
    return subprocess.run(
        [sys.executable, "-m", "sessionstore.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )


@pytest.fixture(params=["sqlite", "pickle"])
def site(request, tmp_path):
    """An ini file and a store holding two sessions (one expired)."""
    kind = request.param
    filename = tmp_path / ("sessions.db" if kind == "sqlite" else "sessions.dat")
    ini = tmp_path / "site.ini"
    ini.write_text(
        textwrap.dedent(f"""
        [DEFAULT]
        debug = true

        [filter:session]
        use = egg:sessionstore#session
        secret = {SECRET}
        backend = {kind}
        backend.filename = %(here)s/{filename.name}
        timeout = 3600
    """)
    )
    app = make_app(kind, str(filename), timeout=3600)
    web = TestApp(app)
    web.get("/write", {"app": "shop", "key": "cart", "value": "book"})
    web.get("/write", {"app": "prefs", "key": "theme", "value": "dark"})
    session_id = web.get("/id").text
    other = TestApp(make_app(kind, str(filename), timeout=3600))
    other.get("/write", {"app": "shop", "key": "cart", "value": "pen"})
    other_id = other.get("/id").text
    # Age the second session past its expiry, as time would.
    record = app.backend.get(other_id)

    app.backend.add(record._replace(expires_at=record.expires_at - 7200))
    app.backend.close()
    other.app.backend.close()
    return {
        "ini": str(ini),
        "id": session_id,
        "expired_id": other_id,
        "kind": kind,
        "file": str(filename),
    }


def test_list_and_stats(site):
    lines = cli("--config", site["ini"], "list").stdout.splitlines()
    assert len(lines) == 2 and any(site["id"] in line for line in lines)
    assert any("expired" in line and site["expired_id"] in line for line in lines)
    output = cli("list", "--config", site["ini"], "--json").stdout
    records = [json.loads(line) for line in output.splitlines()]
    assert {r["session_id"] for r in records} == {site["id"], site["expired_id"]}
    stats = json.loads(cli("--config", site["ini"], "--json", "stats").stdout)
    assert (stats["sessions"], stats["expired"], stats["live"]) == (2, 1, 1)


def test_show_get_set_del(site):
    ini, sid = site["ini"], site["id"]
    shown = json.loads(cli("--config", ini, "--json", "show", sid).stdout)
    assert shown["stores"] == {"shop": {"cart": "book"}, "prefs": {"theme": "dark"}}
    assert "[shop]" in cli("--config", ini, "show", sid).stdout
    assert cli("--config", ini, "get", "-s", sid, "-n", "shop", "-k", "cart").stdout == "'book'\n"
    assert (
        cli("--config", ini, "set", "-s", sid, "-n", "shop", "-k", "note", "-V", "hi").stdout
        == "new\n"
    )
    assert (
        cli("--config", ini, "set", "-s", sid, "-n", "shop", "-k", "note", "-V", "ho").stdout
        == "overwritten\n"
    )
    assert (
        cli("--config", ini, "--json", "get", "-s", sid, "-n", "shop", "-k", "note").stdout
        == '"ho"\n'
    )
    assert cli("--config", ini, "del", "-s", sid, "-n", "shop", "-k", "note").stdout == "deleted\n"
    # The site sees what the command line did.
    middleware = make_app(site["kind"], site["file"])
    try:
        web = TestApp(middleware)
        web.set_cookie("session", _cookie_for(sid))
        assert web.get("/read", {"app": "shop", "key": "note"}).text == "None"
        assert web.get("/read", {"app": "shop", "key": "cart"}).text == "'book'"
    finally:
        middleware.close()


def _cookie_for(session_id):
    import hashlib

    from itsdangerous import TimestampSigner

    from sessionstore.cookies import SALT

    signer = TimestampSigner(SECRET, salt=SALT, key_derivation="hmac", digest_method=hashlib.sha256)
    return signer.sign(session_id).decode()


def test_destroy_and_purge(site):
    ini = site["ini"]
    assert "deleted 1 expired" in cli("--config", ini, "purge").stdout
    assert cli("--config", ini, "destroy", site["id"]).returncode == 0
    assert json.loads(cli("--config", ini, "--json", "stats").stdout)["sessions"] == 0
    assert json.loads(cli("--config", ini, "--json", "purge", "--all").stdout) == {"deleted": 0}


def test_migrate_to_another_backend(site, tmp_path):
    # A third session, moved to a new id: its retired id is no session to copy.
    login = TestApp(make_app(site["kind"], site["file"], timeout=3600))
    login.get("/write", {"app": "shop", "key": "cart", "value": "cup"})
    login.get("/regenerate")
    login.app.close()
    target = tmp_path / "migrated.dat"
    out = cli(
        "--config", site["ini"], "migrate", "--to", "pickle", "--to-option", f"filename={target}"
    ).stdout
    assert out == "copied 3 sessions to pickle\n"
    shown = json.loads(
        cli(
            "--backend",
            "pickle",
            "--option",
            f"filename={target}",
            "--secret",
            SECRET,
            "--json",
            "show",
            site["id"],
        ).stdout
    )
    assert shown["stores"]["shop"] == {"cart": "book"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["show", "nope"], "no session nope", id="unknown-session"),
        pytest.param(["destroy", "A" * 44], "no session", id="destroy-unknown"),
        pytest.param(
            ["get", "-s", "{id}", "-n", "shop", "-k", "missing"],
            "no key 'missing'",
            id="unknown-key",
        ),
        pytest.param(
            ["get", "-s", "{id}", "-n", "bad app", "-k", "k"],
            "invalid application",
            id="bad-app-name",
        ),
    ],
)
def test_errors_are_one_line_and_nonzero(site, args, message):
    proc = cli("--config", site["ini"], *[a.format(id=site["id"]) for a in args], check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and message in proc.stderr
    assert proc.stderr.startswith("sessionstore: error: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--config", "/nonexistent.ini", "list"],
            "cannot read /nonexistent.ini",
            id="missing-config",
        ),
        pytest.param(["list"], "--config", id="no-store-named"),
        pytest.param(["--backend", "nosuch", "list"], "backend = 'nosuch'", id="unknown-backend"),
        pytest.param(
            ["--backend", "sqlite", "--option", "colour=red", "list"],
            "backend.colour",
            id="unknown-option",
        ),
        pytest.param(
            ["--backend", "sqlite", "--option", "nonsense", "list"],
            "KEY=VALUE",
            id="bad-option-syntax",
        ),
        pytest.param(
            ["--backend", "memory", "show", "A" * 44], "no session", id="no-secret-needed-first"
        ),
    ],
)
def test_configuration_errors_exit_nonzero(args, message, tmp_path):
    proc = cli(*args, check=False)
    assert proc.returncode == 1, proc.stdout
    assert message in proc.stderr and proc.stderr.count("\n") == 1


def test_unreadable_store_is_one_clear_line(tmp_path):
    bad = tmp_path / "sessions.dat"
    bad.write_bytes(b"garbage" * 100)
    proc = cli("--backend", "pickle", "--option", f"filename={bad}", "list", check=False)
    assert proc.returncode == 1
    assert str(bad) in proc.stderr and proc.stderr.count("\n") == 1
    assert bad.read_bytes() == b"garbage" * 100


def test_show_without_the_secret_says_so(site):
    proc = cli(
        "--backend",
        site["kind"],
        "--option",
        f"filename={site['file']}",
        "show",
        site["id"],
        check=False,
    )
    assert proc.returncode == 1 and "needs the secret" in proc.stderr


def _version(site):
    shown = cli("--config", site["ini"], "--json", "show", site["id"]).stdout
    return json.loads(shown)["version"]


def test_a_failed_del_writes_nothing(site):
    before, size = _version(site), os.path.getsize(site["file"])
    args = ["del", "-s", site["id"], "-n", "shop", "-k", "missing"]
    proc = cli("--config", site["ini"], *args, check=False)
    assert proc.returncode == 1 and "no key 'missing'" in proc.stderr
    assert _version(site) == before
    if site["kind"] == "pickle":  # an append-only log: any write would grow it
        assert os.path.getsize(site["file"]) == size
    # A del that removes something does write.
    cli("--config", site["ini"], *args[:-1], "cart")
    assert _version(site) == before + 1


@pytest.mark.parametrize("kind", ["sqlite", "pickle"])
@pytest.mark.parametrize(
    "command",
    [
        ["list"],
        ["stats"],
        ["show", "A" * 44],
        ["get", "-s", "A" * 44, "-n", "shop", "-k", "cart"],
        ["set", "-s", "A" * 44, "-n", "shop", "-k", "cart", "-V", "x"],
        ["del", "-s", "A" * 44, "-n", "shop", "-k", "cart"],
        ["destroy", "A" * 44],
        ["purge"],
        ["migrate", "--to", "memory"],
    ],
    ids=lambda command: command[0],
)
def test_a_command_never_creates_a_store(tmp_path, kind, command):
    typo = tmp_path / "sesions.db"
    proc = cli(
        "--backend", kind, "--option", f"filename={typo}", "--secret", SECRET, *command, check=False
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == f"sessionstore: error: no session store at {typo}: no such file\n"
    assert list(tmp_path.iterdir()) == []


def test_a_command_never_creates_a_store_named_by_an_ini(tmp_path):
    ini = tmp_path / "site.ini"
    ini.write_text(
        "[filter:session]\nuse = egg:sessionstore#session\n"
        f"secret = {SECRET}\nbackend.filename = %(here)s/typo.db\n"
    )
    proc = cli("--config", str(ini), "list", check=False)
    assert proc.returncode == 1 and str(tmp_path / "typo.db") in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.ini"]


def test_section_names_what_is_missing_and_what_there_is(site):
    proc = cli("--config", site["ini"], "--section", "nosuch", "list", check=False)
    assert proc.returncode == 1
    assert proc.stderr == (
        f"sessionstore: error: {site['ini']} has no section [nosuch]"
        " (its session filters: [filter:session])\n"
    )
    # The filter's short name works, like its full one.
    for section in ("session", "filter:session"):
        assert (
            len(cli("--config", site["ini"], "--section", section, "list").stdout.split("\n")) == 3
        )


def test_section_that_is_not_a_session_filter(tmp_path):
    ini = tmp_path / "site.ini"
    ini.write_text("[app:main]\nuse = egg:sessionstore#demo\n")
    proc = cli("--config", str(ini), "--section", "app:main", "list", check=False)
    assert proc.returncode == 1
    assert proc.stderr == (
        f"sessionstore: error: [app:main] in {ini} is not a session filter"
        " (use = egg:sessionstore#session)\n"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(
            b'"""A Python module."""\n\nimport os\n',
            "is not an ini file: line 1 comes before any [section]",
            id="python",
        ),
        pytest.param(
            b"SQLite format 3\x00\xff\xfe\x00", "is not an ini file: it is not UTF-8", id="binary"
        ),
        pytest.param(
            b"[filter:session]\nsecret = a\nsecret = b\n",
            "is not a valid ini file: While reading from",
            id="duplicate-key",
        ),
    ],
)
def test_config_that_is_not_an_ini_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "site.py"
    path.write_bytes(content)
    proc = cli("--config", str(path), "list", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"sessionstore: error: {path} {message}")
    assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["list"], id="list"),
        pytest.param(["get", "-s", "{id}", "-n", "shop", "-k", "missing"], id="error"),
    ],
)
def test_the_command_as_its_own_process_does_the_same(site, args):
    """What the tests above run in-process is what a user's process gives."""
    args = ["--config", site["ini"], *[a.format(id=site["id"]) for a in args]]
    process, here = cli_process(*args), cli(*args, check=False)
    assert (process.returncode, process.stdout, process.stderr) == (
        here.returncode,
        here.stdout,
        here.stderr,
    )


def test_a_reader_that_leaves_early_is_no_error(tmp_path):
    """``sessionstore list | head -1``: the closed pipe ends the command
    quietly, without an error line."""
    from sessionstore.backends.sqlite import SqliteBackend
    from sessionstore.testing import make_record

    path = str(tmp_path / "many.db")
    store = SqliteBackend(path)
    store.setup()
    for _ in range(2000):  # ~250 KB of listing: more than a pipe holds
        store.add(make_record())
    store.close()
    command = [sys.executable, "-m", "sessionstore.cli", "--backend", "sqlite"]
    proc = subprocess.Popen(
        [*command, "--option", f"filename={path}", "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert len(proc.stdout.readline().split()) > 1
    proc.stdout.close()
    assert proc.stderr.read() == b""
    assert proc.wait(timeout=60) == 1
    proc.stderr.close()
