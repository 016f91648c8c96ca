"""The `aura` command: argument parsing and dispatch to one module per command group."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from aura_common.errors import AuraError

DEFAULT_CONFIG = "/etc/aura/server.yaml"


def build_parser() -> argparse.ArgumentParser:
    # Imported here so a broken optional module names itself instead of breaking `aura --help`.
    from services.cli import bridges, client, clients, cluster, server, status

    parser = argparse.ArgumentParser(
        prog="aura", description="Aura VPN: server administration and Linux client."
    )
    add_global_options(parser, defaults=True, config=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (server, clients, bridges, status, client, cluster):
        module.register(commands)
    for sub in subparsers(parser):
        # A sub-command that takes its own config file (the client's) keeps it.
        add_global_options(sub, defaults=False, config=not takes_config(sub))
    return parser


def add_global_options(parser: argparse.ArgumentParser, *, defaults: bool, config: bool) -> None:
    """--config and --verbose, accepted before or after any sub-command (`aura status --config
    F` as well as `aura --config F status`). Only the top level sets defaults: below it they are
    suppressed, so an option given before the sub-command is not reset by the sub-parser."""
    group = parser.add_argument_group("global options")
    unset: dict[str, Any] = {} if defaults else {"default": argparse.SUPPRESS}
    if config:
        group.add_argument("--config", metavar="PATH", help=f"server config file (default "
                           f"{DEFAULT_CONFIG})", **({"default": DEFAULT_CONFIG} | unset))
    group.add_argument("-v", "--verbose", action="store_true", help="log debug details",
                       **({"default": False} | unset))


def subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below this one, depth first."""
    found = []
    for action in parser._actions:  # argparse exposes sub-parsers only through this
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += [child, *subparsers(child)]
    return found


def takes_config(parser: argparse.ArgumentParser) -> bool:
    """Whether the parser or a sub-command below it has its own `config` argument."""
    return any(action.dest == "config" for action in parser._actions) or any(
        takes_config(child) for child in subparsers(parser))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except AuraError as error:
        print(f"aura: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        return 141


if __name__ == "__main__":
    sys.exit(main())
