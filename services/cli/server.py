"""`aura server init` and `aura server run`."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aura_common import ipc
from aura_common.config import (
    RegistryConfig,
    ServerConfig,
    TransportsConfig,
    encode_key,
    parse_port,
)
from aura_common.errors import AuraError
from aura_common.pki import ca
from aura_common.pki.keys import new_key_pair
from aura_common.roles import SERVICE_ROLES, Transport
from aura_common.service import systemd
from aura_common.service.shell import EXIT_CONFIG
from aura_common.state import runtime
from aura_common.state.atomic import open_beneath, open_directory, write_atomic
from aura_common.state.registry import Registry

log = logging.getLogger("aura")

RESTART_DELAY = 2.0
# The file the units and aura-generator read.
SYSTEM_CONFIG = "/etc/aura/server.yaml"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    for name in Transport:
        default = TransportsConfig().listener(name).port
        init.add_argument(f"--{name}-port", type=port_number, metavar="PORT",
                          help=f"{name.upper()} port (default {default})")
    init.add_argument("--database", metavar="CONNSTR",
                      help="keep the registry in PostgreSQL (a cluster): a libpq connection "
                           "string without the password, e.g. 'host=db1,db2 dbname=aura "
                           "user=aura target_session_attrs=read-write'; creates or migrates "
                           "the schema")
    init.add_argument("--database-password-file", metavar="FILE",
                      help="the database password (else the systemd credential "
                           "registry-password)")
    init.add_argument("--join", metavar="BUNDLE",
                      help="join a cluster: this server takes the identity, address pool and "
                           "database of the bundle `aura cluster export` wrote on a member")
    init.add_argument("--member", metavar="NAME",
                      help="this server's name among the cluster's members (default: "
                           "--public-host)")
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
    transports = config.transports
    for name in Transport:
        port = getattr(args, f"{name}_port")
        if port is not None:
            transports = transports.with_port(name, port)
    return replace(config, transports=transports)


def port_number(text: str) -> int:
    try:
        return parse_port(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port 1..65535, found {text!r}") from None


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


def _owned_by(path: str | Path, mode: int, uid: int = -1, gid: int = -1) -> None:
    """Set the mode (and as root the owner) of a file or folder `aura server init` made.

    Through a descriptor opened without following a symlink, so a link planted in its place
    cannot hand another file to an account.
    """
    try:
        fd = open_beneath(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise AuraError(f"{path}: cannot set its owner and mode ({error.strerror}; "
                        "a symlink is refused)") from None
    try:
        if os.geteuid() == 0 and (uid, gid) != (-1, -1):
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _prepare_directories(config: ServerConfig) -> None:
    """The state folders: the state directory is root's, and in it each role's own folder,
    writable by that role's account alone (when it exists): `router/` (the registry, leases,
    usage), `transports/<name>/` (its runtime.json; `transports/` itself is root's) and
    `signer/` (the manifest serial). No account can rename another's folder, nor one root
    writes in.
    """
    users = {role: _account(getattr(config.users, role)) for role in SERVICE_ROLES}
    own = {config.router_dir: users["router"], config.signer_dir: users["signer"],
           **{os.path.join(config.transports_dir, t): users[t] for t in Transport}}
    for directory in (config.state_dir, config.runtime_dir, config.transports_dir, *own):
        os.close(open_directory(directory, create=0o755))
    # Root's: sockets (no service can replace another's), and the folders of the folders.
    for directory in (config.runtime_dir, config.state_dir, config.transports_dir):
        _owned_by(directory, 0o755, 0, 0)
    for directory, account in own.items():
        _owned_by(directory, 0o755, *(account or (-1, -1)))


def _account(name: str) -> tuple[int, int] | None:
    """(uid, primary gid) of a system user, None where it does not exist (a development box)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _with_registry(config: ServerConfig, args: argparse.Namespace) -> ServerConfig:
    """The config with `registry:` from --database (validated like the file's)."""
    if args.database is None:
        if args.database_password_file or args.member:
            raise AuraError("--database-password-file and --member need --database")
        return config
    password_file = args.database_password_file
    raw = {
        "database": args.database,
        "member": args.member or config.public_host,
        "password_file": None if password_file is None else str(Path(password_file).absolute()),
    }
    section = _parse_registry_option(raw, config.public_host)
    return replace(config, registry=section)


def init_server(args: argparse.Namespace) -> int:
    config_path = Path(args.config).absolute()
    if config_path.exists() and args.join:
        raise AuraError(f"{config_path} exists: --join sets up a new member; move it away (or "
                        "pass another --config) first")
    if config_path.exists():
        config = ServerConfig.load(config_path)
        updated = _with_registry(config, args)
        if updated != config:
            config = updated
            write_atomic(config_path, config.dump().encode(), mode=0o644)
            print(f"{config_path}: set registry: to {config.registry.database!r}"
                  if config.registry else f"{config_path}: updated")
        else:
            print(f"{config_path} exists: keeping it")
    elif args.join:
        config = _joined_config(args, config_path)
    else:
        config = _with_registry(_new_config(args, config_path), args)
    # Private keys are root's alone (0600): systemd, or `aura server run`, hands each service a
    # copy of the ones it uses. The rest (config, public keys, certificates) is public.
    key_dir = Path(config.key_dir)
    os.close(open_directory(key_dir, create=0o755))
    _owned_by(key_dir, 0o755)
    _prepare_directories(config)

    server_key = Path(config.server_key_file)
    if server_key.exists():
        print(f"{server_key} exists: keeping it")
    else:
        private, public = new_key_pair()
        write_atomic(server_key, (encode_key(private) + "\n").encode(), mode=0o600)
        write_atomic(key_dir / "server.pub", (encode_key(public) + "\n").encode(), mode=0o644)
        print(f"created the server key {server_key}")
    _owned_by(server_key, 0o600)

    had_ca = Path(config.ca_key_file).exists()
    ca.create_ca(key_dir)
    print(("kept" if had_ca else "created") + f" the CA key {config.ca_key_file}")
    _owned_by(config.ca_key_file, 0o600)
    if not Path(config.tls_cert_file).exists():
        ca.issue_tls_certificate(ca.load_ca_private_key(key_dir), [config.public_host], key_dir)
        print(f"issued the TLS certificate {config.tls_cert_file} for {config.public_host}")
    _owned_by(config.tls_key_file, 0o600)

    if not config_path.exists():
        config_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(config_path, config.dump().encode(), mode=0o644)
        print(f"wrote {config_path}")
        reload_systemd(config_path)
    if config.registry is not None:
        _init_database(config)
    elif not Path(config.peers_file).exists():
        Registry.load(config.peers_file).save()
    print("next: `systemctl start aura-router` (or `aura server run`), then "
          "`aura provision-client NAME`")
    return 0


def _joined_config(args: argparse.Namespace, config_path: Path) -> ServerConfig:
    """A new member's config: the bundle's pool and database, this server's own host, and
    its keys written from the bundle (refusing to replace different ones)."""
    from aura_common.cluster import bundle  # psycopg only for clusters

    if args.database or args.network or args.strategy:
        raise AuraError("--join takes the database and the address pool from the bundle; "
                        "drop --database, --network and --strategy")
    files, network, args.database = bundle.read(args.join)
    config = _new_config(args, config_path)
    try:
        shared = ServerConfig.from_mapping(
            {"version": 1, "public_host": config.public_host, "network": network}, args.join)
    except AuraError as error:
        raise AuraError(f"{args.join}: network: {error}") from None
    config = _with_registry(replace(config, network=replace(
        shared.network, uplink=config.network.uplink)), args)
    key_dir = Path(config.key_dir)
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    for name, data in files.items():
        path = key_dir / name
        if path.exists():
            if path.read_bytes() != data:
                raise AuraError(f"{path} exists and differs from the bundle's: a member must "
                                "answer with the cluster's identity; move it away first")
            print(f"{path} matches the bundle: keeping it")
            continue
        write_atomic(path, data, mode=bundle.file_mode(name))
        print(f"installed {path} from the bundle")
    return config


def _parse_registry_option(raw: dict[str, Any], public_host: str) -> RegistryConfig:
    registry = ServerConfig.from_mapping(
        {"version": 1, "public_host": public_host, "registry": raw}, "--database"
    ).registry
    assert registry is not None
    return registry


def _init_database(config: ServerConfig) -> None:
    """The cluster key (sealing preshared keys in the database) and the schema."""
    from aura_common.cluster import database, seal  # psycopg only for clusters

    assert config.registry is not None
    key_file = Path(config.key_dir, "cluster.key")
    if key_file.exists():
        print(f"{key_file} exists: keeping it")
    else:
        write_atomic(key_file, (encode_key(seal.new_cluster_key()) + "\n").encode(), mode=0o600)
        print(f"created the cluster key {key_file} (copy it to other members with "
              "`aura cluster export`)")
    _owned_by(key_file, 0o600)
    with database.connect(config) as conn:
        old, new = database.migrate(conn, config.registry.database)
    where = database.describe(config.registry.database)
    if old == new:
        print(f"{where}: schema version {new}, up to date")
    else:
        print(f"{where}: schema version {new}" + (f" (migrated from {old})" if old else
                                                    " created"))


# -- run ------------------------------------------------------------------------------------
def _services(config: ServerConfig) -> list[str]:
    names = []
    if Path(config.ca_key_file).exists():
        names.append("signer")
    names.append("router")
    for transport in Transport:
        if config.transports.listener(transport).enabled:
            names.append(transport.value)
    return names


# When `aura server run` (root) starts a service as its own user: the capability it keeps,
# the private keys it is handed (as systemd's LoadCredential= would) and the Unix socket the
# supervisor binds for it in the root-owned runtime directory (as the .socket units do).
CAPABILITIES = {"router": "net_admin", "udp": "net_bind_service", "tcp": "net_bind_service",
                "quic": "net_bind_service", "signer": None}
SECRETS = {"router": ("cluster.key", "server.key"), "udp": (), "tcp": ("tls.key",),
           "quic": ("tls.key",), "signer": ("ca.key",)}


@dataclass(frozen=True)
class Account:
    uid: int
    gid: int


def run_accounts(config: ServerConfig, names: list[str]) -> dict[str, Account]:
    """The services to start as their own user: those whose user exists, when we are root
    and `setpriv` is at hand. The others run as root, as before."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return {}
    accounts = {}
    for name in names:
        found = _account(getattr(config.users, name))
        if found is not None and found[0] != 0:
            accounts[name] = Account(*found)
    return accounts


def launch_command(argv: list[str], name: str, account: Account, listens: bool) -> list[str]:
    """`argv` run as `account` with only its capability, keeping its pid (for LISTEN_PID)."""
    cap = CAPABILITIES[name]
    caps = "-all" if cap is None else f"-all,+{cap}"
    drop = ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--clear-groups",
            f"--inh-caps={caps}", f"--bounding-set={caps}"]
    if cap is not None:
        drop.append(f"--ambient-caps=+{cap}")
    if not listens:
        return [*drop, *argv]
    # sh's pid is the service's: setpriv and python replace it by exec.
    return ["sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", *drop, *argv]


class Supervisor:
    """Runs every service as a child process, restarts crashed ones, stops all on Ctrl-C.

    A service whose system user exists runs as that user: its Unix socket is bound here and
    passed as systemd would (LISTEN_FDS), and its private keys are copied into a folder of
    its own (CREDENTIALS_DIRECTORY), so no service can read another's keys.
    """

    def __init__(self, config: ServerConfig, config_path: str, names: list[str],
                 verbose: bool) -> None:
        self.config = config
        self.config_path = config_path
        self.verbose = verbose
        self.names = names
        self.accounts = run_accounts(config, names)
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.sockets: dict[str, socket.socket] = {}
        self.stopping = False

    def prepare(self) -> None:
        """Bind the sockets and hand out the keys of the services that drop root."""
        run_dir = Path(self.config.runtime_dir)
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        _owned_by(run_dir, 0o755, 0, 0)
        if "router" in self.accounts:
            # Every caller's role is decided by its uid, so everyone may connect.
            self.sockets["router"] = ipc.bind_path(self.config.router_socket, None, 0o666)
        if "signer" in self.accounts:
            self.sockets["signer"] = ipc.bind_path(self.config.signer_socket,
                                                   self.config.admin_gid, 0o660)
        for name, account in self.accounts.items():
            folder = self._credentials(name)
            folder.mkdir(parents=True, exist_ok=True, mode=0o755)
            _owned_by(folder.parent, 0o755, 0, 0)
            _owned_by(folder, 0o755, 0, 0)
            for secret, source in self._secrets(name):
                with contextlib.suppress(FileNotFoundError):
                    data = Path(source).read_bytes()
                    write_atomic(folder / secret, data, 0o400, owner=(account.uid, account.gid))

    def _secrets(self, name: str) -> list[tuple[str, str]]:
        """(credential name, file) of each secret `name` is handed: its keys, and for a
        cluster member's router the database password."""
        handed = [(secret, os.path.join(self.config.key_dir, secret)) for secret in SECRETS[name]]
        registry = self.config.registry
        if name == "router" and registry is not None and registry.password_file is not None:
            handed.append(("registry-password", registry.password_file))
        return handed

    def _credentials(self, name: str) -> Path:
        return Path(self.config.runtime_dir, "credentials", name)

    def start(self, name: str) -> None:
        argv = [sys.executable, "-m", f"services.{name}", "--config", self.config_path]
        if self.verbose:
            argv.append("--verbose")
        account = self.accounts.get(name)
        if account is None:
            self.children[name] = subprocess.Popen(argv)
            log.info("started aura-%s (pid %d)", name, self.children[name].pid)
            return
        env = {**os.environ, "CREDENTIALS_DIRECTORY": str(self._credentials(name))}
        sock = self.sockets.get(name)
        if sock is not None:
            env.update(LISTEN_FDS="1", LISTEN_FDNAMES=name)
        self.children[name] = subprocess.Popen(
            launch_command(argv, name, account, sock is not None), env=env,
            pass_fds=(systemd.LISTEN_FDS_START,) if sock is not None else (),
            preexec_fn=None if sock is None else _socket_at_fd3(sock.fileno()),
        )  # fmt: skip
        log.info("started aura-%s (pid %d) as uid %d", name, self.children[name].pid,
                 account.uid)

    def run(self, router_socket: str) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self._stop_requested())
        try:
            self.prepare()
            self.start_all(router_socket)
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
            self.clean_up()
        return 0

    def start_all(self, router_socket: str) -> None:
        """Start every service in order, as the units' ordering would.

        The transports wait for the router's socket; QUIC, which skips the port the UDP
        transport took, waits until UDP has recorded it, or which port each ends on would
        depend on which process binds first.
        """
        for name in self.names:
            self.start(name)
            if name == "router":
                self._wait_for_socket(router_socket)
            elif name == "udp" and "quic" in self.names:
                self._wait_for_bound(name)

    def _stop_requested(self) -> None:
        self.stopping = True

    def _wait_for_socket(self, path: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not os.path.exists(path):
            if self.children["router"].poll() is not None:
                return
            time.sleep(0.05)

    def _wait_for_bound(self, name: str, timeout: float = 30) -> None:
        """Until the `name` transport just started has recorded its address in its runtime.json
        (or has exited: then there is no port to skip)."""
        child = self.children[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and child.poll() is None:
            entry = runtime.read_runtime_for_service(self.config.transports_dir)
            if entry.get(name, {}).get("pid") == child.pid:
                return
            time.sleep(0.05)
        if child.poll() is None:
            log.warning("aura-%s has not bound its port after %.0fs; starting the others",
                        name, timeout)

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

    def clean_up(self) -> None:
        """Remove the sockets we bound and the keys we handed out."""
        for name, sock in self.sockets.items():
            sock.close()
            path = self.config.router_socket if name == "router" else self.config.signer_socket
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for name in self.accounts:
            folder = self._credentials(name)
            for secret, _ in self._secrets(name):
                with contextlib.suppress(FileNotFoundError):
                    (folder / secret).unlink()
            with contextlib.suppress(OSError):
                folder.rmdir()
        with contextlib.suppress(OSError):
            Path(self.config.runtime_dir, "credentials").rmdir()


def _socket_at_fd3(fd: int) -> Callable[[], None]:
    """Put the passed socket where socket activation puts the first one (in the child)."""

    def move() -> None:
        os.dup2(fd, systemd.LISTEN_FDS_START)

    return move


def run_server(args: argparse.Namespace) -> int:
    config = ServerConfig.load(args.config)
    if os.geteuid() != 0:
        raise AuraError("`aura server run` needs root (it creates the TUN device and NAT rules)")
    names = _services(config)
    print(f"running {', '.join('aura-' + n for n in names)}; Ctrl-C stops them all")
    supervisor = Supervisor(config, str(Path(args.config).absolute()), names, args.verbose)
    return supervisor.run(config.router_socket)
