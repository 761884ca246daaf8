"""The pickle backend reads what others appended without the file lock:
reads are served while another process holds it, only whole frames are
applied, and whatever follows them is judged under the lock."""

from __future__ import annotations

import fcntl
import logging
import os
import threading

import pytest

from sessionstore import BackendError
from sessionstore.backends import picklelog
from sessionstore.backends.picklefile import PickleBackend
from sessionstore.errors import BusyRetry
from sessionstore.testing import make_record

from .locks import flock_held, set_up, until


def held(path):
    """The store's lock, held exclusively as another process would hold it."""
    return flock_held(f"{path}.lock")


@pytest.fixture
def pair(tmp_path):
    """A writer and a reader (whose lock waits give up after 50 ms) of one
    store, both having seen its first record."""
    path = tmp_path / "sessions.dat"
    writer = set_up(PickleBackend, path)
    first = make_record()
    writer.add(first)
    reader = set_up(PickleBackend, path, busy_timeout=0.05)
    assert reader.get(first.session_id) == first
    yield path, writer, reader, first
    reader.close()
    writer.close()


def test_a_read_of_what_another_process_appended_needs_no_lock(pair):
    path, writer, reader, first = pair
    later = make_record()
    writer.add(later)
    with held(path):
        # Taking the lock would give up after 50 ms (BusyRetry).
        assert reader.get(later.session_id) == later
        assert reader.get(first.session_id) == first
        with pytest.raises(BusyRetry):
            reader.compare_and_swap(later.session_id, later.version, None)
    assert reader.compare_and_swap(later.session_id, later.version, None)
    assert writer.get(later.session_id) is None


def test_an_append_being_written_is_left_to_the_locked_sync(pair, caplog):
    """Half a frame at the end, as another process's append in progress
    looks: an unlocked read applies the whole frames before it, logs
    nothing and notes nothing to cut, and leaves the read to the locked
    path; once the append is whole, it is read."""
    path, writer, reader, _ = pair
    before, partial = make_record(), make_record()
    writer.add(before)
    frame = picklelog.encode_put(partial)
    caplog.set_level(logging.INFO, logger="sessionstore")
    with held(path):
        with open(path, "ab") as out:
            out.write(frame[: len(frame) // 2])
        with pytest.raises(BusyRetry):
            reader.get(before.session_id)  # (the locked path: the lock is held)
        assert reader._index.get(before.session_id) is not None  # noqa: SLF001
        assert reader._tail is None  # noqa: SLF001 - nothing noted as cuttable
        with open(path, "ab") as out:
            out.write(frame[len(frame) // 2 :])
        assert reader.get(partial.session_id) == partial
    assert caplog.records == []
    assert reader.count() == 3


def test_damage_seen_without_the_lock_is_reported_under_it_and_left_untouched(pair):
    path, _, reader, first = pair
    after = make_record()
    damaged = bytearray(picklelog.encode_put(make_record()))
    damaged[20] ^= 0xFF  # a bad CRC, with a whole frame after it: damage
    with held(path):
        with open(path, "ab") as out:
            out.write(bytes(damaged) + picklelog.encode_put(after))
        with pytest.raises(BusyRetry):
            reader.get(first.session_id)  # not judged without the lock
        assert reader._corrupt is None  # noqa: SLF001
    size = path.stat().st_size
    with pytest.raises(BackendError, match="damaged at byte"):
        reader.get(after.session_id)
    assert path.stat().st_size == size


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_a_busy_lock_is_waited_for_in_the_kernel_and_handed_over(tmp_path):
    path = tmp_path / "sessions.dat"
    backend = set_up(PickleBackend, path)
    record = make_record()
    backend.add(record)
    done = []
    with held(path):
        swap = threading.Thread(
            target=lambda: done.append(backend.compare_and_swap(record.session_id, 1, None))
        )
        swap.start()
        until(lambda: any(t.name == "sessionstore-lock" for t in threading.enumerate()))
        assert done == []
    swap.join(5)
    assert done == [True]
    assert backend.get(record.session_id) is None
    backend.add(record)  # the descriptor it waited on is the lock's now
    assert backend.count() == 1
    backend.close()


def test_a_wait_given_up_leaves_the_lock_free_and_no_descriptor_behind(tmp_path):
    path = tmp_path / "sessions.dat"
    backend = set_up(PickleBackend, path, busy_timeout=0.05)
    record = make_record()
    backend.add(record)
    before = _open_fds()
    with held(path), pytest.raises(BusyRetry):
        backend.compare_and_swap(record.session_id, 1, None)
    # The thread that waited takes the lock now and lets go of it at once.
    fd = os.open(f"{path}.lock", os.O_RDWR)
    try:
        until(lambda: _try_lock(fd))
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    until(lambda: _open_fds() == before)
    assert backend.compare_and_swap(record.session_id, 1, None)
    backend.close()


def _try_lock(fd):
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
