"""``sessionstore check`` and ``sessionstore salvage``: inspect a store, copy out what is readable.

Both work on every backend.  For the pickle and SQLite files they read the
file itself, read-only, so that a damaged file can be inspected without the
backend refusing it (or setting it aside): the pickle log is replayed frame
by frame, skipping damaged stretches
(:func:`sessionstore.backends.picklelog.salvage`); SQLite runs
``PRAGMA integrity_check`` and reads rows in pages by rowid, stepping over
pages that cannot be read.  Other backends are read through
``iter_records()``.  Neither command ever creates a store or writes to the
one it reads.

For the pickle backend ``check`` also looks at the index file
(``<filename>.index``): one that would not be used (damaged, of another file
or generation, the log rewritten since) or, worse, one that would be used but
disagrees with the log is reported as a *finding*, not as damage: the log is
the truth, and the index is derived from it (remove the index file, or let the
next compaction or index refresh replace it).

When the secret is known, every record's payload is verified with the payload
codec: a record that fails (bad signature, unreadable) is reported by
``check`` and left out by ``salvage``; without the secret records are checked
for their envelope only and copied as they are.  The tombstone that
``regenerate()`` leaves under a retired id for a minute
(:mod:`sessionstore.regeneration`) is no session: it is neither counted,
verified nor copied.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

from .backends import pickleindexfile, picklelog
from .backends.base import Backend, Record, checked_record
from .backends.picklefile import PickleBackend
from .backends.picklehandle import open_log
from .backends.pickleindex import key_of
from .backends.sqlite import SqliteBackend
from .errors import BackendError, SessionStoreError
from .payload import PayloadCodec

_PAGE = 500


@dataclass
class Report:
    """What ``check`` or ``salvage`` found: readable records and problems."""

    store: str
    sessions: int = 0
    problems: list[str] = field(default_factory=list)
    damaged_sessions: list[str] = field(default_factory=list)
    copied: int = 0
    #: Worth knowing, but no damage (``ok`` stays true): a stale index file.
    findings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.damaged_sessions

    def as_dict(self) -> dict[str, object]:
        return {
            "store": self.store,
            "sessions": self.sessions,
            "problems": self.problems,
            "damaged_sessions": self.damaged_sessions,
            "copied": self.copied,
            "findings": self.findings,
            "ok": self.ok,
        }


def _describe(backend: Backend) -> str:
    filename = getattr(backend, "filename", None)
    return f"{type(backend).__name__} {filename}" if filename else type(backend).__name__


def _pickle_records(backend: PickleBackend, report: Report) -> Iterator[Record]:
    try:
        fd = open_log(backend.filename, os.O_RDONLY)  # (held: never cut while read)
    except FileNotFoundError as exc:
        raise BackendError(f"cannot read {backend.filename}: no such file") from exc
    except OSError as exc:
        raise BackendError(f"cannot read {backend.filename}: {exc.strerror}", exc) from exc
    with os.fdopen(fd, "rb") as source:
        data = source.read()
        inode = os.fstat(source.fileno()).st_ino
    records, problems = picklelog.salvage(data)
    report.problems.extend(f"{backend.filename}: {p}" for p in problems)
    if not problems:
        report.findings.extend(_pickle_index_findings(backend.filename, data, inode))
    yield from records.values()


def _pickle_index_findings(filename: str, data: bytes, inode: int) -> list[str]:
    """What is wrong with the index file of the (undamaged) log ``data``:
    the checks a process makes before using it, then, if it passes them,
    every entry against the log replayed up to the bytes it covers."""
    path = filename + ".index"
    try:
        source = pickleindexfile.open_index(path)
    except FileNotFoundError:
        return []  # (a small store never had one)
    except OSError as exc:
        return [f"{path}: cannot be read ({exc.strerror}): opening reads the whole log"]

    def usable(meta: pickleindexfile.Meta) -> str | None:
        mark_at, mark = meta.mark or (0, b"")
        if meta.inode != inode:
            return "it indexes another file"
        if (meta.token, meta.generation) != picklelog.lineage_of(data[:512]):
            return "it indexes another generation of the log"
        if meta.covered > len(data):
            return "it covers more than the log holds"
        if data[mark_at : mark_at + len(mark)] != mark:
            return "the log was rewritten since"
        return None

    with source:
        try:
            meta, index = pickleindexfile.read_index(source, usable)
        except pickleindexfile.BadIndex as exc:
            return [f"{path} is not used ({exc}): opening reads the whole log"]
    expected: dict[int, int] = {}
    users: dict[str, str] = {}
    start = picklelog.header_size(data) or 0
    for at, _, frame in picklelog.iter_frames(data, start):
        if at >= meta.covered:
            break
        if frame[0] == "put":
            expected[key_of(frame[1])] = at
            if len(frame) == 8:
                users[frame[1]] = frame[7]
            else:
                users.pop(frame[1], None)
        elif frame[0] == "del":
            expected.pop(key_of(frame[1]), None)
            users.pop(frame[1], None)
    hi, lo, offs, _ = index.base
    found = {hi[i] << 64 | lo[i]: offs[i] for i in range(len(offs)) if offs[i]}
    wrong = len(expected.items() ^ found.items()) + len(users.items() ^ index.bound.items())
    if not wrong:
        return []
    return [
        f"{path} disagrees with the log ({wrong} entries differ) although a process "
        "would use it: remove it (the next open reads the whole log)"
    ]


def _sqlite_connect(filename: str) -> sqlite3.Connection:
    if not os.path.exists(filename):
        raise BackendError(f"cannot read {filename}: no such file")
    path = urllib.parse.quote(os.path.abspath(filename))
    error: sqlite3.Error | None = None
    for query in ("mode=ro", "immutable=1"):
        conn = sqlite3.connect(f"file:{path}?{query}", uri=True, isolation_level=None)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.Error as exc:
            conn.close()
            error = exc
    raise BackendError(f"cannot read the SQLite database {filename}: {error}", error)


def _sqlite_records(backend: SqliteBackend, report: Report) -> Iterator[Record]:
    conn = _sqlite_connect(backend.filename)
    try:
        try:
            problems = [row[0] for row in conn.execute("PRAGMA integrity_check(100)")]
        except sqlite3.DatabaseError as exc:
            problems = [f"integrity check failed: {exc}"]
        if problems != ["ok"]:
            report.problems.extend(f"{backend.filename}: {p}" for p in problems)
        sql = (
            "SELECT rowid, id, version, created_at, accessed_at, expires_at, payload "
            "FROM sessions WHERE rowid > ? ORDER BY rowid LIMIT ?"
        )
        last, skip = 0, 1
        while skip <= 1 << 40:
            count = 0
            try:
                for row in conn.execute(sql, (last, _PAGE)):
                    count += 1
                    last, skip = row[0], 1
                    try:
                        yield checked_record(*row[1:])
                    except BackendError as exc:
                        report.problems.append(f"{backend.filename}: rowid {row[0]}: {exc}")
            except sqlite3.DatabaseError as exc:
                # A page that cannot be read: step over it, further each time.
                report.problems.append(f"{backend.filename}: rows after rowid {last}: {exc}")
                last, skip = last + skip, skip * 4
                continue
            if count < _PAGE:
                return
    finally:
        conn.close()


def _generic_records(backend: Backend, report: Report) -> Iterator[Record]:
    try:
        yield from backend.iter_records()
    except SessionStoreError as exc:
        report.problems.append(f"{_describe(backend)}: listing stopped: {exc}")


def readable_records(backend: Backend, report: Report) -> Iterator[Record]:
    """Every record that can be read from ``backend`` (never set up by us:
    the pickle and SQLite files are read directly, read-only)."""
    if isinstance(backend, PickleBackend):
        return _pickle_records(backend, report)
    if isinstance(backend, SqliteBackend) and backend.filename != ":memory:":
        return _sqlite_records(backend, report)
    return _generic_records(backend, report)


def _verified(record: Record, codec: PayloadCodec | None, report: Report) -> bool:
    report.sessions += 1
    if codec is None:
        return True
    try:
        codec.loads(record)
    except SessionStoreError as exc:
        report.damaged_sessions.append(record.session_id)
        report.problems.append(str(exc))
        return False
    return True


def check(backend: Backend, codec: PayloadCodec | None = None) -> Report:
    """Verify the store's file (where it has one) and every record."""
    report = Report(_describe(backend))
    for record in readable_records(backend, report):
        if not record.is_tombstone:  # an id retired by regenerate(): no session
            _verified(record, codec, report)
    return report


def same_store(a: Backend, b: Backend) -> bool:
    """Whether two backends name one store: the same file, or the same kind
    of server store shown the same way (URL, table or prefix)."""
    names = [getattr(x, "filename", None) for x in (a, b)]
    if names[0] is not None and names[1] is not None and ":memory:" not in names:
        return os.path.realpath(str(names[0])) == os.path.realpath(str(names[1]))
    return type(a) is type(b) and names == [None, None] and repr(a) == repr(b)


def salvage(source: Backend, destination: Backend, codec: PayloadCodec | None = None) -> Report:
    """Copy every readable (and, with a codec, verified) record of ``source``
    into ``destination``; damaged ones are reported, never copied."""
    if same_store(source, destination):
        raise BackendError("salvage needs another destination than the store it reads")
    report = Report(_describe(source))
    for record in readable_records(source, report):
        if not record.is_tombstone and _verified(record, codec, report):
            destination.add(record)
            report.copied += 1
    return report
