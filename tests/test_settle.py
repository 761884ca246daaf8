"""Backend.settle: a compare-and-swap whose reply was lost is decided by
reading back, on any backend (here the memory one, with the losses injected
into its swap; the proxy tests do it on the wire)."""

from __future__ import annotations

import pytest

from sessionstore import BusyRetry
from sessionstore.backends.base import OutcomeUnknown, Record
from sessionstore.backends.memory import MemoryBackend
from sessionstore.testing import make_record


class LossyBackend(MemoryBackend):
    """Each swap follows the next entry of ``faults``: ``"ok"`` (plain),
    ``"lost reply"`` (applied, then the reply is lost), ``"lost command"``
    (never applied, no reply), ``"late copy"`` (a copy of the swap arrives
    and applies just before this send, whose own reply is lost)."""

    def __init__(self, faults: list[str]) -> None:
        super().__init__()
        self.faults = faults
        self.sent = 0

    def compare_and_swap(
        self, session_id: str, expected_version: int | None, record: Record | None
    ) -> bool:
        def swap() -> bool:
            self.sent += 1
            fault = self.faults.pop(0) if self.faults else "ok"
            if fault == "lost command":
                raise OutcomeUnknown(session_id)
            if fault == "late copy":
                super(LossyBackend, self).compare_and_swap(session_id, expected_version, record)
            applied = super(LossyBackend, self).compare_and_swap(
                session_id, expected_version, record
            )
            if fault == "lost reply":
                raise OutcomeUnknown(session_id)
            return applied

        return self.settle(session_id, expected_version, record, swap)


def stored(version: int = 1, payload: bytes = b"old") -> tuple[LossyBackend, Record]:
    backend = LossyBackend([])
    record = make_record(version=version, payload=payload)
    backend.add(record)
    return backend, record


def test_an_applied_swap_whose_reply_was_lost_is_a_success_sent_once():
    backend, old = stored()
    backend.faults = ["lost reply"]
    new = old._replace(version=2, payload=b"new")
    assert backend.compare_and_swap(old.session_id, 1, new) is True
    assert backend.get(old.session_id) == new
    assert backend.sent == 1


def test_a_swap_that_never_arrived_is_sent_again():
    backend, old = stored()
    backend.faults = ["lost command"]
    new = old._replace(version=2, payload=b"new")
    assert backend.compare_and_swap(old.session_id, 1, new) is True
    assert backend.sent == 2


def test_a_late_copy_that_applied_counts_as_this_commit():
    """Resent after a loss, the swap finds its own first copy applied: a
    success, never a lost swap to replay on top of itself."""
    backend, old = stored()
    backend.faults = ["lost command", "late copy"]
    new = old._replace(version=2, payload=b"new")
    assert backend.compare_and_swap(old.session_id, 1, new) is True
    assert backend.get(old.session_id) == new


def test_another_commit_in_between_is_a_plain_lost_swap():
    backend, old = stored()
    other = old._replace(version=2, payload=b"other request")

    backend.faults = ["lost command"]
    backend.add(other)  # another request commits while our reply is lost
    mine = old._replace(version=2, payload=b"mine")
    assert backend.compare_and_swap(old.session_id, 1, mine) is False
    assert backend.get(old.session_id) == other


def test_same_version_other_payload_is_not_this_commit():
    backend, old = stored()
    backend.faults = ["lost command"]
    backend.add(old._replace(version=2, payload=b"other request"))
    assert backend.compare_and_swap(old.session_id, 1, old._replace(version=2)) is False


def test_a_delete_whose_reply_was_lost_is_found_applied():
    backend, old = stored()
    backend.faults = ["lost reply"]
    assert backend.compare_and_swap(old.session_id, 1, None) is True
    assert backend.get(old.session_id) is None


def test_an_insert_whose_reply_was_lost_is_found_applied():
    backend = LossyBackend(["lost reply"])
    record = make_record()
    assert backend.compare_and_swap(record.session_id, None, record) is True
    assert backend.sent == 1


def test_a_swap_never_confirmed_is_busy_and_not_applied():
    backend, old = stored()
    backend.faults = ["lost command", "lost command"]
    with pytest.raises(BusyRetry, match=old.session_id):
        backend.compare_and_swap(old.session_id, 1, old._replace(version=2, payload=b"new"))
    assert backend.get(old.session_id) == old
