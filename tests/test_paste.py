"""PasteDeploy: real ini files through paste.deploy.loadapp, good and bad."""

from __future__ import annotations

import textwrap

import pytest
from paste.deploy import loadapp
from webtest import TestApp

from sessionstore import ConfigurationError, SessionMiddleware
from sessionstore.backends.picklefile import PickleBackend
from sessionstore.backends.sqlite import SqliteBackend

APP = textwrap.dedent(
    """
    [app:main]
    use = egg:sessionstore#demo
    filter-with = session
    """
)


def load(tmp_path, filter_body, app=APP, style="filter-with"):
    if style == "pipeline":
        app = (
            "[pipeline:main]\npipeline = session demo\n\n[app:demo]\nuse = egg:sessionstore#demo\n"
        )
    ini = tmp_path / "site.ini"
    ini.write_text(
        app + "\n[filter:session]\nuse = egg:sessionstore#session\n" + textwrap.dedent(filter_body)
    )
    return loadapp(f"config:{ini}")


@pytest.mark.parametrize("style", ["filter-with", "pipeline"])
def test_filter_factory_and_filter_app_factory_both_work(tmp_path, style):
    app = load(
        tmp_path,
        """
        secret = new-secret-0123456789abcdefghijk old-secret-0123456789abcdefghijk
        backend = sqlite
        backend.filename = %(here)s/sessions.db
        cookie_name = sid
        secure = auto
        samesite = Strict
        timeout = 3600
        """,
        style=style,
    )
    assert isinstance(app, SessionMiddleware)
    assert app.settings.secret == (
        "new-secret-0123456789abcdefghijk",
        "old-secret-0123456789abcdefghijk",
    )
    assert app.settings.timeout == 3600 and app.settings.samesite == "Strict"
    assert isinstance(app.backend, SqliteBackend)
    assert app.backend.filename == str(tmp_path / "sessions.db")
    web = TestApp(app)
    token = web.get("/shop").html.find("input", {"name": "csrf"})["value"]
    web.post("/shop/add", {"item": "book", "csrf": token})
    assert "A book on WSGI" in web.get("/shop").text
    assert "sid" in web.cookies


def test_every_setting_is_converted(tmp_path):
    app = load(
        tmp_path,
        """
        secret = s-0123456789abcdefghijklmnopqrst
        backend = pickle
        backend.filename = %(here)s/sessions.dat
        backend.fsync = true
        cookie_name = __Host-session
        cookie_path = /
        cookie_max_age = 600
        secure = auto
        httponly = false
        samesite = None
        timeout = 100
        max_lifetime = 1000
        touch_interval = 10
        cleanup_probability = 0.5
        on_conflict = error
        busy_timeout = 2.5
        environ_key = my.session
        cache_control = private, no-store
        """,
    )
    s = app.settings
    assert (s.cookie_max_age, s.secure, s.httponly, s.samesite) == (600, True, False, "None")
    assert (s.timeout, s.max_lifetime, s.touch_interval) == (100, 1000, 10)
    assert (s.cleanup_probability, s.on_conflict, s.busy_timeout) == (0.5, "error", 2.5)
    assert (s.environ_key, s.cache_control) == ("my.session", "private, no-store")
    assert isinstance(app.backend, PickleBackend) and app.backend.fsync is True


@pytest.mark.parametrize(
    ("body", "key", "value"),
    [
        pytest.param("backend = memory\n", "secret", None, id="missing-secret"),
        pytest.param("secret =\nbackend = memory\n", "secret", "", id="empty-secret"),
        pytest.param(
            "secret = s-0123456789abcdefghijklmnopqrst\ncolour = blue\n",
            "colour",
            "<hidden>",
            id="unknown-key",
        ),
        pytest.param(
            "secret = s-0123456789abcdefghijklmnopqrst\ntimeout = soon\n",
            "timeout",
            "soon",
            id="bad-number",
        ),
        pytest.param(
            "secret = s-0123456789abcdefghijklmnopqrst\ntimeout = -5\n",
            "timeout",
            "-5",
            id="negative",
        ),
        pytest.param(
            "secret = s-0123456789abcdefghijklmnopqrst\nhttponly = maybe\n",
            "httponly",
            "maybe",
            id="bad-bool",
        ),
        pytest.param(
            "secret = s-0123456789abcdefghijklmnopqrst\nsamesite = Loose\n",
            "samesite",
            "Loose",
            id="bad-choice",
        ),
        pytest.param(
            "secret = s-0123456789abcdefghijklmnopqrst\non_conflict = ignore\n",
            "on_conflict",
            "ignore",
            id="bad-on-conflict",
        ),
        pytest.param(
            "secret = s-0123456789abcdefghijklmnopqrst\ncleanup_probability = 2\n",
            "cleanup_probability",
            "2",
            id="probability-over-1",
        ),
        pytest.param(
            "secret = s-0123456789abcdefghijklmnopqrst\nbackend = nosuch\n",
            "backend",
            "nosuch",
            id="unknown-backend",
        ),
        pytest.param(
            "secret = s-0123456789abcdefghijklmnopqrst\nbackend = os.path:join\n",
            "backend",
            "os.path:join",
            id="not-a-backend-class",
        ),
        pytest.param(
            "secret = s-0123456789abcdefghijklmnopqrst\nbackend = sqlite\nbackend.colour = red\n",
            "backend.colour",
            "red",
            id="unknown-backend-option",
        ),
        pytest.param(
            "secret = s-0123456789abcdefghijklmnopqrst\nbackend = sqlite\nbackend.fsync = often\n",
            "backend.fsync",
            "often",
            id="bad-backend-option",
        ),
        pytest.param(
            "secret = s-0123456789abcdefghijklmnopqrst\n"
            "cookie_name = __Host-s\ncookie_domain = example.com\n",
            "cookie_domain",
            "example.com",
            id="host-prefix-with-domain",
        ),
    ],
)
def test_configuration_errors_name_the_key_and_value(tmp_path, body, key, value):
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, body)
    assert info.value.key == key
    assert info.value.value == value
    assert key in str(info.value)
    assert isinstance(info.value, ValueError)
