"""The client process: `python -m services.client.process CONFIG` (what `aura client up` starts).

Logging (to journald when detached) and the handler for errors nobody awaited; signals and exit
statuses come from the common shell (aura_common/service/shell.py): 78 for a config error, 1 for any
other reason to stop, 0 after `down` or a signal.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from aura_common.config import ClientConfig
from aura_common.config.client import refuse_foreign_paths
from aura_common.service import log as aura_log
from aura_common.service import loop
from aura_common.service.shell import exit_status, supervise
from services.client.daemon import ClientDaemon
from services.client.path import describe

log = logging.getLogger("aura-client")


def log_stray_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's handler for errors no task awaited (a carrier library's callback
    failing after its connection was dropped): one WARNING line, the traceback at DEBUG."""
    message = context.get("message") or "unhandled error in the event loop"
    error = context.get("exception")
    if error is None:
        log.warning("ignored: %s", message)
        return
    log.warning("ignored: %s: %s", message, describe(error))
    log.debug("traceback of the ignored error", exc_info=error)


def state_in_state_directory(config: ClientConfig, environ: Mapping[str, str]) -> ClientConfig:
    """Under `aura-client@.service` the config's folder is read-only (ProtectSystem=strict):
    a config that names no `state_file` keeps its state in the unit's StateDirectory instead."""
    directory = environ.get("STATE_DIRECTORY")
    if config.state_file is not None or not directory:
        return config
    # systemd lists one path per StateDirectory= entry; the unit has one.
    state_file = os.path.join(directory.split(":")[0], f"{config.name}.state.json")
    return dataclasses.replace(config, state_file=state_file)


async def _run(config: ClientConfig) -> None:
    refuse_foreign_paths(config)
    config = state_in_state_directory(config, os.environ)
    asyncio.get_running_loop().set_exception_handler(log_stray_exception)
    daemon = ClientDaemon(config)
    # A signal stops the daemon as `down` does: it takes its routes and DNS back itself.
    await supervise(daemon.run(), stop=daemon.stop.set)


def run(config_path: str, *, verbose: bool = False, journal: bool = False) -> int:
    """Run the client in this process until `down` or a signal; returns the exit status.

    `journal`: log to journald when it listens (a detached client has no terminal)."""
    handler = aura_log.setup("aura-client", verbose=verbose)
    if journal and os.path.exists(aura_log.JOURNAL_SOCKET):
        root = logging.getLogger()
        root.removeHandler(handler)
        root.addHandler(aura_log.JournalHandler("aura-client"))
    status = exit_status(log, lambda: loop.run(_run(ClientConfig.load(config_path))),
                         failure="stopping: ")
    if status == 0:
        log.info("stopped")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aura-client", description="The Aura Linux client.")
    parser.add_argument("config", help="client config file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    parser.add_argument("--journal", action="store_true",
                        help="log to journald when it is available")
    args = parser.parse_args(argv)
    return run(args.config, verbose=args.verbose, journal=args.journal)


if __name__ == "__main__":
    sys.exit(main())
