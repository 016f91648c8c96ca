"""IPv4 ICMP echo packets as they travel inside a tunnel, built and answered without a kernel:
for load generators and drivers that speak WireGuard from userspace."""

from __future__ import annotations

import socket
import struct

ECHO, ECHO_REPLY = 8, 0


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4_icmp(source: bytes, destination: bytes, icmp_type: int, rest: bytes) -> bytes:
    icmp = struct.pack("!BBH", icmp_type, 0, 0) + rest
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0x4000, 64, 1, 0,
                         source, destination)  # don't fragment, TTL 64
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + icmp


def echo_request(source: str, destination: str, ident: int, sequence: int,
                 payload: bytes = bytes(56)) -> bytes:
    """An echo request (by default 64 bytes of ICMP, as ping sends)."""
    return _ipv4_icmp(socket.inet_aton(source), socket.inet_aton(destination), ECHO,
                      struct.pack("!HH", ident, sequence) + payload)


def echo_reply(request: bytes) -> bytes | None:
    """The reply to an echo request with a 20-byte header, or None for anything else."""
    if len(request) < 28 or request[0] != 0x45 or request[9] != 1 or request[20] != ECHO:
        return None
    return _ipv4_icmp(request[16:20], request[12:16], ECHO_REPLY, request[24:])
