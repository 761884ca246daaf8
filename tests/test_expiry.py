"""Idle timeout, absolute lifetime, touch throttling, cleanup and secret rotation."""

from __future__ import annotations

import pytest
from webtest import TestApp

from sessionstore import SessionMiddleware

from .conftest import SessionClient


def write(session):
    session.store("a").set("k", "v")


def read(session):
    return session.store("a").get_default("k")


def version(client):
    [record] = client.backend.get_all().values()
    return record.version


def test_idle_timeout_is_enforced_from_stored_timestamps(clock):
    client = SessionClient(clock=clock, timeout=100, touch_interval=10)
    client.run(write)
    clock.advance(99)
    assert client.run(read)[0] == "v"  # a read refreshes the idle clock...
    clock.advance(99)
    assert client.run(read)[0] == "v"  # ...so 198 s after the write it lives on
    clock.advance(100)
    assert client.run(read)[0] is None  # 100 s idle: gone
    client.run(write)
    assert client.backend.count() == 2  # a new session; the old record awaits cleanup


def test_reads_refresh_the_idle_clock_at_most_once_per_touch_interval(clock):
    client = SessionClient(clock=clock, timeout=1000, touch_interval=60)
    client.run(write)
    assert version(client) == 1
    for _ in range(5):
        clock.advance(10)
        _, response = client.run(read)
        assert "Set-Cookie" not in response.headers
    assert version(client) == 1  # 50 s of reads: no write at all
    clock.advance(10)
    _, response = client.run(read)
    assert version(client) == 2  # one small refresh, and the cookie re-signed
    assert "Set-Cookie" in response.headers
    [record] = client.backend.get_all().values()
    assert record.accessed_at == clock.now and record.expires_at == clock.now + 1000
    _, response = client.run(read)
    assert version(client) == 2 and "Set-Cookie" not in response.headers


def test_max_lifetime_caps_an_active_session(clock):
    client = SessionClient(clock=clock, timeout=100, touch_interval=10, max_lifetime=250)
    client.run(write)
    for _ in range(4):
        clock.advance(60)
        assert client.run(read)[0] == "v"
    clock.advance(10)  # 250 s after creation, however active
    assert client.run(read)[0] is None


def test_shorter_timeout_after_a_restart_applies_to_old_records(clock):
    long = SessionClient(clock=clock, timeout=10_000)
    long.run(write)
    short = TestApp(
        SessionMiddleware(
            lambda e, sr: (sr("200 OK", []), [repr(read(e["session"])).encode()])[1],
            secret="test-secret-0123456789abcdefghij",
            backend=long.backend,
            clock=clock,
            timeout=100,
        ),
        cookiejar=long.web.cookiejar,
    )
    # 120 s: idle past the new timeout (100 s) while the cookie's signature is
    # still good (100 + 50 s), so it is the stored timestamps that end it.
    clock.advance(120)
    assert short.get("/").body == b"None"


def test_set_expiry_replaces_the_idle_timeout(clock):
    client = SessionClient(clock=clock, timeout=100, touch_interval=10, cookie_max_age=3600)
    client.run(lambda s: (write(s), s.set_expiry(clock.now + 1000)))
    clock.advance(500)  # idle far past the timeout, within the explicit expiry
    assert client.run(read)[0] == "v"
    clock.advance(500)
    assert client.run(read)[0] is None


def test_cleanup_probability_removes_expired_records(clock):
    draws = iter([0.9, 0.9, 0.0])
    client = SessionClient(
        clock=clock, timeout=100, cleanup_probability=0.5, chance=lambda: next(draws)
    )
    client.run(write)  # draw 0.9: no cleanup
    clock.advance(101)
    client.web.reset()
    client.run(write)  # draw 0.9: no cleanup; the first session has expired
    assert client.backend.count() == 2
    clock.advance(50)
    client.run(write)  # draw 0.0: cleanup runs
    assert client.backend.count() == 1


def test_delete_expired_counts(clock):
    client = SessionClient(clock=clock, timeout=100)
    for _ in range(3):
        client.web.reset()
        client.run(write)
    clock.advance(100)
    assert client.backend.delete_expired(clock.now) == 3


def test_secret_rotation_accepts_old_cookies_and_resigns_them(clock):
    old = SessionClient(clock=clock, secret="old-secret-0123456789abcdefghijk")
    old.run(write)
    old_cookie = old.cookie()
    rotated = SessionClient.__new__(SessionClient)
    rotated.__dict__.update(old.__dict__)
    rotated.middleware = SessionMiddleware(
        SessionClient._app,
        secret="new-secret-0123456789abcdefghijk old-secret-0123456789abcdefghijk",
        backend=old.backend,
        clock=clock,
    )
    rotated.web = TestApp(rotated.middleware, cookiejar=old.web.cookiejar)
    value, response = rotated.run(read)
    assert value == "v"  # a read-only request, yet the cookie is re-signed:
    new_cookie = rotated.cookie()
    assert "Set-Cookie" in response.headers and new_cookie != old_cookie
    # That read also re-signed the stored payload, so once the old secret is
    # retired the re-signed cookie and the data behind it still work.
    retired = SessionMiddleware(
        SessionClient._app,
        secret="new-secret-0123456789abcdefghijk",
        backend=old.backend,
        clock=clock,
    )
    web = TestApp(retired)
    web.set_cookie("session", new_cookie)
    results = []
    web.get("/", extra_environ={"test.fn": read, "test.result": results})
    assert results == ["v"]
    # Writes keep working across the whole rotation.
    rotated.run(lambda s: s.store("a").set("k", "v2"))
    web.reset()
    web.set_cookie("session", rotated.cookie())
    results.clear()
    web.get("/", extra_environ={"test.fn": read, "test.result": results})
    assert results == ["v2"]


NEW = "new-secret-0123456789abcdefghijk"
OLD = "old-secret-0123456789abcdefghijk"


def _serving(client, *secrets):
    """Another middleware on ``client``'s store and clock, with ``secrets``."""
    return SessionMiddleware(
        SessionClient._app, secret=" ".join(secrets), backend=client.backend, clock=client.clock
    )


def test_a_write_under_a_rotated_secret_re_signs_in_its_one_commit(clock):
    old = SessionClient(clock=clock, secret=OLD)
    old.run(write)
    (record,) = old.backend.iter_records()
    web = TestApp(_serving(old, NEW, OLD), cookiejar=old.web.cookiejar)
    results = []
    fn = lambda s: s.store("a").set("k", "v2")  # noqa: E731
    web.get("/", extra_environ={"test.fn": fn, "test.result": results})
    # One backend write: the commit signs with the newest secret, so there is
    # nothing left for a re-signing touch to do.
    (after,) = old.backend.iter_records()
    assert after.version == record.version + 1
    results.clear()
    TestApp(_serving(old, NEW), cookiejar=old.web.cookiejar).get(
        "/", extra_environ={"test.fn": read, "test.result": results}
    )
    assert results == ["v2"]


def test_old_secret_cookie_is_refused_once_retired(clock):
    old = SessionClient(clock=clock, secret=OLD)
    old.run(write)
    web = TestApp(_serving(old, NEW), cookiejar=old.web.cookiejar)
    results = []
    response = web.get("/", extra_environ={"test.fn": read, "test.result": results})
    assert results == [None] and response.status_int == 200


@pytest.mark.parametrize(("setting", "value"), [("timeout", 0), ("touch_interval", 86400)])
def test_nonsense_timeouts_are_refused(setting, value):
    from sessionstore import ConfigurationError

    with pytest.raises(ConfigurationError, match=setting):
        SessionMiddleware(
            lambda e, s: [],
            secret="s-0123456789abcdefghijklmnopqrst",
            backend="memory",
            **{setting: value},
        )


def test_an_aged_out_cookie_is_refused_even_after_it_verified_before(clock):
    # timeout 100 + touch_interval 10: a signature is good for 110 s.
    client = SessionClient(clock=clock, timeout=100, touch_interval=10)
    client.run(write)
    first_cookie = client.cookie()
    for _ in range(3):  # stay active: each refresh re-signs the cookie
        clock.advance(40)
        assert client.run(read)[0] == "v"
    assert client.cookie() != first_cookie
    replay = TestApp(client.middleware)
    replay.set_cookie("session", first_cookie)  # signed 120 s ago, verified before
    results = []
    replay.get("/", extra_environ={"test.fn": lambda s: s.id, "test.result": results})
    assert results == [None]
    assert client.run(read)[0] == "v"  # the session itself lives on


def test_remember_me_outlives_the_idle_timeout_and_the_signature_age(clock):
    """set_expiry(30 days) with the default settings: the visitor comes back
    after 20 days away and is still signed in; after 30 days, not."""
    client = SessionClient(clock=clock)
    client.run(lambda s: (write(s), s.set_expiry(clock.now + 30 * 86400)))
    cookie = client.cookie()
    clock.advance(20 * 86400)  # far past the timeout and the signature's 86,460 s
    assert client.run(read)[0] == "v"
    clock.advance(10 * 86400)
    client.web.set_cookie("session", cookie)
    assert client.run(read)[0] is None


def test_an_old_signature_is_refused_for_a_session_without_remember_me(clock):
    """A session kept alive by other visits, and a copy of its cookie signed
    long ago: the copy is refused, though the session lives on."""
    client = SessionClient(clock=clock, timeout=3 * 86400)
    client.run(write)
    old = client.cookie()
    for _ in range(4):  # a visit a day: each re-signs the cookie
        clock.advance(86400)
        assert client.run(read)[0] == "v"
    replay = TestApp(client.middleware)
    replay.set_cookie("session", old)  # signed 4 days ago: past 3 days + 60 s
    results = []
    replay.get("/", extra_environ={"test.fn": lambda s: s.id, "test.result": results})
    assert results == [None]
