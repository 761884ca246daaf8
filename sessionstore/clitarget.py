"""Which store a ``sessionstore`` command works on, and how it edits one.

The store comes from the sessionstore filter section of an ini file (found
the way PasteDeploy would: ``use = egg:sessionstore#session``, or the demo's
own section when it holds a secret) or from ``--backend NAME --option
KEY=VALUE``.  A section is read as PasteDeploy reads it: ``[filter:NAME]`` or
``[filter-app:NAME]`` (its ``next`` line names the application), ``set NAME =
VALUE`` lines change the globals, not the filter, and ``get KEY = NAME`` takes
a value from ``[DEFAULT]``.  A command never creates a store: a file-backed
store that does not exist is an error naming it.  The secret, when a command
needs one, comes from ``--secret``, the ini or ``SESSIONSTORE_SECRET``, in
that order: the ini's is the one its site signs with.

:meth:`Target.change` edits a session by compare-and-swap, keeping its
expiry and user binding, and writes nothing when the edit changed nothing.
"""

from __future__ import annotations

import argparse
import configparser
import os
from collections.abc import Sequence
from typing import Any

from .backends import backend_class, load_backend
from .backends.base import Backend, Record
from .config import Settings, as_secrets
from .ids import is_valid_id
from .payload import AppData, PayloadCodec

_EGGS = ("egg:sessionstore#session", "egg:sessionstore")


#: Stands in for the secret when validating an ini whose secret is not needed.
_PLACEHOLDER = "placeholder-for-validation-only-0123456789"


class CommandError(Exception):
    """Printed as one line; exit status 1."""


def read_ini(path: str, section: str | None = None) -> dict[str, str]:
    """The settings of the sessionstore filter section of an ini file."""
    if not os.path.isfile(path):
        raise CommandError(f"cannot read {path}: no such file")
    parser = configparser.ConfigParser(
        defaults={"here": os.path.dirname(os.path.abspath(path)), "__file__": path}
    )
    try:
        parser.read(path, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(f"{path} is not an ini file: it is not UTF-8 text") from exc
    except configparser.MissingSectionHeaderError as exc:
        raise CommandError(
            f"{path} is not an ini file: line {exc.lineno} comes before any [section]"
        ) from exc
    except configparser.Error as exc:
        detail = str(exc).splitlines()[0]
        raise CommandError(f"{path} is not a valid ini file: {detail}") from exc

    def is_session(name: str) -> bool:
        use = parser.get(name, "use", fallback="").strip()
        # The demo's own section holds session settings when it has a secret line.
        return use in _EGGS or (
            use == "egg:sessionstore#demo" and parser.has_option(name, "secret")
        )

    filters = [s for s in parser.sections() if is_session(s)]
    if section:
        # "--section session" finds [filter:session] and [filter-app:session] too.
        names = (section, f"filter:{section}", f"filter-app:{section}")
        found = [s for s in names if parser.has_section(s)]
        if not found:
            known = ", ".join(f"[{s}]" for s in filters) or "none"
            raise CommandError(f"{path} has no section [{section}] (its session filters: {known})")
        if found[0] not in filters:
            raise CommandError(
                f"[{found[0]}] in {path} is not a session filter (use = egg:sessionstore#session)"
            )
        filters = found[:1]
    if not filters:
        raise CommandError(f"{path} has no [filter:...] section using egg:sessionstore#session")
    if len(filters) > 1:
        raise CommandError(f"{path} has several session filters; pick one with --section")
    return _filter_settings(parser, filters[0], path)


def _filter_settings(parser: configparser.ConfigParser, section: str, path: str) -> dict[str, str]:
    """The keys PasteDeploy would hand the filter's factory, interpolated."""
    # Like PasteDeploy, pass the section's own keys only ([DEFAULT] is global).
    own = configparser.ConfigParser(default_section="\0", interpolation=None)
    own.read(path, encoding="utf-8")
    skip = {"use", "next"} if section.startswith("filter-app:") else {"use"}
    result = {}
    for key in own.options(section):
        if key in skip or key.startswith("set "):
            continue  # "set NAME = VALUE" changes the globals, not this filter
        try:
            if key.startswith("get "):
                value = parser.get(configparser.DEFAULTSECT, parser.get(section, key).strip())
                key = key[4:].strip()
            else:
                value = parser.get(section, key)
        except configparser.InterpolationError:
            # Its message quotes the value, which may be the secret.
            raise CommandError(
                f"{path}: [{section}] {key}: a % must be written %% "
                "(or %(name)s, to use a [DEFAULT] value)"
            ) from None
        except (KeyError, configparser.NoOptionError):
            raise CommandError(f"{path}: [{section}] {key}: no such [DEFAULT] value") from None
        result[key] = value
    return result


def pairs(values: Sequence[str], flag: str) -> dict[str, str]:
    result = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CommandError(f"{flag} takes KEY=VALUE, not {item!r}")
        result[key] = value
    return result


def built(name: str, options: dict[str, str]) -> Backend:
    """The backend ``name`` with ``options``, not set up yet (commands wait
    up to 5 s for a busy store)."""
    return backend_class(name.strip()).from_options(options, busy_timeout=5.0)


def open_existing(name: str, options: dict[str, str]) -> Backend:
    """The backend of an existing store: a command never creates one.

    A store kept in a file (``filename``) or an SQL table must exist: a
    mistyped name is an error naming it, not a new empty store listing nothing.
    """
    backend = built(name, options)
    if hasattr(backend, "sets_aside"):
        backend.sets_aside = False  # a damaged pickle file is reported, left as it is
    filename = getattr(backend, "filename", None)
    if isinstance(filename, str) and filename != ":memory:" and not os.path.exists(filename):
        raise CommandError(f"no session store at {filename}: no such file")
    try:
        table_exists = getattr(backend, "table_exists", None)
        if table_exists is not None and not table_exists():
            raise CommandError(f"no session store at {backend!r}: no such table")
        return load_backend(backend)  # runs its setup(): a damaged store fails here
    except BaseException:
        backend.close()
        raise


class Target:
    """The backend (and the secret, when known) that a command works on."""

    def __init__(self, args: argparse.Namespace) -> None:
        secret = args.secret
        #: The ini's settings (the limits on what ``set`` may store).
        self.settings: Settings
        if args.config:
            conf = read_ini(args.config, args.section)
            name = conf.pop("backend", "sqlite")
            options = {k[8:]: v for k, v in conf.items() if k.startswith("backend.")}
            settings = {k: v for k, v in conf.items() if not k.startswith("backend.")}
            secret = secret or settings.get("secret")
            # Validated, with a placeholder when no secret is known yet.
            self.settings = Settings.from_mapping({**settings, "secret": secret or _PLACEHOLDER})
        elif args.backend:
            name, options = args.backend, pairs(args.option, "--option")
            self.settings = Settings.from_mapping({"secret": _PLACEHOLDER})  # the defaults
        else:
            raise CommandError("name a store with --config FILE.ini or --backend NAME")
        secret = secret or os.environ.get("SESSIONSTORE_SECRET")
        if args.command in ("check", "salvage"):  # they read the files themselves
            self.backend = built(name, options)
        else:
            self.backend = open_existing(name, options)
        self.codec = PayloadCodec(as_secrets("secret", secret)) if secret else None

    def record(self, session_id: str) -> Record:
        record = self.backend.get(session_id) if is_valid_id(session_id) else None
        if record is None or record.is_tombstone:  # (retired by regenerate())
            raise CommandError(f"no session {session_id}")
        return record

    def _codec(self) -> PayloadCodec:
        if self.codec is None:
            raise CommandError("reading session data needs the secret (--secret or the ini)")
        return self.codec

    def data(self, record: Record) -> tuple[AppData, float | None]:
        return self._codec().loads(record)

    def change(self, session_id: str, edit: Any) -> Any:
        """Apply ``edit(apps)`` to a session's data by compare-and-swap; its
        expiry and user binding stay as they are."""
        for _ in range(20):
            record = self.record(session_id)
            stored, expiry, binding, _ = self._codec().decode(record)
            apps = dict(stored)
            before = {app: dict(keys) for app, keys in apps.items()}
            result = edit(apps)
            apps = {app: keys for app, keys in apps.items() if keys}
            if apps == {app: keys for app, keys in before.items() if keys}:
                return result  # nothing changed: write nothing, not even a new version
            payload = self._codec().dumps(
                apps,
                expiry,
                record.session_id,
                record.created_at,
                record.expires_at,
                binding,
            )
            if len(payload) > self.settings.max_session_size:
                raise CommandError(
                    f"that would make session {session_id} {len(payload)} bytes; "
                    f"max_session_size is {self.settings.max_session_size}"
                )
            new = Record(
                record.session_id,
                record.version + 1,
                record.created_at,
                record.accessed_at,
                record.expires_at,
                payload,
                record.user,
            )
            if self.backend.compare_and_swap(session_id, record.version, new):
                return result
        raise CommandError(f"session {session_id} kept changing; try again")
