"""The server config, `/etc/aura/server.yaml`: its schema, defaults, parser and writer."""

from __future__ import annotations

import grp
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from aura_common.config.checks import (
    PORT,
    AbsolutePath,
    Boolean,
    Choice,
    Integer,
    Items,
    Network,
    Optional,
    Seconds,
    Text,
    Version,
    host_port,
    ip_address,
)
from aura_common.config.reader import (
    CONFIG_VERSION,
    ConfigFile,
    Nested,
    Place,
    key,
    read_section,
)
from aura_common.config.values import MTU_MAX, MTU_MIN, is_host, is_interface_name
from aura_common.roles import METRICS_SERVICES, Transport

DEFAULT_SERVER_CONFIG = "/etc/aura/server.yaml"
STRATEGIES = ("static", "dynamic")
FALLBACK_TYPES = ("reject", "proxy")
DEFAULT_IPV4 = IPv4Network("10.77.0.0/24")
DEFAULT_IPV6 = IPv6Network("fd77:7777::/64")
_GROUP_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def _group_name(text: str) -> bool:
    return bool(_GROUP_NAME.fullmatch(text))


@dataclass(frozen=True)
class TunConfig:
    name: str = key("aura0", Text(is_interface_name,
                                  "an interface name of 1-15 characters [A-Za-z0-9_.-]"))
    mtu: int = key(1420, Integer(MTU_MIN, MTU_MAX))


@dataclass(frozen=True)
class NetworkConfig:
    ipv4: IPv4Network = key(DEFAULT_IPV4, Network(
        IPv4Network, "an IPv4 network such as 10.77.0.0/24", 30),
        "the server holds the first host address")
    ipv6: IPv6Network | None = key(DEFAULT_IPV6, Optional(Network(
        IPv6Network, "an IPv6 network such as fd77:7777::/64, or null", 120)),
        "null disables IPv6 in the tunnel")
    strategy: str = key("static", Choice(STRATEGIES), " | ".join(STRATEGIES))
    dns: tuple[str, ...] = key((), Items(ip_address("an IP address")), "pushed to Aura clients")
    uplink: str | None = key(None, Optional(Text(is_interface_name, "an interface name or null")),
                             "NAT out of this interface; null = any but the TUN")
    lease_idle_timeout: float = key(300.0, Seconds(), "dynamic: seconds without an authenticated "
                                    "packet from a peer before its address is released")

    def checked(self, at: Place, raw: Mapping[str, Any]) -> NetworkConfig:
        # A peer's IPv6 address has the same host index as its IPv4 one.
        if self.ipv6 is not None and 128 - self.ipv6.prefixlen < 32 - self.ipv4.prefixlen:
            raise at.at("ipv6").error(f"a network at least as large as ipv4 ({self.ipv4})",
                                      raw["ipv6"])
        return self


@dataclass(frozen=True)
class FallbackHandler:
    """One step of the TCP fallback chain: `reject` closes, `proxy` splices to `upstream`."""

    type: str = key(check=Choice(FALLBACK_TYPES))
    upstream: tuple[str, int] | None = key(None, Optional(host_port("HOST:PORT")))

    def checked(self, at: Place, raw: Mapping[str, Any]) -> FallbackHandler:
        if self.type == "proxy" and self.upstream is None:
            raise at.at("upstream").error("a value (the key is required)")
        if self.type == "reject" and "upstream" in raw:
            raise at.at("upstream").error("no upstream for a reject handler", raw["upstream"])
        return self


@dataclass(frozen=True)
class ListenerConfig:
    """What every transport has: whether it runs, and the address and port it listens on."""

    enabled: bool = key(True, Boolean())
    listen: str = key("::", ip_address("an IP address such as '::' or 0.0.0.0"))
    port: int = key(8443, PORT)


@dataclass(frozen=True)
class UdpConfig(ListenerConfig):
    pass


@dataclass(frozen=True)
class TcpConfig(ListenerConfig):
    fallback: tuple[FallbackHandler, ...] = key(
        (FallbackHandler("reject"),), Items(Nested(FallbackHandler)),
        "non-Aura flows: reject | proxy (upstream)")
    handshake_timeout: float = key(10.0, Seconds())
    idle_timeout: float = key(60.0, Seconds())
    max_pending: int = key(256, Integer(1, 1_000_000), "connections without a WireGuard session")
    max_pending_per_source: int = key(16, Integer(1, 1_000_000), "per IP address")


@dataclass(frozen=True)
class QuicConfig(ListenerConfig):
    port: int = key(8444, PORT)
    handshake_timeout: float = key(10.0, Seconds())
    idle_timeout: float = key(30.0, Seconds())
    max_connections: int = key(1024, Integer(1, 1_000_000))
    max_pending_per_source: int = key(16, Integer(1, 1_000_000), "per IP address")


@dataclass(frozen=True)
class TransportsConfig:
    udp: UdpConfig = key(UdpConfig(), Nested(UdpConfig))
    tcp: TcpConfig = key(TcpConfig(), Nested(TcpConfig))
    quic: QuicConfig = key(QuicConfig(), Nested(QuicConfig))

    def listener(self, transport: Transport) -> ListenerConfig:
        """The section of `transport` (`transports.udp`, ...)."""
        sections: dict[Transport, ListenerConfig] = {
            Transport.UDP: self.udp, Transport.TCP: self.tcp, Transport.QUIC: self.quic}
        return sections[transport]

    def with_port(self, transport: Transport, port: int) -> TransportsConfig:
        """The same sections, `transport`'s listening on `port`."""
        changed: dict[str, Any] = {transport.value: replace(self.listener(transport), port=port)}
        return replace(self, **changed)


_METRICS_ADDRESS = Optional(host_port("IP:PORT such as 127.0.0.1:9741 or [::1]:9741, or null",
                                      ip_only=True))


@dataclass(frozen=True)
class MetricsConfig:
    """Where each service serves Prometheus metrics (HTTP GET /metrics); None: nowhere."""

    enabled: bool = key(True, Boolean())
    router: tuple[str, int] | None = key(("127.0.0.1", 9740), _METRICS_ADDRESS)
    udp: tuple[str, int] | None = key(("127.0.0.1", 9741), _METRICS_ADDRESS)
    tcp: tuple[str, int] | None = key(("127.0.0.1", 9742), _METRICS_ADDRESS)
    quic: tuple[str, int] | None = key(("127.0.0.1", 9743), _METRICS_ADDRESS)

    def address(self, service: str) -> tuple[str, int] | None:
        address: tuple[str, int] | None = getattr(self, service) if self.enabled else None
        return address

    def checked(self, at: Place, raw: Mapping[str, Any]) -> MetricsConfig:
        seen: dict[tuple[str, int], str] = {}
        for name in METRICS_SERVICES:
            address = getattr(self, name)
            if address in seen:
                raise at.at(name).error(
                    f"an address other than that of {at.at(seen[address]).key}", raw.get(name))
            if address is not None:
                seen[address] = name
        return self


_USER = Text(_group_name, "a user name")  # user and group names follow the same rule


@dataclass(frozen=True)
class ServiceUsers:
    """The system user each service runs as, and by whose uid its connections are known."""

    router: str = key("aura-router", _USER)
    udp: str = key("aura-udp", _USER)
    tcp: str = key("aura-tcp", _USER)
    quic: str = key("aura-quic", _USER)
    signer: str = key("aura-signer", _USER)


class _Conninfo(Text):
    """A libpq connection string without a password (psycopg only for clusters)."""

    def read(self, value: object, at: Place) -> str:
        from aura_common.cluster.database import conninfo_problem

        text = super().read(value, at)
        problem = conninfo_problem(text)
        if problem is not None:
            raise at.error(problem)
        return text


@dataclass(frozen=True)
class RegistryConfig:
    """A cluster's shared registry in PostgreSQL (`registry:`); absent, the file registry."""

    database: str = key(check=_Conninfo())
    # This server's name among the cluster's members; "" until read: then the public host.
    member: str = key("", Text(is_host, "a host name (letters, digits, - and .)"),
                      "this server's name among the members")
    password_file: str | None = key(None, Optional(AbsolutePath()),
                                    "null: the credential registry-password")


@dataclass(frozen=True, kw_only=True)
class ServerConfig(ConfigFile):
    UNNAMED = "<server config>"

    version: int = key(CONFIG_VERSION, Version(), stated=True)
    public_host: str = key(check=Text(is_host, "a host name or IP address"),
                           doc="host name or IP clients use")
    state_dir: str = key("/var/lib/aura", AbsolutePath(),
                         "peers.json, leases.json, transports/, signer/")
    runtime_dir: str = key("/run/aura", AbsolutePath(), "router.sock, signer.sock")
    key_dir: str = key("/etc/aura", AbsolutePath(), "server.key, ca.key, ca.pub, tls.crt, tls.key")
    admin_group: str = key("aura-admin", Text(_group_name, "a group name"),
                           "may use the admin and signer sockets")
    users: ServiceUsers = key(ServiceUsers(), Nested(ServiceUsers), "the account of each "
                              "service; its uid decides its role on the sockets")
    tun: TunConfig = key(TunConfig(), Nested(TunConfig))
    network: NetworkConfig = key(NetworkConfig(), Nested(NetworkConfig))
    transports: TransportsConfig = key(TransportsConfig(), Nested(TransportsConfig))
    metrics: MetricsConfig = key(MetricsConfig(), Nested(MetricsConfig), "Prometheus, HTTP GET "
                                 "/metrics; a service set to null serves none")
    registry: RegistryConfig | None = key(None, Optional(Nested(RegistryConfig)), "the "
                                          "cluster's shared registry (PostgreSQL); the password "
                                          "is never here")
    # Where the config was read from (for messages); not part of the configuration itself.
    path: str | None = field(default=None, compare=False)

    def checked(self, at: Place, raw: Mapping[str, Any]) -> ServerConfig:
        if self.registry is not None and not self.registry.member:
            return replace(self, registry=replace(self.registry, member=self.public_host))
        return self

    # -- derived values ------------------------------------------------------------------------

    @property
    def server_address_v4(self) -> IPv4Address:
        return self.network.ipv4.network_address + 1

    @property
    def server_address_v6(self) -> IPv6Address | None:
        return None if self.network.ipv6 is None else self.network.ipv6.network_address + 1

    @property
    def admin_gid(self) -> int | None:
        """The admin group's id; None where the group does not exist (a development box)."""
        try:
            return grp.getgrnam(self.admin_group).gr_gid
        except KeyError:
            return None

    @property
    def router_socket(self) -> str:
        return os.path.join(self.runtime_dir, "router.sock")

    @property
    def signer_socket(self) -> str:
        return os.path.join(self.runtime_dir, "signer.sock")

    # The state directory is root's; each role writes only in its own folder in it, so no
    # account can replace another's folder or a file root reads or writes there.
    @property
    def router_dir(self) -> str:
        """The router's own folder: the registry (written by root's CLI), leases, usage."""
        return os.path.join(self.state_dir, "router")

    @property
    def peers_file(self) -> str:
        return os.path.join(self.router_dir, "peers.json")

    @property
    def registry_copy_file(self) -> str:
        """A cluster member's last copy of the database registry (served while it is away)."""
        return os.path.join(self.router_dir, "registry-copy.json")

    @property
    def leases_file(self) -> str:
        return os.path.join(self.router_dir, "leases.json")

    @property
    def usage_file(self) -> str:
        """Bytes each peer moved through the tunnel (client limits); the router's alone."""
        return os.path.join(self.router_dir, "usage.json")

    @property
    def transports_dir(self) -> str:
        """Root's; in it each transport's own folder (`runtime.runtime_file`)."""
        return os.path.join(self.state_dir, "transports")

    @property
    def signer_dir(self) -> str:
        """The signer's own folder: nobody else may write its serial."""
        return os.path.join(self.state_dir, "signer")

    @property
    def manifest_file(self) -> str:
        """The newest signed bridge manifest (the router pushes it to clients)."""
        return os.path.join(self.signer_dir, "manifest.json")

    @property
    def manifest_serial_file(self) -> str:
        """The last serial the signer used; serials only ever increase."""
        return os.path.join(self.signer_dir, "manifest.serial")

    def _secret(self, name: str) -> str:
        """A private key: the copy handed to this service alone if there is one (systemd's
        LoadCredential=, or `aura server run` for a service it runs as its own user), else the
        root-only file in key_dir."""
        handed = os.environ.get("CREDENTIALS_DIRECTORY")
        if handed and os.path.isfile(os.path.join(handed, name)):
            return os.path.join(handed, name)
        return os.path.join(self.key_dir, name)

    @property
    def server_key_file(self) -> str:
        return self._secret("server.key")

    @property
    def server_public_key_file(self) -> str:
        return os.path.join(self.key_dir, "server.pub")

    @property
    def ca_key_file(self) -> str:
        return self._secret("ca.key")

    @property
    def cluster_key_file(self) -> str:
        """The key sealing preshared keys in a cluster's database (`aura cluster export`)."""
        return self._secret("cluster.key")

    @property
    def registry_password_file(self) -> str | None:
        """The registry database's password: the credential `registry-password` handed to this
        service if there is one, else `registry.password_file`, else none (peer auth)."""
        if self.registry is None:
            return None
        handed = os.environ.get("CREDENTIALS_DIRECTORY")
        if handed and os.path.isfile(os.path.join(handed, "registry-password")):
            return os.path.join(handed, "registry-password")
        return self.registry.password_file

    @property
    def ca_public_key_file(self) -> str:
        return os.path.join(self.key_dir, "ca.pub")

    @property
    def tls_cert_file(self) -> str:
        return os.path.join(self.key_dir, "tls.crt")

    @property
    def tls_key_file(self) -> str:
        return self._secret("tls.key")

    # -- reading and writing -------------------------------------------------------------------

    @classmethod
    def default(
        cls,
        public_host: str,
        *,
        state_dir: str | None = None,
        runtime_dir: str | None = None,
        key_dir: str | None = None,
        network: str | None = None,
        network_v6: str | None = str(DEFAULT_IPV6),
        tun: str | None = None,
        uplink: str | None = None,
    ) -> ServerConfig:
        """The config `aura server init` writes; the arguments are validated like the file,
        and those not given take the keys' defaults."""
        given = {"state_dir": state_dir, "runtime_dir": runtime_dir, "key_dir": key_dir}
        raw: dict[str, Any] = {
            "version": CONFIG_VERSION,
            "public_host": public_host,
            **{name: value for name, value in given.items() if value is not None},
            "tun": {} if tun is None else {"name": tun},
            "network": {"ipv6": network_v6, "uplink": uplink,
                        **({} if network is None else {"ipv4": network})},
        }
        return read_section(cls, raw, Place("<command line>"))

    def header(self) -> str:
        return "# Aura server configuration."
