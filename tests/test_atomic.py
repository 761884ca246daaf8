"""Two requests on one session, interleaved deterministically, on every backend.

Request A runs the application; at the point under test the application
runs request B through the same middleware with the same cookie, to its end,
then carries on.  So B always commits between A's read and A's commit: the
race is the same every run, on every backend.
"""

from __future__ import annotations

import logging
import pickle

import pytest
from webtest import TestApp

from sessionstore import ConcurrentUpdate, SessionMiddleware

from .conftest import Clock, consume

SECRET = "test-secret-for-interleaved-requests"


class Interleaved:
    """A middleware whose application runs ``steps[path](session, run_b)``.

    ``run_b(path)`` sends request B (with the cookie A came with) and
    returns its response.  Responses keep their cookies like a browser.
    """

    def __init__(self, backend, **settings):
        kind, options = backend
        settings.setdefault("cleanup_probability", 0)
        self.steps = {}
        self.results = {}
        self.mw = SessionMiddleware(
            self._app, secret=SECRET, backend=kind, backend_options=options, **settings
        )
        self.web = TestApp(self.mw)

    def _app(self, environ, start_response):
        path = environ["PATH_INFO"]
        cookie = environ.get("HTTP_COOKIE", "")

        def run_b(b_path):
            other = TestApp(self.mw)
            return other.get(b_path, headers={"Cookie": cookie}, expect_errors=True)

        self.results[path] = self.steps[path](environ["session"], run_b)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    def get(self, path, **kwargs):
        return self.web.get(path, expect_errors=True, **kwargs)

    def stored(self, app="a"):
        """The application's data as a fresh request sees it."""
        self.steps["/peek"] = lambda s, _: s.store(app).dump()
        self.get("/peek")
        return self.results["/peek"]

    def close(self):
        self.mw.close()


@pytest.fixture
def pair(backend):
    made = []

    def make(**settings):
        made.append(Interleaved(backend, **settings))
        return made[-1]

    yield make
    for interleaved in made:
        interleaved.close()


def _start(pair, **settings):
    site = pair(**settings)
    site.steps["/start"] = lambda s, _: s.store("a").set("items", ["start"])
    assert site.get("/start").status_int == 200
    return site


def append(item):
    return lambda items: [*items, item]


# -- update(): concurrent read-modify-write of one key composes ---------------------


def test_concurrent_updates_of_one_key_both_survive(pair):
    site = _start(pair)
    site.steps["/b"] = lambda s, _: s.store("a").update("items", append("b"), [])

    def a(session, run_b):
        seen = session.store("a").update("items", append("a"), [])
        assert run_b("/b").status_int == 200
        return seen

    site.steps["/a"] = a
    response = site.get("/a")
    assert response.status_int == 200
    assert site.results["/a"] == ["start", "a"]  # what A computed and returned
    assert site.stored() == {"items": ["start", "b", "a"]}  # A's fn ran again on B's value
    assert site.mw.stats()["retries"] >= 1


def test_an_update_function_failing_on_replay_stores_nothing(pair, caplog):
    site = _start(pair)
    site.steps["/b"] = lambda s, _: s.store("a").set("items", 42)

    def a(session, run_b):
        store = session.store("a")
        store.update("items", append("a"), [])
        store.set("other", "written with the update")
        run_b("/b")

    site.steps["/a"] = a
    with caplog.at_level(logging.ERROR, "sessionstore"):
        response = site.get("/a")
    assert response.status_int == 500
    assert site.stored() == {"items": 42}  # nothing of A
    assert "key 'items' of application 'a'" in caplog.text


def test_a_plain_get_then_set_is_a_logged_lost_update_under_merge(pair, caplog):
    site = _start(pair)
    site.steps["/b"] = lambda s, _: s.store("a").set("items", ["start", "b"])

    def a(session, run_b):
        store = session.store("a")
        items = store.get("items")
        run_b("/b")
        store.set("items", [*items, "a"])

    site.steps["/a"] = a
    with caplog.at_level(logging.WARNING, "sessionstore"):
        assert site.get("/a").status_int == 200
    assert site.stored() == {"items": ["start", "a"]}  # the later commit wins...
    assert "lost update of application 'a', key 'items'" in caplog.text  # ...and says so
    assert site.mw.stats()["lost_updates"] == 1


def test_a_plain_get_then_set_is_a_409_under_error(pair):
    site = _start(pair, on_conflict="error")
    site.steps["/b"] = lambda s, _: s.store("a").set("items", ["start", "b"])

    def a(session, run_b):
        store = session.store("a")
        items = store.get("items")
        run_b("/b")
        store.set("items", [*items, "a"])
        store.set("elsewhere", 1)

    site.steps["/a"] = a
    assert site.get("/a").status_int == 409
    assert site.stored() == {"items": ["start", "b"]}  # nothing of A
    assert site.mw.stats()["conflicts"] == 1


def test_a_blind_set_conflicts_with_nothing_under_error(pair):
    site = _start(pair, on_conflict="error")
    site.steps["/b"] = lambda s, _: s.store("a").set("items", ["b"])

    def a(session, run_b):
        run_b("/b")
        session.store("a").set("items", ["a"])  # never read: no lost update

    site.steps["/a"] = a
    assert site.get("/a").status_int == 200
    assert site.stored() == {"items": ["a"]}


def test_empty_after_reading_everything_conflicts_under_error(pair):
    site = _start(pair, on_conflict="error")
    site.steps["/b"] = lambda s, _: s.store("a").set("added", 1)

    def a(session, run_b):
        store = session.store("a")
        assert store.keys() == ["items"]
        run_b("/b")
        store.empty()

    site.steps["/a"] = a
    assert site.get("/a").status_int == 409
    assert site.stored() == {"items": ["start"], "added": 1}


def test_replay_keeps_this_requests_deletes_and_empties(pair):
    site = _start(pair)
    site.steps["/seed"] = lambda s, _: [s.store("b").set("x", 1), s.store("a").set("gone", 1)]
    site.get("/seed")
    site.steps["/other"] = lambda s, _: s.store("c").set("from-b", 1)

    def a(session, run_b):
        session.store("a").delete("gone")
        session.store("b").empty()
        run_b("/other")

    site.steps["/a"] = a
    assert site.get("/a").status_int == 200
    assert site.stored("a") == {"items": ["start"]}
    assert site.stored("b") == {}
    assert site.stored("c") == {"from-b": 1}


# -- using() / set_values(): STM commits -----------------------------------------


def test_set_values_commits_now(pair):
    site = _start(pair)

    def a(session, _):
        store = session.store("a")
        collection = store.using("items", "missing")
        assert dict(collection) == {"items": ["start"]}
        collection["items"] = [*collection["items"], "a"]
        collection["new"] = 1
        collection.commit()
        # Stored before the response: another request sees it already.
        return (store.get("items"), session.id)

    site.steps["/a"] = a
    assert site.get("/a").status_int == 200
    assert site.results["/a"][0] == ["start", "a"]
    assert site.stored() == {"items": ["start", "a"], "new": 1}


def test_set_values_refuses_when_a_key_read_changed(pair):
    site = _start(pair)
    site.steps["/b"] = lambda s, _: s.store("a").set("items", ["start", "b"])

    def a(session, run_b):
        store = session.store("a")
        collection = store.using("items")
        run_b("/b")
        collection["items"] = [*collection["items"], "a"]
        collection["also"] = "with it"
        try:
            store.set_values(collection)
        except ConcurrentUpdate as exc:
            # Nothing was written; the store now shows the other request's value.
            return exc.keys, store.get("items"), store.get_default("also")
        return "committed"

    site.steps["/a"] = a
    assert site.get("/a").status_int == 200
    assert site.results["/a"] == ([("a", "items")], ["start", "b"], None)
    assert site.stored() == {"items": ["start", "b"]}


def test_set_values_ignores_a_concurrent_write_to_another_key(pair):
    site = _start(pair)
    site.steps["/b"] = lambda s, _: s.store("a").set("unrelated", "b")

    def a(session, run_b):
        var = session.store("a").usevar("items")
        run_b("/b")
        var.set([*var.value, "a"])
        var.commit()

    site.steps["/a"] = a
    assert site.get("/a").status_int == 200
    assert site.stored() == {"items": ["start", "a"], "unrelated": "b"}


def test_set_values_with_a_plain_mapping_only_sets(pair):
    site = _start(pair)
    site.steps["/b"] = lambda s, _: s.store("a").set("items", ["b"])

    def a(session, run_b):
        run_b("/b")
        session.store("a").set_values({"items": ["a"], "n": 1})

    site.steps["/a"] = a
    assert site.get("/a").status_int == 200
    assert site.stored() == {"items": ["a"], "n": 1}


# -- logins, logouts and double clicks ---------------------------------------------


def test_a_write_racing_a_logout_is_a_409_and_never_resurrects(pair):
    site = _start(pair)
    site.steps["/logout"] = lambda s, _: s.destroy()

    def a(session, run_b):
        session.store("a").update("items", append("a"), [])
        assert run_b("/logout").status_int == 200

    site.steps["/a"] = a
    response = site.get("/a")
    assert response.status_int == 409
    assert "Max-Age=0" in response.headers["Set-Cookie"]
    assert site.stored() == {}
    live = [r for r in site.mw.backend.get_all().values() if not r.is_tombstone]
    assert live == []


def test_a_double_clicked_login_stays_logged_in_with_the_cart(pair):
    site = _start(pair)
    cookies = {}

    def login(who):
        def step(session, _):
            session.store("a").items()  # the pre-login cart is read...
            session.regenerate()
            session.store("user").set("name", who)
            return session.id

        return step

    site.steps["/login-b"] = login("b")
    first = login("a")

    def a(session, run_b):
        session.store("a").get("items")
        response = run_b("/login-b")
        assert response.status_int == 200
        cookies["b"] = response.headers["Set-Cookie"]
        return first(session, run_b)

    site.steps["/login-a"] = a
    old_cookie = site.web.cookies["session"]
    response = site.get("/login-a")
    assert response.status_int == 200
    # Whichever response the browser keeps, it names a live, logged-in session
    # holding the pre-login cart; the pre-login id is dead.
    for header in (response.headers["Set-Cookie"], cookies["b"]):
        value = header.split(";")[0].split("=", 1)[1]
        browser = TestApp(site.mw)
        browser.set_cookie("session", value)
        site.web = browser
        assert site.stored("a") == {"items": ["start"]}
        assert site.stored("user")["name"] in ("a", "b")
    site.web = TestApp(site.mw)
    site.web.set_cookie("session", old_cookie)
    assert site.stored("a") == {}


def _login(who):
    def step(session, _):
        before = session.store("a").dump()  # what the login request sees first
        session.regenerate()
        session.store("user").set("name", who)
        return before

    return step


def _browser_with(site, header):
    """A browser holding the cookie that ``header`` sets."""
    browser = TestApp(site.mw)
    browser.set_cookie("session", header.split(";")[0].split("=", 1)[1])
    return browser


def test_a_write_racing_a_login_is_a_409_that_leaves_the_cookie_alone(pair):
    """The write is dropped (SPEC 6), but its response must not clear the
    cookie: arriving after the login's response, it would log the browser
    out of the session the login just made."""
    site = _start(pair)
    site.steps["/login-b"] = _login("b")
    cookies = {}

    def a(session, run_b):
        session.store("a").update("items", append("a"), [])
        response = run_b("/login-b")
        assert response.status_int == 200
        cookies["login"] = response.headers["Set-Cookie"]

    site.steps["/a"] = a
    response = site.get("/a")
    assert response.status_int == 409
    assert "Set-Cookie" not in response.headers
    site.web = _browser_with(site, cookies["login"])
    assert site.stored("a") == {"items": ["start"]}


def test_a_write_sent_before_a_login_and_handled_after_it_leaves_the_cookie_alone(pair):
    """A request still on its way with the pre-login cookie finds the id
    retired.  Starting a new session would send a cookie that, arriving
    last, logs the browser out: its writes are a 409 instead, cookie kept."""
    site = _start(pair)
    old_cookie = site.web.cookies["session"]
    site.steps["/login"] = _login("a")
    login = site.get("/login")
    site.steps["/late"] = lambda s, _: s.store("a").update("items", append("late"), [])
    late = TestApp(site.mw).get(
        "/late", headers={"Cookie": f"session={old_cookie}"}, expect_errors=True
    )
    assert late.status_int == 409 and "Set-Cookie" not in late.headers
    live = [r for r in site.mw.backend.get_all().values() if not r.is_tombstone]
    assert len(live) == 1  # the login's session, and no other
    site.web = _browser_with(site, login.headers["Set-Cookie"])
    assert site.stored("a") == {"items": ["start"]}


def test_a_second_click_handled_after_the_first_login_keeps_the_cart(pair):
    """The two clicks of a double-clicked login carry the pre-login cookie,
    but the second is only handled once the first has retired that id: it
    sees no session, and its login starts from what the session held."""
    site = _start(pair)
    old_cookie = site.web.cookies["session"]
    site.steps["/login-a"] = _login("a")
    site.steps["/login-b"] = _login("b")
    first = site.get("/login-a")
    second = TestApp(site.mw).get(
        "/login-b", headers={"Cookie": f"session={old_cookie}"}, expect_errors=True
    )
    assert (first.status_int, second.status_int) == (200, 200)
    assert site.results["/login-b"] == {}  # (the old id is dead: no session)
    for response, who in ((first, "a"), (second, "b")):
        site.web = _browser_with(site, response.headers["Set-Cookie"])
        assert site.stored("a") == {"items": ["start"]}
        assert site.stored("user") == {"name": who}
    site.web = TestApp(site.mw)
    site.web.set_cookie("session", old_cookie)
    assert site.stored("a") == {} and site.stored("user") == {}


def test_a_logged_in_session_regenerated_passes_nothing_to_its_old_cookie(pair):
    """A session bound to a user, regenerated (say, at a change of
    privileges): a request with the old (perhaps stolen) cookie that calls
    regenerate() gets neither the data nor the user."""
    site = _start(pair)
    site.steps["/bind"] = lambda s, _: s.bind_user("alice")
    assert site.get("/bind").status_int == 200
    old_cookie = site.web.cookies["session"]
    site.steps["/regenerate"] = lambda s, _: s.regenerate()
    assert site.get("/regenerate").status_int == 200
    site.steps["/again"] = lambda s, _: (s.regenerate(), s.user, s.store("a").dump())[1:]
    replay = TestApp(site.mw).get("/again", headers={"Cookie": f"session={old_cookie}"})
    assert replay.status_int == 200
    assert site.results["/again"] == (None, {})
    alices = [entry.session_id for entry in site.mw.sessions_of("alice")]
    assert alices == [site.web.cookies["session"].split(".")[0]]  # only the regenerated one
    assert site.stored("a") == {"items": ["start"]}


def test_a_retired_cookie_passes_nothing_on_after_the_double_click_window(pair):
    from sessionstore.regeneration import INHERIT_WINDOW

    clock = Clock()
    site = _start(pair, clock=clock)
    old_cookie = site.web.cookies["session"]
    site.steps["/login"] = _login("a")
    assert site.get("/login").status_int == 200
    clock.advance(INHERIT_WINDOW + 1)
    site.steps["/again"] = lambda s, _: (s.regenerate(), s.store("a").dump())[1]
    TestApp(site.mw).get("/again", headers={"Cookie": f"session={old_cookie}"})
    assert site.results["/again"] == {}


def _memory_site(**settings):
    """An Interleaved site on the memory backend, its clock injected."""
    clock = Clock()
    site = _start(lambda **kw: Interleaved(("memory", None), **kw), clock=clock, **settings)
    site.steps["/login"] = _login("a")
    site.steps["/again"] = lambda s, _: (s.regenerate(), s.store("a").dump())[1]
    return site, clock


def _again(site, *cookies):
    header = "; ".join(f"session={cookie}" for cookie in cookies)
    site.results.pop("/again", None)
    TestApp(site.mw).get("/again", headers={"Cookie": header}, expect_errors=True)
    return site.results.get("/again")


def test_an_old_signature_inherits_nothing_from_a_tombstone():
    """A cookie too old for the live session (a copy stolen long ago, while
    the visitor's own cookie was re-signed since) is too old for the
    tombstone of that session as well."""
    site, clock = _memory_site(timeout=600)
    stolen = site.web.cookies["session"]
    for _ in range(5):  # the visitor comes back every 200 s: re-signed
        clock.advance(200)
        site.steps["/visit"] = lambda s, _: s.store("a").get("items")
        assert site.get("/visit").status_int == 200
    assert site.get("/login").status_int == 200
    assert _again(site, stolen) == {}


def test_a_tombstone_among_other_session_cookies_passes_nothing_on():
    site, _ = _memory_site()
    planted = site.web.cookies["session"]
    assert site.get("/login").status_int == 200  # planted is now a tombstone
    other, _ = TestApp(site.mw), None
    site.web = other
    assert site.get("/start").status_int == 200
    live = other.cookies["session"]
    site.web = TestApp(site.mw)
    assert site.get("/start").status_int == 200
    second = site.web.cookies["session"]
    assert _again(site, planted, live, second) == {}  # two live ones: none trusted
    assert site.get("/login").status_int == 200  # second retired too
    assert _again(site, planted, second) == {}  # two tombstones: neither


def test_a_tombstones_data_is_no_payload_of_the_live_id(caplog):
    """Someone who can write to the store but lacks the secret strips the
    tombstone's prefix to make it a live record again: it is refused."""
    from sessionstore.backends.base import RETIRED

    site, _ = _memory_site()
    old_cookie = site.web.cookies["session"]
    old_id = old_cookie.split(".")[0]
    assert site.get("/login").status_int == 200
    tombstone = site.mw.backend.get(old_id)
    assert tombstone.payload.startswith(RETIRED)
    revived = tombstone._replace(
        version=tombstone.version + 1, payload=tombstone.payload[len(RETIRED) :]
    )
    assert site.mw.backend.compare_and_swap(old_id, tombstone.version, revived)
    site.steps["/read"] = lambda s, _: (s.id, s.store("a").dump())
    TestApp(site.mw).get("/read", headers={"Cookie": f"session={old_cookie}"})
    assert site.results["/read"] == (None, {})
    assert any("belongs to another session" in r.getMessage() for r in caplog.records)


def test_a_tombstone_passes_nothing_on_past_the_sessions_max_lifetime():
    site, clock = _memory_site(max_lifetime=100)
    old_cookie = site.web.cookies["session"]
    clock.advance(95)
    assert site.get("/login").status_int == 200
    clock.advance(6)  # inside the double-click window, past the lifetime
    before = set(site.mw.backend.get_all())
    assert _again(site, old_cookie) == {}
    assert set(site.mw.backend.get_all()) == before  # nothing stored, expired or not


def test_a_login_that_loses_to_another_keeps_what_was_acknowledged_meanwhile(pair):
    """A login reads the session; an append is acknowledged, then another
    click's login retires the id; this login's swap loses.  Its new session
    holds the append too (it had read the session before it)."""
    site = _start(pair)
    site.steps["/append"] = lambda s, _: s.store("a").update("items", append("meanwhile"), [])
    site.steps["/login-b"] = _login("b")

    def a(session, run_b):
        session.store("a").get("items")
        assert run_b("/append").status_int == 200
        assert run_b("/login-b").status_int == 200
        session.regenerate()
        session.store("user").set("name", "a")

    site.steps["/login-a"] = a
    response = site.get("/login-a")
    assert response.status_int == 200
    site.web = _browser_with(site, response.headers["Set-Cookie"])
    assert site.stored("a") == {"items": ["start", "meanwhile"]}
    assert site.stored("user") == {"name": "a"}


# -- writes while the body iterates, and after write() -------------------------------


def _drive(mw, app_cookie, check):
    """Run a request like a server: iterate the whole body, call ``check()``
    (the client now has the whole response), then close the body."""
    statuses = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "HTTP_COOKIE": app_cookie,
        "wsgi.url_scheme": "http",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
    }

    def start_response(status, headers, exc_info=None):
        statuses.append(status)
        return lambda data: None

    body = mw(environ, start_response)
    chunks = list(body)
    seen = check()
    close = getattr(body, "close", None)
    if close is not None:
        close()
    return statuses, chunks, seen


@pytest.mark.parametrize("shape", ["generator", "write-callable"])
def test_writes_after_the_headers_are_stored_before_the_client_has_the_body(backend, shape):
    kind, options = backend

    def app(environ, start_response):
        store = environ["session"].store("a")
        if shape == "generator":

            def body():
                start_response("200 OK", [("Content-Type", "text/plain")])
                yield b"first "
                store.update("items", append("during the body"), [])
                yield b"last"

            return body()
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"sent by write() ")
        store.update("items", append("after write()"), [])
        return [b"last"]

    mw = SessionMiddleware(app, secret=SECRET, backend=kind, backend_options=options)
    try:
        setup = TestApp(
            SessionMiddleware(
                lambda e, s: (e["session"].store("a").set("items", []), s("200 OK", []), [])[2],
                secret=SECRET,
                backend=mw.backend,
            )
        )
        setup.get("/")
        cookie = f"session={setup.cookies['session']}"
        [session_id] = [i for i, r in mw.backend.get_all().items() if not r.is_tombstone]
        reader = mw._manager.payloads

        def check():
            return pickle.loads(reader.loads(mw.backend.get(session_id))[0]["a"]["items"])

        statuses, chunks, stored = _drive(mw, cookie, check)
        assert statuses == ["200 OK"]
        assert b"".join(chunks).endswith(b"last")
        # Stored by the time the client had the whole body, before close().
        assert stored == ["during the body" if shape == "generator" else "after write()"]
    finally:
        mw.close()


def test_a_write_after_the_headers_that_cannot_commit_aborts_the_body(pair):
    site = _start(pair)
    mw = site.mw

    def app(environ, start_response):
        session = environ["session"]
        session.store("a").get("items")

        def body():
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"first"
            mw.backend.delete(session.id)  # a logout elsewhere, mid-body
            session.store("a").set("items", ["late"])
            yield b"last"

        return body()

    inner = SessionMiddleware(app, secret=SECRET, backend=mw.backend)
    cookie = f"session={site.web.cookies['session']}"
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "HTTP_COOKIE": cookie,
        "wsgi.url_scheme": "http",
    }
    body = inner(environ, lambda status, headers, exc_info=None: None)
    received = []
    with pytest.raises(ConcurrentUpdate):
        for chunk in body:
            received.append(chunk)
    consume(body)
    assert received == [b"first"]  # the client never gets a complete 200
    assert [r for r in mw.backend.get_all().values() if not r.is_tombstone] == []


def test_a_lost_update_after_the_headers_is_merged_and_logged_even_under_error(pair, caplog):
    """SPEC 6: once the headers are out, a conflict can no longer be a 409.
    Under on_conflict = error the write is merged (the later commit wins),
    the client gets its whole 200, and the lost update is logged and counted."""
    site = _start(pair)
    mw = site.mw

    def app(environ, start_response):
        session = environ["session"]
        items = session.store("a").get("items")

        def body():
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"first"
            other = mw._manager.payloads  # another request commits meanwhile:
            record = mw.backend.get(session.id)
            apps, expiry, binding, _ = other.decode(record)
            apps = {**apps, "a": {"items": pickle.dumps(["other"])}}
            payload = other.dumps(
                apps, expiry, record.session_id, record.created_at, record.expires_at, binding
            )
            changed = record._replace(version=record.version + 1, payload=payload)
            assert mw.backend.compare_and_swap(session.id, record.version, changed)
            session.store("a").set("items", [*items, "late"])  # read, then set
            yield b"last"

        return body()

    inner = SessionMiddleware(app, secret=SECRET, backend=mw.backend, on_conflict="error")
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "HTTP_COOKIE": f"session={site.web.cookies['session']}",
        "wsgi.url_scheme": "http",
    }
    with caplog.at_level(logging.WARNING, "sessionstore"):
        body = inner(environ, lambda status, headers, exc_info=None: None)
        received = list(body)
        consume(body)
    assert received == [b"first", b"last"]
    [record] = [r for r in mw.backend.get_all().values() if not r.is_tombstone]
    stored = pickle.loads(mw._manager.payloads.loads(record)[0]["a"]["items"])
    assert stored == ["start", "late"]  # the later commit won
    assert inner.stats()["lost_updates"] == 1
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "'a'" in warning and "'items'" in warning


# -- payloads bound to their record, on every backend ---------------------------------


@pytest.mark.parametrize("tamper", ["copied-to-another-id", "expiry-extended", "created-moved"])
def test_a_payload_moved_or_given_a_longer_life_in_the_store_is_refused(pair, tamper, caplog):
    """Whoever can write to the store, but has not the secret, cannot copy a
    victim's data into their own session, or stretch a session's life by
    editing its record's times: the payload is signed with both."""
    site = _start(pair)  # the victim
    [victim] = [r for r in site.mw.backend.get_all().values() if not r.is_tombstone]
    attacker = pair()
    attacker.steps["/start"] = lambda s, _: s.store("a").set("items", ["mine"])
    attacker.get("/start")
    [mine] = [
        r
        for r in attacker.mw.backend.get_all().values()
        if r.session_id != victim.session_id and not r.is_tombstone
    ]
    if tamper == "copied-to-another-id":
        forged = mine._replace(payload=victim.payload, version=mine.version + 1)
        site = attacker
    elif tamper == "expiry-extended":
        forged = victim._replace(expires_at=victim.expires_at + 10**6, version=victim.version + 1)
    else:
        forged = victim._replace(created_at=victim.created_at + 3600, version=victim.version + 1)
    site.mw.backend.add(forged)
    with caplog.at_level(logging.ERROR, "sessionstore"):
        seen = site.stored()
    assert seen == {}  # no session: nothing of the victim's data
    assert f"stored session {forged.session_id}" in caplog.text
    assert site.mw.backend.get(forged.session_id) == forged  # kept for an administrator


# -- the change log's own bookkeeping, replayed after a lost race ---------------------


def test_several_updates_of_one_key_in_one_request_all_replay(pair):
    site = _start(pair)
    site.steps["/b"] = lambda s, _: s.store("a").update("items", append("b"), [])

    def a(session, run_b):
        store = session.store("a")
        store.update("items", append("a1"), [])
        store.update("items", append("a2"), [])
        run_b("/b")

    site.steps["/a"] = a
    assert site.get("/a").status_int == 200
    assert site.stored() == {"items": ["start", "b", "a1", "a2"]}


def test_what_was_set_before_an_empty_stays_emptied_on_replay(pair):
    site = _start(pair)
    site.steps["/b"] = lambda s, _: s.store("other").set("x", 1)

    def a(session, run_b):
        store = session.store("a")
        store.set("gone", "set, then emptied")
        store.empty()
        store.set("after", "kept")
        run_b("/b")

    site.steps["/a"] = a
    assert site.get("/a").status_int == 200
    assert site.stored() == {"after": "kept"}
    assert site.stored("other") == {"x": 1}


def test_a_refused_set_values_keeps_the_requests_earlier_changes(pair):
    """set_values() refuses only the collection: what the request changed
    before it stays pending, replayed on the fresh data, and is committed at
    response time."""
    site = _start(pair)
    site.steps["/b"] = lambda s, _: s.store("a").set("items", ["b"])

    def a(session, run_b):
        store = session.store("a")
        store.update("count", lambda n: n + 1, 0)  # pending before using()
        store.set("note", "before using")
        collection = store.using("items")
        run_b("/b")
        collection["items"] = ["a"]
        with pytest.raises(ConcurrentUpdate):
            collection.commit()
        return store.get("count"), store.get("note"), store.get("items")

    site.steps["/a"] = a
    assert site.get("/a").status_int == 200
    assert site.results["/a"] == (1, "before using", ["b"])
    assert site.stored() == {"items": ["b"], "count": 1, "note": "before using"}


def test_a_whole_read_after_a_key_read_counts_as_reading_everything(pair):
    site = _start(pair, on_conflict="error")
    site.steps["/b"] = lambda s, _: s.store("a").set("added", 1)

    def a(session, run_b):
        store = session.store("a")
        store.get("items")  # one key first...
        assert len(store) == 1  # ...then everything
        run_b("/b")
        store.empty()

    site.steps["/a"] = a
    assert site.get("/a").status_int == 409
    assert site.stored() == {"items": ["start"], "added": 1}


def test_a_failing_replay_raises_update_failed_naming_app_and_key(pair):
    from sessionstore import UpdateFailed

    site = _start(pair)
    site.steps["/b"] = lambda s, _: s.store("a").set("items", 42)

    def a(session, run_b):
        session.store("a").update("items", append("a"), [])
        run_b("/b")
        try:
            session.commit()
        except UpdateFailed as exc:
            return exc.app, exc.key, type(exc.__cause__).__name__
        return "committed"

    site.steps["/a"] = a
    site.get("/a")
    assert site.results["/a"] == ("a", "items", "TypeError")
    assert site.stored() == {"items": 42}


def test_an_update_whose_result_cannot_be_pickled_raises_update_failed(pair):
    from sessionstore import UpdateFailed

    site = _start(pair)

    def a(session, _):
        try:
            session.store("a").update("items", lambda items: lambda: None, [])
        except UpdateFailed as exc:
            return exc.key, "not picklable" in str(exc)
        return "stored"

    site.steps["/a"] = a
    site.get("/a")
    assert site.results["/a"] == ("items", True)
    assert site.stored() == {"items": ["start"]}


def test_every_key_read_is_remembered(pair, caplog):
    site = _start(pair)
    site.steps["/seed"] = lambda s, _: s.store("a").set("second", 0)
    site.get("/seed")
    site.steps["/b"] = lambda s, _: s.store("a").set("second", 1)

    def a(session, run_b):
        store = session.store("a")
        store.get("items")
        seen = store.get("second")  # the second key read
        run_b("/b")
        store.set("second", seen + 10)

    site.steps["/a"] = a
    with caplog.at_level(logging.WARNING, "sessionstore"):
        assert site.get("/a").status_int == 200
    assert "lost update of application 'a', key 'second'" in caplog.text
