"""The SQLite file and its connections, for :mod:`sessionstore.backends.sqlite`.

Each thread gets its own connection, opened afresh in a child after
``fork``; ``:memory:`` uses one shared connection behind a lock.  Every
connection is closed by ``close()``, also on a failed ``setup()``.

* The WAL is kept under :data:`WAL_LIMIT` (64 MiB).  SQLite's automatic
  checkpoints are off: under busy writers every commit of every process
  attempted one and they collided, so none reset the WAL (241 MB in 4 s with
  4 writers).  Instead every :data:`_WAL_CHECK_EVERY` writes a process looks
  at the WAL's size: past 1 MiB it asks, every :data:`_WAL_PASSIVE_EVERY`
  looks, for a passive checkpoint, which a
  thread of its own runs outside any turn to write
  (:mod:`~sessionstore.backends.sqlitecheckpoint`: run in a turn, each held
  every writer up 5-50 ms at 1,000,000 sessions).  Writers going on, such a
  checkpoint never finds the whole WAL copied, so the WAL would never start
  again (and every read searches it): once one has run, the process's next
  look runs a ``RESTART`` during its turn, which copies only what was
  written since.  Past 16 MiB (the passive ones fell behind) it runs a
  ``TRUNCATE`` checkpoint during its turn to
  write (below), so that the other writers cannot starve it of the write
  lock.  ``journal_size_limit`` caps what a reset leaves behind.  A
  ``TRUNCATE`` cut short is tried again :data:`_WAL_RETRY_EVERY` writes
  later, not 200.  ``benchmarks/scale.py --wal 60`` measures it: 39 MB
  under 4 saturating writers (50-122 MB before the retry and the turns).
* The file is ``stat``-ed before each write: a database deleted or replaced
  under a running process is logged as an error and every connection is
  reopened on the file now at that path, never written to a deleted inode
  unnoticed.  Reads do not look (the ``stat`` was a tenth of a request's
  cost): until a thread's next write, it may read the deleted file's last
  state.
* Writers take turns on a lock the kernel hands over
  (:mod:`~sessionstore.backends.sqlitequeue`), not in SQLite's busy
  handler, which sleeps up to 100 ms between tries.
* A store in a read-only place opens read-only (``mode=ro``, or
  ``immutable=1`` when not even the ``-shm`` file can be made) and serves
  reads; writes fail with a :class:`BackendError`.

A symlink at the database, ``-wal`` or ``-shm`` path is refused; the
database is created with mode 0600 (SQLite gives ``-wal``/``-shm`` the same
mode) and an existing wider mode is narrowed, with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import urllib.parse
from collections.abc import Iterator

from ..errors import BackendError, BusyRetry
from . import procid
from .base import Backend
from .sqlitecheckpoint import Checkpointer
from .sqlitequeue import WriterQueue

log = logging.getLogger("sessionstore")

WAL_LIMIT = 64 << 20
#: Checkpoints are ours, not SQLite's automatic ones (which, once the WAL
#: outgrows 1,000 pages, every commit of every process attempts, colliding
#: so that none completes): a passive one (in the background) past 1 MiB, a
#: TRUNCATE past 16 MiB.
_WAL_PASSIVE = 1 << 20
_WAL_TRUNCATE = 16 << 20
_WAL_CHECK_EVERY = 200
#: A passive checkpoint every this many checks (400 writes of a process),
#: each followed by a RESTART in the process's next turn.  Measured at
#: 1,000,000 sessions with four saturating workers, every 200 / 400 / 1,000
#: writes: longest commit 30-48 / 47-58 / 68-115 ms, WAL 28 / 39 / 37 MB;
#: but the RESTART's sync of the database costs a single process's write
#: requests 1.12-1.13 / 1.04-1.08 / 1.02-1.05 of 18627a4's overhead.
_WAL_PASSIVE_EVERY = 2
#: After a TRUNCATE checkpoint found another one running (SQLite answers
#: busy at once then, without waiting), look again this many writes later.
_WAL_RETRY_EVERY = 4
#: How long a checkpoint waits for readers to move on (milliseconds).
_CHECKPOINT_WAIT_MS = 10


def _narrow_mode(path: str) -> None:
    """Mode 0600 on ``path`` (a regular file, not a link), warning when it was wider."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    mode = st.st_mode & 0o777
    if not stat.S_ISREG(st.st_mode) or not mode & 0o077:
        return
    log.warning("%s had mode %04o (others could read it): set to 0600", path, mode)
    try:
        os.chmod(path, 0o600)
    except OSError:
        log.warning("could not make %s private", path, exc_info=True)


class SqliteFile(Backend):
    """The file, its WAL and one connection per thread (the base of
    :class:`~sessionstore.backends.sqlite.SqliteBackend`)."""

    def __init__(self, filename: str, *, fsync: bool, busy_timeout: float) -> None:
        super().__init__(busy_timeout=busy_timeout)
        self.filename = filename
        self.fsync = fsync
        self._memory = filename == ":memory:"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._shared: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None  # the file's (dev, inode)
        self._generation = 0  # bumped when the file at the path changes
        self._wal_due = _WAL_CHECK_EVERY
        self._wal_checks = 0
        self._checkpointer = Checkpointer(filename)
        self._restarted_at = 0  # the checkpointer's runs at our last RESTART
        self.read_only = False
        #: Every write statement takes a turn (None for ``:memory:``).
        self._writers = None if self._memory else WriterQueue(filename, busy_timeout)

    def _create(self, conn: sqlite3.Connection) -> None:
        """Make the schema (the backend's)."""
        raise NotImplementedError

    # -- the file -------------------------------------------------------------------

    def _prepare_file(self) -> None:
        """Refuse symlinks, create the file private, narrow a wider mode."""
        for path in (self.filename, self.filename + "-wal", self.filename + "-shm"):
            if os.path.islink(path):
                raise BackendError(f"{path} is a symbolic link: refused")
        # Never open and close a file SQLite may hold open: closing any
        # descriptor of a file drops every POSIX lock this process holds on
        # it, and two processes then write the WAL index at once ("database
        # disk image is malformed").  So: create only a missing file, and
        # narrow modes by path.
        flags = os.O_NOFOLLOW | os.O_CLOEXEC
        with contextlib.suppress(FileExistsError, PermissionError, OSError):
            os.close(os.open(self.filename, os.O_RDWR | os.O_CREAT | os.O_EXCL | flags, 0o600))
        try:
            st = os.lstat(self.filename)
        except OSError:
            return  # read-only or missing: SQLite says what is wrong, or opens read-only
        for path in (self.filename, self.filename + "-wal", self.filename + "-shm"):
            _narrow_mode(path)
        if self._identity is None:
            self._identity = (st.st_dev, st.st_ino)

    def _file_changed(self) -> bool:
        """Whether the file at the path is not the one we opened (logged once)."""
        try:
            st = os.stat(self.filename)
            now: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            now = None
        if now == self._identity:
            return False
        log.error(
            "SQLite database %s was %s while in use: reopening what is at the path now",
            self.filename,
            "deleted" if now is None else "replaced",
        )
        with self._lock:
            self._identity = now
            self._generation += 1
        return True

    # -- connections ------------------------------------------------------------

    def _connect(self, target: str, uri: bool = False) -> sqlite3.Connection:
        return sqlite3.connect(
            target,
            timeout=self.busy_timeout,
            isolation_level=None,  # autocommit: one statement, one transaction
            check_same_thread=False,
            uri=uri,
        )

    def _open(self) -> sqlite3.Connection:
        if self._memory:
            conn = self._connect(self.filename)
            conn.execute(f"PRAGMA synchronous = {'FULL' if self.fsync else 'NORMAL'}")
            return conn
        self._prepare_file()
        conn = self._connect(self.filename)
        try:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "readonly" not in str(exc) and "unable to open" not in str(exc):
                    raise
                conn.close()
                return self._open_read_only()
            if mode.lower() != "wal":
                raise BackendError(f"{self.filename}: cannot switch to WAL mode ({mode})")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute(f"PRAGMA synchronous = {'FULL' if self.fsync else 'NORMAL'}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_read_only(self) -> sqlite3.Connection:
        """A read-only place: serve reads (mode=ro, else immutable)."""
        path = urllib.parse.quote(os.path.abspath(self.filename))
        for query in ("mode=ro", "immutable=1"):
            conn = self._connect(f"file:{path}?{query}", uri=True)
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.Error:
                conn.close()
                continue
            if not self.read_only:
                log.warning(
                    "SQLite database %s opened read-only (%s): sessions can be read, not saved%s",
                    self.filename,
                    query,
                    "; changes made by others are not seen" if query != "mode=ro" else "",
                )
            self.read_only = True
            return conn
        raise BackendError(f"cannot open the SQLite database {self.filename}")

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """A connection for this thread, during this process's turn to write."""
        writers = self._writers
        if writers is None:
            with self._conn() as conn:
                yield conn
            return
        writers.acquire()
        try:
            with self._conn() as conn:
                yield conn
        finally:
            writers.release()

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """A connection for this thread, with SQLite errors translated."""
        try:
            if self._memory:
                # Every connection to :memory: is a new, empty database: share one.
                with self._lock:
                    if self._shared is None:
                        self._shared = self._open()
                    yield self._shared
                return
            yield self._thread_connection()
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc

    def _thread_connection(self, check_file: bool = True) -> sqlite3.Connection:
        """This thread's connection; with ``check_file``, first make sure the
        file at the path is still the one opened (a ``stat``, 1.6 us)."""
        if self._pid != procid.pid:
            self._after_fork()
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if (
            conn is not None
            and local.generation == self._generation
            and not (check_file and self._file_changed())
        ):
            return conn
        if conn is not None:
            with self._lock:
                if conn in self._connections:
                    self._connections.remove(conn)
            conn.close()
        generation = self._generation
        conn = local.conn = self._open()
        local.generation = generation
        if generation and not self.read_only:
            self._create(conn)  # the file was deleted or replaced
        with self._lock:
            self._connections.append(conn)
        return conn

    def _wrote(self, conn: sqlite3.Connection) -> None:
        """Keep the WAL bounded: past 1 MiB a passive checkpoint asked for
        in the background, and a RESTART in our turn after each one; past
        16 MiB a TRUNCATE in our turn."""
        self._wal_due -= 1  # threads may race here: a check more or less
        if self._wal_due > 0 or self._memory:
            return
        self._wal_due = _WAL_CHECK_EVERY
        try:
            size = os.path.getsize(self.filename + "-wal")
        except OSError:
            return
        if size <= _WAL_PASSIVE:
            return
        if size <= _WAL_TRUNCATE:
            checkpointer = self._checkpointer
            if checkpointer.runs != self._restarted_at:
                # A background checkpoint copied the bulk: what was written
                # since is little, and a RESTART now starts the WAL again
                # (with writers going on, a passive one never catches up,
                # and every read searches a WAL that only grows).
                self._restarted_at = checkpointer.runs
                self._checkpoint(conn, "RESTART")
            self._wal_checks += 1
            if not self._wal_checks % _WAL_PASSIVE_EVERY:
                checkpointer.request()  # in the background, not in our turn
            return
        if self._checkpoint(conn, "TRUNCATE"):
            self._wal_due = _WAL_RETRY_EVERY  # cut short: the next try comes sooner
            log.debug("WAL checkpoint of %s postponed (%d bytes)", self.filename, size)

    def _checkpoint(self, conn: sqlite3.Connection, mode: str) -> int:
        """Run a checkpoint: whether it was cut short.

        It runs during this process's turn to write, so it waits for readers
        at most :data:`_CHECKPOINT_WAIT_MS` (SQLite's busy handler sleeps up
        to 100 ms at a time, and every writer would wait with it); one cut
        short is tried again a few writes later."""
        try:
            conn.execute(f"PRAGMA busy_timeout = {_CHECKPOINT_WAIT_MS}")
            try:
                busy = int(conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()[0])
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        except sqlite3.OperationalError:
            return 1
        return busy

    def _failure(self, exc: sqlite3.Error) -> BackendError | BusyRetry:
        message = str(exc).lower()
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in message or "busy" in message):
            return BusyRetry(f"{self.filename} stayed locked: {exc}")
        return BackendError(f"SQLite database {self.filename} failed", exc)

    def _after_fork(self) -> None:
        # A connection must never be used across fork; the parent's are
        # abandoned (not closed: closing could disturb the parent's locks).
        self._pid = os.getpid()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections = []
        self._identity = None
        self._generation = 0
        self._checkpointer = Checkpointer(self.filename)  # (the parent's thread is not ours)
        self._restarted_at = 0

    def _check_size(self, conn: sqlite3.Connection) -> None:
        """Milliseconds at any size: the file holds the pages its header declares
        (the full check is ``sessionstore check``)."""
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        try:
            wal = os.path.getsize(self.filename + "-wal")
        except OSError:
            wal = 0
        size = os.path.getsize(self.filename)
        if wal == 0 and size < pages * page_size:
            raise BackendError(
                f"SQLite database {self.filename} is damaged: {size} bytes, "
                f"its header declares {pages * page_size}"
            )

    def close(self) -> None:
        self._checkpointer.stop()
        with self._lock:
            connections, self._connections = self._connections, []
            if self._shared is not None:
                connections.append(self._shared)
            self._shared = None
        for conn in connections:
            conn.close()
        self._local = threading.local()
        if self._writers is not None:
            self._writers.close()

    def __del__(self) -> None:
        # Dropped without close() (a middleware nobody closed): close the
        # connections here rather than leave them to the garbage collector,
        # which warns on Python 3.13.  Never the parent's, after a fork.
        with contextlib.suppress(Exception):
            if self._pid == os.getpid():
                self.close()
