"""The ``sessionstore`` command's grammar: its commands, options and errors.

Store options (``--config``, ``--backend``, ``--secret``...) are accepted
before or after the command.  A mistake on the command line prints one line
(``sessionstore: error: ...``) and exits with status 2, like argparse, but
without the usage block, which ``--help`` prints.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def port_number(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, not {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {port}")
    return port


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
        help="the secret (default: the ini's, then $SESSIONSTORE_SECRET)",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )


def build_parser() -> Parser:
    parser = Parser(
        prog="sessionstore", description="Serve a PasteDeploy site, or manage stored sessions."
    )
    _store_options(parser, defaults=True)
    common = Parser(add_help=False)
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
    serve.add_argument("--port", type=port_number, default=8080)
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
