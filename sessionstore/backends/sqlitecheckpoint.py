"""Passive WAL checkpoints in a thread of their own, outside any turn to write.

A checkpoint copies the pages the WAL holds into the database and syncs it.
At 1,000,000 sessions those pages are scattered (random ids), and a passive
checkpoint took 5-50 ms, a ``TRUNCATE`` one 55-70 ms (measured with four
saturating writers); run during a writer's turn
(:mod:`~sessionstore.backends.sqlitequeue`), each held up every writer of
the machine that long, three times a second.  A ``PASSIVE`` checkpoint
needs no turn: it copies what is committed while writers go on appending.
So each process asks its :class:`Checkpointer` for one, and a thread of its
own runs it on a connection of its own (opened again when the file at the
path was replaced) while the requests go on.  Asks that come while one
runs are one more checkpoint, not a queue.  Once a checkpoint has copied the
whole WAL, the next write starts it again from its beginning, so the WAL
stays small; the writers' ``TRUNCATE`` (:mod:`~sessionstore.backends.sqlitefile`)
is left for a WAL that outgrew that.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import urllib.parse

log = logging.getLogger("sessionstore")


class Checkpointer:
    """One thread per process that runs the passive checkpoints asked for."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        #: Checkpoints run (for tests and benchmarks).
        self.runs = 0

    def request(self) -> None:
        """Ask for a checkpoint soon (started with the first ask).  (A child
        after ``fork`` has a checkpointer of its own: SqliteFile._after_fork.)"""
        if self._thread is None:  # (the first ask, or the first since stop())
            self._stopping = False
            self._thread = threading.Thread(
                target=self._run, name="sessionstore-checkpoint", daemon=True
            )
            self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        """Let a running checkpoint finish, and end the thread."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._wake.set()
        if thread is not threading.current_thread():
            thread.join()
        self._thread = None

    def _run(self) -> None:
        wake = self._wake
        opened: tuple[sqlite3.Connection, tuple[int, int]] | None = None
        try:
            while True:
                wake.wait()
                wake.clear()
                if self._stopping:
                    return
                opened = self.checkpoint(opened)
        finally:
            if opened is not None:
                opened[0].close()

    def checkpoint(
        self, opened: tuple[sqlite3.Connection, tuple[int, int]] | None = None
    ) -> tuple[sqlite3.Connection, tuple[int, int]] | None:
        """One passive checkpoint, on a connection of its own: ``opened``
        (with the file's identity) if the file at the path is still that
        one, else a new one.  The connection used, to pass next time (None
        if there is no database at the path)."""
        try:
            st = os.stat(self.filename)
        except OSError:
            st = None
        if opened is not None and (st is None or opened[1] != (st.st_dev, st.st_ino)):
            opened[0].close()  # (replaced or deleted: the file at the path now)
            opened = None
        if st is None:
            return None
        if opened is None:
            # mode=rw: a database deleted meanwhile is not made again here.
            target = f"file:{urllib.parse.quote(os.path.abspath(self.filename))}?mode=rw"
            try:
                conn = sqlite3.connect(
                    target, uri=True, isolation_level=None, check_same_thread=False
                )
                conn.execute("PRAGMA wal_autocheckpoint = 0")
            except sqlite3.Error:
                return None
            opened = (conn, (st.st_dev, st.st_ino))
        try:
            opened[0].execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.runs += 1
        except sqlite3.Error as exc:  # (busy, or a file gone: the next ask tries again)
            log.debug("passive checkpoint of %s not done: %s", self.filename, exc)
        return opened
