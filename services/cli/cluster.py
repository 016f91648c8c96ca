"""`aura cluster export`: the bundle that lets `aura server init --join` add a member."""

from __future__ import annotations

import argparse
import os
import sys

from aura_common.cluster import bundle
from aura_common.config import ServerConfig
from aura_common.state.atomic import write_atomic


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cluster = commands.add_parser("cluster", help="several servers sharing one registry")
    actions = cluster.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export", help="write the bundle a new member joins with",
        description="Write this server's identity (WireGuard key, CA, TLS certificate and key, "
                    "cluster key), its address pool and the database's connection string into "
                    "one file (mode 0600); on the next server run `aura server init --join "
                    "FILE`. It holds private keys: move it over a secure channel and delete it.",
    )
    export.add_argument("-o", "--output", required=True, metavar="FILE")
    export.set_defaults(func=export_bundle)


def export_bundle(args: argparse.Namespace) -> int:
    config = ServerConfig.load(args.config)
    data = bundle.build(config)
    # The private keys stay root's (or the caller's) wherever the file goes.
    write_atomic(args.output, data, mode=0o600, owner=(os.geteuid(), os.getegid()))
    print(f"wrote {args.output}: join with `aura server init --join {args.output} "
          "--public-host HOST`; it holds private keys, delete it once used", file=sys.stderr)
    return 0
