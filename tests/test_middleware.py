"""The request rules of SPEC section 2 and the Session API of section 3."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from operator import attrgetter

import pytest
from webtest import TestApp

from sessionstore import SessionMiddleware

from .conftest import SessionClient


def write(session):
    session.store("a").set("k", "v")


def read(session):
    return session.store("a").get_default("k")


# -- nothing happens until the session is touched ----------------------------------


def test_untouched_session_sends_nothing_and_stores_nothing(client):
    _, response = client.run(lambda s: None)
    assert "Set-Cookie" not in response.headers
    assert "Vary" not in response.headers
    assert client.backend.count() == 0


def test_hundred_read_only_requests_without_cookie_store_nothing(client):
    for _ in range(100):
        value, response = client.run(read)
        assert value is None
        assert "Set-Cookie" not in response.headers
        assert response.headers["Vary"] == "Cookie"
    assert client.backend.count() == 0


def test_session_attributes_before_any_write(client):
    result = client.run(
        lambda s: (s.id, s.is_new, s.exists, s.created_at, s.accessed_at, s.expires_at, s.apps())
    )[0]
    assert result == (None, False, False, None, None, None, [])
    assert client.backend.count() == 0


@pytest.mark.parametrize(
    "attribute", ["id", "exists", "created_at", "accessed_at", "expires_at", "apps"]
)
def test_each_attribute_loads_the_session_by_itself(client, clock, attribute):
    """Whichever attribute the application reads first, it sees the stored session."""
    client.run(write)
    clock.advance(5)
    session_id = client.run(lambda s: s.id)[0]
    expected = {
        "id": session_id,
        "exists": True,
        "created_at": clock.now - 5,
        "accessed_at": clock.now - 5,
        "expires_at": clock.now - 5 + 86400,
        "apps": ["a"],
    }[attribute]
    first_read = (lambda s: s.apps()) if attribute == "apps" else attrgetter(attribute)
    assert client.run(first_read)[0] == expected


def test_first_write_creates_id_record_and_cookie(client, clock):
    def handler(session):
        before = session.id
        write(session)
        return before, session.id, session.is_new, session.exists, session.created_at

    (before, sid, is_new, exists, created), response = client.run(handler)
    # Inside the request the id is drawn at the first write, and stored at commit...
    assert before is None and len(sid) == 44
    assert (is_new, exists, created) == (True, False, None)
    # ...which happened before the response left, under that id.
    assert "Set-Cookie" in response.headers
    assert list(client.backend.get_all()) == [sid]
    result = client.run(lambda s: (s.id, s.is_new, s.exists, s.created_at, s.expires_at))[0]
    assert len(result[0]) == 44 and result[1:] == (False, True, clock.now, clock.now + 86400)


def test_create_makes_the_session_exist_now(client, clock):
    result, response = client.run(lambda s: (s.create(), s.id, s.is_new, s.exists)[1:])
    assert result[1:] == (True, True)
    assert client.backend.get(result[0]) is not None
    assert "Set-Cookie" in response.headers


def test_create_on_an_existing_session_keeps_it(client):
    client.run(write)
    [session_id] = client.backend.get_all()
    result, response = client.run(lambda s: (s.create(), s.id, s.is_new, read(s))[1:])
    assert result == (session_id, False, "v")
    assert client.backend.count() == 1 and "Set-Cookie" not in response.headers


def test_explicit_commit_then_more_writes(client):
    def handler(session):
        write(session)
        session.commit()
        first = session.id
        session.store("a").set("k2", 2)
        return first

    sid, _ = client.run(handler)
    assert sid is not None
    assert client.run(lambda s: (s.id, s.store("a").items()))[0] == (sid, [("k", "v"), ("k2", 2)])


# -- errors: nothing committed --------------------------------------------------------


def test_exception_in_app_commits_nothing(client):
    def boom(session):
        write(session)
        raise RuntimeError("app failed")

    with pytest.raises(RuntimeError):
        client.run(boom)
    assert client.backend.count() == 0


def test_writes_a_failed_request_made_are_not_what_the_next_request_reads(client):
    """Writes made after the session was loaded, or after a commit(), then
    abandoned by an exception, leave the stored data as it was, for this
    process too (it remembers what it last stored and read)."""
    client.run(write)

    def commit_then_fail(session):
        session.store("a")["k"] = "committed"
        session.commit()
        session.store("a")["k"] = "abandoned"
        session.store("b")["x"] = 1
        raise RuntimeError("app failed")

    def write_then_fail(session):
        session.store("a").empty()
        session.store("c")["y"] = 2
        raise RuntimeError("app failed")

    for failing in (commit_then_fail, write_then_fail):
        with pytest.raises(RuntimeError):
            client.run(failing)
        stored = client.run(lambda s: (s.apps(), s.store("a").items()))[0]
        assert stored == (["a"], [("k", "committed")])


@pytest.mark.parametrize("status", ["500 Internal Server Error", "503 Service Unavailable"])
def test_5xx_response_commits_nothing(client, status):
    client.run(write)
    _, response = client.run(
        lambda s: s.store("a").set("k", "changed"), status=status, expect_errors=True
    )
    assert "Set-Cookie" not in response.headers
    assert client.run(read)[0] == "v"


def test_4xx_response_still_commits(client):
    client.run(lambda s: write(s), status="404 Not Found", expect_errors=True)
    assert client.run(read)[0] == "v"


# -- the response body ------------------------------------------------------------------


class Closing:
    """An app iterable that records close() and may write while iterating."""

    def __init__(self, chunks, session=None, fail=False):
        self.chunks, self.session, self.fail = chunks, session, fail
        self.closed = False

    def __iter__(self):
        for chunk in self.chunks:
            if self.session is not None:
                self.session.store("a").set("during-body", chunk.decode())
            yield chunk
        if self.fail:
            raise RuntimeError("failed mid-body")

    def close(self):
        self.closed = True


def make_app(iterables, **settings):
    def app(environ, start_response):
        session = environ["session"]
        if environ["PATH_INFO"] == "/login":
            write(session)
        start_response("200 OK", [("Content-Type", "text/plain")])
        body = Closing(
            [b"one", b"two"],
            session if environ["PATH_INFO"] in ("/stream", "/fail") else None,
            fail=environ["PATH_INFO"] == "/fail",
        )
        iterables.append(body)
        return body

    settings.setdefault("cleanup_probability", 0)
    mw = SessionMiddleware(
        app, secret="s-0123456789abcdefghijklmnopqrst", backend="memory", **settings
    )
    return mw, TestApp(mw)


def test_writes_during_body_iteration_are_committed_and_close_is_called():
    iterables = []
    mw, web = make_app(iterables)
    web.get("/login")
    assert web.get("/stream").body == b"onetwo"
    assert all(body.closed for body in iterables)
    [record] = mw.backend.get_all().values()
    # The write made while the last chunk was produced is stored.
    session_data = web.get("/login")  # touches, and reads below via a new app
    assert session_data.status_int == 200
    check = SessionMiddleware(
        lambda e, sr: (sr("200 OK", []), [e["session"].store("a")["during-body"].encode()])[1],
        secret="s-0123456789abcdefghijklmnopqrst",
        backend=mw.backend,
    )
    assert TestApp(check, cookiejar=web.cookiejar).get("/").body == b"two"


def test_exception_while_iterating_commits_nothing_and_closes():
    iterables = []
    mw, web = make_app(iterables)
    web.get("/login")
    before = dict(mw.backend.get_all())
    with pytest.raises(RuntimeError):
        web.get("/fail")
    assert iterables[-1].closed
    assert mw.backend.get_all() == before


def test_generator_app_calling_start_response_late():
    def app(environ, start_response):
        environ["session"].store("g").set("k", 1)
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"generated"

    mw = SessionMiddleware(app, secret="s-0123456789abcdefghijklmnopqrst", backend="memory")
    response = TestApp(mw).get("/")
    assert response.body == b"generated"
    assert "Set-Cookie" in response.headers
    assert mw.backend.count() == 1


def test_legacy_write_callable():
    def app(environ, start_response):
        environ["session"].store("w").set("k", 1)
        out = start_response("200 OK", [("Content-Type", "text/plain")])
        out(b"written ")
        return [b"returned"]

    mw = SessionMiddleware(app, secret="s-0123456789abcdefghijklmnopqrst", backend="memory")
    response = TestApp(mw).get("/")
    assert response.body == b"written returned"
    assert "Set-Cookie" in response.headers
    assert mw.backend.count() == 1


# -- reading the cookie ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "{c}",
        "a=1; {c}; b=2",
        "a=1;{c};b=2",
        "  {c}  ",
        "a=1;   {c}",
        "theme=dark; csrftoken=abc; _ga=GA1.2.3.4; {c}",
        'session="{v}"',
        "session = {v}",
        "{c}; other={c}",
    ],
)
def test_the_session_cookie_is_found_however_the_header_lays_it_out(client, header):
    client.run(write)
    value = client.cookie()
    client.web.reset()
    cookie = header.format(c=f"session={value}", v=value)
    value, _ = client.run(read, headers={"Cookie": cookie})
    assert value == "v"


@pytest.mark.parametrize(
    "header", ["x{c}", "my_{c}", "other=a {c}", "other=a,{c}", "Session={v}", "session {v}"]
)
def test_a_valid_id_under_another_name_is_not_the_session(client, header):
    client.run(write)
    value = client.cookie()
    client.web.reset()
    found, _ = client.run(
        lambda s: (s.id, read(s)),
        headers={"Cookie": header.format(c=f"session={value}", v=value)},
    )
    assert found == (None, None)


# -- headers --------------------------------------------------------------------------------


def test_cookie_attributes_default(client):
    _, response = client.run(write)
    header = response.headers["Set-Cookie"]
    parts = [p.strip() for p in header.split(";")]
    assert parts[0].startswith("session=")
    assert "HttpOnly" in parts and "SameSite=Lax" in parts and "Path=/" in parts
    assert "secure" not in header.lower()
    assert not any(p.lower().startswith(("max-age", "expires", "domain")) for p in parts)
    assert response.headers["Vary"] == "Cookie"
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "settings, present, absent",
    [
        ({"cookie_path": "/app"}, ["Path=/app"], ["Path=/"]),
        ({"cookie_domain": "example.com"}, ["Domain=example.com"], []),
        ({"httponly": False}, [], ["HttpOnly"]),
        ({"samesite": "Strict"}, ["SameSite=Strict"], ["SameSite=Lax"]),
        ({"cookie_name": "sid"}, [], []),
    ],
    ids=["path", "domain", "httponly-off", "samesite-strict", "name"],
)
def test_cookie_settings_reach_the_header(clock, settings, present, absent):
    client = SessionClient(clock=clock, **settings)
    url = "http://example.com/app/x"
    _, response = client.run(write, url=url, extra_environ={"HTTP_HOST": "example.com"})
    parts = [p.strip() for p in response.headers["Set-Cookie"].split(";")]
    assert parts[0].startswith(settings.get("cookie_name", "session") + "=")
    for part in present:
        assert part in parts
    for part in absent:
        assert part not in parts
    # The browser sends it back where it applies: the same session is read.
    assert client.run(lambda s: s.store("a").get("k"), url=url)[0] == "v"


def test_environ_key_names_where_the_app_finds_the_session(clock):
    from sessionstore import SessionMiddleware

    def app(environ, start_response):
        seen.append(("session" in environ, environ["my.session"].store("a").get("k", None)))
        start_response("200 OK", [])
        return [b""]

    seen: list = []
    mw = SessionMiddleware(app, secret="x" * 40, backend="memory", environ_key="my.session")
    TestApp(mw).get("/")
    assert seen == [(False, None)]


def test_the_default_backends_and_files(tmp_path, monkeypatch):
    from sessionstore import SessionMiddleware
    from sessionstore.backends.picklefile import PickleBackend
    from sessionstore.backends.sqlite import SqliteBackend

    monkeypatch.chdir(tmp_path)
    mw = SessionMiddleware(lambda e, s: [], secret="x" * 40)
    assert isinstance(mw.backend, SqliteBackend)
    assert (tmp_path / "sessions.db").exists()
    mw.close()
    pickled = SessionMiddleware(lambda e, s: [], secret="x" * 40, backend="pickle")
    assert isinstance(pickled.backend, PickleBackend)
    assert pickled.backend.filename == str(tmp_path / "sessions.dat")
    pickled.close()


def test_secure_auto_under_https(client):
    _, response = client.run(write, extra_environ={"wsgi.url_scheme": "https"})
    assert "secure" in response.headers["Set-Cookie"].lower().split("; ")


@pytest.mark.parametrize(
    ("secure", "scheme", "expected"),
    [
        pytest.param(True, "http", True, id="true-http"),
        pytest.param(False, "https", False, id="false-https"),
        pytest.param("auto", "http", False, id="auto-http"),
    ],
)
def test_secure_setting(clock, secure, scheme, expected):
    client = SessionClient(clock=clock, secure=secure)
    _, response = client.run(write, extra_environ={"wsgi.url_scheme": scheme})
    assert ("secure" in response.headers["Set-Cookie"].lower().split("; ")) is expected


def test_vary_merges_with_the_apps_vary():
    def app(environ, start_response):
        environ["session"].store("a").get_default("k")
        start_response("200 OK", [("Vary", "Accept-Encoding"), ("Cache-Control", "public")])
        return [b""]

    response = TestApp(
        SessionMiddleware(app, secret="s-0123456789abcdefghijklmnopqrst", backend="memory")
    ).get("/")
    assert response.headers.getall("Vary") == ["Accept-Encoding", "Cookie"]
    # No session cookie was set, so the app's caching stands.
    assert response.headers["Cache-Control"] == "public"


def test_session_cookie_replaces_a_public_cache_control():
    def app(environ, start_response):
        write(environ["session"])
        start_response("200 OK", [("Vary", "cookie"), ("Cache-Control", "public, max-age=600")])
        return [b""]

    response = TestApp(
        SessionMiddleware(app, secret="s-0123456789abcdefghijklmnopqrst", backend="memory")
    ).get("/")
    assert response.headers.getall("Vary") == ["cookie"]
    assert response.headers.getall("Cache-Control") == ["no-store"]


# -- regenerate, destroy, expiry ----------------------------------------------------------


def test_regenerate_keeps_data_and_kills_the_old_id(client):
    client.run(write)
    old_cookie = client.cookie()
    old_id = client.run(lambda s: s.id)[0]
    new_id, response = client.run(lambda s: (s.regenerate(), s.id)[1])
    assert new_id != old_id and "Set-Cookie" in response.headers
    assert client.backend.get(old_id).is_tombstone  # "no session" to everyone
    assert client.run(read)[0] == "v"
    # Replaying the old cookie gets nothing.
    client.web.reset()
    client.web.set_cookie("session", old_cookie)
    assert client.run(lambda s: (s.id, read(s)))[0] == (None, None)


def test_destroy_clears_cookie_and_kills_the_id(client):
    client.run(write)
    old_cookie = client.cookie()
    old_id = client.run(lambda s: s.id)[0]
    result, response = client.run(lambda s: (s.destroy(), s.id, s.exists, s.apps())[1:])
    assert result == (None, False, [])
    assert "Max-Age=0" in response.headers["Set-Cookie"]
    assert client.backend.get(old_id) is None
    client.web.reset()
    client.web.set_cookie("session", old_cookie)
    assert client.run(read)[0] is None


def test_write_after_destroy_starts_a_new_session(client):
    client.run(write)
    old_id = client.run(lambda s: s.id)[0]
    client.run(lambda s: (s.destroy(), s.store("flash").set("msg", "bye")))
    new_id, _ = client.run(lambda s: s.id)
    assert new_id not in (None, old_id)
    assert client.run(lambda s: (s.apps(), s.store("flash")["msg"]))[0] == (["flash"], "bye")


def test_set_expiry_on_an_existing_session_resends_the_cookie(client, clock):
    client.run(write)
    _, response = client.run(lambda s: s.set_expiry(clock.now + 3600))
    assert "Max-Age=3600" in response.headers["Set-Cookie"]


def test_a_write_re_signs_a_cookie_older_than_touch_interval(clock):
    client = SessionClient(clock=clock, touch_interval=60)
    client.run(write)
    clock.advance(30)
    _, response = client.run(lambda s: s.store("a").set("k", "v2"))
    assert "Set-Cookie" not in response.headers  # signed 30 s ago: still fresh
    clock.advance(31)
    old_cookie = client.cookie()
    _, response = client.run(lambda s: s.store("a").set("k", "v3"))
    assert "Set-Cookie" in response.headers and client.cookie() != old_cookie


def test_set_expiry_validates_and_makes_a_persistent_cookie(client, clock):
    def probe(session):
        with pytest.raises(ValueError):
            session.set_expiry(clock.now - 1)
        with pytest.raises(ValueError):
            session.set_expiry(clock.now)  # "now" is already the past
        with pytest.raises(ValueError, match="aware"):
            # naive, though an hour ahead in UTC: refused for its missing zone
            session.set_expiry(
                datetime.fromtimestamp(clock.now + 3600, timezone.utc).replace(tzinfo=None)
            )
        with pytest.raises(TypeError):
            session.set_expiry("tomorrow")
        with pytest.raises(TypeError):
            session.set_expiry(True)  # a bool is not epoch seconds
        # Refused before anything is stored: each would fail the cookie
        # after the commit (a 500 for a write that was made).
        for far in (math.inf, math.nan, clock.now + 101 * 365 * 86400, 1e300):
            with pytest.raises(ValueError):
                session.set_expiry(far)
        session.set_expiry(datetime.fromtimestamp(clock.now, timezone.utc) + timedelta(hours=2))

    _, response = client.run(probe)
    assert "Max-Age=7200" in response.headers["Set-Cookie"]
    assert client.run(lambda s: s.expires_at)[0] == clock.now + 7200
    clock.advance(7200)
    assert client.run(lambda s: s.exists)[0] is False


@pytest.mark.parametrize("name", ["clock", "chance"])
def test_a_clock_or_chance_that_is_not_a_function_fails_at_start_up(name):
    from sessionstore import ConfigurationError, SessionMiddleware

    with pytest.raises(ConfigurationError, match=f"^{name} = 5: expected a function"):
        SessionMiddleware(lambda e, s: [], secret="x" * 40, backend="memory", **{name: 5})


@pytest.mark.parametrize("backend", ["memory", "sqlite", "pickle"])
def test_a_request_leaves_no_reference_cycle_behind(tmp_path, backend):
    """What a request allocated is freed when it ends, not at the next
    run of the garbage collector (a cycle per request cost ~15% of a write)."""
    import gc

    from .apps import make_app

    app = make_app(backend, None if backend == "memory" else str(tmp_path / "s"))
    paths = ["/write", "/read", "/append", "/id", "/regenerate", "/destroy"]
    cookie = ""

    def request(path):
        nonlocal cookie
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "QUERY_STRING": "key=k&value=v",
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "wsgi.url_scheme": "http",
            "HTTP_COOKIE": cookie,
        }
        headers = []
        body = app(environ, lambda status, h, exc_info=None: headers.extend(h))
        b"".join(body)
        if hasattr(body, "close"):
            body.close()
        for name, value in headers:
            if name == "Set-Cookie":
                cookie = value.split(";")[0]

    request("/write")  # imports, caches and the store's first file are made now
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            for path in paths:
                request(path)
        assert gc.collect() == 0
    finally:
        gc.enable()
        app.close()


def test_the_furthest_expiry_allowed_still_makes_a_cookie(client, clock):
    far = clock.now + 100 * 365 * 86400
    _, response = client.run(lambda s: (s.store("a").set("k", 1), s.set_expiry(far)))
    assert response.status_int == 200
    assert f"Max-Age={100 * 365 * 86400}" in response.headers["Set-Cookie"]
