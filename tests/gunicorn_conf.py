"""gunicorn settings of the real-server tests (``-c tests/gunicorn_conf.py``).

The master imports the test app and the backend it will serve before it
forks its workers, so that they start without importing them again (about
150 ms for sessionstore, as much again for SQLAlchemy and a driver, in each
of four workers on two cores).  The app and its backend are still made in
each worker, after the fork, as without ``--preload``.
"""

import importlib
import json
import os

import tests.apps  # noqa: F401
from sessionstore.backends import BACKENDS

_kind = json.loads(os.environ["SESSIONSTORE_TEST_BACKEND"])["kind"]
importlib.import_module(BACKENDS[_kind].partition(":")[0])
if _kind == "sql":
    import psycopg  # noqa: F401
    import pymysql  # noqa: F401
