"""The ``sessionstore`` command: serve an ini file, and manage stored sessions.

::

    sessionstore serve examples/demo.ini --port 8080
    sessionstore --config site.ini list
    sessionstore --backend sqlite --option filename=sessions.db stats --json
    sessionstore --config site.ini set -s ID -n shop -k note -V "hello"
    sessionstore secret                # a fresh random secret for an ini

The backend comes from ``--config FILE.ini`` (its sessionstore filter section)
or from ``--backend NAME --option KEY=VALUE ...``.  Commands that read or write
session data (``show``, ``get``, ``set``, ``del``) need the secret: from
``--secret``, the ini, or ``SESSIONSTORE_SECRET``; no output ever shows it.
``get`` prints a value's ``repr()`` (a stored string cannot send escape
sequences to the terminal); ``--raw`` writes a string's or bytes' own bytes.
Errors print one line and exit with status 1.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import maintenance, users
from .backends import load_backend
from .backends.base import Record
from .cliparser import build_parser
from .clitarget import CommandError, Target, built, pairs
from .errors import SessionStoreError
from .ids import is_valid_id
from .payload import AppData, dump_value, load_value
from .store import check_app_name

# -- output -----------------------------------------------------------------------


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _meta(record: Record) -> dict[str, Any]:
    meta = record._asdict()
    del meta["payload"]
    meta["size"] = len(record.payload)
    return meta


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, default=repr) if args.json else text)


# -- commands ---------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> None:
    from paste.deploy import loadapp

    from . import serving

    path = os.path.abspath(args.config_file)
    if not os.path.isfile(path):
        raise CommandError(f"cannot read {args.config_file}: no such file")
    serving.log_to_stderr(quiet=args.quiet)
    try:
        app = loadapp(f"config:{path}", name=args.app)
    except (SessionStoreError, CommandError):
        raise
    except configparser.InterpolationError as exc:
        # Its message quotes the value, which may be the secret.
        raise CommandError(
            f"{args.config_file}: [{exc.section}] {exc.option}: a % must be written %%"
        ) from None
    except Exception as exc:  # noqa: BLE001 - whatever the site's factories raise
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise CommandError(
            f"cannot load [{args.app}] of {args.config_file}: {type(exc).__name__}: {detail}"
        ) from exc
    middleware = None
    if args.stats:
        middleware = serving.find_session_middleware(app)
        if middleware is None:
            raise CommandError(f"--stats: no session middleware in [{args.app}] of {path}")
    serving.serve(app, args.host, args.port, stats=middleware, name=args.config_file)


def cmd_list(args: argparse.Namespace, target: Target) -> None:
    now = time.time()
    for record in target.backend.iter_records():  # streamed: one line per record
        if record.is_tombstone:
            continue  # an id retired by regenerate(): no session
        meta = _meta(record)
        meta["expired"] = record.is_expired(now)
        state = " expired" if meta["expired"] else ""
        _emit(
            args,
            meta,
            f"{record.session_id}  created {_iso(record.created_at)}  "
            f"accessed {_iso(record.accessed_at)}  expires {_iso(record.expires_at)}  "
            f"v{record.version}  {len(record.payload)} bytes{state}"
            + (f"  user {record.user!r}" if record.user else ""),
        )


def cmd_show(args: argparse.Namespace, target: Target) -> None:
    record = target.record(args.session_id)
    apps, expiry = target.data(record)
    stores = {app: {k: load_value(v) for k, v in keys.items()} for app, keys in apps.items()}
    lines = [
        f"session  {record.session_id}",
        f"version  {record.version}",
        f"created  {_iso(record.created_at)}",
        f"accessed {_iso(record.accessed_at)}",
        f"expires  {_iso(record.expires_at)}",
    ]
    for app in sorted(stores):
        lines.append(f"[{app}]")
        lines.extend(f"  {k} = {v!r}" for k, v in sorted(stores[app].items()))
    _emit(args, {**_meta(record), "expiry": expiry, "stores": stores}, "\n".join(lines))


def _check_app_key(args: argparse.Namespace) -> None:
    try:
        check_app_name(args.app)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    if not args.key:
        raise CommandError("keys must not be empty")


def cmd_get(args: argparse.Namespace, target: Target) -> None:
    _check_app_key(args)
    apps, _ = target.data(target.record(args.session))
    data = apps.get(args.app, {}).get(args.key)
    if data is None:
        raise CommandError(f"session {args.session} has no key {args.key!r} in {args.app!r}")
    value = load_value(data)
    if args.raw:
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, (bytes, bytearray)):
            raise CommandError(f"--raw prints str or bytes, not {type(value).__name__}")
        sys.stdout.flush()
        sys.stdout.buffer.write(bytes(value))
        sys.stdout.buffer.flush()
        return
    # repr(): a stored string may hold terminal escape sequences.
    _emit(args, value, repr(value))


def cmd_secret(args: argparse.Namespace) -> None:
    """Print a fresh random secret: 43 URL-safe characters (256 bits).

    Drawn again when it starts with ``-``, which a shell command line would
    take for an option (``--secret -x...``).
    """
    secret = secrets.token_urlsafe(32)
    while secret.startswith("-"):
        secret = secrets.token_urlsafe(32)
    print(secret)


def cmd_set(args: argparse.Namespace, target: Target) -> None:
    _check_app_key(args)
    data = dump_value(args.value)  # stored as a string, as the key-value CLI did
    if len(data) > target.settings.max_value_size:
        raise CommandError(
            f"the value is {len(data)} bytes pickled; "
            f"max_value_size is {target.settings.max_value_size}"
        )

    def edit(apps: AppData) -> bool:
        keys = apps.setdefault(args.app, {})
        new = args.key not in keys
        keys[args.key] = data
        return new

    new = target.change(args.session, edit)
    _emit(args, {"new": new}, "new" if new else "overwritten")


def cmd_del(args: argparse.Namespace, target: Target) -> None:
    _check_app_key(args)

    def edit(apps: AppData) -> bool:
        return apps.get(args.app, {}).pop(args.key, None) is not None

    if not target.change(args.session, edit):
        raise CommandError(f"session {args.session} has no key {args.key!r} in {args.app!r}")
    _emit(args, {"deleted": True}, "deleted")


def cmd_destroy(args: argparse.Namespace, target: Target) -> None:
    if not (is_valid_id(args.session_id) and target.backend.delete(args.session_id)):
        raise CommandError(f"no session {args.session_id}")
    _emit(args, {"destroyed": args.session_id}, f"destroyed {args.session_id}")


def cmd_purge(args: argparse.Namespace, target: Target) -> None:
    count = target.backend.delete_all() if args.all else target.backend.delete_expired()
    what = "sessions" if args.all else "expired sessions"
    _emit(args, {"deleted": count}, f"deleted {count} {what}")


def cmd_stats(args: argparse.Namespace, target: Target) -> None:
    now = time.time()
    total = expired = size = 0
    for record in target.backend.iter_records():
        if record.is_tombstone:
            continue  # an id retired by regenerate(): no session
        total += 1
        expired += record.is_expired(now)
        size += len(record.payload)
    stats = {
        "backend": type(target.backend).__name__,
        "sessions": total,
        "expired": expired,
        "live": total - expired,
        "payload_bytes": size,
    }
    _emit(args, stats, "\n".join(f"{k:14} {v}" for k, v in stats.items()))


def cmd_migrate(args: argparse.Namespace, target: Target) -> None:
    destination = load_backend(args.to, pairs(args.to_option, "--to-option"))
    count = 0
    try:
        for record in target.backend.iter_records():
            if record.is_tombstone:
                continue  # (an id regenerate() retired a minute ago: no session)
            destination.add(record)  # payloads stay signed with the same secret
            count += 1
    finally:
        destination.close()
    _emit(args, {"copied": count}, f"copied {count} sessions to {args.to}")


def cmd_check(args: argparse.Namespace, target: Target) -> None:
    report = maintenance.check(target.backend, target.codec)
    verified = "verified" if target.codec else "read (no secret: payloads not verified)"
    failed = len(report.damaged_sessions)
    summary = f"{report.sessions - failed} sessions {verified} in {report.store}"
    if failed:
        summary += f", {_counted(failed, 'session')} failed verification"
    lines = [*report.problems, summary, *(f"note: {finding}" for finding in report.findings)]
    _emit(args, report.as_dict(), "\n".join(lines))
    if not report.ok:
        problems = _counted(len(report.problems), "problem")
        raise CommandError(f"{report.store} is damaged: {problems}")


def cmd_salvage(args: argparse.Namespace, target: Target) -> None:
    options = pairs(args.to_option, "--to-option")
    destination = built(args.to, options)
    try:
        # Before the destination's set-up, which would open (and, for a
        # damaged pickle file, set aside) the very store being salvaged.
        if maintenance.same_store(target.backend, destination):
            raise CommandError("salvage needs another destination than the store it reads")
        load_backend(destination)
        report = maintenance.salvage(target.backend, destination, target.codec)
    finally:
        destination.close()
    summary = f"copied {report.copied} sessions to {args.to}"
    if report.problems:
        problems = _counted(len(report.problems), "problem")
        summary += f"; {problems} above: what they name was left out"
    lines = [*report.problems, summary]
    _emit(args, report.as_dict(), "\n".join(lines))


# -- argument parsing -----------------------------------------------------------------


def cmd_sessions_of(args: argparse.Namespace, target: Target) -> None:
    found, _ = users.list_user(target.backend, target._codec(), args.user, time.time())
    for entry in found:  # a damaged one is logged, and `check` names it
        data = entry._asdict()
        _emit(
            args,
            data,
            f"{entry.session_id}  created {_iso(entry.created_at)}  "
            f"accessed {_iso(entry.accessed_at)}  expires {_iso(entry.expires_at)}  "
            f"from {entry.address or '?'}  {entry.user_agent!r}",
        )
    if not args.json and not found:
        print(f"no live session of user {args.user!r}")


def cmd_logout_user(args: argparse.Namespace, target: Target) -> None:
    if args.keep is not None and not is_valid_id(args.keep):
        raise CommandError(f"--keep takes a session id, not {args.keep!r}")
    count = users.destroy_all_of(target.backend, args.user, args.keep)
    _emit(args, {"user": args.user, "destroyed": count}, f"destroyed {count} sessions")


COMMANDS = {
    "list": cmd_list,
    "show": cmd_show,
    "get": cmd_get,
    "set": cmd_set,
    "del": cmd_del,
    "destroy": cmd_destroy,
    "purge": cmd_purge,
    "stats": cmd_stats,
    "migrate": cmd_migrate,
    "check": cmd_check,
    "salvage": cmd_salvage,
    "sessions-of": cmd_sessions_of,
    "logout-user": cmd_logout_user,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            cmd_serve(args)
            return 0
        if args.command == "secret":
            cmd_secret(args)
            return 0
        target = Target(args)
        try:
            COMMANDS[args.command](args, target)
        finally:
            target.backend.close()
    except BrokenPipeError:
        # The reader left (``list | head``): not an error of ours.  Later
        # writes, at exit too, go nowhere instead of failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (CommandError, SessionStoreError, OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"sessionstore: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
