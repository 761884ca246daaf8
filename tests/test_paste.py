"""PasteDeploy: real ini files through paste.deploy.loadapp, good and bad."""

from __future__ import annotations

import textwrap

import pytest
from paste.deploy import loadapp
from webtest import TestApp

from sessionstore import ConfigurationError, SessionMiddleware
from sessionstore.backends.picklefile import PickleBackend
from sessionstore.backends.sqlite import SqliteBackend
from sessionstore.config import KNOWN_SECRETS, MAX_BUSY_TIMEOUT, MAX_SPAN

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
            "<hidden>",  # a misspelt option may hold a password
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
        pytest.param(
            "secret = s-0123456789abcdefghijklmnopqrst\ncookie_max_age = 0\n",
            "cookie_max_age",
            "0",
            id="cookie-max-age-zero",
        ),
        pytest.param(
            "secret = s-0123456789abcdefghijklmnopqrst\ncookie_path = shop\n",
            "cookie_path",
            "shop",
            id="relative-cookie-path",
        ),
        pytest.param(
            "secret = s-0123456789abcdefghijklmnopqrst\nbackend_options = filename=x.db\n",
            "backend_options",
            "<hidden>",
            id="backend-options-in-an-ini",
        ),
        pytest.param(
            "secret = s-0123456789abcdefghijklmnopqrst\nmax_session_size = 1000\n",
            "max_session_size",
            1000,
            id="session-size-below-the-default-value-size",
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


# -- secrets (SPEC 8) ---------------------------------------------------------------

GOOD = "s-0123456789abcdefghijklmnopqrst"  # 32 characters
OLD = "o-0123456789abcdefghijklmnopqrst"


def make(**settings):
    settings.setdefault("secret", GOOD)
    settings.setdefault("backend", "memory")
    return SessionMiddleware(lambda e, s: [], **settings)


@pytest.mark.parametrize("secret", sorted(KNOWN_SECRETS) + ["CHANGE-ME"])
def test_published_example_secrets_are_refused_by_name(secret):
    with pytest.raises(ConfigurationError) as info:
        make(secret=secret)
    assert "example value" in str(info.value) and "sessionstore secret" in str(info.value)
    assert info.value.value == "<hidden>"
    assert f"'{secret}'" not in str(info.value) and f"'{secret}'" not in repr(info.value)


@pytest.mark.parametrize(
    ("secret", "ok"),
    [
        pytest.param("k" * 31, False, id="31-characters"),
        pytest.param("k" * 32, True, id="32-characters"),
        pytest.param([GOOD, OLD], True, id="python-list"),
        pytest.param((GOOD,), True, id="python-tuple"),
        pytest.param([GOOD, "tiny-pw"], False, id="list-with-a-short-one"),
        pytest.param([GOOD, ""], False, id="list-with-an-empty-one"),
        pytest.param([GOOD, 42], False, id="list-with-a-number"),
        pytest.param([], False, id="empty-list"),
        pytest.param(b"k" * 40, False, id="bytes"),
    ],
)
def test_each_secret_is_at_least_32_characters(secret, ok):
    if ok:
        assert make(secret=secret).settings.secret[0] == (
            secret if isinstance(secret, str) else secret[0]
        )
        return
    with pytest.raises(ConfigurationError) as info:
        make(secret=secret)
    assert info.value.key == "secret"
    for piece in secret if isinstance(secret, list) else [secret]:
        if isinstance(piece, str) and piece:
            assert piece not in str(info.value)


def test_a_passphrase_with_spaces_is_refused_in_the_ini(tmp_path):
    phrase = "correct horse battery staple and a long tail"
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, f"secret = {phrase}\nbackend = memory\n")
    assert "passphrase must not contain spaces" in str(info.value)
    assert not any(word in str(info.value) for word in phrase.split() if len(word) > 3)


def test_ini_rotation_keeps_whitespace_separation(tmp_path):
    app = load(tmp_path, f"secret = {GOOD}\n    {OLD}\nbackend = memory\n")
    assert app.settings.secret == (GOOD, OLD)


@pytest.mark.parametrize("key", ["secrets", "secret_key", "Secret", "password"])
def test_a_misspelt_key_never_shows_its_value(tmp_path, key):
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, f"secret = {GOOD}\n{key} = {OLD}\nbackend = memory\n")
    assert info.value.key == key and OLD not in str(info.value) and OLD not in repr(info.value)
    assert info.value.value == "<hidden>"


def test_a_misspelt_backend_option_never_shows_its_value_and_gets_a_hint(tmp_path):
    with pytest.raises(ConfigurationError, match=r"did you mean backend\.filename\?") as info:
        load(tmp_path, f"secret = {GOOD}\nbackend = sqlite\nbackend.filname = {OLD}\n")
    assert info.value.key == "backend.filname" and OLD not in str(info.value)


@pytest.mark.parametrize(
    "key", ["wsgi.input", "wsgi.errors", "HTTP_COOKIE", "PATH_INFO", "REQUEST_METHOD"]
)
def test_environ_key_cannot_replace_what_the_server_sets(key):
    with pytest.raises(ConfigurationError) as info:
        make(environ_key=key)
    assert info.value.key == "environ_key"


def test_a_missing_secret_or_a_string_of_backend_options_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="a secret is required") as info:
        SessionMiddleware(lambda e, s: [], backend="memory")
    assert info.value.key == "secret"
    with pytest.raises(ConfigurationError) as info:
        make(backend="sqlite", backend_options="filename=x.db")
    assert info.value.key == "backend_options"


def test_a_misspelt_key_gets_a_hint():
    with pytest.raises(ConfigurationError, match=r"did you mean secret\?"):
        make(secrets=OLD)


def test_a_misspelt_secret_in_the_ini_is_named_not_reported_missing(tmp_path):
    with pytest.raises(ConfigurationError, match=r"did you mean secret\?") as info:
        load(tmp_path, f"secrte = {GOOD}\nbackend = memory\n")
    assert info.value.key == "secrte" and GOOD not in str(info.value)


def test_no_secret_in_the_settings_repr():
    mw = make(secret=[GOOD, OLD])
    assert GOOD not in repr(mw.settings) and OLD not in repr(mw.settings)
    assert "timeout=86400" in repr(mw.settings)


# -- start-up checks for what would fail per request ----------------------------------


@pytest.mark.parametrize("secure", [None, "auto", False, "false"])
def test_samesite_none_without_secure_true_fails_at_startup(secure):
    extra = {} if secure is None else {"secure": secure}
    with pytest.raises(ConfigurationError) as info:
        make(samesite="None", **extra)
    assert info.value.key == "samesite" and "secure = true" in str(info.value)


def test_samesite_none_with_secure_true_serves_plain_http():
    def app(environ, start_response):
        environ["session"].store("a")["k"] = 1
        start_response("200 OK", [])
        return [b""]

    web = TestApp(
        SessionMiddleware(app, secret=GOOD, backend="memory", samesite="None", secure=True)
    )
    response = web.get("/")
    assert "SameSite=None" in response.headers["Set-Cookie"]
    assert "secure" in response.headers["Set-Cookie"].lower()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("cookie_max_age", 10**12, id="cookie_max_age"),
        pytest.param("cookie_max_age", "1000000000000", id="cookie_max_age-ini"),
        pytest.param("busy_timeout", 1e10, id="busy_timeout"),
        pytest.param("busy_timeout", "1e10", id="busy_timeout-ini"),
        pytest.param("timeout", 10**17, id="timeout"),
        pytest.param("timeout", "100000000000000000", id="timeout-ini"),
        pytest.param("max_lifetime", 10**17, id="max_lifetime"),
        pytest.param("touch_interval", 10**17, id="touch_interval"),
        pytest.param("cleanup_probability", 1.5, id="cleanup_probability"),
    ],
)
def test_numbers_too_large_to_use_fail_at_startup_naming_the_key(key, value):
    with pytest.raises(ConfigurationError) as info:
        make(**{key: value})
    assert info.value.key == key and key in str(info.value) and "too large" in str(info.value)


def test_the_largest_accepted_numbers_work_per_request(clock):
    def app(environ, start_response):
        environ["session"].store("a")["k"] = 1
        start_response("200 OK", [])
        return [b""]

    mw = SessionMiddleware(
        app,
        secret=GOOD,
        backend="memory",
        clock=clock,
        cookie_max_age=MAX_SPAN,
        timeout=MAX_SPAN,
        max_lifetime=MAX_SPAN,
        busy_timeout=MAX_BUSY_TIMEOUT,
    )
    response = TestApp(mw).get("/")
    assert f"Max-Age={MAX_SPAN}" in response.headers["Set-Cookie"]


@pytest.mark.parametrize("key", ["clock", "chance"])
def test_ini_cannot_give_a_function(tmp_path, key):
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, f"secret = {GOOD}\nbackend = memory\n{key} = time.time\n")
    assert info.value.key == key and "Python" in str(info.value)


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(".x:Y", id="relative"),
        pytest.param("..memory:MemoryBackend", id="relative-two-dots"),
        pytest.param("sessionstore.backends.base:Backend", id="abstract-base"),
        pytest.param("sessionstore.backends.base:Record", id="not-a-backend"),
        pytest.param("broken_backend_module:Backend", id="module-raises-on-import"),
        pytest.param("no.such.module:Backend", id="missing-module"),
    ],
)
def test_every_bad_backend_path_is_a_configuration_error(tmp_path, monkeypatch, backend):
    (tmp_path / "broken_backend_module.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigurationError) as info:
        make(backend=backend)
    assert info.value.key == "backend"


# -- derived and new settings -----------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "expected"), [(30, 15), (1, 0), (120, 60), (86400, 60), ("30", 15)]
)
def test_touch_interval_defaults_to_a_minute_or_half_the_timeout(timeout, expected):
    assert make(timeout=timeout).settings.touch_interval == expected


def test_touch_interval_auto_in_the_ini(tmp_path):
    app = load(
        tmp_path, f"secret = {GOOD}\nbackend = memory\ntimeout = 30\ntouch_interval = auto\n"
    )
    assert app.settings.touch_interval == 15


def test_size_limits_have_generous_defaults_and_convert_strictly(tmp_path):
    s = make().settings
    assert (s.max_value_size, s.max_session_size) == (1024 * 1024, 4 * 1024 * 1024)
    app = load(
        tmp_path,
        f"secret = {GOOD}\nbackend = memory\nmax_value_size = 1000\nmax_session_size = 5000\n",
    )
    assert (app.settings.max_value_size, app.settings.max_session_size) == (1000, 5000)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("max_value_size", "1MiB", id="unit-suffix"),
        pytest.param("max_value_size", 0, id="zero"),
        pytest.param("max_session_size", -1, id="negative"),
        pytest.param("max_session_size", 1.5, id="fraction"),
        pytest.param("max_value_size", 5 * 1024 * 1024, id="value-above-session"),
    ],
)
def test_bad_size_limits_fail_at_startup(key, value):
    with pytest.raises(ConfigurationError) as info:
        make(**{key: value})
    assert info.value.key == key
