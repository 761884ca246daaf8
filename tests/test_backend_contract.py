"""The backend contract suite on the embedded backends, plus what is
particular to each: the memory backend's lock, the files' sync options, the
pickle log's damage rule."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading

import pytest

from sessionstore import BusyRetry
from sessionstore.backends.base import Record
from sessionstore.backends.memory import MemoryBackend
from sessionstore.backends.picklefile import PickleBackend
from sessionstore.backends.sqlite import SqliteBackend
from sessionstore.testing import BackendContract, PersistentBackendContract, make_record


class TestMemoryBackend(BackendContract):
    @pytest.fixture
    def backend(self):
        backend = MemoryBackend()
        backend.setup()
        yield backend
        backend.close()

    def test_compare_and_swap_is_atomic(self, backend):
        """A thread parked between the check of the stored version and the
        write (the stored record's ``version`` read blocks it, inside the
        backend's own compare-and-swap) must keep every other swap out."""
        parked, release = threading.Event(), threading.Event()
        readers: list[int] = []

        class Parking(Record):
            __slots__ = ()

            @property
            def version(self) -> int:
                if not readers:  # the first reader parks; later ones do not
                    readers.append(threading.get_ident())
                    parked.set()
                    release.wait(30)
                return tuple.__getitem__(self, 1)

        record = make_record()
        backend.add(Parking(*record))
        mine = record._replace(version=2, payload=b"first")
        theirs = record._replace(version=2, payload=b"second")
        results: dict[str, bool] = {}

        def swap(name: str, new: Record) -> None:
            results[name] = backend.compare_and_swap(record.session_id, 1, new)

        first = threading.Thread(target=swap, args=("first", mine))
        first.start()
        assert parked.wait(30)
        second = threading.Thread(target=swap, args=("second", theirs))
        second.start()
        # While the first swap is parked, the second must not get through.  A
        # backend without its lock lets it finish (and win) at once; with the
        # lock it waits, so this join runs out (the one wait this test costs).
        second.join(0.3)
        second_got_through = not second.is_alive()
        release.set()
        for thread in (first, second):
            thread.join(30)
            assert not thread.is_alive()
        assert not second_got_through
        assert results == {"first": True, "second": False}
        assert backend.get(record.session_id) == mine


class TestPickleBackend(PersistentBackendContract):
    @pytest.fixture
    def backend(self, tmp_path):
        backend = PickleBackend(str(tmp_path / "sessions.dat"))
        backend.setup()
        yield backend
        backend.close()

    @pytest.fixture
    def reopen(self, tmp_path):
        return lambda: PickleBackend(str(tmp_path / "sessions.dat"))

    def test_a_reader_follows_another_process_through_compaction(self, backend, reopen):
        """Reads that find the file unchanged skip the lock; a compaction by
        another process (a new file renamed over the old) must still be seen."""
        from sessionstore.testing import make_record

        record = make_record(payload=b"x" * 100_000)
        assert backend.compare_and_swap(record.session_id, None, record)
        assert backend.get(record.session_id) == record  # indexed, now on the fast path
        other = reopen()
        other.setup()
        try:
            inode = os.stat(other.filename).st_ino
            current = record
            while os.stat(other.filename).st_ino == inode:  # until it compacts
                new = current._replace(version=current.version + 1)
                assert other.compare_and_swap(current.session_id, current.version, new)
                current = new
            assert current.version > 2
            assert backend.get(record.session_id) == current
            assert backend.compare_and_swap(record.session_id, current.version - 1, record) is False
        finally:
            other.close()

    @pytest.mark.parametrize("fsync", [True, False])
    def test_fsync_option_syncs_every_commit_to_the_file(self, tmp_path, monkeypatch, fsync):
        """``fsync = true``: every commit (insert, update, delete) is flushed
        to the disk before it returns; ``false``: a commit never waits for one."""
        path = tmp_path / "synced.dat"
        backend = PickleBackend(str(path), fsync=fsync)
        backend.setup()
        first = make_record()
        assert backend.compare_and_swap(first.session_id, None, first)  # creates the file
        inode = os.stat(path).st_ino
        synced: list[int] = []
        real_fsync = os.fsync

        def counting_fsync(fd: int) -> None:
            if os.fstat(fd).st_ino == inode:
                synced.append(fd)
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", counting_fsync)
        second = make_record()
        commits = [
            lambda: backend.compare_and_swap(second.session_id, None, second),
            lambda: backend.compare_and_swap(first.session_id, 1, first._replace(version=2)),
            lambda: backend.compare_and_swap(first.session_id, 2, None),
        ]
        for commit in commits:
            before = len(synced)
            assert commit()
            assert len(synced) > before if fsync else len(synced) == 0
        backend.close()

    def test_a_swap_waits_for_another_processs_reader(self, tmp_path):
        """Writers hold ``<filename>.lock`` exclusively: while another process
        holds it shared (reading), a swap waits, and gives up after busy_timeout."""
        path = str(tmp_path / "locked.dat")
        backend = PickleBackend(path, busy_timeout=0.05)
        backend.setup()
        record = make_record()
        # A second open file description of the lock file: flock treats it
        # as another process.
        reader = os.open(path + ".lock", os.O_RDWR)
        try:
            fcntl.flock(reader, fcntl.LOCK_SH)
            with pytest.raises(BusyRetry):
                backend.compare_and_swap(record.session_id, None, record)
            fcntl.flock(reader, fcntl.LOCK_UN)
        finally:
            os.close(reader)
        assert backend.compare_and_swap(record.session_id, None, record)
        backend.close()

    def test_deleting_most_sessions_compacts_the_file(self, tmp_path):
        path = tmp_path / "compacted.dat"
        backend = PickleBackend(str(path))
        backend.setup()
        records = [make_record(payload=os.urandom(100_000)) for _ in range(20)]
        for record in records:
            assert backend.compare_and_swap(record.session_id, None, record)
        assert path.stat().st_size > 2_000_000
        for record in records[1:]:
            assert backend.compare_and_swap(record.session_id, 1, None)
        backend.close()  # waits for the compaction running in the background
        assert path.stat().st_size < 1_000_000  # the dead frames were compacted away
        again = PickleBackend(str(path))
        again.setup()
        assert again.get_all() == {records[0].session_id: records[0]}
        again.close()

    def test_a_torn_frame_header_at_the_end_is_cut(self, tmp_path):
        """A crash can leave even less than a frame header: that too is an
        unfinished append, ignored and cut by the next write."""
        path = tmp_path / "torn.dat"
        backend = PickleBackend(str(path))
        backend.setup()
        kept = make_record()
        assert backend.compare_and_swap(kept.session_id, None, kept)
        backend.close()
        good = path.read_bytes()
        path.write_bytes(good + b"\x00\x00\x01")  # 3 of a header's 8 bytes
        again = PickleBackend(str(path))
        again.setup()
        assert again.get_all() == {kept.session_id: kept}
        other = make_record()
        assert again.compare_and_swap(other.session_id, None, other)
        again.close()
        assert path.read_bytes().startswith(good)
        assert len(path.read_bytes()) > len(good) + 3

    def test_damage_inside_the_file_is_reported_at_its_offset(self, tmp_path, caplog):
        path = tmp_path / "damaged.dat"
        backend = PickleBackend(str(path))
        backend.setup()
        offsets = []
        for _ in range(3):
            offsets.append(os.path.getsize(path) if path.exists() else 0)
            record = make_record()
            assert backend.compare_and_swap(record.session_id, None, record)
        backend.close()
        data = bytearray(path.read_bytes())
        data[offsets[1] + 20] ^= 0xFF  # inside the second frame
        path.write_bytes(bytes(data))
        damaged = PickleBackend(str(path))
        with caplog.at_level(logging.ERROR, "sessionstore"):
            damaged.setup()  # set aside whole; the site starts on what could be read
        damaged.close()
        assert re.search(rf"(?<![-\d]){offsets[1]}(?!\d)", caplog.text), caplog.text
        [aside] = tmp_path.glob("damaged.dat.damaged-*")
        assert aside.read_bytes() == bytes(data)

    def test_a_full_last_frame_with_a_bad_crc_is_damage_never_cut(self, tmp_path, caplog):
        """The rule: only a final append cut short (fewer bytes than its frame
        header announces) can come from a crash, and only that may be cut.  A
        last frame present in full whose checksum fails is damage: reported
        naming the file and the frame's offset, and set aside with every byte
        (the store starts on the records that could be read)."""
        path = tmp_path / "damaged.dat"
        backend = PickleBackend(str(path))
        backend.setup()
        kept = []
        for _ in range(3):
            record = make_record()
            assert backend.compare_and_swap(record.session_id, None, record)
            kept.append(record)
        last_frame_at = os.path.getsize(path)
        record = make_record()
        assert backend.compare_and_swap(record.session_id, None, record)
        backend.close()
        data = bytearray(path.read_bytes())
        data[-2] ^= 0xFF  # inside the last frame's body: its length stays right
        path.write_bytes(bytes(data))
        damaged = PickleBackend(str(path))
        with caplog.at_level(logging.ERROR, "sessionstore"):
            damaged.setup()
        try:
            [aside] = tmp_path.glob("damaged.dat.damaged-*")
            assert aside.read_bytes() == bytes(data)  # every byte kept
            assert str(path) in caplog.text and str(last_frame_at) in caplog.text
            assert {r.session_id for r in damaged.iter_records()} == {r.session_id for r in kept}
        finally:
            damaged.close()


class TestSqliteBackend(PersistentBackendContract):
    @pytest.fixture
    def backend(self, tmp_path):
        backend = SqliteBackend(str(tmp_path / "sessions.db"))
        backend.setup()
        yield backend
        backend.close()

    @pytest.fixture
    def reopen(self, tmp_path):
        return lambda: SqliteBackend(str(tmp_path / "sessions.db"))

    @pytest.mark.parametrize(("fsync", "level"), [(True, 2), (False, 1)])
    def test_fsync_option_sets_synchronous_full_on_every_connection(self, tmp_path, fsync, level):
        """``fsync = true`` is ``synchronous = FULL`` (2), else NORMAL (1), read
        back from the backend's own connections (the setting is per connection;
        each thread has its own)."""
        backend = SqliteBackend(str(tmp_path / "synced.db"), fsync=fsync)
        backend.setup()
        seen = []

        def level_here() -> None:
            backend.get("x")  # opens this thread's connection
            conn = backend._thread_connection()
            seen.append(conn.execute("PRAGMA synchronous").fetchone()[0])

        level_here()
        other = threading.Thread(target=level_here)
        other.start()
        other.join(30)
        assert not other.is_alive()
        backend.close()
        assert seen == [level, level]


class TestSqliteMemoryBackend(BackendContract):
    @pytest.fixture
    def backend(self):
        backend = SqliteBackend(":memory:")
        backend.setup()
        yield backend
        backend.close()
