"""Crashes, corrupt files, full disks and read-only places (pickle and SQLite)."""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sessionstore import BackendError, SessionMiddleware
from sessionstore.backends.picklefile import PickleBackend
from sessionstore.backends.sqlite import SqliteBackend
from sessionstore.testing import make_record

from . import forked
from .apps import make_app
from .child import IDS
from .conftest import IN_CI

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = {"pickle": PickleBackend, "sqlite": SqliteBackend}
FILES = {"pickle": "sessions.dat", "sqlite": "sessions.db"}


def child(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "tests.child", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def filled(kind, path, count=10):
    backend = BACKENDS[kind](str(path))
    backend.setup()
    records = [make_record() for _ in range(count)]
    for record in records:
        backend.add(record)
    backend.close()
    return records


# -- killed at random moments --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pickle", "sqlite"])
def test_sigkill_at_random_moments_loses_no_acknowledged_commit(tmp_path, kind):
    path = str(tmp_path / FILES[kind])
    rng = random.Random(1234)
    acked: dict[int, int] = {}  # id index -> last acknowledged version
    step = 0
    in_flight = 0  # kills that landed after a commit was stored, before its acknowledgement
    kills = 0
    # 30 kills, and more (up to 200) until one lands in that narrow window:
    # about 1 kill in 10 does, as measured, so 30 alone miss it now and then.
    while kills < 30 or (in_flight == 0 and kills < 200):
        kills += 1
        proc = forked.start("child", "crash-loop", kind, path, str(step))
        wanted = rng.randint(1, 40)
        seen = 0
        assert proc.stdout is not None
        for line in proc.stdout:
            step_done, index, version = map(int, line.split())
            acked[index], step, seen = version, step_done + 1, seen + 1
            if seen >= wanted:
                break
        proc.send_signal(signal.SIGKILL)
        for line in proc.stdout:  # acknowledgements already in the pipe count too
            if line.endswith("\n"):  # a line cut short by the kill is no acknowledgement
                step_done, index, version = map(int, line.split())
                acked[index], step = version, step_done + 1
        assert proc.wait() == -signal.SIGKILL
        proc.stdout.close()
        backend = BACKENDS[kind](path)
        backend.setup()
        try:
            for index, version in acked.items():
                record = backend.get(IDS[index])
                assert record is not None
                # The acknowledged commit, or the one in flight when killed.
                assert record.version in (version, version + 1)
                assert record.payload.startswith(f"{record.version}:".encode())
                if record.version == version + 1:
                    acked[index] = version + 1
                    in_flight += 1
        finally:
            backend.close()
    # Some kill did land mid-commit: the commit in flight was stored, its
    # acknowledgement never printed.
    assert in_flight >= 1, kills
    assert sum(acked.values()) >= 30


# -- damaged files ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pickle", "sqlite"])
@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: os.urandom(4096), id="random-bytes"),
        pytest.param(lambda data: data[:10], id="truncated-header"),
        pytest.param(lambda data: b"SQLite format 3\x00" + b"\xff" * 200, id="fake-header"),
    ],
)
def test_corrupt_file_is_reported_at_startup_and_left_untouched(tmp_path, kind, damage):
    path = tmp_path / FILES[kind]
    filled(kind, path)
    path.write_bytes(damage(path.read_bytes()))
    for extra in tmp_path.glob(FILES[kind] + "-*"):
        extra.unlink()  # SQLite's -wal/-shm from the good file
    before = path.read_bytes()
    with pytest.raises(BackendError) as info:
        SessionMiddleware(
            lambda e, s: [],
            secret="s-0123456789abcdefghijklmnopqrst",
            backend=kind,
            backend_options={"filename": str(path)},
        )
    assert str(path) in str(info.value)
    assert path.read_bytes() == before


def test_pickle_damage_found_while_running_is_reported_and_never_overwritten(tmp_path):
    path = tmp_path / "sessions.dat"
    filled("pickle", path, count=2)
    backend = PickleBackend(str(path))
    backend.setup()  # indexed while intact
    writer = PickleBackend(str(path))
    for _ in range(20):
        writer.add(make_record())
    writer.close()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    record = make_record()
    with pytest.raises(BackendError, match=r"sessions.dat is damaged at byte \d+") as info:
        backend.compare_and_swap(record.session_id, None, record)
    offset = int(str(info.value).split("at byte ")[1].split(":")[0])
    assert offset <= len(data) // 2 < offset + 300
    with pytest.raises(BackendError, match="damaged"):
        backend.get(record.session_id)
    backend.close()
    assert path.read_bytes() == bytes(data)


def test_pickle_torn_last_frame_keeps_every_complete_commit(tmp_path):
    path = tmp_path / "sessions.dat"
    records = filled("pickle", path, count=10)
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # the last append was cut short by a crash
    backend = PickleBackend(str(path))
    backend.setup()
    assert set(backend.get_all()) == {r.session_id for r in records[:9]}
    extra = make_record()
    assert backend.compare_and_swap(extra.session_id, None, extra)
    backend.close()
    again = PickleBackend(str(path))
    again.setup()
    assert set(again.get_all()) == {r.session_id for r in [*records[:9], extra]}
    again.close()


def test_sqlite_truncated_file_is_reported(tmp_path):
    path = tmp_path / "sessions.db"
    backend = SqliteBackend(str(path))
    backend.setup()
    for _ in range(300):
        backend.add(make_record(payload=os.urandom(2000)))
    backend.close()  # checkpoints the WAL into the file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BackendError, match="sessions.db"):
        SqliteBackend(str(path)).setup()


@pytest.mark.parametrize("kind", ["pickle", "sqlite"])
def test_zero_length_file_is_an_empty_store(tmp_path, kind):
    path = tmp_path / FILES[kind]
    path.write_bytes(b"")
    backend = BACKENDS[kind](str(path))
    backend.setup()
    assert backend.get_all() == {}
    record = make_record()
    assert backend.compare_and_swap(record.session_id, None, record)
    backend.close()
    again = BACKENDS[kind](str(path))
    again.setup()
    assert again.get(record.session_id) == record
    again.close()


def test_planted_pickle_in_the_file_is_never_unpickled(tmp_path, caplog):
    """A frame whose pickle would run code is refused, not executed."""
    import pickle
    import struct
    import zlib

    path = tmp_path / "sessions.dat"
    filled("pickle", path, count=1)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    body = pickle.dumps(("put", Exploit()))
    with open(path, "ab") as out:
        out.write(struct.pack(">II", len(body), zlib.crc32(body)) + body)
        out.write(struct.pack(">II", len(body), zlib.crc32(body)) + body)
    backend = PickleBackend(str(path))
    with caplog.at_level("ERROR", "sessionstore"):
        backend.setup()  # the file is set aside, nothing is unpickled
    backend.close()
    assert "refused global" in caplog.text
    assert not marker.exists()


# -- full disk and read-only places -------------------------------------------------


def _limit_file_size(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("kind", ["pickle", "sqlite"])
def test_full_disk_fails_the_commit_and_keeps_old_data(tmp_path, kind):
    path = tmp_path / FILES[kind]
    records = filled(kind, path, count=5)
    for extra in tmp_path.glob(FILES[kind] + "-*"):
        extra.unlink()
    # Room to open the store, none for the 1 MB record the child then writes:
    # that write fails as it would on a full disk.
    limit = path.stat().st_size + 64 * 1024
    proc = child("try-write", kind, str(path), preexec_fn=_limit_file_size(limit))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "records 5" in out
    assert "BackendError" in out and str(path) in out
    backend = BACKENDS[kind](str(path))
    backend.setup()
    assert set(backend.get_all()) == {r.session_id for r in records}
    backend.close()


def _without_root_powers():
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        message = "running as root without setpriv: permissions cannot be enforced"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"]


@pytest.mark.parametrize("kind", ["pickle", "sqlite"])
def test_read_only_directory_fails_the_commit_and_keeps_old_data(tmp_path, kind):
    store = tmp_path / "store"
    store.mkdir()
    path = store / FILES[kind]
    records = filled(kind, path, count=5)
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    for p in store.iterdir():
        p.chmod(0o444)
    store.chmod(0o555)
    try:
        proc = subprocess.run(
            [
                *_without_root_powers(),
                sys.executable,
                "-m",
                "tests.child",
                "try-write",
                kind,
                str(path),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        store.chmod(0o755)
        for p in store.iterdir():
            p.chmod(0o644)
    output = proc.stdout + proc.stderr
    # The store opens read-only: it serves reads, the write fails naming the
    # file, and nothing changes.
    assert "records 5" in output, output
    assert "written\n" not in output
    assert "BackendError" in output and str(path) in output, output
    assert {p.name: p.read_bytes() for p in store.iterdir()} == before
    backend = BACKENDS[kind](str(path))
    backend.setup()
    assert set(backend.get_all()) == {r.session_id for r in records}
    backend.close()


# -- several processes on one file ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pickle", "sqlite"])
def test_four_processes_writing_one_session_lose_nothing(tmp_path, kind):
    path = str(tmp_path / FILES[kind])
    app = make_app(kind, path)
    from webtest import TestApp

    web = TestApp(app)
    web.get("/write", {"app": "setup", "key": "k", "value": "v"})
    cookie = web.cookies["session"]
    count = 60
    procs = [
        forked.start("child", "mp-write", kind, path, cookie, str(w), str(count)) for w in range(4)
    ]
    for proc in procs:
        out, returncode = proc.communicate(timeout=120)
        assert returncode == 0 and "done" in out, out
    dump = web.get("/dump").json
    for worker in range(4):
        assert dump["apps"][f"w{worker}"] == {f"k{i}": str(i) for i in range(count)}
    assert dump["apps"]["setup"] == {"k": "v"}


@pytest.mark.parametrize("kind", ["pickle", "sqlite"])
def test_store_files_are_private_to_their_owner(tmp_path, kind):
    filled(kind, tmp_path / FILES[kind], count=1)
    backend = BACKENDS[kind](str(tmp_path / FILES[kind]))
    backend.setup()
    record = make_record()
    backend.compare_and_swap(record.session_id, None, record)  # opens -wal/-shm too
    created = sorted(p.name for p in tmp_path.iterdir())
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    backend.close()
    assert len(created) >= 2  # the store and its lock file, or its -wal/-shm
    assert set(modes.values()) == {0o600}, modes


# -- killed during compaction ----------------------------------------------------------


@pytest.mark.slow
def test_sigkill_during_compaction_loses_nothing_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sessions.dat"
    rng = random.Random(99)
    acked: dict[int, int] = {}
    step = 0
    mid_compaction = 0
    for _ in range(50):
        proc = forked.start("compaction_child", "crash-loop", str(path), str(step))
        wanted = rng.randint(1, 30)
        assert proc.stdout is not None
        for seen, line in enumerate(proc.stdout, 1):
            step_done, index, version = map(int, line.split())
            acked[index], step = version, step_done + 1
            if seen >= wanted:
                break
        proc.send_signal(signal.SIGKILL)
        for line in proc.stdout:
            if line.endswith("\n"):
                step_done, index, version = map(int, line.split())
                acked[index], step = version, step_done + 1
        assert proc.wait() == -signal.SIGKILL
        proc.stdout.close()
        temps = list(tmp_path.glob(".sessions.dat.*.compact.tmp"))
        mid_compaction += bool(temps)
        backend = PickleBackend(str(path))
        backend.setup()  # removes what the killed compaction left
        try:
            assert list(tmp_path.glob("*.tmp")) == []
            for index, version in acked.items():
                record = backend.get(IDS[index])
                assert record is not None and record.version in (version, version + 1)
                assert record.payload.startswith(f"{record.version}:".encode())
                acked[index] = record.version
        finally:
            backend.close()
    # Compaction takes a good part of the child's time: many kills land in one.
    assert mid_compaction >= 5, mid_compaction  # 15 of 50 when measured
    assert list(tmp_path.glob("*.damaged-*")) == []


def test_no_room_to_compact_keeps_committing_and_backs_off(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    path = store / "sessions.dat"
    filled("pickle", path, count=1)
    store.chmod(0o555)  # the file can grow; no new file (a compaction) can be made
    try:
        proc = subprocess.run(
            [
                *_without_root_powers(),
                sys.executable, "-m", "tests.compaction_child", "no-room", str(path), "300",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
    finally:
        store.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    # 300 commits of 20 KB pass the compaction threshold (~1 MB) after ~50;
    # without back-off every later commit would retry (about 250 times).
    assert "commits 300 failed-compactions" in proc.stdout
    failed = int(proc.stdout.split()[-1])
    assert 1 <= failed <= 4, proc.stdout
    assert sorted(p.name for p in store.iterdir()) == ["sessions.dat", "sessions.dat.lock"]
    backend = PickleBackend(str(path))
    backend.setup()
    assert backend.get("n" * 43).version == 300
    backend.close()
