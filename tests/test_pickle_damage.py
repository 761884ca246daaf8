"""The pickle file under damage and interference: nothing acknowledged lost, no byte destroyed."""

from __future__ import annotations

import fcntl
import os
import shutil
import struct

import pytest

from sessionstore import BackendError
from sessionstore.backends import picklelog
from sessionstore.backends.picklefile import PickleBackend
from sessionstore.testing import make_record


def filled(path, count, payload=b"p" * 100):
    backend = PickleBackend(str(path))
    backend.setup()
    records = [make_record(payload=payload) for _ in range(count)]
    for record in records:
        backend.add(record)
    backend.close()
    return records


def frames(data):
    """(start, end) of each record's frame."""
    start = picklelog.header_size(data)
    assert start is not None
    return [(s, e) for s, e, f in picklelog.iter_frames(data, start) if f[0] != "origin"]


def opened(path):
    backend = PickleBackend(str(path))
    backend.setup()
    return backend


def aside_files(path):
    return sorted(path.parent.glob(path.name + ".damaged-*"))


# -- damaged bytes -------------------------------------------------------------------


@pytest.mark.parametrize("bit", [3, 12, 20, 27, 31])
def test_damaged_length_field_sets_the_file_aside_and_keeps_every_other_record(
    tmp_path, caplog, bit
):
    path = tmp_path / "sessions.dat"
    records = filled(path, 20)
    data = bytearray(path.read_bytes())
    start, _ = frames(bytes(data))[9]  # the 10th record's frame
    (length,) = struct.unpack_from(">I", data, start)
    struct.pack_into(">I", data, start, length ^ (1 << bit))
    path.write_bytes(bytes(data))
    with caplog.at_level("ERROR", "sessionstore"):
        backend = opened(path)
    [aside] = aside_files(path)
    # One account of what happened: set aside, not "left untouched" as well.
    [message] = [r.getMessage() for r in caplog.records if "damaged at byte" in r.getMessage()]
    assert f"damaged at byte {start}" in message and f"set aside, unchanged, as {aside}" in message
    assert "untouched" not in message
    assert aside.read_bytes() == bytes(data)  # every byte kept
    survivors = {r.session_id for r in records[:9] + records[10:]}
    assert set(backend.get_all()) == survivors
    backend.close()


def test_damaged_middle_frame_sets_the_file_aside_and_keeps_every_other_record(tmp_path):
    path = tmp_path / "sessions.dat"
    records = filled(path, 5)
    data = bytearray(path.read_bytes())
    start, end = frames(bytes(data))[1]
    data[(start + end) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    backend = opened(path)
    assert set(backend.get_all()) == {r.session_id for r in records if r is not records[1]}
    extra = make_record()
    assert backend.compare_and_swap(extra.session_id, None, extra)
    backend.close()
    [aside] = aside_files(path)
    assert aside.read_bytes() == bytes(data)
    assert opened(path).get(extra.session_id) == extra


def test_a_file_that_is_not_ours_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "sessions.dat"
    path.write_bytes(b"my notes, not sessions\n" * 100)
    with pytest.raises(BackendError, match=r"damaged at byte 0: not a sessionstore"):
        PickleBackend(str(path)).setup()
    assert path.read_bytes() == b"my notes, not sessions\n" * 100
    assert aside_files(path) == []


# -- what a crash leaves ---------------------------------------------------------------


def test_zero_tail_from_a_power_cut_opens_with_every_record(tmp_path):
    path = tmp_path / "sessions.dat"
    records = filled(path, 10)
    with open(path, "ab") as out:
        out.write(b"\0" * 4096)
    backend = opened(path)
    assert set(backend.get_all()) == {r.session_id for r in records}
    extra = make_record()
    assert backend.compare_and_swap(extra.session_id, None, extra)
    backend.close()
    assert set(opened(path).get_all()) == {r.session_id for r in [*records, extra]}
    assert aside_files(path) == []


def test_torn_last_frame_is_cut_by_the_next_write(tmp_path):
    path = tmp_path / "sessions.dat"
    records = filled(path, 10)
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    backend = opened(path)
    assert set(backend.get_all()) == {r.session_id for r in records[:9]}
    extra = make_record()
    assert backend.compare_and_swap(extra.session_id, None, extra)
    backend.close()
    assert path.read_bytes().startswith(data[: frames(data)[-1][0]])


# -- interference while running ----------------------------------------------------------


@pytest.mark.parametrize("backup_size", ["smaller", "larger"])
def test_a_backup_copied_in_place_is_noticed_and_never_cut(tmp_path, caplog, backup_size):
    path = tmp_path / "sessions.dat"
    other = tmp_path / "backup.dat"
    records = filled(path, 10 if backup_size == "smaller" else 3)
    backup_records = filled(other, 3 if backup_size == "smaller" else 10)
    backup = other.read_bytes()
    backend = opened(path)  # a running process, indexed
    # `cp backup.dat sessions.dat` half done: same inode, a frame cut short.
    cut = frames(backup)[-1][0] + 20
    with open(path, "r+b") as out:
        out.truncate(0)
        out.write(backup[:cut])
    extra = make_record()
    with (
        caplog.at_level("ERROR", "sessionstore"),
        pytest.raises(BackendError, match="unexpected bytes"),
    ):
        backend.compare_and_swap(extra.session_id, None, extra)
    assert "rewritten in place" in caplog.text
    assert path.read_bytes() == backup[:cut]  # nothing cut
    with open(path, "ab") as out:  # the copy finishes
        out.write(backup[cut:])
    assert backend.compare_and_swap(extra.session_id, None, extra)
    expected = {r.session_id for r in [*backup_records, extra]}
    assert set(backend.get_all()) == expected
    assert path.read_bytes().startswith(backup)
    backend.close()
    assert {r.session_id for r in records}.isdisjoint(expected)


def test_a_deleted_file_is_logged_not_silently_empty(tmp_path, caplog):
    path = tmp_path / "sessions.dat"
    records = filled(path, 5)
    backend = opened(path)
    os.unlink(path)
    with caplog.at_level("ERROR", "sessionstore"):
        assert backend.get(records[0].session_id) is None
    assert "deleted while in use: its 5 sessions are gone" in caplog.text
    extra = make_record()
    assert backend.compare_and_swap(extra.session_id, None, extra)
    backend.close()
    assert set(opened(path).get_all()) == {extra.session_id}


def test_a_replaced_file_is_logged_but_a_compaction_is_not(tmp_path, caplog):
    path = tmp_path / "sessions.dat"
    records = filled(path, 3)
    shutil.copy(path, tmp_path / "backup.dat")
    reader = opened(path)
    writer = opened(path)
    record = records[0]
    with caplog.at_level("WARNING", "sessionstore"):
        for version in range(2, 300):  # 4 KB each: well past a compaction
            new = record._replace(version=version, payload=os.urandom(4096))
            assert writer.compare_and_swap(record.session_id, version - 1, new)
            record = new
        writer.close()  # waits for its background compaction
        inode = path.stat().st_ino
        assert reader.get(record.session_id) == record
    assert inode != (tmp_path / "backup.dat").stat().st_ino
    assert "replaced" not in caplog.text and "rewritten" not in caplog.text
    os.replace(tmp_path / "backup.dat", path)  # an old backup put back
    with caplog.at_level("ERROR", "sessionstore"):
        assert reader.get(record.session_id).version == 1
    assert "was replaced by another file" in caplog.text
    reader.close()


def test_orphan_temp_files_are_removed_at_setup_but_not_a_live_one(tmp_path):
    path = tmp_path / "sessions.dat"
    filled(path, 2)
    orphan = tmp_path / ".sessions.dat.abc123.compact.tmp"
    orphan.write_bytes(b"x" * 1000)
    live = tmp_path / ".sessions.dat.def456.compact.tmp"
    live.write_bytes(b"y" * 1000)
    unrelated = tmp_path / ".other.dat.abc.compact.tmp"
    unrelated.write_bytes(b"z")
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a compaction in progress elsewhere
        opened(path).close()
    assert not orphan.exists()
    assert live.exists() and unrelated.exists()


# -- files we will not follow or leave open to others ---------------------------------------


@pytest.mark.parametrize("which", ["sessions.dat", "sessions.dat.lock"])
def test_a_symlink_at_the_store_or_lock_path_is_refused(tmp_path, which):
    target = tmp_path / "elsewhere"
    filled(tmp_path / "sessions.dat", 1)
    (tmp_path / which).rename(target)
    (tmp_path / which).symlink_to(target)
    before = target.read_bytes()
    with pytest.raises(BackendError, match="symbolic link"):
        backend = PickleBackend(str(tmp_path / "sessions.dat"))
        backend.setup()
        backend.add(make_record())
    assert target.read_bytes() == before


def test_a_wider_mode_is_narrowed_with_a_warning(tmp_path, caplog):
    path = tmp_path / "sessions.dat"
    filled(path, 1)
    path.chmod(0o644)
    backend = opened(path)
    with caplog.at_level("WARNING", "sessionstore"):
        backend.add(make_record())
    backend.close()
    assert "had mode 0644" in caplog.text
    assert path.stat().st_mode & 0o777 == 0o600


# -- compaction by another process -------------------------------------------------------


def read_so_far():
    with open("/proc/self/io") as io:
        return int(next(line for line in io if line.startswith("rchar:")).split()[1])


def test_a_reader_follows_a_compaction_reading_the_index_not_the_log(tmp_path, caplog):
    path = tmp_path / "sessions.dat"
    records = filled(path, 2000, payload=b"q" * 1000)  # a 2 MB file
    reader = opened(path)
    writer = opened(path)
    changed = records[0]._replace(version=2)
    assert writer.compare_and_swap(changed.session_id, 1, changed)
    assert reader.get(changed.session_id) == changed  # reader covers the old file's end
    writer.compact()
    later = records[1]._replace(version=2)
    assert writer.compare_and_swap(later.session_id, 1, later)
    before = read_so_far()
    with caplog.at_level("WARNING", "sessionstore"):
        assert reader.get(later.session_id) == later
    # The new index file (32 bytes a session: 64 KB) and the frames after
    # it, not the 2 MB of the new log.
    assert read_so_far() - before < 100_000
    assert reader.get_all() == writer.get_all()
    assert caplog.text == ""
    again = opened(path)  # a fresh process reads the compacted file whole
    assert again.get_all() == writer.get_all()
    for backend in (reader, writer, again):
        backend.close()


# -- what a damaged stretch may have held -------------------------------------------------


def _flip_last_byte(path, index):
    """Damage the body of the ``index``-th frame after the origin, leaving its
    id readable (the last byte is the pickle's STOP opcode)."""
    data = bytearray(path.read_bytes())
    start = picklelog.header_size(bytes(data))
    found = list(picklelog.iter_frames(bytes(data), start))[1:]  # not the origin
    _, end, frame = found[index]
    data[end - 1] ^= 0x01
    path.write_bytes(bytes(data))
    return frame, bytes(data)


@pytest.mark.parametrize("change", ["deleted", "updated"])
def test_salvage_leaves_out_a_session_whose_later_frame_was_damaged(tmp_path, caplog, change):
    """A logout (a del frame) or a newer version lost in a damaged stretch
    must not bring the session back as it was before."""
    path = tmp_path / "sessions.dat"
    records = filled(path, 4)
    backend = opened(path)
    victim = records[1]
    if change == "deleted":
        assert backend.compare_and_swap(victim.session_id, 1, None)
    else:
        assert backend.compare_and_swap(victim.session_id, 1, victim._replace(version=2))
    later = make_record()
    backend.add(later)  # the damaged frame is not the last one
    backend.close()
    frame, damaged = _flip_last_byte(path, 4)
    assert frame[1] == victim.session_id
    with caplog.at_level("ERROR", "sessionstore"):
        backend = opened(path)
    assert "1 left out" in caplog.text
    kept = {r.session_id for r in [*records, later] if r is not victim}
    assert set(backend.get_all()) == kept  # neither the old version nor a resurrection
    backend.close()
    [aside] = aside_files(path)
    assert aside.read_bytes() == damaged  # every byte kept for an administrator
    _, problems = picklelog.salvage(damaged)
    assert any(f"session {victim.session_id} left out" in str(p) for p in problems)
