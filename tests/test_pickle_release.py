"""Letting go of a replaced pickle log (``sessionstore/backends/picklehandle.py``):
only the last process holding it cuts it, in steps; no reader ever sees it
shrink.  Real files, a real second process, a real fork."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from sessionstore.backends import picklehandle
from sessionstore.backends.picklehandle import Handle, free_gently, open_log

from .conftest import ROOT
from .test_pickle_bridge import Child, compacted, opened


def replace(path, data=b"new"):
    temp = path.with_name("replacement")
    temp.write_bytes(data)
    os.replace(temp, path)


def test_a_log_compacted_by_another_process_is_read_whole_until_this_one_lets_go(tmp_path):
    path = tmp_path / "sessions.dat"
    records = compacted(path, 2000)
    reader = opened(path)
    assert reader.get_all() == {r.session_id: r for r in records}  # the old log, held
    old = os.open(path, os.O_RDONLY)  # (no lock: it sees what happens to the file)
    size = os.fstat(old).st_size
    child = Child(path)
    child("compact")
    child("settle")  # the child has let go of the old log: not the last holder
    try:
        assert os.fstat(old).st_nlink == 0
        assert os.fstat(old).st_size == size
        reader._handle.cache.clear()  # noqa: SLF001 - read from the files
        assert reader.get_all() == {r.session_id: r for r in records}
        reader.close()  # the last holder: it cuts the old log
        picklehandle.settle()
        assert os.fstat(old).st_size == 0
    finally:
        os.close(old)
        child.close()
    assert opened(path).get_all() == {r.session_id: r for r in records}


def test_a_log_that_still_has_a_name_is_never_cut(tmp_path):
    path = tmp_path / "sessions.dat"
    path.write_bytes(b"x" * 100_000)
    assert not free_gently(open_log(str(path), os.O_RDWR))
    assert path.stat().st_size == 100_000


def test_a_replaced_log_is_cut_only_by_its_last_holder(tmp_path, monkeypatch):
    monkeypatch.setattr(picklehandle, "FREE_STEP", 4096)
    monkeypatch.setattr(picklehandle, "FREE_PAUSE", 0)
    path = tmp_path / "sessions.dat"
    path.write_bytes(b"x" * 100_000)
    first, second = (open_log(str(path), os.O_RDWR) for _ in range(2))
    watch = os.open(path, os.O_RDONLY)
    replace(path)
    try:
        assert not free_gently(first)
        assert os.pread(second, 10, 99_990) == b"x" * 10
        assert free_gently(second)
        assert os.fstat(watch).st_size == 0
        assert path.read_bytes() == b"new"
    finally:
        os.close(watch)


def test_opening_a_log_finds_the_file_at_the_path_not_one_being_cut(tmp_path):
    path = tmp_path / "sessions.dat"
    path.write_bytes(b"old")
    cutting = open_log(str(path), os.O_RDWR)
    replace(path)
    fd = open_log(str(path), os.O_RDWR)
    try:
        assert os.pread(fd, 10, 0) == b"new"
    finally:
        os.close(fd)
        os.close(cutting)


FORKED = textwrap.dedent(
    """
    import os, sys
    from sessionstore.backends import picklehandle
    path = sys.argv[1]
    handle = picklehandle.Handle(picklehandle.open_log(path, os.O_RDWR), gentle=True)
    os.replace(path + ".new", path)
    pid = os.fork()
    if pid == 0:  # the child lets go of what it inherited, and waits for that
        del handle
        picklehandle.settle()
        os._exit(0)
    os.waitpid(pid, 0)
    print(os.fstat(handle.fd).st_size, os.pread(handle.fd, 5, 0).decode())
    """
)


def test_a_forked_child_never_cuts_the_log_its_parent_holds(tmp_path):
    path = tmp_path / "sessions.dat"
    path.write_bytes(b"older" * 1000)
    (tmp_path / "sessions.dat.new").write_bytes(b"new")
    out = subprocess.run(
        [sys.executable, "-c", FORKED, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5000", "older"]


def test_a_handle_of_a_replaced_log_is_cut_when_its_last_sharer_goes(tmp_path):
    path = tmp_path / "sessions.dat"
    path.write_bytes(b"y" * 5000)
    handle = Handle(open_log(str(path), os.O_RDWR), gentle=True)
    again = handle.again()
    watch = os.open(path, os.O_RDONLY)
    replace(path)
    try:
        del handle
        picklehandle.settle()
        assert os.pread(again.fd, 5, 4995) == b"yyyyy"  # still open, still whole
        del again
        picklehandle.settle()
        assert os.fstat(watch).st_size == 0
    finally:
        os.close(watch)
