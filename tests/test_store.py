"""Every row of the Store table (SPEC section 4), across real requests."""

from __future__ import annotations

import threading

import pytest

from sessionstore import InvalidAppName


def test_set_reports_new_then_overwritten(client):
    assert client.run(lambda s: s.store("a").set("k", 1))[0] is True
    assert client.run(lambda s: s.store("a").set("k", 2))[0] is False
    assert client.run(lambda s: s.store("a").get("k"))[0] == 2


def test_get_missing_raises_keyerror_or_returns_default(client):
    def probe(session):
        store = session.store("a")
        with pytest.raises(KeyError):
            store.get("nope")
        with pytest.raises(KeyError):
            store["nope"]
        return store.get("nope", 7), store.get_default("nope"), store.get_default("nope", 8)

    assert client.run(probe)[0] == (7, None, 8)


def test_delete_returns_true_raises_or_ignores(client):
    client.run(lambda s: s.store("a").set("k", 1))

    def probe(session):
        store = session.store("a")
        first = store.delete("k")
        with pytest.raises(KeyError):
            store.delete("k")
        return first, store.delete("k", ignore_keyerror=True)

    assert client.run(probe)[0] == (True, False)
    assert client.run(lambda s: "k" in s.store("a"))[0] is False


def test_pop_and_pop_default(client):
    client.run(lambda s: (s.store("a").set("x", [1]), s.store("a").set("y", 2)))

    def probe(session):
        store = session.store("a")
        popped = store.pop("x")
        with pytest.raises(KeyError):
            store.pop("x")
        return popped, store.pop("x", "d"), store.pop_default("y"), store.pop_default("y", 9)

    assert client.run(probe)[0] == ([1], "d", 2, 9)
    assert client.run(lambda s: s.store("a").keys())[0] == []


def test_membership_three_ways(client):
    client.run(lambda s: s.store("a").set("k", None))
    result = client.run(
        lambda s: (
            s.store("a").has_key("k"),
            s.store("a").exists("k"),
            "k" in s.store("a"),
            "other" in s.store("a"),
            3 in s.store("a"),
        )
    )[0]
    assert result == (True, True, True, False, False)


def test_keys_values_items_len_iter_are_snapshots(client):
    client.run(lambda s: [s.store("a").set(k, v) for k, v in {"x": 1, "y": 2}.items()])

    def probe(session):
        store = session.store("a")
        keys, values, items = store.keys(), store.values(), store.items()
        keys.append("z")  # mutating a snapshot writes nothing
        iterated = sorted(store)
        return sorted(keys), sorted(values), sorted(items), len(store), iterated

    assert client.run(probe)[0] == (["x", "y", "z"], [1, 2], [("x", 1), ("y", 2)], 2, ["x", "y"])
    assert client.run(lambda s: sorted(s.store("a").keys()))[0] == ["x", "y"]


def test_item_syntax(client):
    def write(session):
        store = session.store("a")
        store["k"] = "v"
        store["gone"] = 1
        del store["gone"]
        with pytest.raises(KeyError):
            del store["gone"]

    client.run(write)
    assert client.run(lambda s: (s.store("a")["k"], len(s.store("a"))))[0] == ("v", 1)


def test_empty_and_flush_clear_only_their_application(client):
    client.run(lambda s: (s.store("a").set("k", 1), s.store("b").set("k", 2)))
    client.run(lambda s: s.store("a").empty())
    assert client.run(lambda s: (len(s.store("a")), s.store("b")["k"], s.apps()))[0] == (
        0,
        2,
        ["b"],
    )
    client.run(lambda s: s.store("b").flush())
    client.run(lambda s: s.store("b").flush())  # flushing an empty store is fine
    assert client.run(lambda s: (s.exists, s.apps()))[0] == (True, [])


def test_two_applications_share_a_cookie_with_disjoint_stores(client):
    client.run(lambda s: (s.store("shop").set("items", ["book"]), s.store("prefs").set("items", 3)))
    cookie = client.cookie()
    client.run(lambda s: s.store("shop").delete("items"))
    assert client.cookie() == cookie
    result = client.run(lambda s: (s.store("shop").get_default("items"), s.store("prefs")["items"]))
    assert result[0] == (None, 3)


def test_app_attribute_retargets(client):
    client.run(lambda s: (s.store("a").set("k", "in a"), s.store("b").set("k", "in b")))

    def probe(session):
        store = session.store("a")
        first = store.get("k")
        store.app = "b"
        with pytest.raises(InvalidAppName):
            store.app = "not valid"
        return first, store.app, store.get("k")

    assert client.run(probe)[0] == ("in a", "b", "in b")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("a b", id="space"),
        pytest.param("x" * 256, id="too-long"),
        pytest.param("caf\u00e9", id="non-ascii"),
        pytest.param("../etc", id="path"),
        pytest.param("a\nb", id="newline"),
        pytest.param(None, id="none"),
        pytest.param(5, id="int"),
    ],
)
def test_invalid_app_names_are_refused_by_name(client, name):
    def probe(session):
        with pytest.raises(InvalidAppName) as info:
            session.store(name)
        return info.value

    error = client.run(probe)[0]
    assert isinstance(error, ValueError)
    assert repr(name)[:50] in str(error)


def test_valid_app_name_edges(client):
    names = ["a", "x" * 255, "My_app-1.2"]
    client.run(lambda s: [s.store(n).set("k", n) for n in names])
    assert sorted(client.run(lambda s: s.apps())[0]) == sorted(names)


def test_keys_must_be_nonempty_str(client):
    def probe(session):
        store = session.store("a")
        with pytest.raises(TypeError):
            store.set(1, "v")
        with pytest.raises(ValueError):
            store.set("", "v")
        with pytest.raises(TypeError):
            store.get(b"k")
        return "checked"

    assert client.run(probe)[0] == "checked"


def test_unpicklable_value_raises_typeerror_and_changes_nothing(client):
    client.run(lambda s: s.store("a").set("k", "old"))
    cookie = client.cookie()

    def probe(session):
        with pytest.raises(TypeError) as info:
            session.store("a").set("k", threading.Lock())
        return str(info.value)

    message, response = client.run(probe)
    assert "'a'" in message and "'k'" in message
    assert "Set-Cookie" not in response.headers
    assert client.run(lambda s: s.store("a")["k"])[0] == "old"
    assert client.cookie() == cookie


def test_unpicklable_first_write_creates_no_session(client):
    def probe(session):
        with pytest.raises(TypeError):
            session.store("a").set("k", lambda: None)

    _, response = client.run(probe)
    assert "Set-Cookie" not in response.headers
    assert client.backend.count() == 0


def test_emptying_a_store_without_a_session_creates_none(client):
    """empty() with no session has nothing to empty: like a delete of a
    missing key, it starts no session (no record, no cookie)."""

    def probe(session):
        session.store("a").empty()
        session.store("b").flush()
        return session.id

    session_id, response = client.run(probe)
    assert session_id is None and "Set-Cookie" not in response.headers
    assert client.backend.count() == 0
    client.run(lambda s: s.store("a").set("k", 1))
    client.run(lambda s: s.store("a").empty())  # with a session: emptied
    assert client.run(lambda s: dict(s.store("a").items()))[0] == {}


def test_values_are_snapshots_and_come_back_as_copies(client):
    def write(session):
        value = {"items": [1]}
        session.store("a").set("k", value)
        value["items"].append("changed after set")
        returned = session.store("a").get("k")
        returned["items"].append("changed after get")
        return session.store("a").get("k")

    assert client.run(write)[0] == {"items": [1]}
    assert client.run(lambda s: s.store("a").get("k"))[0] == {"items": [1]}


# -- max_value_size and max_session_size (SPEC section 5) --------------------------


def _limited(clock, **settings):
    from tests.conftest import SessionClient

    return SessionClient(clock=clock, max_value_size=1000, max_session_size=2500, **settings)


def _refused(fn):
    """Run ``fn``, expecting the size ValueError; return its message."""

    def probe(session):
        with pytest.raises(ValueError) as info:
            fn(session)
        return str(info.value)

    return probe


def test_a_value_over_max_value_size_is_refused_by_name_and_changes_nothing(clock):
    client = _limited(clock)
    client.run(lambda s: s.store("a").set("k", "old"))
    message, response = client.run(_refused(lambda s: s.store("a").set("k", "x" * 1000)))
    assert "'a'" in message and "'k'" in message and "max_value_size is 1000" in message
    assert "Set-Cookie" not in response.headers
    assert client.run(lambda s: s.store("a")["k"])[0] == "old"
    # Just under the limit (the pickle adds a few bytes to the string) is fine.
    client.run(lambda s: s.store("a").set("k", "x" * 950))
    assert client.run(lambda s: len(s.store("a")["k"]))[0] == 950


def test_the_session_limit_counts_what_is_stored_from_earlier_requests(clock):
    client = _limited(clock)
    for key in ("a", "b"):
        client.run(lambda s, key=key: s.store("app").set(key, "x" * 900))
    # A third 900-byte value fits in no request: the two stored ones count.
    message, _ = client.run(_refused(lambda s: s.store("app").set("c", "x" * 900)))
    assert "'app'" in message and "'c'" in message and "max_session_size is 2500" in message
    message, _ = client.run(_refused(lambda s: s.store("other").update("c", lambda v: "x" * 900)))
    assert "'other'" in message and "'c'" in message
    assert client.run(lambda s: sorted(s.store("app").keys()) + s.store("other").keys())[0] == [
        "a",
        "b",
    ]
    # Overwriting a value replaces its size rather than adding to it.
    client.run(lambda s: s.store("app").set("a", "y" * 900))
    # Deleting, or emptying an application, makes room again, even within one request.
    client.run(lambda s: (s.store("app").delete("a"), s.store("app").set("c", "x" * 900)))
    client.run(lambda s: (s.store("app").empty(), s.store("app").set("d", "x" * 900)))
    assert client.run(lambda s: s.store("app").keys())[0] == ["d"]


def test_writes_of_one_request_add_up_against_the_session_limit(clock):
    client = _limited(clock)

    def three(session):
        store = session.store("a")
        store.set("k1", "x" * 900)
        store.set("k2", "x" * 900)
        with pytest.raises(ValueError):
            store.set("k3", "x" * 900)
        return store.keys()

    assert client.run(three)[0] == ["k1", "k2"]
    assert client.run(lambda s: sorted(s.store("a").keys()))[0] == ["k1", "k2"]


def test_set_values_over_the_session_limit_writes_none_of_its_keys(clock):
    client = _limited(clock)
    client.run(lambda s: s.store("a").set("k", "x" * 900))

    def probe(session):
        store = session.store("a")
        values = store.using("p", "q")
        values["p"] = "x" * 900
        values["q"] = "x" * 900
        with pytest.raises(ValueError) as info:
            store.set_values(values)
        return str(info.value)

    message, _ = client.run(probe)
    assert "'q'" in message
    assert client.run(lambda s: sorted(s.store("a").keys()))[0] == ["k"]
    # Half of it fits.
    client.run(lambda s: s.store("a").set_values({"p": "x" * 900}))
    assert client.run(lambda s: sorted(s.store("a").keys()))[0] == ["k", "p"]


def test_updates_of_one_request_add_up_against_the_session_limit(clock):
    client = _limited(clock)

    def three(session):
        store = session.store("a")
        store.update("k1", lambda v: "x" * 900)
        store.update("k2", lambda v: "x" * 900)
        with pytest.raises(ValueError):
            store.update("k3", lambda v: "x" * 900)
        return store.keys()

    assert client.run(three)[0] == ["k1", "k2"]


def test_set_values_counts_against_the_limit_for_later_writes_of_the_request(clock):
    client = _limited(clock)
    client.run(lambda s: s.store("a").set("k", "x" * 900))

    def probe(session):
        store = session.store("a")
        store.set_values({"p": "x" * 900})  # committed now; fits
        with pytest.raises(ValueError):
            store.set("q", "x" * 900)

    client.run(probe)
    assert client.run(lambda s: sorted(s.store("a").keys()))[0] == ["k", "p"]


def test_a_key_removed_from_a_collection_is_deleted_by_set_values(client):
    client.run(lambda s: (s.store("a").set("gone", 1), s.store("a").set("kept", 2)))

    def probe(session):
        store = session.store("a")
        values = store.using("gone", "kept")
        del values["gone"]
        store.set_values(values)

    client.run(probe)
    assert client.run(lambda s: s.store("a").dump())[0] == {"kept": 2}
