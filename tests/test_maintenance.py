"""``sessionstore check`` and ``sessionstore salvage`` on every kind of store."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from webtest import TestApp

from sessionstore import SessionMiddleware
from sessionstore.backends import pickleindexfile
from sessionstore.backends.memory import MemoryBackend
from sessionstore.backends.picklefile import PickleBackend
from sessionstore.backends.sqlite import SqliteBackend
from sessionstore.maintenance import check, salvage
from sessionstore.payload import PayloadCodec
from sessionstore.testing import make_record

from . import clirun
from .apps import command_app

SECRET = "maintenance-secret-0123456789abcdef"
CODEC = PayloadCodec((SECRET,))
BACKENDS = {"pickle": (PickleBackend, "sessions.dat"), "sqlite": (SqliteBackend, "sessions.db")}


def cli(*args):
    return clirun.run(*args, secret_variable=SECRET)


def good_record():
    record = make_record()
    payload = CODEC.dumps(
        {"app": {"k": b"v"}}, None, record.session_id, record.created_at, record.expires_at
    )
    return record._replace(payload=payload)


def store_with(kind, tmp_path, records):
    cls, name = BACKENDS[kind]
    path = str(tmp_path / name)
    backend = cls(path)
    backend.setup()
    for record in records:
        backend.add(record)
    backend.close()
    return path


@pytest.mark.parametrize("kind", ["pickle", "sqlite"])
def test_check_passes_a_sound_store_and_names_a_damaged_record(tmp_path, kind):
    good = [good_record() for _ in range(3)]
    path = store_with(kind, tmp_path, good)
    ok = cli("--backend", kind, "--option", f"filename={path}", "check")
    assert ok.returncode == 0, ok.stderr
    assert "3 sessions verified" in ok.stdout
    bad = make_record(payload=b"\x00" * 40)  # fails verification
    store_with(kind, tmp_path, [bad])
    before = Path(path).read_bytes()
    failed = cli("--backend", kind, "--option", f"filename={path}", "check", "--json")
    assert failed.returncode == 1
    report = json.loads(failed.stdout)
    assert report["damaged_sessions"] == [bad.session_id]
    assert report["sessions"] == 4
    assert Path(path).read_bytes() == before  # the damaged record is kept
    text = cli("--backend", kind, "--option", f"filename={path}", "check")
    assert "3 sessions verified" in text.stdout
    assert "1 session failed verification" in text.stdout
    assert "damaged: 1 problem\n" in text.stderr


def damaged_pickle_file(tmp_path):
    """A pickle store of 10 sessions with one byte flipped in its middle,
    and its bytes."""
    path = store_with("pickle", tmp_path, [good_record() for _ in range(10)])
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(path).write_bytes(bytes(data))
    return path, bytes(data)


@pytest.mark.parametrize("command", [["stats"], ["list"], ["purge"], ["destroy", "x" * 43]])
def test_other_commands_report_a_damaged_pickle_file_and_leave_it_alone(tmp_path, command):
    """Only a site's start-up sets a damaged file aside; a command names the
    damage and changes nothing."""
    path, data = damaged_pickle_file(tmp_path)
    proc = cli("--backend", "pickle", "--option", f"filename={path}", *command)
    assert proc.returncode == 1
    assert f"{path} is damaged at byte" in proc.stderr and "sessionstore check" in proc.stderr
    assert Path(path).read_bytes() == data
    assert not [p.name for p in tmp_path.iterdir() if "damaged" in p.name]


def test_salvage_into_the_store_it_reads_is_refused_before_touching_it(tmp_path):
    path, data = damaged_pickle_file(tmp_path)
    same = f"filename={tmp_path}/../{tmp_path.name}/sessions.dat"  # another spelling
    proc = cli(
        "--backend", "pickle", "--option", f"filename={path}",
        "salvage", "--to", "pickle", "--to-option", same,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "another destination" in proc.stderr
    assert Path(path).read_bytes() == data
    assert not [p.name for p in tmp_path.iterdir() if "damaged" in p.name]


@pytest.mark.parametrize("kind", ["pickle", "sqlite"])
def test_an_id_retired_by_regenerate_is_no_session_for_the_commands(tmp_path, kind):
    """After a login (regenerate), the old id's short-lived empty record is
    neither damage for ``check``, a session for ``stats`` nor one to show."""
    path = str(tmp_path / BACKENDS[kind][1])
    web = TestApp(
        SessionMiddleware(
            command_app,
            secret=SECRET,
            backend=kind,
            backend_options={"filename": path},
            cleanup_probability=0,
        )
    )
    web.get("/write", {"app": "a", "key": "k", "value": "v"})
    old = web.get("/id").text
    assert web.get("/regenerate").text != old
    web.app.close()
    target = ("--backend", kind, "--option", f"filename={path}")
    checked = cli(*target, "check", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["sessions"] == 1
    stats = json.loads(cli(*target, "stats", "--json").stdout)
    assert (stats["sessions"], stats["live"]) == (1, 1)
    shown = cli(*target, "show", old)
    assert shown.returncode == 1
    assert f"no session {old}" in shown.stderr
    copy = tmp_path / "copy.db"
    salvaged = cli(*target, "salvage", "--to", "sqlite", "--to-option", f"filename={copy}")
    assert salvaged.returncode == 0, salvaged.stderr
    assert len(SqliteBackend(str(copy)).get_all()) == 1


def test_check_of_a_missing_file_creates_nothing(tmp_path):
    for kind, (_, name) in BACKENDS.items():
        proc = cli("--backend", kind, "--option", f"filename={tmp_path / name}", "check")
        assert proc.returncode == 1
        assert "no such file" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_salvage_copies_every_readable_record_out_of_a_damaged_pickle_file(tmp_path):
    records = [good_record() for _ in range(10)]
    path = store_with("pickle", tmp_path, records)
    data = bytearray(Path(path).read_bytes())
    damaged_at = len(data) // 2
    data[damaged_at] ^= 0xFF
    Path(path).write_bytes(bytes(data))
    check_run = cli("--backend", "pickle", "--option", f"filename={path}", "check")
    assert check_run.returncode == 1
    assert "damaged at byte" in check_run.stdout
    out = tmp_path / "out.db"
    proc = cli(
        "--backend", "pickle", "--option", f"filename={path}",
        "salvage", "--to", "sqlite", "--to-option", f"filename={out}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "copied 9 sessions to sqlite; 1 problem above" in proc.stdout
    assert Path(path).read_bytes() == bytes(data)  # read only, never set aside
    assert [p.name for p in tmp_path.iterdir() if "damaged" in p.name] == []
    copied = SqliteBackend(str(out))
    copied.setup()
    assert len(set(copied.get_all()) & {r.session_id for r in records}) == 9
    copied.close()


def test_salvage_reads_a_damaged_sqlite_file_page_by_page(tmp_path):
    records = [good_record()._replace(payload=os.urandom(1500)) for _ in range(400)]
    path = store_with("sqlite", tmp_path, records)
    conn = sqlite3.connect(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(Path(path).read_bytes())
    pages = len(data) // page_size
    for page in (pages // 2, pages // 2 + 1):  # two pages of rows overwritten
        data[page * page_size : (page + 1) * page_size] = b"\xa5" * page_size
    Path(path).write_bytes(bytes(data))
    source = SqliteBackend(path)
    report = check(source)
    assert not report.ok
    target = MemoryBackend()
    report = salvage(source, target)
    assert 300 <= report.copied < 400
    assert report.problems
    assert set(target.get_all()) <= {r.session_id for r in records}
    assert Path(path).read_bytes() == bytes(data)


def test_salvage_with_the_secret_leaves_damaged_records_out(tmp_path):
    source = MemoryBackend()
    good = [good_record() for _ in range(3)]
    bad = make_record(payload=b"forged" * 10)
    for record in [*good, bad]:
        source.add(record)
    target = MemoryBackend()
    report = salvage(source, target, CODEC)
    assert report.copied == 3 and report.damaged_sessions == [bad.session_id]
    assert set(target.get_all()) == {r.session_id for r in good}
    assert source.get(bad.session_id) == bad
    assert check(source, CODEC).damaged_sessions == [bad.session_id]
    assert check(source).ok  # without the secret only envelopes are checked


def test_salvage_refuses_to_write_into_the_store_it_reads(tmp_path):
    path = store_with("pickle", tmp_path, [good_record()])
    proc = cli(
        "--backend", "pickle", "--option", f"filename={path}",
        "salvage", "--to", "pickle", "--to-option", f"filename={path}",
    )  # fmt: skip
    assert proc.returncode == 1
    assert "another destination" in proc.stderr


def _pickle_with_index(tmp_path, count=20):
    path = tmp_path / "sessions.dat"
    backend = PickleBackend(str(path))
    backend.setup()
    for _ in range(count):
        backend.add(good_record()._replace(user="ann" if _ % 3 == 0 else None))
    backend.compact()  # (writes the index file)
    backend.close()
    return path, Path(f"{path}.index")


def _rewrite_index(index_path, change):
    """The index file with ``change(index)`` applied to its entries, its
    meta and CRC as written for the same log (so a process would use it)."""
    with pickleindexfile.open_index(str(index_path)) as source:
        meta, index = pickleindexfile.read_index(source, lambda m: None)
    change(index)
    with open(index_path, "wb") as out:
        pickleindexfile.write_index(out, index.base, index.bound, meta)


def _check_notes(path):
    proc = cli("--backend", "pickle", "--option", f"filename={path}", "check", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a finding is no damage
    report = json.loads(proc.stdout)
    assert report["ok"] and report["problems"] == []
    return report["findings"]


def test_check_of_a_pickle_store_with_a_sound_index_notes_nothing(tmp_path):
    path, index = _pickle_with_index(tmp_path)
    assert index.exists()
    assert _check_notes(path) == []
    proc = cli("--backend", "pickle", "--option", f"filename={path}", "check")
    assert "note:" not in proc.stdout


def test_check_notes_an_index_file_that_would_not_be_used(tmp_path):
    path, index = _pickle_with_index(tmp_path)
    original = index.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    index.write_bytes(bytes(damaged))
    (finding,) = _check_notes(path)
    assert "is not used (checksum mismatch)" in finding
    # Another file at the path (a copy put back): its index names the old one.
    index.write_bytes(original)
    copy = tmp_path / "copy.dat"
    copy.write_bytes(path.read_bytes())
    os.replace(copy, path)
    (finding,) = _check_notes(path)
    assert "is not used (it indexes another file)" in finding
    assert index.read_bytes() == original  # left as found


def test_check_notes_an_index_file_that_disagrees_with_the_log(tmp_path):
    path, index = _pickle_with_index(tmp_path)
    before = (path.read_bytes(), index.read_bytes())

    def swap_two_offsets(offsets_index):
        offs = offsets_index.base[2]
        offs[0], offs[1] = offs[1], offs[0]

    _rewrite_index(index, swap_two_offsets)
    (finding,) = _check_notes(path)
    assert "disagrees with the log (4 entries differ)" in finding
    assert path.read_bytes() == before[0]

    index.write_bytes(before[1])
    _rewrite_index(index, lambda i: i.bound.clear())  # the users forgotten
    (finding,) = _check_notes(path)
    assert "disagrees with the log (7 entries differ)" in finding


def test_salvage_knows_one_server_store_by_its_address_and_prefix():
    from sessionstore.backends.redis import RedisBackend
    from sessionstore.maintenance import same_store

    def redis(prefix, db=15):
        return RedisBackend(f"redis://127.0.0.1:6379/{db}", prefix=prefix)  # (no connection yet)

    assert same_store(redis("a:"), redis("a:"))
    assert not same_store(redis("a:"), redis("b:"))
    assert not same_store(redis("a:"), redis("a:", db=14))
    assert not same_store(redis("a:"), PickleBackend("sessions.dat"))
    assert not same_store(MemoryBackend(), MemoryBackend())
