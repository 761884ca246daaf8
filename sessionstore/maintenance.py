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

When the secret is known, every record's payload is verified with the payload
codec: a record that fails (bad signature, unreadable) is reported by
``check`` and left out by ``salvage``; without the secret records are checked
for their envelope only and copied as they are.  The empty record that
``regenerate()`` leaves under a retired id for a minute is no session: it is
neither counted, verified nor copied.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

from .backends import picklelog
from .backends.base import Backend, Record, checked_record
from .backends.picklefile import PickleBackend
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
            "ok": self.ok,
        }


def _describe(backend: Backend) -> str:
    filename = getattr(backend, "filename", None)
    return f"{type(backend).__name__} {filename}" if filename else type(backend).__name__


def _pickle_records(backend: PickleBackend, report: Report) -> Iterator[Record]:
    try:
        fd = os.open(backend.filename, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise BackendError(f"cannot read {backend.filename}: no such file") from exc
    except OSError as exc:
        raise BackendError(f"cannot read {backend.filename}: {exc.strerror}", exc) from exc
    with os.fdopen(fd, "rb") as source:
        data = source.read()
    records, problems = picklelog.salvage(data)
    report.problems.extend(f"{backend.filename}: {p}" for p in problems)
    yield from records.values()


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


def _same_file(a: Backend, b: Backend) -> bool:
    names = [getattr(x, "filename", None) for x in (a, b)]
    if None in names or ":memory:" in names:
        return False
    return os.path.realpath(str(names[0])) == os.path.realpath(str(names[1]))


def salvage(source: Backend, destination: Backend, codec: PayloadCodec | None = None) -> Report:
    """Copy every readable (and, with a codec, verified) record of ``source``
    into ``destination``; damaged ones are reported, never copied."""
    if _same_file(source, destination):
        raise BackendError("salvage needs another destination than the store it reads")
    report = Report(_describe(source))
    for record in readable_records(source, report):
        if not record.is_tombstone and _verified(record, codec, report):
            destination.add(record)
            report.copied += 1
    return report
