"""Loading and validating `server.yaml` and the Aura client config: `values` (checks
shared with the CLI and the manifest), `reader` (a schema's keys read from YAML and dumped
back, from their declarations), `checks` (the kinds of value a key declares), `server` and
`client` (the two schemas: each key one line with its default, check and comment). Import
from here.

Every problem raises `ConfigError(path, "dotted.key", "what was expected", found)`, so a bad
file stops a service at start with one line the operator can act on.
"""

from __future__ import annotations

from aura_common.config.client import (
    ClientConfig,
    ClientInterface,
    ClientServer,
    ClientTransports,
    ClientTunnel,
    Interface,
    Network,
)
from aura_common.config.reader import (
    CONFIG_VERSION,
)
from aura_common.config.server import (
    DEFAULT_IPV4,
    DEFAULT_IPV6,
    DEFAULT_SERVER_CONFIG,
    FALLBACK_TYPES,
    STRATEGIES,
    FallbackHandler,
    MetricsConfig,
    NetworkConfig,
    QuicConfig,
    RegistryConfig,
    ServerConfig,
    ServiceUsers,
    TcpConfig,
    TransportsConfig,
    TunConfig,
    UdpConfig,
)
from aura_common.config.values import (
    MTU_MAX,
    MTU_MIN,
    decode_key,
    encode_key,
    format_host_port,
    host_problem,
    is_host,
    is_interface_name,
    is_peer_name,
    is_port,
    parse_host_port,
    parse_port,
)

__all__ = [
    "CONFIG_VERSION",
    "DEFAULT_IPV4",
    "DEFAULT_IPV6",
    "DEFAULT_SERVER_CONFIG",
    "FALLBACK_TYPES",
    "MTU_MAX",
    "MTU_MIN",
    "STRATEGIES",
    "ClientConfig",
    "ClientInterface",
    "ClientServer",
    "ClientTransports",
    "ClientTunnel",
    "FallbackHandler",
    "Interface",
    "MetricsConfig",
    "Network",
    "NetworkConfig",
    "QuicConfig",
    "RegistryConfig",
    "ServerConfig",
    "ServiceUsers",
    "TcpConfig",
    "TransportsConfig",
    "TunConfig",
    "UdpConfig",
    "decode_key",
    "encode_key",
    "format_host_port",
    "host_problem",
    "is_host",
    "is_interface_name",
    "is_peer_name",
    "is_port",
    "parse_host_port",
    "parse_port",
]
