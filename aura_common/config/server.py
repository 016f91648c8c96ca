"""The server config, `/etc/aura/server.yaml`: its schema, defaults, parser and writer."""

from __future__ import annotations

import grp
import ipaddress
import os
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from aura_common.config.reader import (
    CONFIG_VERSION,
    Section,
    check_version,
    keys_of,
    read_yaml,
    text_of,
    yaml_value,
)
from aura_common.config.values import (
    MTU_MAX,
    MTU_MIN,
    format_host_port,
    is_host,
    is_interface_name,
    parse_host_port,
)
from aura_common.roles import METRICS_SERVICES, SERVICE_ROLES, Transport

DEFAULT_SERVER_CONFIG = "/etc/aura/server.yaml"
STRATEGIES = ("static", "dynamic")
FALLBACK_TYPES = ("reject", "proxy")
DEFAULT_IPV4 = IPv4Network("10.77.0.0/24")
DEFAULT_IPV6 = IPv6Network("fd77:7777::/64")
_GROUP_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class TunConfig:
    name: str = "aura0"
    mtu: int = 1420


@dataclass(frozen=True)
class NetworkConfig:
    ipv4: IPv4Network = DEFAULT_IPV4
    ipv6: IPv6Network | None = DEFAULT_IPV6
    strategy: str = "static"
    dns: tuple[str, ...] = ()
    uplink: str | None = None
    lease_idle_timeout: float = 300.0


@dataclass(frozen=True)
class FallbackHandler:
    """One step of the TCP fallback chain: `reject` closes, `proxy` splices to `upstream`."""

    type: str
    upstream: tuple[str, int] | None = None


@dataclass(frozen=True)
class ListenerConfig:
    """What every transport has: whether it runs, and the address and port it listens on."""

    enabled: bool = True
    listen: str = "::"
    port: int = 8443


@dataclass(frozen=True)
class UdpConfig(ListenerConfig):
    pass


@dataclass(frozen=True)
class TcpConfig(ListenerConfig):
    fallback: tuple[FallbackHandler, ...] = (FallbackHandler("reject"),)
    handshake_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_pending: int = 256
    max_pending_per_source: int = 16


@dataclass(frozen=True)
class QuicConfig(ListenerConfig):
    port: int = 8444
    idle_timeout: float = 30.0
    handshake_timeout: float = 10.0
    max_connections: int = 1024
    max_pending_per_source: int = 16


@dataclass(frozen=True)
class TransportsConfig:
    udp: UdpConfig = UdpConfig()
    tcp: TcpConfig = TcpConfig()
    quic: QuicConfig = QuicConfig()


@dataclass(frozen=True)
class MetricsConfig:
    """Where each service serves Prometheus metrics (HTTP GET /metrics); None: nowhere."""

    enabled: bool = True
    router: tuple[str, int] | None = ("127.0.0.1", 9740)
    udp: tuple[str, int] | None = ("127.0.0.1", 9741)
    tcp: tuple[str, int] | None = ("127.0.0.1", 9742)
    quic: tuple[str, int] | None = ("127.0.0.1", 9743)

    def address(self, service: str) -> tuple[str, int] | None:
        address: tuple[str, int] | None = getattr(self, service) if self.enabled else None
        return address


@dataclass(frozen=True)
class ServiceUsers:
    """The system user each service runs as, and by whose uid its connections are known."""

    router: str = "aura-router"
    udp: str = "aura-udp"
    tcp: str = "aura-tcp"
    quic: str = "aura-quic"
    signer: str = "aura-signer"


@dataclass(frozen=True)
class RegistryConfig:
    """A cluster's shared registry in PostgreSQL (`registry:`); absent, the file registry."""

    database: str  # a libpq connection string without a password
    member: str  # this server's name among the cluster's members
    password_file: str | None = None  # else the credential `registry-password`, else none


@dataclass(frozen=True)
class ServerConfig:
    public_host: str
    state_dir: str = "/var/lib/aura"
    runtime_dir: str = "/run/aura"
    key_dir: str = "/etc/aura"
    admin_group: str = "aura-admin"
    users: ServiceUsers = ServiceUsers()
    tun: TunConfig = TunConfig()
    network: NetworkConfig = NetworkConfig()
    transports: TransportsConfig = TransportsConfig()
    metrics: MetricsConfig = MetricsConfig()
    registry: RegistryConfig | None = None
    version: int = CONFIG_VERSION
    # Where the config was read from (for messages); not part of the configuration itself.
    path: str | None = field(default=None, compare=False)

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
    def load(cls, path: str | os.PathLike[str]) -> ServerConfig:
        path = os.fspath(path)
        return _parse_server(read_yaml(path), path)

    @classmethod
    def from_mapping(cls, raw: object, path: str = "<server config>") -> ServerConfig:
        return _parse_server(raw, path)

    @classmethod
    def default(
        cls,
        public_host: str,
        *,
        state_dir: str = "/var/lib/aura",
        runtime_dir: str = "/run/aura",
        key_dir: str = "/etc/aura",
        network: str = "10.77.0.0/24",
        network_v6: str | None = "fd77:7777::/64",
        tun: str = "aura0",
        uplink: str | None = None,
    ) -> ServerConfig:
        """The config `aura server init` writes; the arguments are validated like the file."""
        raw = {
            "version": CONFIG_VERSION,
            "public_host": public_host,
            "state_dir": state_dir,
            "runtime_dir": runtime_dir,
            "key_dir": key_dir,
            "tun": {"name": tun},
            "network": {"ipv4": network, "ipv6": network_v6, "uplink": uplink},
        }
        return _parse_server(raw, "<command line>")

    def dump(self) -> str:
        """YAML with short comments; `load` of the text gives an equal config."""
        n, t = self.network, self.transports
        v = yaml_value
        ipv6 = None if n.ipv6 is None else str(n.ipv6)
        fallback = [
            {"type": h.type}
            if h.upstream is None
            else {"type": h.type, "upstream": format_host_port(*h.upstream)}
            for h in t.tcp.fallback
        ]
        return "\n".join(
            [
                "# Aura server configuration.",
                f"version: {self.version}",
                f"public_host: {v(self.public_host)}  # host name or IP clients use",
                f"state_dir: {v(self.state_dir)}  # peers.json, leases.json, transports/, signer/",
                f"runtime_dir: {v(self.runtime_dir)}  # router.sock, signer.sock",
                f"key_dir: {v(self.key_dir)}  # server.key, ca.key, ca.pub, tls.crt, tls.key",
                f"admin_group: {v(self.admin_group)}  # may use the admin and signer sockets",
                "users:  # the account of each service; its uid decides its role on the sockets",
                *(f"  {role}: {v(getattr(self.users, role))}" for role in SERVICE_ROLES),
                "tun:",
                f"  name: {v(self.tun.name)}",
                f"  mtu: {self.tun.mtu}",
                "network:",
                f"  ipv4: {v(str(n.ipv4))}  # the server holds the first host address",
                f"  ipv6: {v(ipv6)}  # null disables IPv6 in the tunnel",
                f"  strategy: {v(n.strategy)}  # static | dynamic",
                f"  dns: {v(list(n.dns))}  # pushed to Aura clients",
                f"  uplink: {v(n.uplink)}  # NAT out of this interface; null = any but the TUN",
                f"  lease_idle_timeout: {v(n.lease_idle_timeout)}  # dynamic: seconds without "
                "an authenticated packet from a peer before its address is released",
                "transports:",
                "  udp:",
                f"    enabled: {v(t.udp.enabled)}",
                f"    listen: {v(t.udp.listen)}",
                f"    port: {t.udp.port}",
                "  tcp:",
                f"    enabled: {v(t.tcp.enabled)}",
                f"    listen: {v(t.tcp.listen)}",
                f"    port: {t.tcp.port}",
                f"    fallback: {v(fallback)}  # non-Aura flows: reject | proxy (upstream)",
                f"    handshake_timeout: {v(t.tcp.handshake_timeout)}",
                f"    idle_timeout: {v(t.tcp.idle_timeout)}",
                f"    max_pending: {t.tcp.max_pending}  # connections without a WireGuard session",
                f"    max_pending_per_source: {t.tcp.max_pending_per_source}  # per IP address",
                "  quic:",
                f"    enabled: {v(t.quic.enabled)}",
                f"    listen: {v(t.quic.listen)}",
                f"    port: {t.quic.port}",
                f"    idle_timeout: {v(t.quic.idle_timeout)}",
                f"    handshake_timeout: {v(t.quic.handshake_timeout)}",
                f"    max_connections: {t.quic.max_connections}",
                f"    max_pending_per_source: {t.quic.max_pending_per_source}  # per IP address",
                "metrics:  # Prometheus, HTTP GET /metrics; a service set to null serves none",
                f"  enabled: {v(self.metrics.enabled)}",
                *(
                    f"  {name}: {v(None if a is None else format_host_port(*a))}"
                    for name, a in ((n, getattr(self.metrics, n)) for n in METRICS_SERVICES)
                ),
                *self._dump_registry(),
                "",
            ]
        )

    def _dump_registry(self) -> list[str]:
        r, v = self.registry, yaml_value
        if r is None:
            return []
        return [
            "registry:  # the cluster's shared registry (PostgreSQL); the password is never here",
            f"  database: {v(r.database)}",
            f"  member: {v(r.member)}  # this server's name among the members",
            f"  password_file: {v(r.password_file)}  # null: the credential registry-password",
        ]


def _parse_server(raw: object, path: str) -> ServerConfig:
    top = Section(
        path,
        "",
        raw,
        (
            "version", "public_host", "state_dir", "runtime_dir", "key_dir", "admin_group",
            "users", "tun", "network", "transports", "metrics", "registry",
        ),
    )  # fmt: skip
    version = check_version(top)
    admin_group = top.string("admin_group", ServerConfig.admin_group)
    if not _GROUP_NAME.fullmatch(admin_group):
        raise top.error("admin_group", "a group name", admin_group)
    users = _parse_users(top.section("users", keys_of(ServiceUsers)))
    public_host = top.host("public_host")
    return ServerConfig(
        version=version,
        public_host=public_host,
        state_dir=top.absolute_path("state_dir", ServerConfig.state_dir),
        runtime_dir=top.absolute_path("runtime_dir", ServerConfig.runtime_dir),
        key_dir=top.absolute_path("key_dir", ServerConfig.key_dir),
        admin_group=admin_group,
        users=users,
        tun=_parse_tun(top.section("tun", keys_of(TunConfig))),
        network=_parse_network(top.section("network", keys_of(NetworkConfig))),
        transports=_parse_transports(top.section("transports", tuple(Transport))),
        metrics=_parse_metrics(top.section("metrics", keys_of(MetricsConfig))),
        registry=None if top.get("registry", None) is None else _parse_registry(
            top.section("registry", keys_of(RegistryConfig)), public_host
        ),
        path=path,
    )


def _parse_registry(s: Section, public_host: str) -> RegistryConfig:
    from aura_common.cluster.database import conninfo_problem  # psycopg only for clusters

    database = s.string("database")
    problem = conninfo_problem(database)
    if problem is not None:
        raise s.error("database", problem)
    member = s.string("member", public_host)
    if not is_host(member):
        raise s.error("member", "a host name (letters, digits, - and .)", member)
    password_file = s.get("password_file", None)
    return RegistryConfig(
        database=database, member=member,
        password_file=None if password_file is None else s.absolute_path("password_file"),
    )


def _parse_users(s: Section) -> ServiceUsers:
    names = {}
    for role in SERVICE_ROLES:
        name = s.string(role, getattr(ServiceUsers, role))
        if not _GROUP_NAME.fullmatch(name):  # user and group names follow the same rule
            raise s.error(role, "a user name", name)
        names[role] = name
    return ServiceUsers(**names)


def _parse_tun(s: Section) -> TunConfig:
    name = s.string("name", TunConfig.name)
    if not is_interface_name(name):
        raise s.error("name", "an interface name of 1-15 characters [A-Za-z0-9_.-]", name)
    return TunConfig(name=name, mtu=s.integer("mtu", MTU_MIN, MTU_MAX, TunConfig.mtu))


def _parse_network(s: Section) -> NetworkConfig:
    ipv4_text = s.get("ipv4", str(NetworkConfig.ipv4))
    try:
        ipv4 = IPv4Network(text_of(ipv4_text))
    except ValueError:
        raise s.error("ipv4", "an IPv4 network such as 10.77.0.0/24", ipv4_text) from None
    if ipv4.prefixlen > 30:
        raise s.error("ipv4", "a network of /30 or larger", ipv4_text)
    ipv6: IPv6Network | None = None
    ipv6_text = s.get("ipv6", str(NetworkConfig.ipv6))
    if ipv6_text is not None:
        try:
            ipv6 = IPv6Network(text_of(ipv6_text))
        except ValueError:
            raise s.error(
                "ipv6", "an IPv6 network such as fd77:7777::/64, or null", ipv6_text
            ) from None
        if ipv6.prefixlen > 120:
            raise s.error("ipv6", "a network of /120 or larger", ipv6_text)
        # A peer's IPv6 address has the same host index as its IPv4 one.
        if 128 - ipv6.prefixlen < 32 - ipv4.prefixlen:
            raise s.error("ipv6", f"a network at least as large as ipv4 ({ipv4})", ipv6_text)
    uplink = s.optional_string("uplink")
    if uplink is not None and not is_interface_name(uplink):
        raise s.error("uplink", "an interface name or null", uplink)
    return NetworkConfig(
        ipv4=ipv4,
        ipv6=ipv6,
        strategy=s.choice("strategy", STRATEGIES, NetworkConfig.strategy),
        dns=s.ip_addresses("dns"),
        uplink=uplink,
        lease_idle_timeout=s.seconds("lease_idle_timeout", NetworkConfig.lease_idle_timeout),
    )


def _parse_listener(s: Section, defaults: ListenerConfig) -> dict[str, Any]:
    """The keys every transport has, as arguments for its config class."""
    enabled = s.boolean("enabled", defaults.enabled)
    listen = s.string("listen", defaults.listen)
    try:
        listen = str(ipaddress.ip_address(listen))
    except ValueError:
        raise s.error("listen", "an IP address such as '::' or 0.0.0.0", listen) from None
    return {"enabled": enabled, "listen": listen,
            "port": s.integer("port", 1, 65535, defaults.port)}


def _parse_transports(s: Section) -> TransportsConfig:
    udp = s.section("udp", keys_of(UdpConfig))
    tcp = s.section("tcp", keys_of(TcpConfig))
    quic = s.section("quic", keys_of(QuicConfig))
    t, q = TcpConfig, QuicConfig
    return TransportsConfig(
        udp=UdpConfig(**_parse_listener(udp, UdpConfig())),
        tcp=TcpConfig(
            **_parse_listener(tcp, TcpConfig()),
            fallback=_parse_fallback(tcp),
            handshake_timeout=tcp.seconds("handshake_timeout", t.handshake_timeout),
            idle_timeout=tcp.seconds("idle_timeout", t.idle_timeout),
            max_pending=tcp.integer("max_pending", 1, 1_000_000, t.max_pending),
            max_pending_per_source=tcp.integer("max_pending_per_source", 1, 1_000_000,
                                               t.max_pending_per_source),
        ),
        quic=QuicConfig(
            **_parse_listener(quic, QuicConfig()),
            idle_timeout=quic.seconds("idle_timeout", q.idle_timeout),
            handshake_timeout=quic.seconds("handshake_timeout", q.handshake_timeout),
            max_connections=quic.integer("max_connections", 1, 1_000_000, q.max_connections),
            max_pending_per_source=quic.integer("max_pending_per_source", 1, 1_000_000,
                                                q.max_pending_per_source),
        ),
    )


def _parse_metrics(s: Section) -> MetricsConfig:
    defaults = MetricsConfig()
    addresses: dict[str, tuple[str, int] | None] = {}
    for name in METRICS_SERVICES:
        default = getattr(defaults, name)
        text = s.get(name, format_host_port(*default))
        if text is None:
            addresses[name] = None
            continue
        try:
            host, port = parse_host_port(text) if isinstance(text, str) else parse_host_port("")
            host = str(ipaddress.ip_address(host))
        except ValueError:
            raise s.error(name, "IP:PORT such as 127.0.0.1:9741 or [::1]:9741, or null",
                          text) from None
        taken = [other for other, address in addresses.items() if address == (host, port)]
        if taken:
            raise s.error(name, f"an address other than that of {s.key(taken[0])}", text)
        addresses[name] = (host, port)
    return MetricsConfig(enabled=s.boolean("enabled", True), **addresses)


def _parse_fallback(tcp: Section) -> tuple[FallbackHandler, ...]:
    handlers = []
    for index, item in enumerate(tcp.listing("fallback", [{"type": "reject"}])):
        s = Section(tcp.path, tcp.key(f"fallback[{index}]"), item, ("type", "upstream"))
        kind = s.choice("type", FALLBACK_TYPES)
        if kind == "proxy":
            text = s.get("upstream")
            try:
                upstream = parse_host_port(text) if isinstance(text, str) else parse_host_port("")
            except ValueError:
                raise s.error("upstream", "HOST:PORT", text) from None
            handlers.append(FallbackHandler(kind, upstream))
        else:
            if "upstream" in s.raw:
                raise s.error("upstream", "no upstream for a reject handler", s.raw["upstream"])
            handlers.append(FallbackHandler(kind))
    return tuple(handlers)
