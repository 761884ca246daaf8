"""Hostile input: no case may produce a 500 or adopt a session the server did not create."""

from __future__ import annotations

import base64
import hashlib
import pickle
import random
import sqlite3
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itsdangerous import TimestampSigner
from webtest import TestApp

from sessionstore import ConfigurationError, SessionMiddleware
from sessionstore.cookies import MAX_CANDIDATES, SALT
from sessionstore.ids import new_session_id
from sessionstore.regeneration import TOMBSTONE_LIFETIME

from .conftest import Clock, SessionClient, consume

SECRET = "test-secret-0123456789abcdefghij"


def sign(value, clock, secret=SECRET, salt=SALT):
    """Sign like the middleware does, with any secret, salt and clock."""
    signer = TimestampSigner(secret, salt=salt, key_derivation="hmac", digest_method=hashlib.sha256)
    signer.get_timestamp = lambda: int(clock())
    return signer.sign(value).decode()


class Site:
    """A site with a victim's session, and helpers to send one hostile request."""

    def __init__(self, clock, **settings):
        self.clock = clock
        self.client = SessionClient(clock=clock, **settings)
        self.client.run(
            lambda s: s.store("bank").set("owner", "victim"),
            extra_environ={"wsgi.url_scheme": "https"},
        )
        [self.victim_id] = self.client.backend.get_all()
        self.victim_cookie = self.sign(self.victim_id)
        self.client.web.reset()

    def sign(self, value, **kwargs):
        return sign(value, kwargs.pop("clock", self.clock), **kwargs)

    def probe(self, cookie_header=None, **kwargs):
        """One request that reads then writes; returns what it saw and the response."""
        headers = kwargs.pop("headers", {})
        if cookie_header is not None:
            headers["Cookie"] = cookie_header
        self.client.web.reset()

        def handler(session):
            seen = (session.id, session.store("bank").get_default("owner"))
            session.store("bank").set("visitor", "attacker")
            return seen

        seen, response = self.client.run(handler, headers=headers, **kwargs)
        return seen, response

    def assert_no_session_adopted(self, seen, response):
        assert response.status_int == 200
        assert seen == (None, None)
        new_cookie = response.headers["Set-Cookie"]
        new_id = new_cookie.split("=", 1)[1].split(".", 1)[0]
        assert len(new_id) == 44
        assert new_id != self.victim_id
        victim = self.client.backend.get(self.victim_id)
        apps, _ = self.client.middleware._manager.payloads.loads(victim)
        assert set(apps["bank"]) == {"owner"}  # the victim's session is untouched
        return new_id


@pytest.fixture
def site(clock):
    return Site(clock)


def _gone_id(site, how):
    """A properly signed cookie for a session that no longer exists."""
    site.client.web.reset()
    before = set(site.client.backend.get_all())
    site.client.run(lambda s: s.store("x").set("k", 1))
    cookie = site.client.cookie()
    [gone_id] = set(site.client.backend.get_all()) - before
    if how == "destroyed":
        site.client.run(lambda s: s.destroy())
    elif how == "regenerated":
        site.client.run(lambda s: s.regenerate())
        # Past its tombstone's minute (before it, a write with the old
        # cookie is a 409: test_atomic, "handled after" a login).
        site.clock.advance(TOMBSTONE_LIFETIME + 1)
    elif how == "expired":
        site.clock.advance(86400 + 1)
    elif how == "purged":
        assert site.client.backend.delete(gone_id) == 1
    return f"session={cookie}"


def _fifty_tampered(site):
    """The victim's cookie with its signature's last two characters replaced
    by 00, 01, ...: fifty of them, none the real one (in about 1 run in 70
    the real signature ends in two such digits, and was among them)."""
    candidates = (f"{site.victim_cookie[:-2]}{i:02d}" for i in range(51))
    return [c for c in candidates if c != site.victim_cookie][:50]


def _respelt(cookie):
    """The cookie with its signature's last character changed only in the two
    bits base64 leaves unused: the same signature bytes, spelt another way."""
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    last = alphabet.index(cookie[-1])
    return cookie[:-1] + alphabet[last ^ 1]


HOSTILE_COOKIES = [
    pytest.param(lambda s: f"session={s.victim_cookie[:-3]}abc", id="tampered-signature"),
    pytest.param(
        lambda s: f"session={s.victim_id}x.{s.victim_cookie.split('.', 1)[1]}", id="tampered-id"
    ),
    pytest.param(
        lambda s: f"session={s.sign(s.victim_id, secret='other')}", id="forged-other-secret"
    ),
    pytest.param(lambda s: f"session={s.sign(s.victim_id, salt='other')}", id="forged-other-salt"),
    pytest.param(lambda s: f"session={s.victim_id}", id="unsigned-id"),
    pytest.param(
        lambda s: f"session={s.sign(s.victim_id, clock=lambda: s.clock() - 10 * 86400)}",
        id="expired-signature",
    ),
    pytest.param(
        lambda s: f"session={s.sign(s.victim_id, clock=lambda: s.clock() + 3600)}",
        id="future-timestamp",
    ),
    pytest.param(lambda s: _gone_id(s, "destroyed"), id="destroyed-session"),
    pytest.param(lambda s: _gone_id(s, "regenerated"), id="regenerated-session"),
    pytest.param(lambda s: _gone_id(s, "expired"), id="expired-session"),
    pytest.param(lambda s: _gone_id(s, "purged"), id="purged-session"),
    pytest.param(lambda s: f"session={s.sign(new_session_id())}", id="never-created-id"),
    pytest.param(lambda s: "session=" + "A" * 5000, id="oversized-cookie"),
    pytest.param(
        lambda s: "; ".join(f"c{i}={'x' * 60}" for i in range(1000)), id="64KB-cookie-header"
    ),
    pytest.param(lambda s: "session", id="no-equals-sign"),
    pytest.param(lambda s: "session=\xff\xfe\x00\x01", id="bad-bytes"),
    pytest.param(lambda s: ";;;=;=;session;==", id="punctuation-only"),
    pytest.param(
        lambda s: f"session={s.victim_cookie[:-2]}xx; session={s.victim_cookie[:-2]}yy",
        id="duplicate-tampered",
    ),
    pytest.param(
        lambda s: "; ".join(f"session={c}" for c in _fifty_tampered(s)), id="fifty-duplicates"
    ),
    pytest.param(lambda s: f"session={_respelt(s.victim_cookie)}", id="same-signature-respelt"),
    pytest.param(lambda s: f"session={s.sign('../../etc/passwd')}", id="path-like-id"),
    pytest.param(lambda s: f"session={s.sign('a' * 43 + chr(0))}", id="nul-in-id"),
    pytest.param(lambda s: f"session={s.sign('a' * 43 + '/')}", id="slash-in-id"),
    pytest.param(lambda s: f"session={s.sign('')}", id="empty-id"),
    pytest.param(lambda s: 'session="' + s.victim_cookie + '\\"', id="quoted-escape"),
]


@pytest.mark.parametrize("make_cookie", HOSTILE_COOKIES)
def test_hostile_cookie_gets_a_new_session_never_the_claimed_one(site, make_cookie):
    header = make_cookie(site)
    seen, response = site.probe(header)
    new_id = site.assert_no_session_adopted(seen, response)
    assert new_id not in header


@pytest.mark.parametrize(
    "request_kwargs",
    [
        pytest.param(lambda s: {"url": f"/?session={s.victim_cookie}"}, id="query-string"),
        pytest.param(lambda s: {"url": f"/?session_id={s.victim_id}"}, id="query-string-id"),
        pytest.param(lambda s: {"headers": {"X-Session": s.victim_cookie}}, id="other-header"),
        pytest.param(
            lambda s: {"headers": {"Authorization": f"Session {s.victim_cookie}"}},
            id="authorization-header",
        ),
    ],
)
def test_ids_outside_the_cookie_are_ignored(site, request_kwargs):
    seen, response = site.probe(None, **request_kwargs(site))
    site.assert_no_session_adopted(seen, response)


def test_id_in_a_form_field_is_ignored(site):
    seen = []
    extra = {"test.fn": lambda s: seen.append(s.id), "test.result": [], "test.status": "200 OK"}
    response = site.client.web.post("/", {"session": site.victim_cookie}, extra_environ=extra)
    assert response.status_int == 200 and seen == [None]


def test_nameless_host_prefix_spoof_is_ignored(clock):
    site = Site(clock, cookie_name="__Host-session")
    https = {"wsgi.url_scheme": "https"}
    spoof = f"=__Host-session={site.victim_cookie}"
    seen, response = site.probe(spoof, extra_environ=https)
    assert response.status_int == 200 and seen == (None, None)
    # The real __Host- cookie, for contrast, is honoured.
    seen, _ = site.probe(f"__Host-session={site.victim_cookie}", extra_environ=https)
    assert seen == (site.victim_id, "victim")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("cookie_name", "session\r\nX-Injected: 1", id="name-crlf"),
        pytest.param("cookie_name", "ses;sion", id="name-semicolon"),
        pytest.param("cookie_name", "ses sion", id="name-space"),
        pytest.param("cookie_path", "/\r\nSet-Cookie: evil=1", id="path-crlf"),
        pytest.param("cookie_path", "/; Domain=evil.example", id="path-semicolon"),
        pytest.param("cookie_domain", "example.com\nX: 1", id="domain-lf"),
        pytest.param("cookie_domain", "a.com; Secure", id="domain-semicolon"),
        pytest.param("cache_control", "no-store\r\nX-Injected: 1", id="cache-control-crlf"),
        pytest.param("samesite", "Lax; Domain=evil", id="samesite-extra"),
        pytest.param("environ_key", "session\n", id="environ-key-newline"),
    ],
)
def test_header_injection_through_configuration_is_refused_at_startup(key, value):
    with pytest.raises(ConfigurationError) as info:
        SessionMiddleware(
            lambda e, s: [],
            secret="s-0123456789abcdefghijklmnopqrst",
            backend="memory",
            **{key: value},
        )
    assert info.value.key == key and key in str(info.value)


def test_host_prefix_rules_are_enforced():
    for bad in ({"cookie_domain": "example.com"}, {"cookie_path": "/app"}, {"secure": False}):
        with pytest.raises(ConfigurationError):
            SessionMiddleware(
                lambda e, s: [],
                secret="s-0123456789abcdefghijklmnopqrst",
                backend="memory",
                cookie_name="__Host-s",
                **bad,
            )
    mw = SessionMiddleware(
        lambda e, s: [],
        secret="s-0123456789abcdefghijklmnopqrst",
        backend="memory",
        cookie_name="__Host-s",
    )
    assert mw.settings.secure is True


def test_fixation_regenerate_at_login_kills_the_planted_id(clock):
    client = SessionClient(clock=clock)
    # The attacker gets a genuine session of their own...
    client.run(lambda s: s.store("shop").set("cart", ["bait"]))
    planted = client.cookie()
    planted_id = client.run(lambda s: s.id)[0]
    # ...and plants it in the victim's browser; the victim logs in.
    victim = SessionClient.__new__(SessionClient)
    victim.__dict__.update(client.__dict__)
    victim.web = TestApp(client.middleware)
    victim.web.set_cookie("session", planted)
    victim.run(lambda s: (s.regenerate(), s.store("auth").set("user", "victim")))
    assert victim.run(lambda s: s.id)[0] != planted_id
    # The attacker's cookie now leads nowhere.
    client.web.reset()
    client.web.set_cookie("session", planted)
    assert client.run(lambda s: (s.id, s.store("auth").get_default("user")))[0] == (None, None)


def test_app_500_commits_nothing(site):
    site.client.web.set_cookie("session", site.victim_cookie)
    _, response = site.client.run(
        lambda s: s.store("bank").set("owner", "attacker"),
        status="500 Internal Server Error",
        expect_errors=True,
    )
    assert "Set-Cookie" not in response.headers
    assert site.client.run(lambda s: s.store("bank")["owner"])[0] == "victim"


def test_applications_cannot_read_each_others_stores(site):
    site.client.web.set_cookie("session", site.victim_cookie)
    result = site.client.run(lambda s: (s.store("shop").keys(), s.store("bank").keys()))[0]
    assert result == ([], ["owner"])


def test_ten_thousand_reads_with_random_or_absent_cookies_store_nothing(tmp_path):
    seen_cookies = []

    def app(environ, start_response):
        session = environ["session"]
        session.store("a").get_default("k")
        seen_cookies.append(session.exists)
        start_response("200 OK", [])
        return [b""]

    mw = SessionMiddleware(
        app,
        secret="s-0123456789abcdefghijklmnopqrst",
        backend="sqlite",
        backend_options={"filename": str(tmp_path / "s.db")},
    )
    rng = random.Random(5)
    alphabet = string.ascii_letters + string.digits + "-_.=;"
    statuses = []
    for i in range(10_000):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
        if i % 2:
            length = rng.randint(1, 120)
            environ["HTTP_COOKIE"] = "session=" + "".join(rng.choices(alphabet, k=length))
        consume(mw(environ, lambda status, headers, exc=None: statuses.append((status, headers))))
    assert all(s == "200 OK" and not any(h[0] == "Set-Cookie" for h in hs) for s, hs in statuses)
    assert not any(seen_cookies)
    assert mw.backend.count() == 0


# -- payloads planted directly in storage ----------------------------------------------


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_planted_in_the_sqlite_table_is_never_unpickled(tmp_path, clock, caplog):
    db = tmp_path / "s.db"
    client = SessionClient("sqlite", {"filename": str(db)}, clock=clock)
    client.run(lambda s: s.store("a").set("k", "v"))
    [session_id] = client.backend.get_all()
    marker = tmp_path / "pwned"
    inner = pickle.dumps((1, None, {"a": {"k": pickle.dumps(_Exploit(str(marker)))}}))
    for planted in (pickle.dumps(_Exploit(str(marker))), inner):
        conn = sqlite3.connect(db)  # "with connect()" commits but never closes
        with conn:
            conn.execute(
                "UPDATE sessions SET payload = ? WHERE id = ?", (b"\0" * 32 + planted, session_id)
            )
        conn.close()
        caplog.clear()
        value, response = client.run(lambda s: s.store("a").get_default("k"))
        # Damaged or planted: "no session" for its visitor, kept for an administrator.
        assert (response.status_int, value) == (200, None)
        assert f"stored session {session_id}: bad signature" in caplog.text
        assert client.backend.get(session_id).payload == b"\0" * 32 + planted
        assert not marker.exists()


# -- property: arbitrary Cookie headers ------------------------------------------------

_PROPERTY = {}


def _property_site():
    """One middleware for every example, and a genuine session in it."""
    if not _PROPERTY:
        clock = Clock()

        def app(environ, start_response):
            session = environ["session"]
            environ["test.seen"] = (session.id, session.store("a").get_default("k"))
            session.store("a").set("k", "written")
            start_response("200 OK", [])
            return [b""]

        mw = SessionMiddleware(
            app, secret=SECRET, backend="memory", cleanup_probability=0, clock=clock
        )
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
        consume(mw(environ, lambda status, headers, exc=None: None))
        [real_id] = mw.backend.get_all()
        _PROPERTY.update(mw=mw, clock=clock, real_id=real_id, real=sign(real_id, clock))
    return _PROPERTY


_TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=120)
_UNKNOWN_ID = (
    st.binary(min_size=33, max_size=33)
    .map(lambda b: base64.urlsafe_b64encode(b).decode())
    .filter(lambda i: not i.startswith("-"))
)
_PIECE = st.one_of(
    st.tuples(st.just("junk"), st.sampled_from(["session", "Session", " session", "", "x"]), _TEXT),
    st.tuples(st.just("unknown"), st.just("session"), _UNKNOWN_ID),
    st.tuples(st.just("forged"), st.just("session"), _UNKNOWN_ID),
    st.tuples(st.just("real"), st.just("session"), st.just("")),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_PIECE, max_size=8), min_size=1, max_size=3))
def test_any_cookie_headers_never_fail_never_adopt_never_lose_the_real_session(headers):
    site = _property_site()
    mw, real_id = site["mw"], site["real_id"]
    unknown_ids, parts, has_real, shaped = set(), [], False, 0
    for header in headers:
        pairs = []
        for kind, name, value in header:
            if kind == "unknown":  # validly signed: the id was never created here
                unknown_ids.add(value)
                value = sign(value, site["clock"])
            elif kind == "forged":
                value = sign(value, site["clock"], secret="f" * 32)
            elif kind == "real":
                has_real = True
                value = site["real"]
            shaped += kind in ("unknown", "forged") and not has_real
            pairs.append(f"{name}={value}")
        parts.append("; ".join(pairs))
    # Several Cookie headers reach the application joined, as servers join them.
    cookie_header = "; ".join(parts)
    before = set(mw.backend.get_all())
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "wsgi.url_scheme": "http",
        "HTTP_COOKIE": cookie_header,
    }
    statuses = []
    consume(mw(environ, lambda status, headers, exc=None: statuses.append(status)))
    assert statuses == ["200 OK"]
    seen_id = environ["test.seen"][0]
    assert seen_id in (None, real_id)  # never a client-chosen id
    if has_real and shaped < MAX_CANDIDATES:
        assert seen_id == real_id  # junk never hides the real session
    # After the commit: nothing stored under an id the client chose.
    after = set(mw.backend.get_all())
    assert not unknown_ids & after
    created = after - before
    if seen_id == real_id:
        assert not created
    else:
        [new_id] = created
        assert new_id not in cookie_header and new_id not in unknown_ids


def test_ids_are_long_random_and_never_look_like_options():
    from sessionstore.ids import is_valid_id

    ids = {new_session_id() for _ in range(5000)}
    assert len(ids) == 5000
    assert all(is_valid_id(i) and len(i) == 44 and not i.startswith("-") for i in ids)
    assert not is_valid_id("-" + "a" * 43)
