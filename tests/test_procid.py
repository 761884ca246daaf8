"""A backend used across ``fork`` knows it is in a child without asking the
kernel for its pid on every request (``sessionstore/backends/procid.py``):
the child takes the locks with descriptors of its own, so a lock the parent
holds keeps the child waiting.  Real forks, real locks."""

from __future__ import annotations

import os

from sessionstore.backends import procid
from sessionstore.backends.picklefile import PickleBackend
from sessionstore.backends.sqlite import SqliteBackend
from sessionstore.errors import BusyRetry
from sessionstore.testing import in_forked_child, make_record


def waits_for_the_parent(backend, record):
    """In the child: a write must wait for the lock the parent holds."""
    try:
        backend.compare_and_swap(record.session_id, 1, record._replace(version=2))
    except BusyRetry:
        return True
    return False


def test_a_forked_child_knows_its_own_pid():
    assert procid.pid == os.getpid()
    assert in_forked_child(lambda: procid.pid == os.getpid() != os.getppid())


def test_a_forked_child_waits_for_the_pickle_lock_its_parent_holds(tmp_path):
    backend = PickleBackend(str(tmp_path / "sessions.dat"), busy_timeout=0.2)
    backend.setup()
    record = make_record()
    backend.add(record)
    with backend._locked(exclusive=True):  # noqa: SLF001 - the parent is writing
        assert in_forked_child(lambda: waits_for_the_parent(backend, record))
    assert backend.get(record.session_id) == record
    backend.close()


def test_a_forked_child_waits_for_the_sqlite_turn_its_parent_holds(tmp_path):
    backend = SqliteBackend(str(tmp_path / "sessions.db"), busy_timeout=0.2)
    backend.setup()
    record = make_record()
    backend.add(record)
    writers = backend._writers  # noqa: SLF001
    assert writers is not None
    writers.acquire()  # the parent is writing
    try:
        assert in_forked_child(lambda: waits_for_the_parent(backend, record))
    finally:
        writers.release()
    assert backend.get(record.session_id) == record
    backend.close()


def test_a_forked_childs_first_purge_reads_its_own_files(tmp_path):
    """A purge reads its candidates without the lock.  A child whose first
    call was a purge read them through its parent's descriptors (deleting
    nothing, or reading a log the parent was cutting): it opens its own."""
    backend = PickleBackend(str(tmp_path / "sessions.dat"))
    backend.setup()
    for _ in range(500):
        backend.add(make_record(expires_at=1.0))
    assert backend.count() == 500
    assert in_forked_child(lambda: backend.delete_expired(now=2.0, limit=100) == 100)
    assert backend.count() == 400
    backend.close()
