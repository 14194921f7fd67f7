"""Sub-commands that the magics and the console script share: one table, so ``%serve`` and
``kernel-magics serve`` offer the same actions with the same options and answers.

Each handler calls ``kernel_magics.api`` and returns a ``Rendered`` (text for terminals, HTML for
notebooks, a JSON document for ``--json``, an exit code for the CLI); the front end only prints it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kernel_magics import api
from kernel_magics.argtypes import positive_int
from kernel_magics.config import Settings
from kernel_magics.display import status as display_status
from kernel_magics.errors import InvalidInput

EXIT_OK, EXIT_NOT_RUNNING = 0, 1


@dataclass(frozen=True)
class Rendered:
    text: str
    html: str | None = None
    document: Any = None  # what --json prints; None: the text is all there is
    exit_code: int = EXIT_OK


def _status(args: argparse.Namespace, settings: Settings) -> Rendered:
    status = api.server_status(settings=settings)
    document = {"running": True, **status.to_wire()} if status else {"running": False}
    return Rendered(
        display_status.status_text(status),
        display_status.status_html(status),
        document,
        EXIT_OK if status else EXIT_NOT_RUNNING,
    )


def _start(args: argparse.Namespace, settings: Settings) -> Rendered:
    status = api.server_start(
        workers=args.workers,
        host=args.host,
        port=args.port,
        allow_remote=args.allow_remote or None,
        settings=settings,
    )
    document = status.to_wire() if status else None
    return Rendered(
        display_status.status_text(status), display_status.status_html(status), document
    )


def _stop(args: argparse.Namespace, settings: Settings) -> Rendered:
    stopped = api.server_stop(settings=settings)
    return Rendered(display_status.stopped_line(stopped), document={"stopped": stopped})


def _logs(args: argparse.Namespace, settings: Settings) -> Rendered:
    return Rendered(api.server_logs(args.lines, settings=settings))


def _token(args: argparse.Namespace, settings: Settings) -> Rendered:
    if args.new:
        return Rendered(api.token_create(args.new, scope=args.scope, settings=settings))
    if args.revoke:
        api.token_revoke(args.revoke, settings=settings)
        return Rendered(f"Token {args.revoke!r} revoked.")
    if args.list:
        named = api.token_list(settings=settings)
        return Rendered(display_status.tokens_text(named), document=named)
    return Rendered(api.server_token(settings=settings))


SERVE: dict[str, Callable[[argparse.Namespace, Settings], Rendered]] = {
    "status": _status,
    "start": _start,
    "stop": _stop,
    "logs": _logs,
    "token": _token,
}

# (flags, argparse keyword arguments): added to the CLI's parser and, as decorators, to %serve.
SERVE_ARGUMENTS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("action",), {"metavar": "ACTION", "help": "one of: " + ", ".join(SERVE)}),
    (("--workers",), {"type": positive_int, "help": "start: worker processes"}),
    (("--host",), {"help": "start: address to bind (default 127.0.0.1)"}),
    (("--port",), {"type": positive_int, "help": "start: port (default: a free one)"}),
    (
        ("--allow-remote",),
        {
            "action": "store_true",
            "help": "start: allow a non-loopback --host (every request then needs a token)",
        },
    ),
    (("--new",), {"metavar": "NAME", "help": "token: create a named token, print it once"}),
    (
        ("--scope",),
        {
            "choices": api.TOKEN_SCOPES,
            "help": "token --new: predict (default: predictions, metrics, status) or manage "
            "(also deploy, rollback, promote, undeploy)",
        },
    ),
    (("--revoke",), {"metavar": "NAME", "help": "token: revoke a named token"}),
    (("--list",), {"action": "store_true", "help": "token: list named tokens"}),
    (("--lines",), {"type": positive_int, "default": 50, "help": "logs: how many lines"}),
    (("--json",), {"action": "store_true", "help": "print JSON"}),
]


def run_serve(args: argparse.Namespace, settings: Settings) -> Rendered:
    handler = SERVE.get(args.action)
    if handler is None:
        raise InvalidInput(f"unknown sub-command {args.action!r} (choose from {', '.join(SERVE)})")
    if sum(bool(x) for x in (args.new, args.revoke, args.list)) > 1:
        raise InvalidInput("give one of --new, --revoke and --list")
    if (args.new or args.revoke or args.list) and args.action != "token":
        raise InvalidInput("--new, --revoke and --list belong to the token sub-command")
    if args.scope and not args.new:
        raise InvalidInput("--scope goes with token --new NAME")
    return handler(args, settings)
