"""Several cookies with our name: junk, stale ones, and ones tossed from a
sibling subdomain.  Junk never hides the real cookie; two live sessions give
neither; the client's id is never adopted."""

from __future__ import annotations

import pytest

from sessionstore import SessionMiddleware
from sessionstore.cookies import MAX_CANDIDATES
from sessionstore.ids import new_session_id

from .test_security import SECRET, Site, _gone_id, sign


@pytest.fixture
def site(clock):
    return Site(clock)


def _other_live_session(site):
    """A second genuine session (the attacker's own) and a cookie for it."""
    site.client.web.reset()
    before = set(site.client.backend.get_all())
    site.client.run(lambda s: s.store("bank").set("owner", "attacker"))
    [attacker_id] = set(site.client.backend.get_all()) - before
    site.client.web.reset()
    return attacker_id, site.sign(attacker_id)


def _read_only(site, header, **kwargs):
    site.client.web.reset()
    return site.client.run(
        lambda s: (s.id, s.store("bank").get_default("owner")), headers={"Cookie": header}, **kwargs
    )


@pytest.mark.parametrize(
    "junk",
    [
        pytest.param(["x"] * 4, id="four-x"),
        pytest.param([""] * 4, id="four-empty"),
        pytest.param(["A" * 5000] * 4, id="four-oversized"),
        pytest.param(['"x"'] * 4, id="four-quoted"),
        pytest.param(["a" * 44 + ".AAAAAA." + "b" * 42] * 4, id="four-one-short"),
        pytest.param([f"x{i}" for i in range(200)], id="two-hundred"),
    ],
)
def test_junk_cookies_never_hide_the_real_one(site, junk):
    header = "; ".join([f"session={v}" for v in junk] + [f"session={site.victim_cookie}"])
    seen, response = _read_only(site, header)
    assert response.status_int == 200
    assert seen == (site.victim_id, "victim")


def test_fifteen_well_shaped_forgeries_do_not_hide_the_real_cookie(site):
    forged = [site.sign(new_session_id(), secret="x" * 32) for _ in range(15)]
    header = "; ".join(f"session={v}" for v in [*forged, site.victim_cookie])
    assert _read_only(site, header)[0] == (site.victim_id, "victim")


def test_too_many_well_shaped_forgeries_mean_no_session_never_a_500(site):
    # Verification work is bounded (MAX_CANDIDATES HMACs); beyond it, no session.
    forged = [site.sign(new_session_id(), secret="x" * 32) for _ in range(MAX_CANDIDATES)]
    header = "; ".join(f"session={v}" for v in [*forged, site.victim_cookie])
    seen, response = _read_only(site, header)
    assert response.status_int == 200 and seen == (None, None)


@pytest.mark.parametrize("attacker_first", [True, False], ids=["attacker-first", "victim-first"])
def test_two_live_sessions_give_neither_and_clear_the_cookie(site, attacker_first):
    attacker_id, attacker_cookie = _other_live_session(site)
    pair = [f"session={attacker_cookie}", f"session={site.victim_cookie}"]
    header = "; ".join(pair if attacker_first else pair[::-1])
    seen, response = _read_only(site, header)
    assert response.status_int == 200 and seen == (None, None)
    [cleared] = response.headers.getall("Set-Cookie")
    assert cleared.startswith("session=;") and "Max-Age=0" in cleared
    # A write then starts a fresh session: neither the victim's nor the attacker's.
    seen, response = site.probe(header)
    site.assert_no_session_adopted(seen, response)
    assert site.client.backend.get(attacker_id) is not None


def test_a_tossed_cookie_on_a_longer_path_cannot_carry_the_victim_into_it(clock):
    """The browser sends the more specific path first: that cookie used to win."""
    site = Site(clock)
    attacker_id, attacker_cookie = _other_live_session(site)
    header = f"session={attacker_cookie}; session={site.victim_cookie}"  # /account first
    seen, _ = _read_only(site, header, url="/account")
    assert seen[0] != attacker_id and seen[1] != "attacker"


def test_the_same_session_twice_is_one_candidate(site):
    again = site.sign(site.victim_id, clock=lambda: site.clock() - 5)
    header = f"session={site.victim_cookie}; session={again}"
    assert _read_only(site, header)[0] == (site.victim_id, "victim")


@pytest.mark.parametrize("dead_first", [True, False], ids=["dead-first", "live-first"])
def test_a_dead_cookie_beside_the_live_one_is_ignored(site, dead_first):
    dead = _gone_id(site, "destroyed")
    pair = [dead, f"session={site.victim_cookie}"]
    header = "; ".join(pair if dead_first else pair[::-1])
    seen, response = _read_only(site, header)
    assert seen == (site.victim_id, "victim")
    assert "Set-Cookie" not in response.headers


def test_the_cookie_reader_skips_junk_before_counting(clock):
    mw = SessionMiddleware(lambda e, s: [], secret=SECRET, backend="memory", clock=clock)
    real = sign(new_session_id(), clock)
    junk = "; ".join(f"session={v}" for v in ["x", "", "A" * 300, '"q"', real[:-1]] * 10)
    found = mw._manager.cookies.read(f"{junk}; session={real}")
    assert [c.session_id for c in found] == [real.split(".")[0]]
