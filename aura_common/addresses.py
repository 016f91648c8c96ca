"""Addresses as every layer names them, and IPv4 seen through a dual-stack socket.

A dual-stack socket reports IPv4 sources as IPv4-mapped IPv6 (`::ffff:a.b.c.d`); every decision
about a source (cookie, rate limit, display, logs) reads it through `source_ip` so that an IPv4
client is always treated as IPv4.
"""

from __future__ import annotations

import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Endpoint = tuple[str, int]  # (host, port): where datagrams come from and go to

_V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def source_ip(host: str) -> bytes:
    """The packed address a datagram came from (4 or 16 bytes), IPv4 always as IPv4.

    It runs for every handshake message under load, so it avoids the slower `ipaddress` parser.
    """
    if ":" not in host:
        return socket.inet_pton(socket.AF_INET, host)
    packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])  # no zone index
    return packed[12:] if packed[:12] == _V4_MAPPED_PREFIX else packed


def unmapped(host: str) -> str:
    """`host` with an IPv4-mapped IPv6 address as plain IPv4; any other as it is."""
    packed = source_ip(host)
    return socket.inet_ntop(socket.AF_INET, packed) if len(packed) == 4 else host


def source_address(host: str) -> IPAddress:
    """`source_ip` as an address object, for display."""
    return ipaddress.ip_address(source_ip(host))
