"""Opening store files safely: no symlink followed, private modes (pickle and SQLite).

A symlink planted at a store, lock or temporary path could make us write
somewhere else; a store readable by others leaks every session.  Files are
opened with ``O_NOFOLLOW`` and created 0600; a file we write whose mode is
wider is narrowed to 0600, with a warning naming it and the mode found.
"""

from __future__ import annotations

import logging
import os

from ..errors import BackendError

log = logging.getLogger("sessionstore")


def open_nofollow(path: str, flags: int) -> int:
    """Open without following a symlink (created with mode 0600)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if os.path.islink(path):
            raise BackendError(f"{path} is a symbolic link: refused", exc) from exc
        raise


def make_private(fd: int, path: str) -> None:
    """Force mode 0600 on a file we write, warning when it was wider."""
    mode = os.fstat(fd).st_mode & 0o777
    if mode & 0o077:
        log.warning("%s had mode %04o (others could read it): set to 0600", path, mode)
        try:
            os.fchmod(fd, 0o600)
        except OSError:
            log.warning("could not make %s private", path, exc_info=True)
