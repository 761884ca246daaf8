"""The pickle backend's index file: used at open, never trusted blindly, and
compaction that other processes commit through (real processes)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from sessionstore import DamagedRecord
from sessionstore.backends import (
    picklecompact,
    pickleindex,
    pickleindexfile,
    picklelog,
)
from sessionstore.backends.picklefile import PickleBackend
from sessionstore.testing import make_record

from .conftest import ROOT


def opened(path):
    backend = PickleBackend(str(path))
    backend.setup()
    return backend


def compacted(path, count, payload=b"p" * 200):
    """A store of ``count`` records, compacted (so with an index file)."""
    backend = opened(path)
    records = [make_record(payload=payload) for _ in range(count)]
    for record in records:
        backend.add(record)
    backend.compact()
    backend.close()
    assert os.path.exists(f"{path}.index")
    return records


def read_so_far():
    with open("/proc/self/io") as io:
        return int(next(line for line in io if line.startswith("rchar:")).split()[1])


def frame_starts(data):
    start = picklelog.header_size(data)
    return [(s, e, f) for s, e, f in picklelog.iter_frames(data, start) if f[0] == "put"]


def test_open_reads_the_index_and_only_the_log_after_it(tmp_path):
    path = tmp_path / "sessions.dat"
    records = compacted(path, 3000)
    backend = opened(path)
    later = make_record()
    backend.add(later)  # after what the index covers
    backend.delete(records[5].session_id)
    backend.close()
    before = read_so_far()
    backend = opened(path)
    assert backend.count() == 3000
    # The index (32 bytes a session: 96 KB) and the frames after it, not the
    # 700 KB log.
    assert read_so_far() - before < 200_000 < path.stat().st_size
    assert backend.get(later.session_id) == later
    assert backend.get(records[5].session_id) is None
    assert backend.get(records[6].session_id) == records[6]
    backend.close()


def test_damage_inside_the_indexed_part_is_found_when_that_record_is_read(tmp_path, caplog):
    """Open does not parse the indexed part of the log: a damaged record body
    there goes unnoticed until it is read, and then it is that visitor's
    "no session" (DamagedRecord), logged, every byte kept."""
    path = tmp_path / "sessions.dat"
    records = compacted(path, 50)
    data = bytearray(path.read_bytes())
    puts = frame_starts(bytes(data))
    start, end, frame = puts[10]
    victim = frame[1]
    data[(start + end) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING", "sessionstore"):
        backend = opened(path)
    assert caplog.text == ""  # nothing parsed, nothing found at open
    assert backend.count() == 50
    with caplog.at_level("ERROR", "sessionstore"), pytest.raises(DamagedRecord) as caught:
        backend.get(victim)
    assert caught.value.session_id == victim
    assert f"unreadable at byte {start}" in caplog.text
    others = [r for r in records if r.session_id != victim]
    assert all(backend.get(r.session_id) == r for r in others)
    # A compaction will not rewrite the log without it: it stops, and says so.
    with pytest.raises(picklelog.Damaged):
        backend.compact()
    backend.close()
    assert path.read_bytes() == bytes(data)
    assert list(tmp_path.glob("*.tmp")) == [] and list(tmp_path.glob("*.damaged-*")) == []


def _damage(path, how):
    index = path.parent / f"{path.name}.index"
    data = bytearray(index.read_bytes())
    if how == "missing":
        os.unlink(index)
    elif how == "bit":
        data[len(data) // 2] ^= 0x01
    elif how == "torn":
        del data[len(data) * 2 // 3 :]
    elif how == "zeros":
        data[:] = bytes(len(data))
    elif how == "not-ours":
        data[:] = b"some notes\n" * 100
    if how != "missing":
        index.write_bytes(bytes(data))
    return bytes(data)


@pytest.mark.parametrize("how", ["missing", "bit", "torn", "zeros", "not-ours"])
def test_a_missing_or_damaged_index_falls_back_to_reading_the_log(tmp_path, caplog, how):
    path = tmp_path / "sessions.dat"
    records = compacted(path, 200)
    extra = make_record()
    backend = opened(path)
    backend.add(extra)
    backend.close()
    damaged = _damage(path, how)
    with caplog.at_level("INFO", "sessionstore"):
        backend = opened(path)
    assert backend.get_all() == {r.session_id: r for r in [*records, extra]}
    if how != "missing":
        assert "sessions.dat.index not used" in caplog.text
        assert (tmp_path / "sessions.dat.index").read_bytes() == damaged  # left for a look
    backend.close()


@pytest.mark.parametrize("stale", ["older-generation", "another-log", "log-rewritten"])
def test_a_stale_index_is_not_used(tmp_path, caplog, stale):
    path = tmp_path / "sessions.dat"
    records = compacted(path, 100)
    old_index = (tmp_path / "sessions.dat.index").read_bytes()
    backend = opened(path)
    changed = records[0]._replace(version=2, payload=b"changed")
    assert backend.compare_and_swap(changed.session_id, 1, changed)
    gone = records[1]
    assert backend.compare_and_swap(gone.session_id, 1, None)
    if stale == "older-generation":
        backend.compact()  # a new log, whose index the old one is not
    elif stale == "another-log":
        shutil.copy(path, tmp_path / "copy.dat")
        os.replace(tmp_path / "copy.dat", path)  # the same bytes, another inode
    backend.close()
    if stale == "log-rewritten":
        # The same inode and lineage, but other bytes where the index's last
        # frame was: the records were rewritten in place (larger payloads).
        other = make_record(payload=b"x" * 5000)
        data = path.read_bytes()
        head = picklelog.header_size(data)
        _, origin_end, _ = next(iter(picklelog.iter_frames(data, head)))
        with open(path, "r+b") as out:
            out.seek(origin_end)
            out.write(picklelog.encode_put(other) * 40)
        expected = {other.session_id: other}
    else:
        expected = {r.session_id: r for r in [changed, *records[2:]]}
    (tmp_path / "sessions.dat.index").write_bytes(old_index)
    with caplog.at_level("INFO", "sessionstore"):
        backend = opened(path)
    assert "sessions.dat.index not used" in caplog.text
    assert backend.get_all() == expected
    backend.close()


def test_the_index_keeps_users_and_expiry_times(tmp_path):
    path = tmp_path / "sessions.dat"
    backend = opened(path)
    bound = [make_record()._replace(user="ann") for _ in range(3)]
    expired = [make_record(expires_at=1000.0) for _ in range(5)]
    for record in [*bound, *expired, *(make_record() for _ in range(20))]:
        backend.add(record)
    backend.compact()
    backend.close()
    backend = opened(path)
    assert backend._indexed > 0  # noqa: SLF001 - it started from the index
    assert sorted(backend.user_sessions("ann")) == sorted(bound)
    assert backend.delete_expired(now=2000.0) == 5
    assert backend.count() == 23
    backend.close()


def test_an_index_is_written_in_the_background_as_the_log_grows(tmp_path, monkeypatch):
    monkeypatch.setattr(picklecompact, "REFRESH", 50_000)
    path = tmp_path / "sessions.dat"
    backend = opened(path)
    records = [make_record(payload=b"r" * 500) for _ in range(300)]  # ~170 KB, all live
    for record in records:
        backend.add(record)
        if backend._compactor is not None:  # noqa: SLF001
            backend._compactor.join()  # noqa: SLF001 - one writer at a time: let it finish
    backend.close()
    with pickleindexfile.open_index(f"{path}.index") as source:
        meta, _, _ = pickleindexfile.read_meta(source)
    assert meta.inode == path.stat().st_ino
    assert path.stat().st_size - meta.covered <= 50_000 + 1_000  # + one frame
    backend = opened(path)
    assert backend._indexed == meta.covered  # noqa: SLF001
    assert backend.get_all() == {r.session_id: r for r in records}
    backend.close()


def test_close_after_a_bulk_load_leaves_an_index_of_the_whole_log(tmp_path, monkeypatch):
    """The background writer falls behind a bulk load (here: it is never
    let run again after its first index); close() writes one covering all."""
    monkeypatch.setattr(picklecompact, "REFRESH", 50_000)
    monkeypatch.setattr(picklecompact, "CLOSE_TAIL", 5_000)
    path = tmp_path / "sessions.dat"
    backend = opened(path)
    records = [make_record(payload=b"r" * 500) for _ in range(300)]  # ~170 KB
    for record in records[:120]:
        backend.add(record)
    backend._compactor.join()  # noqa: SLF001 - the first index, written
    monkeypatch.setattr(backend, "_start_due", lambda: None)  # falls behind
    for record in records[120:]:
        backend.add(record)
    with pickleindexfile.open_index(f"{path}.index") as source:
        behind, _, _ = pickleindexfile.read_meta(source)
    assert path.stat().st_size - behind.covered > 50_000
    backend.close()
    with pickleindexfile.open_index(f"{path}.index") as source:
        meta, _, _ = pickleindexfile.read_meta(source)
    assert meta.covered == path.stat().st_size
    backend = opened(path)
    assert backend._indexed == meta.covered  # noqa: SLF001
    assert backend.get_all() == {r.session_id: r for r in records}
    backend.close()
    reader = opened(path)  # a process that wrote nothing writes no index
    os.unlink(f"{path}.index")
    reader.close()
    assert not os.path.exists(f"{path}.index")


def test_more_new_sessions_than_the_extra_dict_holds_are_merged(tmp_path, monkeypatch):
    monkeypatch.setattr(pickleindex, "EXTRA_MAX", 50)
    path = tmp_path / "sessions.dat"
    records = compacted(path, 120)
    backend = opened(path)
    more = [make_record() for _ in range(170)]
    for record in more:
        backend.add(record)
    assert len(backend._index.extra) < 50  # noqa: SLF001
    for record in more[::3]:
        backend.delete(record.session_id)
    survivors = [*records, *(r for i, r in enumerate(more) if i % 3)]
    assert backend.get_all() == {r.session_id: r for r in survivors}
    assert backend.count() == len(survivors)
    backend.close()


# -- compaction while another process commits -------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from sessionstore.backends.picklefile import PickleBackend
    backend = PickleBackend(sys.argv[1])
    backend.setup()
    for line in sys.stdin:
        ids = line.split()
        for session_id in ids:
            if session_id.startswith("-"):
                assert backend.delete(session_id[1:]) == 1
                continue
            record = backend.get(session_id)
            new = record._replace(version=record.version + 1, payload=b"child")
            assert backend.compare_and_swap(session_id, record.version, new)
        print(len(ids), flush=True)
    backend.close()
    """
)


@pytest.mark.parametrize(
    ("rounds", "locked_copy"),
    [
        pytest.param(1, 0, id="first-batch-unlocked-second-locked"),
        pytest.param(5, 1 << 30, id="both-under-the-lock"),
        pytest.param(5, 0, id="both-unlocked"),
    ],
)
def test_compaction_loses_nothing_another_process_commits_meanwhile(
    tmp_path, monkeypatch, rounds, locked_copy
):
    """The child commits exactly when the compaction is busy: after the
    snapshot, and after the compaction last looked at the log; those frames
    are copied (and indexed) without the lock, or copied under it; a pipe
    makes each step wait for the other."""
    monkeypatch.setattr(picklecompact, "_CATCH_UP_ROUNDS", rounds)
    monkeypatch.setattr(picklecompact, "_LOCKED_COPY", locked_copy)
    path = tmp_path / "sessions.dat"
    records = compacted(path, 500)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None

    def commit(batch, deleted=()):
        words = [r.session_id for r in batch] + ["-" + r.session_id for r in deleted]
        child.stdin.write(" ".join(words) + "\n")
        child.stdin.flush()
        assert child.stdout.readline() == f"{len(words)}\n"

    commit(records[:10])  # the child is open and committing
    compactor = opened(path)
    real_synced_to = picklecompact.Compaction._synced_to
    calls = []

    def synced_to(self, snapshot):
        calls.append(snapshot)
        if len(calls) > 1:
            return real_synced_to(self, snapshot)
        commit(records[10:60], records[200:210])  # before it looks
        end = real_synced_to(self, snapshot)
        commit(records[60:110], records[210:220])  # after it looked
        return end

    monkeypatch.setattr(picklecompact.Compaction, "_synced_to", synced_to)
    inode = path.stat().st_ino
    compactor.compact()
    assert path.stat().st_ino != inode
    commit(records[:5])  # the child follows the new file
    child.stdin.close()
    assert child.wait(60) == 0
    child.stdout.close()
    expected = {
        r.session_id: r._replace(version=r.version + 1 + (i < 5), payload=b"child")
        for i, r in enumerate(records[:110])
    }
    expected.update({r.session_id: r for r in records[110:200] + records[220:]})
    assert compactor.get_all() == expected
    compactor.close()
    fresh = opened(path)
    assert fresh._indexed > 0  # noqa: SLF001 - from the compaction's index
    assert fresh.get_all() == expected
    fresh.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sessions.dat",
        "sessions.dat.index",
        "sessions.dat.lock",
    ]


def test_a_process_opening_between_the_two_renames_waits_for_the_lock(
    tmp_path, monkeypatch, caplog
):
    """A compaction renames the new index, then the new log, both under the
    exclusive lock.  A process opening the old log in between, without the
    lock, finds an index of another file: it must not read the whole log for
    that, but look again under the lock; one that had the old log open
    follows to the new log and its index."""
    path = tmp_path / "sessions.dat"
    records = compacted(path, 3000)
    reader = opened(path)
    writer = opened(path)
    fresh = PickleBackend(str(path))
    changed = records[0]._replace(version=2)
    assert writer.compare_and_swap(changed.session_id, 1, changed)
    real_publish = picklecompact.Compaction._publish
    seen = []

    def publish(self, temp, fd):
        if self is writer:
            before = read_so_far()
            reader._catch_up()  # noqa: SLF001 - the old log, still its file
            fresh._catch_up()  # noqa: SLF001 - the old log, the new log's index
            seen.append(read_so_far() - before)
            # Another process starting up now leaves the files being written alone.
            assert PickleBackend(str(path)).remove_orphans() == []
        real_publish(self, temp, fd)

    monkeypatch.setattr(picklecompact.Compaction, "_publish", publish)
    with caplog.at_level("INFO", "sessionstore"):
        writer.compact()
        for backend in (reader, fresh):
            before = read_so_far()
            assert backend.get(changed.session_id) == changed
            assert read_so_far() - before < 200_000  # the new index, not the 700 KB log
    assert seen and seen[0] < 20_000  # an index's first bytes, not the log
    assert "not used" not in caplog.text and "replaced" not in caplog.text
    assert reader.get_all() == fresh.get_all() == writer.get_all()
    for backend in (reader, fresh, writer):
        backend.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sessions.dat",
        "sessions.dat.index",
        "sessions.dat.lock",
    ]


def test_the_offset_index_agrees_with_a_dict_through_merges(monkeypatch):
    """Puts, deletes and re-puts of random ids, with merges every 7 new ids,
    against a plain dict; and the index file round trip."""
    import io
    import random

    monkeypatch.setattr(pickleindex, "EXTRA_MAX", 7)
    rng = random.Random(14)
    index = pickleindex.OffsetIndex()
    model: dict[str, tuple[int, float]] = {}
    ids = [f"id-{n}" for n in range(300)]
    offset = 100
    for _ in range(3000):
        session_id = rng.choice(ids)
        if rng.random() < 0.3:
            assert index.delete(session_id) == (model.pop(session_id, None) is not None)
        else:
            offset += rng.randint(1, 500)
            expires = rng.choice([1000.0, 2_000_000_000.5])
            index.put(session_id, offset, expires, "ann" if session_id.endswith("7") else None)
            model[session_id] = (offset, expires)
        assert index.count == len(model)
    for session_id in ids:
        assert index.get(session_id) == model.get(session_id, (None,))[0]
    assert sorted(index.offsets()) == sorted([0] * (len(index.offsets()) - len(model))
                                             + [o for o, _ in model.values()])  # fmt: skip
    expired = {o for o, e in model.values() if e <= 1500.0}
    assert {o for o, e in index.live() if e <= 1500.0} == expired
    assert set(index.of_user("ann")) == {i for i in model if i.endswith("7")}
    index.merge()
    out = io.BytesIO()
    meta = pickleindexfile.Meta("t", 1, 5, offset, None, 0, 0)
    pickleindexfile.write_index(out, index.base, index.bound, meta)  # type: ignore[arg-type]
    out.seek(0)
    again_meta, again = pickleindexfile.read_index(out, lambda m: None)  # type: ignore[arg-type]
    assert again_meta == meta and again.count == len(model)
    assert all(again.get(i) == model.get(i, (None,))[0] for i in ids)
    assert set(again.of_user("ann")) == set(index.of_user("ann"))


def test_a_version_1_index_file_is_still_used_its_live_entries_counted(tmp_path):
    """Version 2 stores the live count its writer made; a version 1 file
    (no such field) is used all the same, the reader counting."""
    import io
    import pickle
    import struct
    import zlib

    path = tmp_path / "sessions.dat"
    records = compacted(path, 50)
    backend = opened(path)
    for record in records[:5]:
        backend.delete(record.session_id)
    with backend._mutex:  # noqa: SLF001 - as _start_due() does
        snapshot = backend._snapshot()  # noqa: SLF001
    backend._refresh_quietly(snapshot)  # noqa: SLF001 - an index with 5 tombstones
    backend.close()
    data = (tmp_path / "sessions.dat.index").read_bytes()
    with pickleindexfile.open_index(f"{path}.index") as source:
        meta, n, head = pickleindexfile.read_meta(source)
        source.seek(0)
        assert (n, pickleindexfile.read_index(source, lambda m: None)[1].count) == (50, 45)
    # The same file as version 1 wrote it: that version number, no count.
    fields = list(pickle.loads(head[12:]))
    fields[1] = 1
    encoded = pickle.dumps(tuple(fields), 5)
    columns = data[len(head) : len(head) + 32 * n]
    rest = data[len(head) + 32 * n + 8 : -4]
    body = pickleindexfile.MAGIC + struct.pack(">I", len(encoded)) + encoded + columns + rest
    old = body + struct.pack(">I", zlib.crc32(body))
    again_meta, again = pickleindexfile.read_index(io.BytesIO(old), lambda m: None)  # type: ignore[arg-type]
    assert (again_meta, again.count, again.offsets()) == (meta, 45, again.base[2])
    (tmp_path / "sessions.dat.index").write_bytes(old)
    fresh = opened(path)
    assert fresh._indexed == meta.covered  # noqa: SLF001 - from the version 1 index
    assert fresh.count() == 45 and len(fresh.get_all()) == 45
    fresh.close()


def _churn(backend, records, new):
    """Change the store the way requests of the same process would: update
    some records, delete some, add new ones."""
    for record in records[:20]:
        current = backend.get(record.session_id)
        assert backend.compare_and_swap(
            record.session_id, current.version, current._replace(version=current.version + 1)
        )
    for record in records[20:25]:
        assert backend.delete(record.session_id) == 1
    for record in new:
        backend.add(record)


def _expected(records, new):
    changed = {r.session_id: r._replace(version=r.version + 1) for r in records[:20]}
    kept = {r.session_id: r for r in records[25:]}
    return {**changed, **kept, **{r.session_id: r for r in new}}


def test_requests_of_the_compacting_process_change_the_index_it_copies(tmp_path, monkeypatch):
    """A compaction reads the live (frozen) index, not a copy: entries that
    change while it copies come along with the frames after its snapshot."""
    monkeypatch.setattr(pickleindex, "EXTRA_MAX", 5)  # new ids would be merged at once
    path = tmp_path / "sessions.dat"
    records = compacted(path, 300)
    backend = opened(path)
    new = [make_record() for _ in range(10)]
    real_read_raw = picklelog.read_raw
    calls = []

    def read_raw(fd, offset):
        calls.append(offset)
        if len(calls) == 150:  # halfway through the copy
            _churn(backend, records, new)
        return real_read_raw(fd, offset)

    monkeypatch.setattr(picklelog, "read_raw", read_raw)
    backend.compact()
    assert len(calls) >= 150
    monkeypatch.setattr(picklelog, "read_raw", real_read_raw)
    expected = _expected(records, new)
    assert backend.get_all() == expected
    backend.close()
    fresh = opened(path)
    assert fresh._indexed > 0  # noqa: SLF001
    assert fresh.get_all() == expected
    # Each id once in the new index: deleting them all leaves nothing.
    assert fresh.delete_many(list(expected)) == len(expected)
    assert fresh.count() == 0 and fresh.get_all() == {}
    fresh.close()


def test_requests_while_an_index_is_written_change_nothing_it_covers(tmp_path, monkeypatch):
    path = tmp_path / "sessions.dat"
    records = compacted(path, 300)
    backend = opened(path)
    new = [make_record() for _ in range(10)]
    real_write_index = pickleindexfile.write_index

    def write_index(out, base, bound, meta):
        _churn(backend, records, new)  # after the snapshot, before and while it is written
        real_write_index(out, base, bound, meta)

    monkeypatch.setattr(pickleindexfile, "write_index", write_index)
    later = [r._replace(version=r.version + 1) for r in records[200:210]]
    for record in later:  # the log grows past the compaction's index
        assert backend.compare_and_swap(record.session_id, record.version - 1, record)
    with backend._mutex:  # noqa: SLF001 - as _start_due() does
        snapshot = backend._snapshot()  # noqa: SLF001
    backend._refresh_quietly(snapshot)  # noqa: SLF001 - the background job, here
    with pickleindexfile.open_index(f"{path}.index") as source:
        meta, _, _ = pickleindexfile.read_meta(source)
    assert meta.covered == snapshot.offset < path.stat().st_size
    expected = {**_expected(records, new), **{r.session_id: r for r in later}}
    assert backend.get_all() == expected
    backend.close()
    fresh = opened(path)
    assert fresh._indexed == meta.covered  # noqa: SLF001 - from the new index
    assert fresh.get_all() == expected
    fresh.close()


def test_a_process_that_waited_for_the_lock_loads_the_new_index_without_it(tmp_path, monkeypatch):
    """A swap that waits for the lock while a compaction is published finds
    a new file once it has the lock: it lets go of the lock to follow it
    (others wait for the lock meanwhile), then takes it again.  It follows
    with the index it has, the new one loading in a thread of its own
    (picklebridge): nothing is loaded in the request, under the lock or not."""
    import threading

    path = tmp_path / "sessions.dat"
    records = compacted(path, 500)
    writer = opened(path)
    reader = opened(path)
    record = records[0]
    assert reader.get(record.session_id) == record
    waiting, locked = threading.Event(), threading.Event()
    real_flock = PickleBackend._flock
    real_publish = picklecompact.Compaction._publish
    real_load = pickleindexfile.IndexFiles._load_index
    real_bridge_to = PickleBackend._bridge_to
    loads, bridged = [], []

    def flock(self, operation):
        if self is reader:
            waiting.set()
        real_flock(self, operation)

    def publish(self, temp, fd):
        locked.set()  # the compaction holds the lock
        assert waiting.wait(10)  # the reader is past its catch-up, at the lock
        real_publish(self, temp, fd)

    def load_index(self, st, spare=None):
        if self is reader:
            loads.append(self._holding)  # noqa: SLF001
        return real_load(self, st, spare)

    monkeypatch.setattr(PickleBackend, "_flock", flock)
    monkeypatch.setattr(picklecompact.Compaction, "_publish", publish)

    def bridge_to(self):
        followed = real_bridge_to(self)
        if self is reader:
            bridged.append(followed)
        return followed

    monkeypatch.setattr(pickleindexfile.IndexFiles, "_load_index", load_index)
    monkeypatch.setattr(PickleBackend, "_bridge_to", bridge_to)
    new = record._replace(version=2)
    results = []
    swapper = threading.Thread(
        target=lambda: results.append(reader.compare_and_swap(record.session_id, 1, new))
    )
    with writer._locked(exclusive=False):  # noqa: SLF001 - up to date before the race
        pass
    compaction = threading.Thread(target=writer.compact)
    compaction.start()
    assert locked.wait(10)
    swapper.start()
    for thread in (compaction, swapper):
        thread.join(30)
        assert not thread.is_alive()
    assert results == [True]
    assert loads == []
    assert True in bridged  # followed with its own index (loaded or not by now)
    assert writer.get(record.session_id) == new
    reader.close()
    writer.close()


def test_emptying_the_store_removes_the_index_of_the_old_file(tmp_path, caplog):
    path = tmp_path / "sessions.dat"
    compacted(path, 50)
    backend = opened(path)
    assert backend.delete_all() == 50
    extra = make_record()
    backend.add(extra)
    backend.close()
    assert not (tmp_path / "sessions.dat.index").exists()
    with caplog.at_level("INFO", "sessionstore"):
        fresh = opened(path)
    assert "not used" not in caplog.text
    assert fresh.get_all() == {extra.session_id: extra}
    fresh.close()


@pytest.mark.parametrize("added", [0, 150], ids=["fewer", "more"])
def test_a_process_following_a_compaction_reads_the_new_index_into_its_arrays(
    tmp_path, monkeypatch, added
):
    """When it cannot follow with the index it has (picklebridge), a process
    loads the new index at once, into the arrays of its old one."""
    monkeypatch.setattr(PickleBackend, "_bridge_to", lambda self: False)
    path = tmp_path / "sessions.dat"
    records = compacted(path, 300)
    reader = opened(path)
    assert reader.get(records[0].session_id) == records[0]
    old = reader._index  # noqa: SLF001
    arrays = old.base
    writer = opened(path)
    for record in records[:100]:
        writer.delete(record.session_id)
    new = [make_record() for _ in range(added)]
    for record in new:
        writer.add(record)
    writer.compact()
    assert reader.get(records[150].session_id) == records[150]
    index = reader._index  # noqa: SLF001
    assert all(a is b for a, b in zip(index.base, arrays, strict=True))
    assert len(arrays[0]) == 200 + added and index.count == 200 + added
    # A thread still holding the old index (no lock) is told to ask again.
    assert old.seq & 1 and old.get(records[150].session_id) is None
    assert reader.get_all() == {r.session_id: r for r in [*records[100:], *new]}
    reader.close()
    writer.close()


def test_a_background_index_writer_leaves_the_index_to_a_process_already_at_it(tmp_path):
    """Two or three processes wrote the same 32 MB index at once when the log
    grew: one that finds another at the index file writes nothing."""
    path = tmp_path / "sessions.dat"
    records = compacted(path, 300)
    backend = opened(path)
    later = [r._replace(version=r.version + 1) for r in records[:10]]
    for record in later:  # the log grows past the compaction's index
        assert backend.compare_and_swap(record.session_id, record.version - 1, record)

    def refresh():
        with backend._mutex:  # noqa: SLF001 - as _start_due() does
            snapshot = backend._snapshot()  # noqa: SLF001
        backend._refresh_quietly(snapshot)  # noqa: SLF001 - the background job, here
        with pickleindexfile.open_index(f"{path}.index") as source:
            return pickleindexfile.read_meta(source)[0].covered

    before = os.stat(f"{path}.index").st_ino
    other = os.open(f"{path}.index", os.O_RDONLY)  # another process at it
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        assert refresh() < path.stat().st_size
        assert os.stat(f"{path}.index").st_ino == before
    finally:
        os.close(other)
    assert refresh() == path.stat().st_size
    backend.close()
    fresh = opened(path)
    assert fresh.get_all() == {
        **{r.session_id: r for r in records},
        **{r.session_id: r for r in later},
    }
    fresh.close()
