"""Moved to `aura_lab.topology`; this name stays only until the branches that import it have
rebased (remove it then)."""

from aura_lab.topology import (
    AURA,
    INTERNET_HOST,
    PUBLIC_HOST,
    SERVER_TUNNEL_V4,
    SERVER_TUNNEL_V6,
    AuraServer,
    build,
    client_is_up,
    client_status,
    iperf3,
    stock_wireguard_up,
)

__all__ = ["AURA", "INTERNET_HOST", "PUBLIC_HOST", "SERVER_TUNNEL_V4", "SERVER_TUNNEL_V6",
           "AuraServer", "build", "client_is_up", "client_status", "iperf3", "stock_wireguard_up"]
