"""Following another process's compaction before its index is loaded
(``sessionstore/backends/picklebridge.py``): real files, a real second process."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from sessionstore.backends import picklebridge
from sessionstore.backends.picklefile import PickleBackend
from sessionstore.testing import make_record

from .conftest import ROOT

CHILD = textwrap.dedent(
    """
    import sys
    from sessionstore.backends import picklehandle
    from sessionstore.backends.picklefile import PickleBackend
    backend = PickleBackend(sys.argv[1])
    backend.setup()
    for line in sys.stdin:
        word, *ids = line.split()
        if word == "compact":
            backend.compact()
        elif word == "empty":
            backend.delete_all()
        elif word == "settle":  # what it let go of is closed
            picklehandle.settle()
        for session_id in ids:
            if word == "del":
                assert backend.delete(session_id) == 1
                continue
            record = backend.get(session_id)
            new = record._replace(version=record.version + 1, payload=b"child")
            assert backend.compare_and_swap(session_id, record.version, new)
        print("ok", flush=True)
    backend.close()
    """
)


class Child:
    """Another process on the store, one command at a time."""

    def __init__(self, path):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def __call__(self, word, records=()):
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(" ".join([word, *(r.session_id for r in records)]) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "ok\n"

    def close(self):
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        assert self.proc.wait(60) == 0
        self.proc.stdout.close()


def opened(path):
    backend = PickleBackend(str(path))
    backend.setup()
    return backend


def compacted(path, count):
    backend = opened(path)
    records = [make_record(payload=b"p" * 200) for _ in range(count)]
    for record in records:
        backend.add(record)
    backend.compact()
    backend.close()
    return records


def compacted_by_another(tmp_path):
    """A store of 300 sessions that ``follower`` has open and read, and that
    ``child``, another process, has just compacted."""
    path = tmp_path / "sessions.dat"
    records = compacted(path, 300)
    follower = opened(path)
    assert follower.get(records[0].session_id) == records[0]
    child = Child(path)
    child("compact")
    return path, records, follower, child


def bumped(record):
    return record._replace(version=record.version + 1, payload=b"child")


@pytest.fixture
def held_loader(monkeypatch):
    """The loader of the new index waits until the event is set."""
    release = threading.Event()
    real = picklebridge.Following._load_behind

    def load_behind(self, bridge):
        assert release.wait(60)
        real(self, bridge)

    monkeypatch.setattr(picklebridge.Following, "_load_behind", load_behind)
    yield release
    release.set()


def test_a_process_that_has_not_loaded_the_new_index_commits_and_loses_nothing(
    tmp_path, held_loader
):
    path = tmp_path / "sessions.dat"
    records = compacted(path, 400)
    follower = opened(path)
    assert follower.get(records[0].session_id) == records[0]
    child = Child(path)
    child("put", records[:20])  # before the compaction: the follower has not read them
    child("del", records[20:30])
    child("compact")
    child("put", records[:5])  # in the new log
    expected = {r.session_id: r for r in records[30:]}
    expected.update({r.session_id: bumped(r) for r in records[:20]})
    expected.update({r.session_id: bumped(bumped(r)) for r in records[:5]})

    # The follower reads through its old index, and the new log after it.
    for record in records[:40]:
        assert follower.get(record.session_id) == expected.get(record.session_id)
    assert follower._bridge is not None and follower._bridge.result is None  # noqa: SLF001
    # Its commits are compare-and-swaps against the latest record of either file.
    one = expected[records[1].session_id]
    mine = one._replace(version=one.version + 1, payload=b"follower")
    assert not follower.compare_and_swap(one.session_id, one.version - 1, mine)
    assert follower.compare_and_swap(one.session_id, one.version, mine)
    assert follower.compare_and_swap(records[40].session_id, 1, None)
    assert not follower.compare_and_swap(records[25].session_id, 1, None)  # deleted by the child
    new = make_record()
    follower.add(new)
    expected[one.session_id] = mine
    del expected[records[40].session_id]
    expected[new.session_id] = new
    follower._handle.cache.clear()  # noqa: SLF001 - read back from the files, not memory
    assert follower.get_all() == expected
    assert follower.count() == len(expected)
    assert follower._bridge is not None  # noqa: SLF001 - still not loaded

    # The other process sees them, and commits on top of them.
    child("put", [records[1], new])
    expected[one.session_id] = bumped(mine)
    expected[new.session_id] = bumped(new)
    assert follower.get(one.session_id) == bumped(mine)

    # Loaded: the next locked operation puts the new index in place.
    held_loader.set()
    follower._wait_for_bridge()  # noqa: SLF001
    assert follower.count() == len(expected)
    assert follower._bridge is None and follower._shift == 0  # noqa: SLF001
    assert follower._indexed > 0  # noqa: SLF001 - from the compaction's index file
    assert follower.get_all() == expected
    follower.compact()  # from the new index, with nothing lost
    child("put", [records[2]])
    expected[records[2].session_id] = bumped(expected[records[2].session_id])
    child.close()
    assert follower.get_all() == expected
    follower.close()
    fresh = opened(path)
    assert fresh.get_all() == expected
    fresh.close()


def test_a_purge_while_following_deletes_only_what_expired(tmp_path, held_loader):
    path = tmp_path / "sessions.dat"
    records = compacted(path, 100)
    expiring = [make_record(expires_at=1_000.0) for _ in range(10)]
    follower = opened(path)
    for record in expiring:
        follower.add(record)
    child = Child(path)
    child("compact")
    child("put", expiring[:3])  # still expired, now in the new log
    assert follower.get(records[0].session_id) == records[0]
    assert follower._bridge is not None  # noqa: SLF001
    assert follower.delete_expired(now=2_000.0) == 10
    child.close()
    held_loader.set()
    assert follower.get_all() == {r.session_id: r for r in records}
    follower.close()


def test_a_new_index_that_cannot_be_loaded_is_loaded_the_usual_way(tmp_path, held_loader, caplog):
    path = tmp_path / "sessions.dat"
    records = compacted(path, 300)
    follower = opened(path)
    assert follower.get(records[0].session_id) == records[0]
    child = Child(path)
    child("put", records[:3])
    child("compact")
    child.close()
    os.unlink(f"{path}.index")
    assert follower.get(records[1].session_id) == bumped(records[1])
    assert follower._bridge is not None  # noqa: SLF001
    held_loader.set()
    follower._wait_for_bridge()  # noqa: SLF001
    with caplog.at_level("INFO", "sessionstore"):
        assert follower.count() == 300
    assert "the new index was not loaded" in caplog.text
    assert follower._bridge is None  # noqa: SLF001
    expected = {r.session_id: r for r in records}
    expected.update({r.session_id: bumped(r) for r in records[:3]})
    assert follower.get_all() == expected
    follower.close()


@pytest.mark.parametrize("how", ["emptied", "compacted-twice"])
def test_a_new_file_that_is_not_one_compaction_of_ours_is_loaded_at_once(tmp_path, how):
    path = tmp_path / "sessions.dat"
    records = compacted(path, 200)
    follower = opened(path)
    assert follower.get(records[0].session_id) == records[0]
    child = Child(path)
    if how == "emptied":
        child("empty")
        expected = {}
    else:
        child("compact")
        child("put", records[:2])
        child("compact")
        expected = {r.session_id: r for r in records}
        expected.update({r.session_id: bumped(r) for r in records[:2]})
    child.close()
    assert follower.get(records[1].session_id) == expected.get(records[1].session_id)
    assert follower._bridge is None  # noqa: SLF001
    assert follower.get_all() == expected
    follower.close()


def test_an_offset_past_the_file_a_lock_free_read_saw_is_asked_again_not_read(tmp_path):
    """A thread following a compaction indexes frames of the new log in the
    index a lock-free read of the old file may be using: such an offset lies
    past that file's end, and reading it there would report damage."""
    path = tmp_path / "sessions.dat"
    backend = PickleBackend(str(path))
    backend.setup()
    record = make_record()
    backend.add(record)
    assert backend.get(record.session_id) == record  # (the lock-free view is made)
    view = backend._view  # noqa: SLF001
    st = os.stat(path)
    view[2].put(record.session_id, view[1] + 100, record.expires_at, record.user)
    assert backend._current(st, record.session_id) is False  # noqa: SLF001 - the locked path
    backend.close()


def test_a_compactions_temporary_file_is_never_taken_for_an_orphan(tmp_path):
    """Its file is locked before it has the name set-up looks for; a file
    left under the first name (a process killed between the two) goes after
    an hour."""
    path = tmp_path / "sessions.dat"
    backend = PickleBackend(str(path))
    backend.setup()
    fd, temp = backend._temp()  # noqa: SLF001 - as a compaction starts
    young = tmp_path / ".sessions.dat.abc.compact.new"
    old = tmp_path / ".sessions.dat.def.compact.new"
    young.write_bytes(b"")
    old.write_bytes(b"")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    other = PickleBackend(str(path))
    other.setup()  # removes orphans
    assert os.path.exists(temp) and young.exists() and not old.exists()
    other.close()
    os.close(fd)
    os.unlink(temp)
    backend.close()


def test_processes_following_a_compaction_load_its_index_one_at_a_time(tmp_path, monkeypatch):
    """Every process loads the new index after a compaction; at once, four
    of them left the requests of a two-core machine waiting for a CPU.  A
    loader waits while another process holds its turn at the index file."""
    monkeypatch.setattr(picklebridge, "TURN_WAIT", 60.0)  # (however slow the machine)
    path, records, follower, child = compacted_by_another(tmp_path)
    child.close()
    other = os.open(f"{path}.index", os.O_RDONLY)  # another process's turn
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        assert follower.get(records[1].session_id) == records[1]  # served meanwhile
        bridge = follower._bridge  # noqa: SLF001
        assert bridge is not None and bridge.thread is not None
        bridge.thread.join(0.3)
        assert bridge.thread.is_alive() and bridge.result is None
    finally:
        os.close(other)  # its turn is over
    bridge.thread.join(10)
    assert not isinstance(bridge.result, Exception) and bridge.result is not None
    assert follower.get_all() == {r.session_id: r for r in records}
    assert follower._bridge is None  # noqa: SLF001 - crossed to the loaded index
    follower.close()


def test_an_index_loaded_while_a_sync_looks_at_the_file_is_no_file_rewritten(
    tmp_path, held_loader, caplog
):
    """The loader indexes the new log up to its end as it finds it.  A sync
    without the lock (as a process waiting for the lock runs one) that
    looked at the file before the loader finished, then put the loaded index
    in place, saw a file shorter than the index: "rewritten in place", and
    its tails were never cut again.  The index goes in before the look."""
    path, records, follower, child = compacted_by_another(tmp_path)
    assert follower.get(records[1].session_id) == records[1]  # bridged
    bridge = follower._bridge  # noqa: SLF001
    assert bridge is not None and bridge.thread is not None
    real_stat = os.stat
    armed = [True]

    def stat(target, *args, **kwargs):
        found = real_stat(target, *args, **kwargs)
        if armed[0] and os.fspath(target) == str(path):
            armed[0] = False
            child("put", records[2:6])  # appended after this look
            held_loader.set()
            bridge.thread.join(10)  # the loader indexed them too
        return found

    with caplog.at_level("INFO", "sessionstore"):
        os.stat = stat
        try:
            with follower._mutex:  # noqa: SLF001 - what _catch_up() runs, without the lock
                follower._sync()  # noqa: SLF001
        finally:
            os.stat = real_stat
        assert follower.compare_and_swap(records[10].session_id, 1, bumped(records[10]))
        expected = {r.session_id: r for r in records}
        expected.update({r.session_id: bumped(r) for r in (*records[2:6], records[10])})
        follower._handle.cache.clear()  # noqa: SLF001
        assert follower.get_all() == expected
    assert not armed[0]
    assert "rewritten in place" not in caplog.text
    assert follower._file_id not in follower._no_cut  # noqa: SLF001
    child.close()
    follower.close()
