"""The backend contract suite, for every backend including your own.

Subclass :class:`BackendContract` (or :class:`PersistentBackendContract`
when the data outlives the instance) and provide the fixtures::

    class TestMyBackend(PersistentBackendContract):
        @pytest.fixture
        def backend(self, tmp_path):
            b = MyBackend(...); b.setup(); yield b; b.close()

        @pytest.fixture
        def reopen(self):
            # fresh instances on the same storage (PersistentBackendContract only)
            return lambda: MyBackend(...)

Needs pytest (the ``test`` extra).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable

import pytest

from .backends.base import Backend, Record
from .ids import new_session_id


def in_forked_child(check: Callable[[], object]) -> bool:
    """Run ``check`` in a forked child; whether it returned a true value
    there (it reports through the exit status only)."""
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork in a threaded process; the child runs
        # only ``check``, which is what such a test is about.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        status = 1
        try:
            status = 0 if check() else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def run_threads(target: Callable[[int], None], count: int, timeout: float = 60) -> None:
    """Run ``target(n)`` for n in ``range(count)``, each in its own thread.

    Fails if a thread is still running after ``timeout`` seconds, and re-raises
    the first exception a thread raised (a thread's failure is otherwise lost).
    """
    errors: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            target(n)
        except BaseException as exc:
            errors.append(exc)
            raise

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        raise AssertionError(f"threads still running after {timeout} s")
    if errors:
        raise errors[0]


def make_record(
    version: int = 1,
    *,
    session_id: str | None = None,
    expires_at: float = 2_000_000_000.0,
    payload: bytes = b"\x00payload\xff",
) -> Record:
    return Record(
        session_id=session_id or new_session_id(),
        version=version,
        created_at=1_700_000_000.25,
        accessed_at=1_700_000_100.5,
        expires_at=expires_at,
        payload=payload,
    )


def _next(record: Record, payload: bytes = b"next") -> Record:
    return Record(
        record.session_id,
        record.version + 1,
        record.created_at,
        record.accessed_at + 1,
        record.expires_at + 1,
        payload,
    )


class BackendContract:
    """What every backend must do; see the module docstring."""

    @pytest.fixture
    def backend(self) -> Backend:
        raise NotImplementedError("provide a 'backend' fixture")

    # -- management interface ------------------------------------------------

    def test_get_missing_is_none(self, backend: Backend) -> None:
        assert backend.get(new_session_id()) is None

    def test_setup_twice_keeps_data(self, backend: Backend) -> None:
        record = make_record()
        backend.add(record)
        backend.setup()
        assert backend.get(record.session_id) == record

    def test_add_then_get_round_trips_every_field(self, backend: Backend) -> None:
        record = make_record(payload=bytes(range(256)) * 64)
        backend.add(record)
        assert backend.get(record.session_id) == record

    def test_add_overwrites(self, backend: Backend) -> None:
        record = make_record()
        backend.add(record)
        newer = _next(record)
        backend.add(newer)
        assert backend.get(record.session_id) == newer
        assert backend.count() == 1

    def test_get_all_maps_ids_to_records(self, backend: Backend) -> None:
        records = [make_record() for _ in range(5)]
        for record in records:
            backend.add(record)
        assert backend.get_all() == {r.session_id: r for r in records}
        assert sorted(r.session_id for r in backend.iter_records()) == sorted(
            r.session_id for r in records
        )

    def test_iter_records_streams_more_than_one_batch(self, backend: Backend) -> None:
        ids = set()
        for _ in range(1203):
            record = make_record(payload=b"x")
            backend.add(record)
            ids.add(record.session_id)
        assert {r.session_id for r in backend.iter_records()} == ids
        assert backend.count() == 1203

    def test_delete_returns_zero_or_one(self, backend: Backend) -> None:
        record = make_record()
        backend.add(record)
        assert backend.delete(record.session_id) == 1
        assert backend.delete(record.session_id) == 0
        assert backend.get(record.session_id) is None

    def test_delete_many_counts_existing(self, backend: Backend) -> None:
        records = [make_record() for _ in range(4)]
        for record in records:
            backend.add(record)
        ids = [records[0].session_id, records[1].session_id, records[1].session_id]
        assert backend.delete_many([*ids, new_session_id()]) == 2
        assert backend.delete_many([]) == 0
        assert set(backend.get_all()) == {records[2].session_id, records[3].session_id}

    def test_delete_all_counts(self, backend: Backend) -> None:
        for _ in range(3):
            backend.add(make_record())
        assert backend.delete_all() == 3
        assert backend.get_all() == {}
        assert backend.delete_all() == 0

    def test_delete_expired_removes_only_expired(self, backend: Backend) -> None:
        now = time.time()
        old = make_record(expires_at=now - 30)
        edge = make_record(expires_at=now)
        live = make_record(expires_at=now + 30)
        for record in (old, edge, live):
            backend.add(record)
        assert backend.delete_expired(now=now) == 2
        assert set(backend.get_all()) == {live.session_id}

    # -- compare-and-swap ------------------------------------------------------

    def test_insert_only_when_absent(self, backend: Backend) -> None:
        record = make_record()
        assert backend.compare_and_swap(record.session_id, None, record) is True
        assert backend.compare_and_swap(record.session_id, None, _next(record)) is False
        assert backend.get(record.session_id) == record

    def test_replace_only_at_the_expected_version(self, backend: Backend) -> None:
        record = make_record(version=3)
        backend.add(record)
        newer = _next(record)
        assert backend.compare_and_swap(record.session_id, 2, newer) is False
        # Equality, never "newer or equal": a higher claimed version fails too.
        assert backend.compare_and_swap(record.session_id, 4, newer) is False
        assert backend.compare_and_swap(record.session_id, None, newer) is False
        assert backend.get(record.session_id) == record
        assert backend.compare_and_swap(record.session_id, 3, newer) is True
        assert backend.get(record.session_id) == newer

    def test_replace_of_absent_fails(self, backend: Backend) -> None:
        record = make_record(version=2)
        assert backend.compare_and_swap(record.session_id, 1, record) is False
        assert backend.get(record.session_id) is None

    def test_delete_only_at_the_expected_version(self, backend: Backend) -> None:
        record = make_record(version=5)
        backend.add(record)
        assert backend.compare_and_swap(record.session_id, 4, None) is False
        assert backend.get(record.session_id) == record
        assert backend.compare_and_swap(record.session_id, 5, None) is True
        assert backend.get(record.session_id) is None
        assert backend.compare_and_swap(record.session_id, 5, None) is False

    def test_delete_expecting_absent_succeeds_only_when_absent(self, backend: Backend) -> None:
        """``compare_and_swap(id, None, None)``: "absent, and leave it absent"."""
        assert backend.compare_and_swap(new_session_id(), None, None) is True
        record = make_record()
        backend.add(record)
        assert backend.compare_and_swap(record.session_id, None, None) is False
        assert backend.get(record.session_id) == record

    def test_swap_after_delete_cannot_resurrect(self, backend: Backend) -> None:
        record = make_record()
        backend.add(record)
        backend.delete(record.session_id)
        assert backend.compare_and_swap(record.session_id, 1, _next(record)) is False
        assert backend.get(record.session_id) is None

    def test_concurrent_swaps_never_lose_an_increment(self, backend: Backend) -> None:
        """Every round, all threads read the same version before any swaps
        (a barrier), so they really overlap: exactly one swap per round wins,
        the others lose, and every win is in the final value."""
        record = make_record(payload=b"0")
        backend.add(record)
        threads, rounds = 4, 25
        all_read = threading.Barrier(threads, timeout=30)
        all_swapped = threading.Barrier(threads, timeout=30)
        # One slot per thread: no counter shared between threads.
        wins, losses = [0] * threads, [0] * threads

        def rounds_of(n: int) -> None:
            for _ in range(rounds):
                current = backend.get(record.session_id)
                assert current is not None
                value = str(int(current.payload) + 1).encode()
                all_read.wait()
                if backend.compare_and_swap(
                    record.session_id, current.version, _next(current, value)
                ):
                    wins[n] += 1
                else:
                    losses[n] += 1
                all_swapped.wait()

        def worker(n: int) -> None:
            try:
                rounds_of(n)
            except BaseException:
                all_read.abort()  # the others stop waiting for this thread
                all_swapped.abort()
                raise

        run_threads(worker, threads)
        assert sum(wins) == rounds  # one winner per round...
        assert sum(losses) == (threads - 1) * rounds  # ...and every other swap lost
        final = backend.get(record.session_id)
        assert final is not None
        assert int(final.payload) == rounds
        assert final.version == 1 + rounds


class PersistentBackendContract(BackendContract):
    """The contract plus persistence, for backends whose data outlives the
    instance; also needs a ``reopen`` fixture returning a factory of fresh
    instances on the same storage."""

    @pytest.fixture
    def reopen(self) -> Callable[[], Backend]:
        raise NotImplementedError("provide a 'reopen' fixture")

    def test_data_survives_reopening(self, backend: Backend, reopen: Callable[[], Backend]) -> None:
        kept, gone = make_record(), make_record()
        backend.add(kept)
        backend.add(gone)
        backend.compare_and_swap(kept.session_id, 1, _next(kept))
        backend.delete(gone.session_id)
        backend.close()
        other = reopen()
        other.setup()
        try:
            assert other.get_all() == {kept.session_id: _next(kept)}
        finally:
            other.close()

    def test_two_instances_see_each_others_changes(
        self, backend: Backend, reopen: Callable[[], Backend]
    ) -> None:
        other = reopen()
        other.setup()
        try:
            record = make_record()
            assert backend.compare_and_swap(record.session_id, None, record)
            assert other.get(record.session_id) == record
            assert other.compare_and_swap(record.session_id, 1, _next(record))
            assert backend.compare_and_swap(record.session_id, 1, _next(record)) is False
            assert backend.get(record.session_id) == _next(record)
        finally:
            other.close()

    def test_usable_in_a_forked_child(self, backend: Backend) -> None:
        """A backend used before ``fork`` works in the child (own connections,
        own locks) and in the parent afterwards."""
        before = make_record()
        assert backend.compare_and_swap(before.session_id, None, before)
        from_child = make_record()
        assert in_forked_child(
            lambda: (
                backend.get(before.session_id) == before
                and backend.compare_and_swap(from_child.session_id, None, from_child)
            )
        )
        assert backend.get(from_child.session_id) == from_child
        assert backend.compare_and_swap(before.session_id, 1, _next(before))
