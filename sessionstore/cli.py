"""The ``sessionstore`` command: serve an ini file, and manage stored sessions.

::

    sessionstore serve examples/demo.ini --port 8080
    sessionstore --config site.ini list
    sessionstore --backend sqlite --option filename=sessions.db stats --json
    sessionstore --config site.ini set -s ID -n shop -k note -V "hello"
    sessionstore secret                # a fresh random secret for an ini

The backend comes from ``--config FILE.ini`` (its sessionstore filter section)
or from ``--backend NAME --option KEY=VALUE ...``.  Commands that read or write
session data (``show``, ``get``, ``set``, ``del``) need the secret: from the
ini, ``--secret``, or ``SESSIONSTORE_SECRET``; no output ever shows it.
``get`` prints a value's ``repr()`` (a stored string cannot send escape
sequences to the terminal); ``--raw`` writes a string's or bytes' own bytes.
Errors print one line and exit with status 1.
"""

from __future__ import annotations

import argparse
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
from .clitarget import CommandError, Target, pairs
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
    app = loadapp(f"config:{path}", name=args.app)
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
    """Print a fresh random secret: 43 URL-safe characters (256 bits)."""
    print(secrets.token_urlsafe(32))


def cmd_set(args: argparse.Namespace, target: Target) -> None:
    _check_app_key(args)
    data = dump_value(args.value)  # stored as a string, as the key-value CLI did

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
            destination.add(record)  # payloads stay signed with the same secret
            count += 1
    finally:
        destination.close()
    _emit(args, {"copied": count}, f"copied {count} sessions to {args.to}")


def cmd_check(args: argparse.Namespace, target: Target) -> None:
    report = maintenance.check(target.backend, target.codec)
    verified = "verified" if target.codec else "read (no secret: payloads not verified)"
    lines = [*report.problems, f"{report.sessions} sessions {verified} in {report.store}"]
    lines += [f"note: {finding}" for finding in report.findings]
    _emit(args, report.as_dict(), "\n".join(lines))
    if not report.ok:
        raise CommandError(f"{report.store} is damaged: {len(report.problems)} problems")


def cmd_salvage(args: argparse.Namespace, target: Target) -> None:
    destination = load_backend(args.to, pairs(args.to_option, "--to-option"))
    try:
        report = maintenance.salvage(target.backend, destination, target.codec)
    finally:
        destination.close()
    skipped = len(report.damaged_sessions)
    lines = [*report.problems, f"copied {report.copied} sessions to {args.to}, {skipped} damaged"]
    _emit(args, report.as_dict(), "\n".join(lines))


# -- argument parsing -----------------------------------------------------------------


def _store_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The options naming the store; accepted before or after the command."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    where = parser.add_argument_group("which store")
    where.add_argument(
        "--config",
        metavar="FILE.ini",
        default=default(None),
        help="use the session filter of this ini",
    )
    where.add_argument(
        "--section",
        default=default(None),
        help="the ini section, when it has several session filters",
    )
    where.add_argument(
        "--backend",
        metavar="NAME",
        default=default(None),
        help="memory, pickle, sqlite, redis, sql or module:Class",
    )
    where.add_argument(
        "--option",
        action="append",
        default=default([]),
        metavar="KEY=VALUE",
        help="a backend option (repeat)",
    )
    where.add_argument(
        "--secret",
        default=default(None),
        help="the secret (default: the ini's, or $SESSIONSTORE_SECRET)",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessionstore", description="Serve a PasteDeploy site, or manage stored sessions."
    )
    _store_options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _store_options(common, defaults=False)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    class _Commands:
        @staticmethod
        def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
            parents = [] if name in ("serve", "secret") else [common]
            return subparsers.add_parser(name, parents=parents, **kwargs)

    commands = _Commands()

    serve = commands.add_parser("serve", help="serve an ini file with waitress")
    serve.add_argument("config_file", metavar="CONFIG.ini")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--app", default="main", help="the [app:NAME] or pipeline to serve")
    serve.add_argument("--quiet", action="store_true", help="no access log")
    serve.add_argument(
        "--stats",
        action="store_true",
        help="serve the session counters as JSON at /__sessionstore__/stats",
    )

    commands.add_parser("list", help="list stored sessions, one per line (streamed)")
    commands.add_parser("show", help="show one session and its stores").add_argument("session_id")
    for name, help_text in (
        ("get", "print one value"),
        ("set", "store a string value"),
        ("del", "delete one key"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("-s", "--session", required=True, metavar="ID")
        sub.add_argument("-n", "--store-name", "--app", dest="app", required=True, metavar="APP")
        sub.add_argument("-k", "--key", required=True)
        if name == "set":
            sub.add_argument("-V", "--value", required=True)
        if name == "get":
            sub.add_argument(
                "--raw", action="store_true", help="write a str's or bytes' own bytes, not repr()"
            )
    commands.add_parser("destroy", help="delete one session").add_argument("session_id")
    purge = commands.add_parser("purge", help="delete expired sessions")
    purge.add_argument("--all", action="store_true", help="delete every session")
    commands.add_parser("stats", help="count sessions")
    migrate = commands.add_parser("migrate", help="copy every session to another backend")
    migrate.add_argument("--to", required=True, metavar="NAME")
    migrate.add_argument("--to-option", action="append", default=[], metavar="KEY=VALUE")
    commands.add_parser("check", help="verify every record and the file (exit 1 if damaged)")
    salvage = commands.add_parser("salvage", help="copy every readable session to another store")
    salvage.add_argument("--to", required=True, metavar="NAME")
    salvage.add_argument("--to-option", action="append", default=[], metavar="KEY=VALUE")
    of = commands.add_parser("sessions-of", help="list the live sessions of a user")
    of.add_argument("user")
    logout = commands.add_parser("logout-user", help="destroy every session of a user")
    logout.add_argument("user")
    logout.add_argument("--keep", metavar="ID", help="a session id to keep")
    commands.add_parser("secret", help="print a fresh random secret for an ini")
    return parser


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
    except (CommandError, SessionStoreError, OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"sessionstore: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
