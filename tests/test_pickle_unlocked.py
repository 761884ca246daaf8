"""The pickle backend reads what others appended without the file lock:
reads are served while another process holds it, only whole frames are
applied, and whatever follows them is judged under the lock."""

from __future__ import annotations

import fcntl
import logging
import os
from contextlib import contextmanager

import pytest

from sessionstore import BackendError
from sessionstore.backends import picklelog
from sessionstore.backends.picklefile import PickleBackend
from sessionstore.errors import BusyRetry
from sessionstore.testing import make_record


def opened(path, busy_timeout=5.0):
    backend = PickleBackend(str(path), busy_timeout=busy_timeout)
    backend.setup()
    return backend


@contextmanager
def held(path):
    """The store's lock, held exclusively by another open file (as another
    process holding it would)."""
    fd = os.open(f"{path}.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def test_a_read_of_what_another_process_appended_needs_no_lock(tmp_path):
    path = tmp_path / "sessions.dat"
    writer = opened(path)
    first = make_record()
    writer.add(first)
    reader = opened(path, busy_timeout=0.05)
    assert reader.get(first.session_id) == first
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
    reader.close()
    writer.close()


def test_an_append_being_written_is_left_to_the_locked_sync(tmp_path, caplog):
    """Half a frame at the end, as another process's append in progress
    looks: an unlocked read applies the whole frames before it, logs
    nothing and notes nothing to cut, and leaves the read to the locked
    path; once the append is whole, it is read."""
    path = tmp_path / "sessions.dat"
    writer = opened(path)
    first = make_record()
    writer.add(first)
    reader = opened(path, busy_timeout=0.05)
    assert reader.get(first.session_id) == first
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
    reader.close()
    writer.close()


def test_damage_seen_without_the_lock_is_reported_under_it_and_left_untouched(tmp_path):
    path = tmp_path / "sessions.dat"
    writer = opened(path)
    first = make_record()
    writer.add(first)
    reader = opened(path, busy_timeout=0.05)
    assert reader.get(first.session_id) == first
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
    reader.close()
    writer.close()
