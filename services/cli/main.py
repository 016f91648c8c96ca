"""The `aura` command: argument parsing and dispatch to one module per command group."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from aura_common.errors import AuraError

DEFAULT_CONFIG = "/etc/aura/server.yaml"


def build_parser() -> argparse.ArgumentParser:
    # Imported here so a broken optional module names itself instead of breaking `aura --help`.
    from services.cli import bridges, client, clients, server, status

    parser = argparse.ArgumentParser(
        prog="aura", description="Aura VPN: server administration and Linux client."
    )
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"server config file (default {DEFAULT_CONFIG})"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (server, clients, bridges, status, client):
        module.register(commands)
    return parser


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
