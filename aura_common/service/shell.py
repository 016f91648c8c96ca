"""The shell every Aura process runs in: arguments, logging, signals, sd_notify, clean exits.

A service supplies one coroutine; this module turns config errors into one clear journal line
and exit status 78 (EX_CONFIG, which the units exclude from restarts), SIGTERM/SIGINT into a
clean cancellation, and pings the systemd watchdog while the event loop is alive. The client
process (services/client/process.py) runs on the same pieces: `exit_status` and `supervise`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence

from aura_common.config import ServerConfig
from aura_common.errors import AuraError, ConfigError
from aura_common.service import log as aura_log
from aura_common.service import loop, systemd

EXIT_CONFIG = 78
DEFAULT_CONFIG = "/etc/aura/server.yaml"

ServiceMain = Callable[[ServerConfig, argparse.Namespace], Awaitable[None]]


def run_service(
    name: str,
    description: str,
    main: ServiceMain,
    argv: Sequence[str] | None = None,
    extra_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    parser = argparse.ArgumentParser(prog=name, description=description)
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"server config file (default {DEFAULT_CONFIG})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    if extra_arguments:
        extra_arguments(parser)
    args = parser.parse_args(argv)
    aura_log.setup(name, verbose=args.verbose)
    # Before `aura server init` (the unit starts all the same, to fail visibly).
    hint = "" if os.path.exists(args.config) else "; `aura server init` creates it"

    def work() -> None:
        config = ServerConfig.load(args.config)
        loop.run(supervise(main(config, args)))

    return exit_status(logging.getLogger(name), work, config_hint=hint)


def exit_status(logger: logging.Logger, work: Callable[[], None], *, config_hint: str = "",
                failure: str = "") -> int:
    """Run `work` (load the config, run the event loop) and give the process's exit status:
    a config error is one critical line and 78 (no restart helps), any other AuraError one
    line (after `failure`) and 1, the end of the work or an interrupt 0."""
    try:
        work()
    except ConfigError as error:
        logger.critical("configuration error: %s%s", error, config_hint)
        return EXIT_CONFIG
    except AuraError as error:
        logger.critical("%s%s", failure, error)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


async def supervise(work: Awaitable[None], stop: Callable[[], None] | None = None) -> None:
    """Run `work` until it ends; SIGTERM and SIGINT call `stop` (default: cancel it), and the
    systemd watchdog is pinged meanwhile when the unit asks for it."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop or task.cancel)
    watchdog = loop.create_task(_watchdog()) if systemd.watchdog_interval() else None
    try:
        await task
    except asyncio.CancelledError:
        systemd.stopping()
    finally:
        if watchdog:
            watchdog.cancel()


async def _watchdog() -> None:
    interval = systemd.watchdog_interval()
    assert interval
    while True:
        systemd.watchdog_ping()
        await asyncio.sleep(interval / 3)

