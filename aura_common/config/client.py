"""The Aura client config (written by `aura provision-client --format aura`): its schema,
defaults, parser and writer."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from aura_common.config.checks import (
    KEY,
    PORT,
    AbsolutePath,
    Entry,
    Integer,
    Items,
    Optional,
    Parsed,
    Plain,
    Text,
    Version,
    ip_address,
)
from aura_common.config.reader import (
    CONFIG_VERSION,
    Check,
    ConfigFile,
    Nested,
    Place,
    key,
)
from aura_common.config.values import MTU_MAX, MTU_MIN, is_host, is_peer_name
from aura_common.errors import ConfigError
from aura_common.roles import CLIENT_ORDER, Transport, is_transport

Network = IPv4Network | IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class _TransportOrder(Check[tuple[str, ...]]):
    def read(self, value: object, at: Place) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise at.error("a list", value)
        if not value or not all(map(is_transport, value)) or len(set(value)) != len(value):
            raise at.error(f"a non-empty list of distinct transports from {CLIENT_ORDER}", value)
        return tuple(value)

    def dump(self, value: tuple[str, ...]) -> object:
        return list(value)


_NETWORKS = Items(Entry("cidr", Parsed(ipaddress.ip_network, "a network such as 10.0.0.0/8")))


@dataclass(frozen=True)
class ClientInterface:
    private_key: bytes = key(check=KEY)
    # Empty with a dynamic pool: the server tells the client its address in-tunnel.
    addresses: tuple[Interface, ...] = key(check=Items(Parsed(
        ipaddress.ip_interface, "an address such as 10.77.0.2/32")))
    mtu: int = key(1420, Integer(MTU_MIN, MTU_MAX))
    dns: tuple[str, ...] = key((), Items(ip_address("an IP address")))


@dataclass(frozen=True)
class ClientServer:
    public_key: bytes = key(check=KEY)
    host: str = key(check=Text(is_host, "a host name or IP address"))
    ca_public_key: bytes = key(check=KEY, doc="verifies bridge manifests")
    preshared_key: bytes | None = key(None, Optional(KEY))


@dataclass(frozen=True)
class ClientTransports:
    order: tuple[str, ...] = key(CLIENT_ORDER, _TransportOrder(),
                                 "tried in this order; a manifest may update ports")
    udp: int = key(8443, PORT)
    quic: int = key(8444, PORT)
    tcp: int = key(8443, PORT)
    # TLS/QUIC server name; None means the server host.
    server_name: str | None = key(None, Optional(Text(is_host, "a host name")))

    def port(self, transport: Transport) -> int:
        """The server's port for `transport`."""
        ports = {Transport.UDP: self.udp, Transport.QUIC: self.quic, Transport.TCP: self.tcp}
        return ports[transport]


@dataclass(frozen=True)
class ClientTunnel:
    """Split routing: `vpn` networks go through the tunnel, `direct` ones bypass it."""

    vpn: tuple[Network, ...] = key((IPv4Network("0.0.0.0/0"), IPv6Network("::/0")), _NETWORKS,
                                   "through the tunnel")
    direct: tuple[Network, ...] = key((), _NETWORKS, "bypass it")


@dataclass(frozen=True, kw_only=True)
class ClientConfig(ConfigFile):
    UNNAMED = "<client config>"

    version: int = key(CONFIG_VERSION, Version(), stated=True)
    name: str = key(check=Text(is_peer_name, "a name matching [a-z0-9][a-z0-9_.-]{0,31}"))
    interface: ClientInterface = key(check=Nested(ClientInterface))
    server: ClientServer = key(check=Nested(ClientServer))
    transports: ClientTransports = key(ClientTransports(), Nested(ClientTransports))
    tunnel: ClientTunnel = key(ClientTunnel(), Nested(ClientTunnel, under="split"))
    manifest: Mapping[str, Any] | None = key(
        None, Optional(Plain("a mapping (the signed manifest) or null")),
        "the signed bridge manifest, once one exists", hash=False)
    runtime_dir: str = key("/run/aura-client", AbsolutePath(),
                           "control socket of the running client")
    state_file: str | None = key(
        None, Optional(AbsolutePath()),
        "newer manifests; null = beside this file (or in systemd's StateDirectory)")
    keepalive: int = key(25, Integer(0, 65535), "seconds; 0 disables")
    path: str | None = field(default=None, compare=False)

    @property
    def control_socket(self) -> str:
        # Named after the client, so several clients (or namespaces) share one runtime_dir.
        return os.path.join(self.runtime_dir, f"{self.name}.sock")

    @property
    def server_name(self) -> str:
        return self.transports.server_name or self.server.host

    @property
    def manifest_state_file(self) -> str:
        """Where newer manifests learned from the server are kept (default beside the config)."""
        if self.state_file is not None:
            return self.state_file
        if self.path is None:
            raise ConfigError("<client config>", "state_file", "a path (config was not loaded)")
        return os.path.splitext(self.path)[0] + ".state.json"

    @property
    def dns_state_file(self) -> str:
        """The record of the system DNS change the client made, replayed on down or restart."""
        return os.path.splitext(self.manifest_state_file)[0] + ".dns.json"

    def header(self) -> str:
        return (f"# Aura client configuration for {self.name}: `aura client up <this file>`.\n"
                "# Keep it secret: it holds a private key.")


# The keys naming where the client, which runs as root, creates and replaces files.
ROOT_WRITTEN_PATHS = ("state_file", "runtime_dir")


def refuse_foreign_paths(config: ClientConfig) -> None:
    """Refuse `state_file` and `runtime_dir` in a config another account can change.

    Root runs the client, and those keys say where it writes: whoever could write the file
    (its owner, or the owner of a folder above it) could otherwise have root replace
    /etc/shadow with a manifest. Such a config keeps the defaults (beside the file, and
    root's /run/aura-client); one only root can change may name any path.
    """
    if os.geteuid() != 0 or config.path is None:
        return
    writer = changeable_by(config.path)
    if writer is None:
        return
    defaults = ClientConfig.__dataclass_fields__
    for name in ROOT_WRITTEN_PATHS:
        if getattr(config, name) != defaults[name].default:
            raise ConfigError(config.path, name,
                              f"no {name} in a config {writer} can change (root writes there); "
                              "remove the key, or make the file and its folders root's")


def changeable_by(path: str) -> str | None:
    """Who other than root could change the file at `path` (its owner, the owner of a folder
    above it or of a link on the way, or anyone through a group- or world-writable one),
    None if nobody."""
    for start in (os.path.abspath(path), os.path.realpath(path)):
        writer = _changeable_along(start)
        if writer is not None:
            return writer
    return None


def _changeable_along(path: str) -> str | None:
    trusted = (0, os.geteuid())
    current, status = path, os.lstat(path)
    if status.st_mode & 0o022 and not os.path.islink(path):
        return f"any account with write access to {path}"
    while True:
        if status.st_uid not in trusted:
            return f"uid {status.st_uid} (the owner of {current})"
        parent = os.path.dirname(current)
        if parent == current:
            return None
        folder = os.lstat(parent)
        # A sticky folder (/tmp) lets others add entries but not replace a root-owned one.
        if folder.st_mode & 0o022 and not folder.st_mode & 0o1000 and not os.path.islink(parent):
            return f"any account with write access to {parent}"
        current, status = parent, folder
