"""The Aura client config (written by `aura provision-client --format aura`): its schema,
defaults, parser and writer."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Any

import yaml

from aura_common.config.reader import (
    CONFIG_VERSION,
    Section,
    check_version,
    read_yaml,
    text_of,
    yaml_value,
)
from aura_common.config.values import MTU_MAX, MTU_MIN, encode_key, is_host, is_peer_name
from aura_common.errors import ConfigError
from aura_common.roles import CLIENT_ORDER, Transport, is_transport

Network = IPv4Network | IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class ClientInterface:
    private_key: bytes
    addresses: tuple[Interface, ...]
    mtu: int = 1420
    dns: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClientServer:
    public_key: bytes
    host: str
    ca_public_key: bytes
    preshared_key: bytes | None = None


@dataclass(frozen=True)
class ClientTransports:
    order: tuple[str, ...] = CLIENT_ORDER
    udp: int = 8443
    quic: int = 8444
    tcp: int = 8443
    # TLS/QUIC server name; None means the server host.
    server_name: str | None = None


@dataclass(frozen=True)
class ClientTunnel:
    """Split routing: `vpn` networks go through the tunnel, `direct` ones bypass it."""

    vpn: tuple[Network, ...] = (IPv4Network("0.0.0.0/0"), IPv6Network("::/0"))
    direct: tuple[Network, ...] = ()


@dataclass(frozen=True)
class ClientConfig:
    name: str
    interface: ClientInterface
    server: ClientServer
    transports: ClientTransports = ClientTransports()
    tunnel: ClientTunnel = ClientTunnel()
    manifest: Mapping[str, Any] | None = field(default=None, hash=False)
    runtime_dir: str = "/run/aura-client"
    state_file: str | None = None
    keepalive: int = 25
    version: int = CONFIG_VERSION
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

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClientConfig:
        path = os.fspath(path)
        return _parse_client(read_yaml(path), path)

    @classmethod
    def from_mapping(cls, raw: object, path: str = "<client config>") -> ClientConfig:
        return _parse_client(raw, path)

    def dump(self) -> str:
        """YAML with short comments; `load` of the text gives an equal config."""
        v = yaml_value
        i, s, t = self.interface, self.server, self.transports
        psk = None if s.preshared_key is None else encode_key(s.preshared_key)
        lines = [
            f"# Aura client configuration for {self.name}. Keep it secret: it holds a private key.",
            f"version: {self.version}",
            f"name: {v(self.name)}",
            "interface:",
            f"  private_key: {v(encode_key(i.private_key))}",
            f"  addresses: {v([str(a) for a in i.addresses])}",
            f"  mtu: {i.mtu}",
            f"  dns: {v(list(i.dns))}",
            "server:",
            f"  public_key: {v(encode_key(s.public_key))}",
            f"  preshared_key: {v(psk)}",
            f"  host: {v(s.host)}",
            f"  ca_public_key: {v(encode_key(s.ca_public_key))}  # verifies bridge manifests",
            "transports:",
            f"  order: {v(list(t.order))}  # tried in this order; a manifest may update ports",
            f"  udp: {t.udp}",
            f"  quic: {t.quic}",
            f"  tcp: {t.tcp}",
            f"  server_name: {v(t.server_name)}",
            "tunnel:",
            "  split:",
            f"    vpn: {v([{'cidr': str(n)} for n in self.tunnel.vpn])}  # through the tunnel",
            f"    direct: {v([{'cidr': str(n)} for n in self.tunnel.direct])}  # bypass it",
        ]
        if self.manifest is None:
            lines.append("manifest: null  # the signed bridge manifest, once one exists")
        else:
            body = yaml.safe_dump(
                {"manifest": _plain(self.manifest)}, default_flow_style=False, sort_keys=False
            )
            lines.append(body.rstrip("\n"))
        lines += [
            f"runtime_dir: {v(self.runtime_dir)}  # control socket of the running client",
            f"state_file: {v(self.state_file)}  # newer manifests; null = beside this file",
            f"keepalive: {self.keepalive}  # seconds; 0 disables",
            "",
        ]
        return "\n".join(lines)


def _plain(value: object) -> object:
    """Mappings and sequences as plain dicts and lists, for yaml.safe_dump."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _parse_client(raw: object, path: str) -> ClientConfig:
    top = Section(
        path,
        "",
        raw,
        (
            "version", "name", "interface", "server", "transports", "tunnel", "manifest",
            "runtime_dir", "state_file", "keepalive",
        ),
    )  # fmt: skip
    version = check_version(top)
    name = top.string("name")
    if not is_peer_name(name):
        raise top.error("name", "a name matching [a-z0-9][a-z0-9_.-]{0,31}", name)
    manifest = top.get("manifest", None)
    if manifest is not None and not isinstance(manifest, dict):
        raise top.error("manifest", "a mapping (the signed manifest) or null", manifest)
    state_file = None
    if top.get("state_file", None) is not None:
        state_file = top.absolute_path("state_file")
    return ClientConfig(
        version=version,
        name=name,
        interface=_parse_client_interface(
            top.section("interface", ("private_key", "addresses", "mtu", "dns"))
        ),
        server=_parse_client_server(
            top.section("server", ("public_key", "preshared_key", "host", "ca_public_key"))
        ),
        transports=_parse_client_transports(
            top.section("transports", ("order", *Transport, "server_name"))
        ),
        tunnel=_parse_client_tunnel(top.section("tunnel", ("split",))),
        manifest=manifest,
        runtime_dir=top.absolute_path("runtime_dir", ClientConfig.runtime_dir),
        state_file=state_file,
        keepalive=top.integer("keepalive", 0, 65535, ClientConfig.keepalive),
        path=path,
    )


def _parse_client_interface(s: Section) -> ClientInterface:
    addresses: list[Interface] = []
    # Empty with a dynamic pool: the server tells the client its address in-tunnel.
    items = s.listing("addresses")
    for index, item in enumerate(items):
        try:
            addresses.append(ipaddress.ip_interface(text_of(item)))
        except ValueError:
            raise s.error(f"addresses[{index}]", "an address such as 10.77.0.2/32", item) from None
    return ClientInterface(
        private_key=s.key_bytes("private_key"),
        addresses=tuple(addresses),
        mtu=s.integer("mtu", MTU_MIN, MTU_MAX, ClientInterface.mtu),
        dns=s.ip_addresses("dns"),
    )


def _parse_client_server(s: Section) -> ClientServer:
    has_psk = s.get("preshared_key", None) is not None
    return ClientServer(
        public_key=s.key_bytes("public_key"),
        preshared_key=s.key_bytes("preshared_key") if has_psk else None,
        host=s.host("host"),
        ca_public_key=s.key_bytes("ca_public_key"),
    )


def _parse_client_transports(s: Section) -> ClientTransports:
    order = s.listing("order", list(ClientTransports.order))
    if not order or not all(map(is_transport, order)) or len(set(order)) != len(order):
        raise s.error(
            "order", f"a non-empty list of distinct transports from {CLIENT_ORDER}", order
        )
    server_name = s.optional_string("server_name")
    if server_name is not None and not is_host(server_name):
        raise s.error("server_name", "a host name", server_name)
    return ClientTransports(
        order=tuple(order),
        udp=s.integer("udp", 1, 65535, ClientTransports.udp),
        quic=s.integer("quic", 1, 65535, ClientTransports.quic),
        tcp=s.integer("tcp", 1, 65535, ClientTransports.tcp),
        server_name=server_name,
    )


def _parse_client_tunnel(s: Section) -> ClientTunnel:
    split = s.section("split", ("vpn", "direct"))

    def networks(name: str, default: list[Any]) -> tuple[Network, ...]:
        result: list[Network] = []
        for index, item in enumerate(split.listing(name, default)):
            entry = Section(split.path, split.key(f"{name}[{index}]"), item, ("cidr",))
            text = entry.get("cidr")
            try:
                result.append(ipaddress.ip_network(text_of(text)))
            except ValueError:
                raise entry.error("cidr", "a network such as 10.0.0.0/8", text) from None
        return tuple(result)

    return ClientTunnel(
        vpn=networks("vpn", [{"cidr": str(network)} for network in ClientTunnel.vpn]),
        direct=networks("direct", []),
    )
