"""SQLite's writers take turns on ``<database>.writers``, a lock the kernel
hands over, instead of sleeping in SQLite's busy handler."""

from __future__ import annotations

import os
import threading
import time

import pytest

from sessionstore.backends.sqlite import SqliteBackend
from sessionstore.errors import BusyRetry
from sessionstore.testing import in_forked_child, make_record

from .locks import flock_held, set_up, until


def turn_held(path):
    """The turn to write, held as another process would hold it."""
    return flock_held(f"{path}.writers")


def test_a_writer_waits_for_its_turn_and_reads_do_not(tmp_path):
    path = tmp_path / "sessions.db"
    backend = set_up(SqliteBackend, path, busy_timeout=0.05)
    record = make_record()
    backend.add(record)
    with turn_held(path):
        assert backend.get(record.session_id) == record  # reads take no turn
        with pytest.raises(BusyRetry):
            backend.compare_and_swap(record.session_id, record.version, None)
        with pytest.raises(BusyRetry):
            backend.delete_expired(time.time() + 10**6)
    assert backend.get(record.session_id) == record  # nothing was written
    assert backend.compare_and_swap(record.session_id, record.version, None)
    assert oct(os.stat(f"{path}.writers").st_mode & 0o777) == "0o600"
    backend.close()


def test_a_waiting_writer_is_handed_the_turn_when_it_is_let_go(tmp_path):
    path = tmp_path / "sessions.db"
    backend = set_up(SqliteBackend, path)
    record = make_record()
    backend.add(record)
    done = []
    with turn_held(path):
        swap = threading.Thread(
            target=lambda: done.append(
                backend.compare_and_swap(record.session_id, record.version, None)
            )
        )
        swap.start()
        # Waiting in the kernel's queue, in a thread of its own.
        until(lambda: any(t.name == "sessionstore-lock" for t in threading.enumerate()))
        assert done == []
    swap.join(5)
    assert done == [True] and backend.get(record.session_id) is None
    backend.add(record)  # the descriptor it waited on holds the turn now
    assert backend.count() == 1
    backend.close()


def test_a_forked_child_takes_turns_with_its_parent(tmp_path):
    """A child shares its parent's descriptors, and a flock belongs to the
    open file: reusing the parent's would let both write at once."""
    path = tmp_path / "sessions.db"
    backend = set_up(SqliteBackend, path, busy_timeout=0.1)
    record = make_record()
    backend.add(record)
    writers = backend._writers  # noqa: SLF001 - the parent's turn, held across the fork
    writers.acquire()
    try:

        def child():
            try:
                backend.compare_and_swap(record.session_id, record.version, None)
            except BusyRetry:
                return True
            return False

        assert in_forked_child(child)
    finally:
        writers.release()
    assert backend.get(record.session_id) == record
    assert in_forked_child(lambda: backend.compare_and_swap(record.session_id, 1, None))
    assert backend.get(record.session_id) is None
    backend.close()
