"""Loading and validating `server.yaml` and the Aura client config.

Every problem raises `ConfigError(path, "dotted.key", "what was expected", found)`, so a bad
file stops a service at start with one line the operator can act on.
"""

from __future__ import annotations

import base64
import binascii
import grp
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import yaml

from aura_common.errors import ConfigError
from aura_common.roles import CLIENT_ORDER, METRICS_SERVICES, SERVICE_ROLES, Transport, is_transport

CONFIG_VERSION = 1
DEFAULT_SERVER_CONFIG = "/etc/aura/server.yaml"
STRATEGIES = ("static", "dynamic")
FALLBACK_TYPES = ("reject", "proxy")
MTU_MIN, MTU_MAX = 1280, 9000
DEFAULT_IPV4 = IPv4Network("10.77.0.0/24")
DEFAULT_IPV6 = IPv6Network("fd77:7777::/64")

_INTERFACE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_GROUP_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_PEER_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
_REQUIRED: Any = object()


# ---------------------------------------------------------------------------------------------
# Value checks shared by both configs (and by the CLI, which validates flags the same way).


def is_host(text: str) -> bool:
    """A DNS host name or an IP address literal."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    name = text[:-1] if text.endswith(".") else text
    return 0 < len(name) <= 253 and all(_HOST_LABEL.fullmatch(p) for p in name.split("."))


def is_interface_name(text: str) -> bool:
    """A Linux network interface name (at most 15 bytes, no '/', ':' or blanks)."""
    return bool(_INTERFACE_NAME.fullmatch(text)) and text not in (".", "..")


def is_peer_name(text: str) -> bool:
    return bool(_PEER_NAME.fullmatch(text))


def parse_host_port(text: str) -> tuple[str, int]:
    """Split `HOST:PORT` or `[V6]:PORT`; ValueError when it is not that."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(text)
        ipaddress.IPv6Address(host)
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host or not is_host(host):
            raise ValueError(text)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(text)
    return host, int(port)


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def decode_key(text: str) -> bytes:
    """A base64 32-byte key; ValueError otherwise."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(text) from exc
    if len(raw) != 32:
        raise ValueError(text)
    return raw


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


# ---------------------------------------------------------------------------------------------
# Reading a mapping key by key.


class _Section:
    """One mapping of a config file; every error names the file and the dotted key."""

    def __init__(self, path: str, prefix: str, raw: object, known: tuple[str, ...]) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(path, prefix, "a mapping", raw)
        unknown = sorted(str(k) for k in raw if k not in known)
        if unknown:
            raise ConfigError(
                path, self._join(prefix, unknown[0]), f"one of the known keys: {', '.join(known)}"
            )
        self.path, self.prefix, self.raw = path, prefix, raw

    @staticmethod
    def _join(prefix: str, name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    def key(self, name: str) -> str:
        return self._join(self.prefix, name)

    def error(self, name: str, expected: str, found: object = None) -> ConfigError:
        return ConfigError(self.path, self.key(name), expected, found)

    def get(self, name: str, default: Any = _REQUIRED) -> Any:
        if name in self.raw:
            return self.raw[name]
        if default is _REQUIRED:
            raise ConfigError(self.path, self.key(name), "a value (the key is required)")
        return default

    def section(self, name: str, known: tuple[str, ...]) -> _Section:
        return _Section(self.path, self.key(name), self.get(name, {}), known)

    def string(self, name: str, default: Any = _REQUIRED) -> str:
        value = self.get(name, default)
        if not isinstance(value, str) or not value:
            raise self.error(name, "a non-empty string", value)
        return value

    def optional_string(self, name: str) -> str | None:
        return None if self.get(name, None) is None else self.string(name)

    def integer(self, name: str, low: int, high: int, default: Any = _REQUIRED) -> int:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(name, f"an integer from {low} to {high}", value)
        return value

    def seconds(self, name: str, default: float) -> float:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e6:
            raise self.error(name, "a positive number of seconds", value)
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise self.error(name, "true or false", value)
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: Any = _REQUIRED) -> str:
        value = self.get(name, default)
        if value not in choices:
            raise self.error(name, " | ".join(choices), value)
        return str(value)

    def listing(self, name: str, default: Any = _REQUIRED) -> list[Any]:
        value = self.get(name, default)
        if not isinstance(value, list):
            raise self.error(name, "a list", value)
        return value

    def absolute_path(self, name: str, default: Any = _REQUIRED) -> str:
        value = self.string(name, default)
        if not os.path.isabs(value):
            raise self.error(name, "an absolute path", value)
        return os.path.normpath(value)

    def host(self, name: str, default: Any = _REQUIRED) -> str:
        value = self.string(name, default)
        if not is_host(value):
            raise self.error(name, "a host name or IP address", value)
        return value

    def key_bytes(self, name: str) -> bytes:
        value = self.get(name)
        try:
            return decode_key(value) if isinstance(value, str) else decode_key("")
        except ValueError:
            raise self.error(name, "a base64 key of 32 bytes", value) from None

    def ip_addresses(self, name: str) -> tuple[str, ...]:
        result = []
        for index, item in enumerate(self.listing(name, [])):
            try:
                result.append(str(ipaddress.ip_address(_text(item))))
            except ValueError:
                raise self.error(f"{name}[{index}]", "an IP address", item) from None
        return tuple(result)


def _text(value: object) -> str:
    """`value` if it is a string: ipaddress would read an integer as an address."""
    if not isinstance(value, str):
        raise ValueError(value)
    return value


# libyaml's parser where PyYAML was built with it: a few times faster, same documents.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: str) -> object:
    try:
        with open(path, "rb") as f:
            return yaml.load(f, Loader=_YAML_LOADER)
    except FileNotFoundError:
        raise ConfigError(path, "", "an existing config file (not found)") from None
    except PermissionError:
        raise ConfigError(path, "", "a file this user may read (permission denied)") from None
    except IsADirectoryError:
        raise ConfigError(path, "", "a file, not a directory") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(path, "", f"valid YAML{where}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "UTF-8 text") from None
    except RecursionError:
        raise ConfigError(path, "", "valid YAML (nested too deeply)") from None


def _check_version(top: _Section) -> int:
    version = top.get("version")
    if version != CONFIG_VERSION or isinstance(version, bool):
        raise top.error("version", str(CONFIG_VERSION), version)
    return CONFIG_VERSION


def _yaml_value(value: object) -> str:
    """One value in YAML flow style, for templates with comments."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...")


# ---------------------------------------------------------------------------------------------
# Server config.


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
class UdpConfig:
    enabled: bool = True
    listen: str = "::"
    port: int = 8443


@dataclass(frozen=True)
class TcpConfig:
    enabled: bool = True
    listen: str = "::"
    port: int = 8443
    fallback: tuple[FallbackHandler, ...] = (FallbackHandler("reject"),)
    handshake_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_pending: int = 256
    max_pending_per_source: int = 16


@dataclass(frozen=True)
class QuicConfig:
    enabled: bool = True
    listen: str = "::"
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

    @property
    def peers_file(self) -> str:
        return os.path.join(self.state_dir, "peers.json")

    @property
    def registry_copy_file(self) -> str:
        """A cluster member's last copy of the database registry (served while it is away)."""
        return os.path.join(self.state_dir, "registry-copy.json")

    @property
    def leases_file(self) -> str:
        return os.path.join(self.state_dir, "leases.json")

    @property
    def usage_file(self) -> str:
        """Bytes each peer moved through the tunnel (client limits); the router's alone."""
        return os.path.join(self.state_dir, "usage.json")

    @property
    def transports_dir(self) -> str:
        """Where the transports (and only services) write: each has its own account."""
        return os.path.join(self.state_dir, "transports")

    @property
    def runtime_file(self) -> str:
        return os.path.join(self.transports_dir, "runtime.json")

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
        return _parse_server(_read_yaml(path), path)

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
        v = _yaml_value
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
        r, v = self.registry, _yaml_value
        if r is None:
            return []
        return [
            "registry:  # the cluster's shared registry (PostgreSQL); the password is never here",
            f"  database: {v(r.database)}",
            f"  member: {v(r.member)}  # this server's name among the members",
            f"  password_file: {v(r.password_file)}  # null: the credential registry-password",
        ]


def _parse_server(raw: object, path: str) -> ServerConfig:
    top = _Section(
        path,
        "",
        raw,
        (
            "version", "public_host", "state_dir", "runtime_dir", "key_dir", "admin_group",
            "users", "tun", "network", "transports", "metrics", "registry",
        ),
    )  # fmt: skip
    version = _check_version(top)
    admin_group = top.string("admin_group", "aura-admin")
    if not _GROUP_NAME.fullmatch(admin_group):
        raise top.error("admin_group", "a group name", admin_group)
    users = _parse_users(top.section("users", SERVICE_ROLES))
    public_host = top.host("public_host")
    return ServerConfig(
        version=version,
        public_host=public_host,
        state_dir=top.absolute_path("state_dir", "/var/lib/aura"),
        runtime_dir=top.absolute_path("runtime_dir", "/run/aura"),
        key_dir=top.absolute_path("key_dir", "/etc/aura"),
        admin_group=admin_group,
        users=users,
        tun=_parse_tun(top.section("tun", ("name", "mtu"))),
        network=_parse_network(
            top.section(
                "network", ("ipv4", "ipv6", "strategy", "dns", "uplink", "lease_idle_timeout")
            )
        ),
        transports=_parse_transports(top.section("transports", tuple(Transport))),
        metrics=_parse_metrics(top.section("metrics", ("enabled", *METRICS_SERVICES))),
        registry=None if top.get("registry", None) is None else _parse_registry(
            top.section("registry", ("database", "member", "password_file")), public_host
        ),
        path=path,
    )


def _parse_registry(s: _Section, public_host: str) -> RegistryConfig:
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


def _parse_users(s: _Section) -> ServiceUsers:
    names = {}
    for role in SERVICE_ROLES:
        name = s.string(role, getattr(ServiceUsers, role))
        if not _GROUP_NAME.fullmatch(name):  # user and group names follow the same rule
            raise s.error(role, "a user name", name)
        names[role] = name
    return ServiceUsers(**names)


def _parse_tun(s: _Section) -> TunConfig:
    name = s.string("name", "aura0")
    if not is_interface_name(name):
        raise s.error("name", "an interface name of 1-15 characters [A-Za-z0-9_.-]", name)
    return TunConfig(name=name, mtu=s.integer("mtu", MTU_MIN, MTU_MAX, 1420))


def _parse_network(s: _Section) -> NetworkConfig:
    ipv4_text = s.get("ipv4", "10.77.0.0/24")
    try:
        ipv4 = IPv4Network(_text(ipv4_text))
    except ValueError:
        raise s.error("ipv4", "an IPv4 network such as 10.77.0.0/24", ipv4_text) from None
    if ipv4.prefixlen > 30:
        raise s.error("ipv4", "a network of /30 or larger", ipv4_text)
    ipv6: IPv6Network | None = None
    ipv6_text = s.get("ipv6", "fd77:7777::/64")
    if ipv6_text is not None:
        try:
            ipv6 = IPv6Network(_text(ipv6_text))
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
        strategy=s.choice("strategy", STRATEGIES, "static"),
        dns=s.ip_addresses("dns"),
        uplink=uplink,
        lease_idle_timeout=s.seconds("lease_idle_timeout", 300.0),
    )


def _listen_address(s: _Section) -> str:
    value = s.string("listen", "::")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise s.error("listen", "an IP address such as '::' or 0.0.0.0", value) from None


def _parse_transports(s: _Section) -> TransportsConfig:
    udp = s.section("udp", ("enabled", "listen", "port"))
    tcp = s.section(
        "tcp",
        ("enabled", "listen", "port", "fallback", "handshake_timeout", "idle_timeout",
         "max_pending", "max_pending_per_source"),
    )  # fmt: skip
    quic = s.section("quic", ("enabled", "listen", "port", "idle_timeout", "handshake_timeout",
                              "max_connections", "max_pending_per_source"))
    return TransportsConfig(
        udp=UdpConfig(
            enabled=udp.boolean("enabled", True),
            listen=_listen_address(udp),
            port=udp.integer("port", 1, 65535, 8443),
        ),
        tcp=TcpConfig(
            enabled=tcp.boolean("enabled", True),
            listen=_listen_address(tcp),
            port=tcp.integer("port", 1, 65535, 8443),
            fallback=_parse_fallback(tcp),
            handshake_timeout=tcp.seconds("handshake_timeout", 10.0),
            idle_timeout=tcp.seconds("idle_timeout", 60.0),
            max_pending=tcp.integer("max_pending", 1, 1_000_000, 256),
            max_pending_per_source=tcp.integer("max_pending_per_source", 1, 1_000_000, 16),
        ),
        quic=QuicConfig(
            enabled=quic.boolean("enabled", True),
            listen=_listen_address(quic),
            port=quic.integer("port", 1, 65535, 8444),
            idle_timeout=quic.seconds("idle_timeout", 30.0),
            handshake_timeout=quic.seconds("handshake_timeout", 10.0),
            max_connections=quic.integer("max_connections", 1, 1_000_000, 1024),
            max_pending_per_source=quic.integer("max_pending_per_source", 1, 1_000_000, 16),
        ),
    )


def _parse_metrics(s: _Section) -> MetricsConfig:
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


def _parse_fallback(tcp: _Section) -> tuple[FallbackHandler, ...]:
    handlers = []
    for index, item in enumerate(tcp.listing("fallback", [{"type": "reject"}])):
        s = _Section(tcp.path, tcp.key(f"fallback[{index}]"), item, ("type", "upstream"))
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


# ---------------------------------------------------------------------------------------------
# Client config (written by `aura provision-client --format aura`).

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
        return _parse_client(_read_yaml(path), path)

    @classmethod
    def from_mapping(cls, raw: object, path: str = "<client config>") -> ClientConfig:
        return _parse_client(raw, path)

    def dump(self) -> str:
        """YAML with short comments; `load` of the text gives an equal config."""
        v = _yaml_value
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
    top = _Section(
        path,
        "",
        raw,
        (
            "version", "name", "interface", "server", "transports", "tunnel", "manifest",
            "runtime_dir", "state_file", "keepalive",
        ),
    )  # fmt: skip
    version = _check_version(top)
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
        runtime_dir=top.absolute_path("runtime_dir", "/run/aura-client"),
        state_file=state_file,
        keepalive=top.integer("keepalive", 0, 65535, 25),
        path=path,
    )


def _parse_client_interface(s: _Section) -> ClientInterface:
    addresses: list[Interface] = []
    # Empty with a dynamic pool: the server tells the client its address in-tunnel.
    items = s.listing("addresses")
    for index, item in enumerate(items):
        try:
            addresses.append(ipaddress.ip_interface(_text(item)))
        except ValueError:
            raise s.error(f"addresses[{index}]", "an address such as 10.77.0.2/32", item) from None
    return ClientInterface(
        private_key=s.key_bytes("private_key"),
        addresses=tuple(addresses),
        mtu=s.integer("mtu", MTU_MIN, MTU_MAX, 1420),
        dns=s.ip_addresses("dns"),
    )


def _parse_client_server(s: _Section) -> ClientServer:
    has_psk = s.get("preshared_key", None) is not None
    return ClientServer(
        public_key=s.key_bytes("public_key"),
        preshared_key=s.key_bytes("preshared_key") if has_psk else None,
        host=s.host("host"),
        ca_public_key=s.key_bytes("ca_public_key"),
    )


def _parse_client_transports(s: _Section) -> ClientTransports:
    order = s.listing("order", list(CLIENT_ORDER))
    if not order or not all(map(is_transport, order)) or len(set(order)) != len(order):
        raise s.error(
            "order", f"a non-empty list of distinct transports from {CLIENT_ORDER}", order
        )
    server_name = s.optional_string("server_name")
    if server_name is not None and not is_host(server_name):
        raise s.error("server_name", "a host name", server_name)
    return ClientTransports(
        order=tuple(order),
        udp=s.integer("udp", 1, 65535, 8443),
        quic=s.integer("quic", 1, 65535, 8444),
        tcp=s.integer("tcp", 1, 65535, 8443),
        server_name=server_name,
    )


def _parse_client_tunnel(s: _Section) -> ClientTunnel:
    split = s.section("split", ("vpn", "direct"))

    def networks(name: str, default: list[Any]) -> tuple[Network, ...]:
        result: list[Network] = []
        for index, item in enumerate(split.listing(name, default)):
            entry = _Section(split.path, split.key(f"{name}[{index}]"), item, ("cidr",))
            text = entry.get("cidr")
            try:
                result.append(ipaddress.ip_network(_text(text)))
            except ValueError:
                raise entry.error("cidr", "a network such as 10.0.0.0/8", text) from None
        return tuple(result)

    return ClientTunnel(
        vpn=networks("vpn", [{"cidr": "0.0.0.0/0"}, {"cidr": "::/0"}]),
        direct=networks("direct", []),
    )
