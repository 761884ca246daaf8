"""Stored payloads: the MAC, and the memo of payloads already verified."""

from __future__ import annotations

import hmac
import pickle
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionstore import BackendError
from sessionstore.backends.base import Record
from sessionstore.errors import DamagedRecord
from sessionstore.payload import MAC_SIZE, PayloadCodec, _derive, _Mac
from sessionstore.testing import in_forked_child, run_threads

from .conftest import SessionClient


@given(secret=st.text(min_size=1, max_size=80), message=st.binary(max_size=5000))
def test_the_precomputed_mac_is_hmac_sha256(secret, message):
    key = _derive(secret)
    assert _Mac(key).sign(message) == hmac.digest(key, message, "sha256")


def test_a_payload_changed_in_the_store_is_verified_again():
    ours, theirs = PayloadCodec(("ours",)), PayloadCodec(("theirs",))
    good = _record(ours.dumps({"a": {"k": b"v"}}, None, "sid", 1.0, 2.0))
    assert ours.loads(good) == ({"a": {"k": b"v"}}, None)
    planted = _record(theirs.dumps({"a": {"k": b"evil"}}, None, "sid", 1.0, 2.0))
    with pytest.raises(BackendError, match="bad signature"):
        ours.loads(planted)
    assert ours.loads(good) == ({"a": {"k": b"v"}}, None)


def test_no_two_payloads_share_a_token_across_threads_and_forked_workers():
    """The token tells a backend whether *its* write was applied (issue 13):
    it must never repeat, in threads of one process or in a forked worker."""
    codec = PayloadCodec(("s",))

    def token():
        return pickle.loads(codec.dumps({}, None, "sid", 1.0, 2.0)[MAC_SIZE:])[5]

    seen: set[bytes] = set()
    lock = threading.Lock()

    def sign_many(_):
        mine = [token() for _ in range(500)]
        with lock:
            seen.update(mine)

    run_threads(sign_many, 8)
    assert len(seen) == 8 * 500
    assert all(len(t) == 16 for t in seen)
    parent = token()
    # A pre-fork server's workers start from the same memory: each draws a
    # prefix of its own, so the counter starting where the parent's was is fine.
    assert in_forked_child(lambda: token()[:8] != parent[:8] and token() not in seen)


def _record(payload, session_id="sid", created_at=1.0, expires_at=2.0):
    return Record(session_id, 1, created_at, created_at, expires_at, payload)


@pytest.mark.parametrize(
    "moved",
    [
        pytest.param({"session_id": "other"}, id="copied-to-another-id"),
        pytest.param({"created_at": 0.5}, id="created-earlier"),
        pytest.param({"expires_at": 3.0}, id="expiry-extended"),
    ],
)
def test_a_payload_is_bound_to_its_id_and_times(moved):
    """Whoever can write to the store cannot move a signed payload to another
    session, or give it a longer life by editing the record's times."""
    codec = PayloadCodec(("ours",))
    payload = codec.dumps({"a": {"k": b"v"}}, None, "sid", 1.0, 2.0)
    for fresh in (codec, PayloadCodec(("ours",))):  # remembered, and read afresh
        with pytest.raises(DamagedRecord):
            fresh.loads(_record(payload, **{"session_id": "sid", **moved}))
        assert fresh.loads(_record(payload)) == ({"a": {"k": b"v"}}, None)


def test_no_two_commits_store_the_same_bytes():
    codec = PayloadCodec(("ours",))
    same = [codec.dumps({"a": {"k": b"v"}}, None, "sid", 1.0, 2.0) for _ in range(2)]
    assert same[0] != same[1]


def test_a_failed_request_leaves_nothing_behind_for_the_next_one(clock):
    """The decoded data of a payload is shared by the requests that read it:
    one request's uncommitted changes must not show in the next."""
    client = SessionClient(clock=clock)
    client.run(_seed)

    def change_then_fail(session):
        a, b = session.store("a"), session.store("b")
        a["k"] = "changed"
        del a["gone"]
        a.empty()
        b["new"] = 1

    _, response = client.run(
        change_then_fail, status="500 Internal Server Error", expect_errors=True
    )
    assert response.status_int == 500
    seen, _ = client.run(lambda s: (s.store("a").items(), s.store("b").keys()))
    assert sorted(seen[0]) == [("gone", 2), ("k", "v")]
    assert seen[1] == []


def _seed(session):
    session.store("a").set("k", "v")
    session.store("a").set("gone", 2)


def test_a_second_process_sees_every_change_of_the_first(tmp_path, clock):
    """Two middlewares (as two processes would) on one SQLite file: each
    request sees the other's latest commit, never a remembered older one."""
    options = {"filename": str(tmp_path / "s.db")}
    first = SessionClient("sqlite", options, clock=clock)
    second = SessionClient("sqlite", options, clock=clock)
    first.run(lambda s: s.store("a").set("n", 0))
    second.web.set_cookie("session", first.cookie())
    for n in range(1, 6):
        writer, reader = (first, second) if n % 2 else (second, first)
        writer.run(lambda s: s.store("a").set("n", s.store("a")["n"] + 1))
        seen, _ = reader.run(lambda s: s.store("a")["n"])
        assert seen == n
