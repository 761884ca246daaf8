"""This process's id, kept current across ``fork`` without a system call per use.

Every request asked ``os.getpid()`` two or three times (has this object
crossed a fork? then it needs descriptors of its own), and each is a system
call: measured with strace, a third of the system calls a SQLite write
request added since 18627a4.  :data:`pid` is read instead; a child made by
``os.fork`` (and so by multiprocessing and pre-forking servers) updates it
before any of its own code runs, through ``os.register_at_fork``.
"""

from __future__ import annotations

import os

#: The id of the process running now.
pid = os.getpid()


def _forked() -> None:
    global pid
    pid = os.getpid()


os.register_at_fork(after_in_child=_forked)
