"""SessionMiddleware.stats(): every counter moves when, and only when, its event happens."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from webtest import TestApp

from sessionstore import SessionMiddleware
from sessionstore.stats import NAMES

from .conftest import Clock

SECRET = "test-secret-for-the-stats-counters-0123"


class Site:
    def __init__(self, **settings):
        settings.setdefault("backend", "memory")
        settings.setdefault("cleanup_probability", 0)
        self.clock = Clock()
        self.mw = SessionMiddleware(self._app, secret=SECRET, clock=self.clock, **settings)
        self.web = TestApp(self.mw)

    @staticmethod
    def _app(environ, start_response):
        environ["test.fn"](environ["session"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    def run(self, fn, web=None):
        return (web or self.web).get("/", extra_environ={"test.fn": fn}, expect_errors=True)

    def moved(self, fn, web=None):
        """Which counters ``fn``'s request moved, and by how much."""
        before = self.mw.stats()
        self.run(fn, web)
        after = self.mw.stats()
        return {name: after[name] - before[name] for name in NAMES if after[name] != before[name]}


def write(session):
    session.store("a")["k"] = "v"


def test_the_counters_are_named_and_start_at_zero():
    site = Site()
    assert site.mw.stats() == dict.fromkeys(NAMES, 0)
    assert list(site.mw.stats()) == list(NAMES)


def test_each_event_moves_its_counter():
    site = Site(cleanup_probability=1.0, chance=lambda: 0.0)
    assert site.moved(write) == {"created": 1, "commits": 1}
    assert site.moved(lambda s: s.store("a").get("k")) == {"requests": 1}
    assert site.moved(lambda s: s.regenerate()) == {"requests": 1, "regenerated": 1, "commits": 1}
    site.clock.advance(86400 * 2)  # the session expires...
    other = TestApp(site.mw)
    moved = site.moved(write, other)  # ...and the next commit's cleanup removes it,
    # with the tombstone its regenerate() left under the old id
    assert moved == {"created": 1, "commits": 1, "cleanup_deleted": 2}
    assert site.moved(lambda s: s.destroy(), other) == {"requests": 1, "destroyed": 1}


@pytest.mark.parametrize(("mode", "expected"), [("merge", "lost_updates"), ("error", "conflicts")])
def test_conflicts_retries_and_lost_updates_are_counted(mode, expected):
    site = Site(on_conflict=mode)
    site.run(write)
    other = TestApp(site.mw, cookiejar=site.web.cookiejar)

    def read_then_write(session):
        session.store("a").get("k")
        site.run(lambda s: s.store("a").set("k", "other"), other)  # commits in between
        session.store("a")["k"] = "mine"

    moved = site.moved(read_then_write)
    assert moved[expected] == 1 and moved["retries"] == 1, moved


def test_a_session_ended_by_another_request_is_a_counted_conflict():
    """Its writes dropped and a 409 sent: one conflict, as SPEC 11 counts them."""
    site = Site()
    site.run(write)
    other = TestApp(site.mw, cookiejar=site.web.cookiejar)

    def logged_out_meanwhile(session):
        session.store("a").get("k")
        site.run(lambda s: s.destroy(), other)
        session.store("a")["k"] = "mine"

    before = site.mw.stats()
    response = site.run(logged_out_meanwhile)
    assert response.status_int == 409
    assert site.mw.stats()["conflicts"] - before["conflicts"] == 1


def test_busy_backend_errors_and_damaged_records_are_counted(tmp_path):
    path = str(tmp_path / "s.db")
    site = Site(backend="sqlite", backend_options={"filename": path}, busy_timeout=0.05)
    try:
        site.run(write)
        locker = sqlite3.connect(path, isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")
            assert site.moved(write)["busy"] == 1  # 503
            locker.execute("ROLLBACK")
            [record] = site.mw.backend.get_all().values()
            locker.execute("UPDATE sessions SET payload = ?", (b"\0" * 40,))
            assert site.moved(lambda s: s.store("a").get_default("k")) == {"damaged_records": 1}
            locker.execute("UPDATE sessions SET payload = ?", (record.payload,))
            locker.execute("DROP TABLE sessions")
            assert site.moved(lambda s: s.store("a").get_default("k")) == {"backend_errors": 1}
        finally:
            locker.close()
    finally:
        site.mw.close()


def test_threads_count_without_losing_a_count():
    site = Site()
    barrier = threading.Barrier(8)

    def many(n):
        barrier.wait()
        for _ in range(200):
            site.mw._manager.counters.add("commits")

    threads = [threading.Thread(target=many, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    assert site.mw.stats()["commits"] == 1600


def test_each_warning_and_error_names_the_session(tmp_path, caplog):
    """SPEC 11: the logger names the session id in every warning and error
    (busy, a failed store, a failed refresh of the idle clock)."""
    path = str(tmp_path / "s.db")
    site = Site(backend="sqlite", backend_options={"filename": path}, busy_timeout=0.05)
    try:
        site.run(write)
        [session_id] = site.mw.backend.get_all()
        locker = sqlite3.connect(path, isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")
            with caplog.at_level("WARNING", "sessionstore"):
                assert site.run(write).status_int == 503
                site.clock.advance(120)  # past touch_interval: a read refreshes
                assert site.run(lambda s: s.store("a").get("k")).status_int == 200
            locker.execute("ROLLBACK")
            locker.execute("DROP TABLE sessions")
            with caplog.at_level("WARNING", "sessionstore"):
                assert site.run(write).status_int == 500
        finally:
            locker.close()
    finally:
        site.mw.close()
    records = [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert len(records) >= 3
    for record in records:
        assert session_id in record.getMessage(), record.getMessage()


def test_a_failed_cleanup_is_logged_naming_the_session_and_the_write_stands(caplog):
    """A request that draws cleanup after its commit: a failing purge is
    logged with the request's session id, and the 200 stays true."""
    from sessionstore import BackendError
    from sessionstore.backends.memory import MemoryBackend

    class PurgeFails(MemoryBackend):
        def delete_expired(self, now, limit=None):
            raise BackendError("the purge failed")

    site = Site(backend=PurgeFails(), cleanup_probability=1)
    with caplog.at_level("WARNING", "sessionstore"):
        assert site.run(write).status_int == 200
    [session_id] = site.mw.backend.get_all()
    [record] = [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert "cleanup failed" in record.getMessage() and session_id in record.getMessage()
