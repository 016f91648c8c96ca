"""`aura client up|status|down`: the Linux client, driven through its control socket."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

import services
from aura_common import ipc
from aura_common.config import ClientConfig
from aura_common.config.client import refuse_foreign_paths
from aura_common.errors import AuraError
from aura_common.ipc.frames import (
    FROM_CLIENT,
    ClientState,
    ClientStatus,
    Down,
    DownDone,
    Status,
    TunnelState,
)
from aura_common.ipc.oneshot import Reply
from aura_common.service.log import JOURNAL_SOCKET
from aura_common.state.atomic import open_beneath
from aura_common.state.client_limits import format_size
from services.cli.status import human_duration

DEFAULT_CLIENT_CONFIG = "/etc/aura/client.yaml"
UP_TIMEOUT = 15.0
DOWN_TIMEOUT = 10.0
POLL_INTERVAL = 0.2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    client = commands.add_parser(
        "client", help="run the Linux client (UDP, QUIC or TLS, with fallback)",
        description="The Aura Linux client. Each command takes the client config that "
        f"`aura provision-client NAME --format aura` wrote (default {DEFAULT_CLIENT_CONFIG}); "
        "the control socket of the running client is in its runtime_dir.",
    )
    actions = client.add_subparsers(dest="client_command", required=True, metavar="ACTION")
    up = actions.add_parser(
        "up", help="connect (starts the client in the background)",
        description="Start the client: it opens the tunnel device, tries the transports in "
        "order, and reconnects with backoff forever. Without --foreground it detaches (logging "
        "to the journal when available, else to RUNTIME_DIR/NAME.log), waits until the tunnel "
        f"is up (at most {UP_TIMEOUT:.0f} s) and prints the transport and address.",
    )
    up.add_argument("config", metavar="CONFIG", help="client config file")
    up.add_argument("--foreground", action="store_true",
                    help="run in this process, logging to stderr, until SIGTERM or `down`")
    up.set_defaults(func=client_up)
    for name, func, text in (
        ("status", client_status, "show state, transport, endpoint and counters"),
        ("down", client_down, "disconnect: remove the tunnel device and its routes"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("config", metavar="CONFIG", nargs="?", default=DEFAULT_CLIENT_CONFIG,
                            help=f"client config file (default {DEFAULT_CLIENT_CONFIG})")
        if name == "status":
            action.add_argument("--json", action="store_true", help="machine-readable output")
        action.set_defaults(func=func)


# -- talking to the running client -----------------------------------------------------------


def request(config: ClientConfig, frame: Status | Down, reply: type[Reply]) -> Reply:
    return ipc.request(
        config.control_socket, frame, reply, FROM_CLIENT, service="the client",
        start=f"no client runs for {config.path}; start it with `aura client up {config.path}`",
        allowed="run as root",
    )


def _status_or_none(config: ClientConfig) -> ClientState | None:
    try:
        return request(config, Status(), ClientStatus).status
    except AuraError:
        return None


# -- up -------------------------------------------------------------------------------------


def client_up(args: argparse.Namespace) -> int:
    if args.foreground:
        from services.client.process import run as run_client

        return run_client(args.config, verbose=args.verbose)
    config = ClientConfig.load(args.config)
    refuse_foreign_paths(config)
    running = _status_or_none(config)
    if running is not None:
        raise AuraError(
            f"a client for {config.path} is already running (pid {running.pid}, "
            f"{running.state}); `aura client down {config.path}` stops it"
        )
    os.makedirs(config.runtime_dir, mode=0o700, exist_ok=True)
    log_file = os.path.join(config.runtime_dir, f"{config.name}.log")
    journal = os.path.exists(JOURNAL_SOCKET)
    command = [sys.executable, "-m", "services.client.process", os.path.abspath(args.config)]
    # The daemon runs the code of this very command, not whatever else the interpreter might
    # find first from another working directory (a source tree beside an installed copy).
    source_root = os.path.dirname(os.path.dirname(os.path.abspath(services.__file__)))
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, (source_root, os.environ.get("PYTHONPATH"))))}
    if journal:
        command.append("--journal")
    if args.verbose:
        command.append("--verbose")
    fd = open_beneath(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "ab") as output:
        # Output before logging is set up (a crash at import) still lands in the file.
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True, cwd="/", env=environment,
        )
    where = "the journal (journalctl -t aura-client)" if journal else log_file
    deadline = time.monotonic() + UP_TIMEOUT
    status: ClientState | None = None
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            print(f"aura: the client exited with status {code}; see {where}", file=sys.stderr)
            if not journal:
                _print_tail(log_file)
            return 1
        status = _status_or_none(config)
        if status is not None and status.state == TunnelState.UP and status.addresses:
            print(f"connected over {status.transport} to {status.endpoint}; "
                  f"{status.tun} has {', '.join(status.addresses)}")
            return 0
        time.sleep(POLL_INTERVAL)
    why = status.last_error if status and status.last_error else "no handshake yet"
    print(f"aura: not up after {UP_TIMEOUT:.0f} s ({why}); the client keeps trying in the "
          f"background (pid {process.pid}); see {where}, or stop it with "
          f"`aura client down {config.path}`", file=sys.stderr)
    return 1


def _print_tail(path: str, lines: int = 10) -> None:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            tail = file.readlines()[-lines:]
    except OSError:
        return
    sys.stderr.writelines("  " + line for line in tail)


# -- status and down ------------------------------------------------------------------------


def client_status(args: argparse.Namespace) -> int:
    config = ClientConfig.load(args.config)
    status = request(config, Status(), ClientStatus).status
    if args.json:
        print(json.dumps(dataclasses.asdict(status), indent=2, sort_keys=True))
    else:
        print(render(config.name, status, time.time()))
    return 0


def render(name: str, status: ClientState, now: float) -> str:
    headline: str = status.state.value
    if status.state == TunnelState.UP:
        headline = f"up over {status.transport} to {status.endpoint}"
    lines = [f"aura client {name}: {headline} "
             f"(tunnel {status.tun}, mtu {status.mtu}, pid {status.pid})"]
    lines.append(f"  addresses:      {', '.join(status.addresses) or 'none yet'}")
    if status.last_handshake is not None:
        ago = human_duration(max(0.0, now - status.last_handshake))
        lines.append(f"  last handshake: {ago} ago")
    lines.append(f"  received:       {status.rx_packets} packets, "
                 f"{format_size(status.rx_bytes)}")
    lines.append(f"  sent:           {status.tx_packets} packets, "
                 f"{format_size(status.tx_bytes)}")
    lines.append(f"  routes:         {len(status.routes)} through the tunnel")
    if status.dns:
        applied = status.dns_applied_with
        how = f" (system resolver, through {applied})" if applied else " (not applied)"
        lines.append(f"  dns:            {', '.join(status.dns)}{how}")
    lines.append(f"  manifest:       serial {status.manifest_serial or 'none'}")
    if status.last_error:
        lines.append(f"  last problem:   {status.last_error}")
    return "\n".join(lines)


def client_down(args: argparse.Namespace) -> int:
    config = ClientConfig.load(args.config)
    request(config, Down(), DownDone)
    _wait_gone(config)
    print(f"client {config.name} stopped; its tunnel device and routes are removed")
    return 0


def _wait_gone(config: ClientConfig) -> None:
    """Wait until the client has removed its device and control socket."""
    deadline = time.monotonic() + DOWN_TIMEOUT
    while os.path.exists(config.control_socket):
        if time.monotonic() > deadline:
            raise AuraError(f"the client did not stop within {DOWN_TIMEOUT:.0f} s")
        time.sleep(POLL_INTERVAL)
