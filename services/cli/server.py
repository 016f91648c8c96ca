"""`aura server init` and `aura server run`."""

from __future__ import annotations

import argparse
import contextlib
import grp
import ipaddress
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from aura_common import pki
from aura_common.atomic import write_atomic
from aura_common.config import ServerConfig, encode_key
from aura_common.errors import AuraError
from aura_common.keys import new_key_pair
from aura_common.registry import Registry

log = logging.getLogger("aura")

RESTART_DELAY = 2.0
# The file the units and aura-generator read.
SYSTEM_CONFIG = "/etc/aura/server.yaml"
EXIT_CONFIG = 78


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    server = commands.add_parser("server", help="create or run the server")
    actions = server.add_subparsers(dest="action", required=True, metavar="ACTION")

    init = actions.add_parser(
        "init", help="create keys, certificate and config (never overwrites existing keys)"
    )
    init.add_argument("--public-host", required=True,
                      help="host name or IP address clients connect to")
    init.add_argument("--state-dir", help="leases, registry, runtime file (default /var/lib/aura)")
    init.add_argument("--runtime-dir", help="Unix sockets (default /run/aura)")
    init.add_argument("--key-dir", help="keys and certificates (default: the config's folder)")
    init.add_argument("--network", action="append", metavar="CIDR",
                      help="client address pool; give one IPv4 and optionally one IPv6 network "
                           "(default 10.77.0.0/24 and fd77:7777::/64)")
    init.add_argument("--strategy", choices=("static", "dynamic"),
                      help="address assignment (default static; stock WireGuard needs static)")
    init.add_argument("--tun", help="TUN device name (default aura0)")
    init.add_argument("--uplink", help="interface to NAT client traffic out of (default: any)")
    for name, default in (("udp", 8443), ("tcp", 8443), ("quic", 8444)):
        init.add_argument(f"--{name}-port", type=port_number, metavar="PORT",
                          help=f"{name.upper()} port (default {default})")
    init.set_defaults(func=init_server)

    run = actions.add_parser("run", help="run every service in the foreground (no systemd)")
    run.set_defaults(func=run_server)


# -- init -----------------------------------------------------------------------------------
def _new_config(args: argparse.Namespace, config_path: Path) -> ServerConfig:
    options: dict[str, Any] = {
        "key_dir": str(Path(args.key_dir or config_path.parent).absolute()),
    }
    for name in ("state_dir", "runtime_dir"):
        if getattr(args, name):
            options[name] = str(Path(getattr(args, name)).absolute())
    if args.network:
        options["network"], options["network_v6"] = _pool_networks(args.network)
    if args.tun:
        options["tun"] = args.tun
    config = ServerConfig.default(args.public_host, uplink=args.uplink, **options)
    if args.strategy:
        config = replace(config, network=replace(config.network, strategy=args.strategy))
    ports = {name: getattr(args, f"{name}_port") for name in ("udp", "tcp", "quic")}
    transports = {name: replace(getattr(config.transports, name), port=port)
                  for name, port in ports.items() if port is not None}
    return replace(config, transports=replace(config.transports, **transports))


def port_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 1..65535, found {text!r}")
    return int(text)


def reload_systemd(config_path: Path) -> None:
    """Let the socket units pick up the new file's ports (aura-generator runs on reload)."""
    if str(config_path) != SYSTEM_CONFIG or not os.path.isdir("/run/systemd/system"):
        return
    result = subprocess.run(["systemctl", "daemon-reload"], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"aura: warning: `systemctl daemon-reload` failed ({result.stderr.strip()}); run "
              "it before starting, so the socket units take the ports from the config",
              file=sys.stderr)


def _pool_networks(values: list[str]) -> tuple[str, str | None]:
    found: dict[int, str] = {}
    for value in values:
        try:
            network = ipaddress.ip_network(value, strict=True)
        except ValueError:
            raise AuraError(f"--network {value}: expected a network such as 10.77.0.0/24") from None
        if network.version in found:
            raise AuraError(f"--network: give at most one IPv{network.version} network")
        found[network.version] = str(network)
    if 4 not in found:
        raise AuraError("--network: an IPv4 network is required")
    return found[4], found.get(6)


def _owned_by(path: Path, group: str | None, mode: int) -> None:
    """Set the mode (and, as root, the group when it exists) of a file or folder we made.

    Through a descriptor opened without following a symlink, so a link planted in its place
    cannot hand another file to the group.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if group is not None and os.geteuid() == 0:
            with contextlib.suppress(KeyError):
                os.fchown(fd, -1, grp.getgrnam(group).gr_gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def init_server(args: argparse.Namespace) -> int:
    config_path = Path(args.config).absolute()
    if config_path.exists():
        config = ServerConfig.load(config_path)
        print(f"{config_path} exists: keeping it")
    else:
        config = _new_config(args, config_path)
    key_dir = Path(config.key_dir)
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    _owned_by(key_dir, config.admin_group, 0o750)
    for directory in (config.state_dir, config.runtime_dir):
        Path(directory).mkdir(parents=True, exist_ok=True, mode=0o750)

    server_key = Path(config.server_key_file)
    if server_key.exists():
        print(f"{server_key} exists: keeping it")
    else:
        private, public = new_key_pair()
        write_atomic(server_key, (encode_key(private) + "\n").encode(), mode=0o640)
        write_atomic(key_dir / "server.pub", (encode_key(public) + "\n").encode(), mode=0o644)
        print(f"created the server key {server_key}")
    _owned_by(server_key, config.admin_group, 0o640)

    had_ca = Path(config.ca_key_file).exists()
    pki.create_ca(key_dir)
    print(("kept" if had_ca else "created") + f" the CA key {config.ca_key_file}")
    _owned_by(Path(config.ca_key_file), None, 0o600)  # root only: systemd hands it to the signer
    if not Path(config.tls_cert_file).exists():
        pki.issue_tls_certificate(pki.load_ca_private_key(key_dir), [config.public_host], key_dir)
        print(f"issued the TLS certificate {config.tls_cert_file} for {config.public_host}")
    _owned_by(Path(config.tls_key_file), config.admin_group, 0o640)

    if not config_path.exists():
        config_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(config_path, config.dump().encode(), mode=0o640)
        _owned_by(config_path, config.admin_group, 0o640)
        print(f"wrote {config_path}")
        reload_systemd(config_path)
    registry = Registry.load(config.peers_file)
    if not Path(config.peers_file).exists():
        registry.save()
    print("next: `systemctl start aura-router` (or `aura server run`), then "
          "`aura provision-client NAME`")
    return 0


# -- run ------------------------------------------------------------------------------------
def _services(config: ServerConfig) -> list[str]:
    names = []
    if Path(config.ca_key_file).exists():
        names.append("signer")
    names.append("router")
    for transport in ("udp", "tcp", "quic"):
        if getattr(config.transports, transport).enabled:
            names.append(transport)
    return names


class Supervisor:
    """Runs every service as a child process, restarts crashed ones, stops all on Ctrl-C."""

    def __init__(self, config_path: str, names: list[str], verbose: bool) -> None:
        self.config_path = config_path
        self.verbose = verbose
        self.names = names
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def start(self, name: str) -> None:
        argv = [sys.executable, "-m", f"services.{name}", "--config", self.config_path]
        if self.verbose:
            argv.append("--verbose")
        self.children[name] = subprocess.Popen(argv)
        log.info("started aura-%s (pid %d)", name, self.children[name].pid)

    def run(self, router_socket: str) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self._stop_requested())
        for name in self.names:
            self.start(name)
            if name == "router":
                self._wait_for_socket(router_socket)
        try:
            while not self.stopping:
                time.sleep(0.2)
                for name, child in list(self.children.items()):
                    code = child.poll()
                    if code is None or self.stopping:
                        continue
                    if code == EXIT_CONFIG:
                        log.error("aura-%s stopped on a configuration error", name)
                        return 1
                    log.warning("aura-%s exited with status %s; restarting in %.0fs",
                                name, code, RESTART_DELAY)
                    time.sleep(RESTART_DELAY)
                    self.start(name)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop_all()
        return 0

    def _stop_requested(self) -> None:
        self.stopping = True

    def _wait_for_socket(self, path: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not os.path.exists(path):
            if self.children["router"].poll() is not None:
                return
            time.sleep(0.05)

    def stop_all(self) -> None:
        self.stopping = True
        for name in reversed(list(self.children)):
            child = self.children[name]
            if child.poll() is None:
                child.terminate()
        for name, child in self.children.items():
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                log.warning("aura-%s did not stop in 10s; killing it", name)
                child.kill()
                child.wait()


def run_server(args: argparse.Namespace) -> int:
    config = ServerConfig.load(args.config)
    if os.geteuid() != 0:
        raise AuraError("`aura server run` needs root (it creates the TUN device and NAT rules)")
    names = _services(config)
    print(f"running {', '.join('aura-' + n for n in names)}; Ctrl-C stops them all")
    supervisor = Supervisor(str(Path(args.config).absolute()), names, args.verbose)
    return supervisor.run(config.router_socket)
