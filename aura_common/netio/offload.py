"""TCP segmentation and coalescing for a TUN device opened with virtio-net headers.

Pure functions, no I/O. A TUN read yields a 10-byte virtio-net header and a packet that may be
a TCP "super-packet" of up to 64 KiB; `segment()` cuts it into the IP packets the peer expects.
Packets going back into the TUN are merged by `coalesce()` into super-packets so that one write
carries many segments.

Checksums use the fact that the ones' complement sum of a byte string is congruent to its
big-endian integer value modulo 0xFFFF (2**16 == 1 mod 0xFFFF), which CPython computes at C speed.
Sums are kept in that representation: a value in [0, 0xFFFE] where 0 stands for the ones'
complement zero (0xFFFF); a packet's checksum is valid when the sum over it is 0.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

VNET_HDR_LEN = 10

# virtio_net_hdr.flags
NEEDS_CSUM = 1
DATA_VALID = 2

# virtio_net_hdr.gso_type
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_ECN = 0x80

_TCP_FIN, _TCP_PSH, _TCP_ACK, _TCP_CWR = 0x01, 0x08, 0x10, 0x80
_TCP_CHECKSUM_OFFSET = 16
_IPPROTO_TCP = 6
_MAX_IP_PACKET = 0xFFFF

_VNET = struct.Struct("<BBHHHH")
_SEQ = struct.Struct("!I")
_PLAIN_HEADER = bytes(VNET_HDR_LEN)


@dataclass(frozen=True, slots=True)
class VnetHeader:
    """struct virtio_net_hdr, little-endian as the TUN driver uses it on little-endian hosts."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        return _VNET.pack(
            self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start,
            self.csum_offset,
        )


def parse_vnet_header(data: bytes) -> VnetHeader | None:
    """The header at the start of `data`, or None if `data` is shorter than a header."""
    if len(data) < VNET_HDR_LEN:
        return None
    return VnetHeader(*_VNET.unpack_from(data))


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """Ones' complement sum of 16-bit big-endian words (odd lengths padded with a zero byte)."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    return value % 0xFFFF


def _checksum(total: int) -> int:
    """The checksum field value that makes a sum of `total` (all other words) valid, written as
    the kernel writes IP and TCP checksums (0, not 0xFFFF, for a ones' complement zero), so a
    packet coalesced and segmented again is the same to the byte."""
    return (0xFFFF - total % 0xFFFF) % 0xFFFF


def _checksum_never_zero(total: int) -> int:
    """As `_checksum`, but never 0: right for UDP too, where 0 means "no checksum"."""
    return 0xFFFF - total % 0xFFFF


# -- segmentation (TUN read path) -----------------------------------------------------------


def segment(header: bytes, packet: bytes) -> list[bytes]:
    """Plain IP packets with complete checksums for one TUN read (`header` + `packet`).

    Malformed input is dropped (empty list); so are GSO types this device never negotiates.
    """
    if header == _PLAIN_HEADER:  # no offload: most small packets, a lone ping's included
        return [packet]
    vnet = parse_vnet_header(header)
    if vnet is None:
        return []
    gso_type = vnet.gso_type & ~GSO_ECN
    if gso_type == GSO_NONE:
        if vnet.flags & NEEDS_CSUM:
            completed = complete_checksum(packet, vnet.csum_start, vnet.csum_offset)
            return [completed] if completed is not None else []
        return [packet]
    if gso_type == GSO_TCPV4:
        return _segment_tcp(packet, vnet.gso_size, ipv6=False)
    if gso_type == GSO_TCPV6:
        return _segment_tcp(packet, vnet.gso_size, ipv6=True)
    return []


def complete_checksum(packet: bytes, csum_start: int, csum_offset: int) -> bytes | None:
    """Finish a partial checksum: the field already holds the pseudo-header sum."""
    field = csum_start + csum_offset
    if csum_start >= len(packet) or field + 2 > len(packet) or csum_offset & 1:
        return None
    out = bytearray(packet)
    out[field:field + 2] = _checksum_never_zero(ones_sum(memoryview(out)[csum_start:])).to_bytes(
        2, "big"
    )
    return bytes(out)


def _ip_header_length(packet: bytes, ipv6: bool) -> int:
    """Length of the IP header if `packet` is TCP over IP of the given version, else 0."""
    if ipv6:
        if len(packet) < 60 or packet[0] >> 4 != 6 or packet[6] != _IPPROTO_TCP:
            return 0
        return 40
    if len(packet) < 40 or packet[0] >> 4 != 4 or packet[9] != _IPPROTO_TCP:
        return 0
    ihl = (packet[0] & 0x0F) * 4
    return ihl if ihl >= 20 and len(packet) >= ihl + 20 else 0


def _pseudo_header_sum(packet: bytes, ipv6: bool) -> int:
    """Sum of the pseudo-header's addresses and protocol (the length is added by the caller)."""
    addresses = packet[8:40] if ipv6 else packet[12:20]
    return ones_sum(addresses) + _IPPROTO_TCP


def _segment_tcp(packet: bytes, mss: int, ipv6: bool) -> list[bytes]:
    ip_len = _ip_header_length(packet, ipv6)
    if not ip_len or mss == 0:
        return []
    tcp_len = (packet[ip_len + 12] >> 4) * 4
    hdr_len = ip_len + tcp_len
    if tcp_len < 20 or hdr_len > len(packet):
        return []
    ip_header = bytearray(packet[:ip_len])
    tcp_header = bytearray(packet[ip_len:hdr_len])
    payload = memoryview(packet)[hdr_len:]
    (first_seq,) = struct.unpack_from("!I", tcp_header, 4)
    first_flags = tcp_header[13]
    (first_id,) = struct.unpack_from("!H", ip_header, 4)
    # Header sums with the per-segment fields zeroed, so each segment only adds its own values.
    struct.pack_into("!I", tcp_header, 4, 0)
    tcp_header[13] = 0
    struct.pack_into("!H", tcp_header, _TCP_CHECKSUM_OFFSET, 0)
    tcp_base = _pseudo_header_sum(packet, ipv6) + ones_sum(tcp_header)
    if not ipv6:
        struct.pack_into("!HH", ip_header, 2, 0, 0)
        struct.pack_into("!H", ip_header, 10, 0)
        ip_base = ones_sum(ip_header)
    count = max(1, -(-len(payload) // mss))
    segments = []
    for index in range(count):
        chunk = payload[index * mss:(index + 1) * mss]
        flags = first_flags
        if index:
            flags &= ~_TCP_CWR
        if index != count - 1:
            flags &= ~(_TCP_FIN | _TCP_PSH)
        seq = (first_seq + index * mss) & 0xFFFFFFFF
        segment_len = tcp_len + len(chunk)
        total = tcp_base + segment_len + (seq >> 16) + (seq & 0xFFFF) + flags + ones_sum(chunk)
        struct.pack_into("!I", tcp_header, 4, seq)
        tcp_header[13] = flags
        struct.pack_into("!H", tcp_header, _TCP_CHECKSUM_OFFSET, _checksum(total))
        if ipv6:
            struct.pack_into("!H", ip_header, 4, segment_len)
        else:
            length, ident = ip_len + segment_len, (first_id + index) & 0xFFFF
            struct.pack_into("!HH", ip_header, 2, length, ident)
            struct.pack_into("!H", ip_header, 10, _checksum(ip_base + length + ident))
        segments.append(b"".join((ip_header, tcp_header, chunk)))
    return segments


# -- coalescing (TUN write path) ------------------------------------------------------------


def coalesce(packets: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    """(virtio-net header, packet) pairs for TUN writes, merging TCP segments where possible.

    Consecutive segments of one TCP flow (contiguous sequence numbers, equal payload sizes with
    a possibly shorter last one, only ACK set and PSH only on the last, identical IP fields and
    TCP options) become one GSO super-packet whose checksum field holds the pseudo-header sum,
    as the TUN driver expects with NEEDS_CSUM. Segments of different flows may interleave; a
    packet of a flow that cannot merge ends that flow's run so the flow keeps its order.
    Everything else is written as it came with an all-zero header: the kernel then verifies
    its checksums itself.

    The segments' own checksums are not verified before merging (the kernel recomputes the
    merged one). Every packet Aura writes to a TUN came out of WireGuard's AEAD, which already
    proved it is byte for byte what the peer sealed: nothing between the peer's tunnel and
    ours can have damaged it, and a peer that sent a wrong checksum could as well have sent
    the same bytes with a right one. The kernel's own WireGuard marks decrypted packets as
    checksum-verified for the same reason.
    """
    if len(packets) == 1:  # nothing to merge with (a run of one is written as it came)
        return [(_PLAIN_HEADER, packets[0])]
    order: list[_Run | bytes] = []
    open_runs: dict[bytes, _Run] = {}
    for packet in packets:
        parsed = _parse_for_coalesce(packet)
        if parsed is None:
            order.append(packet)
            continue
        flow, segment_info = parsed
        if segment_info is None:
            open_runs.pop(flow, None)
            order.append(packet)
            continue
        run = open_runs.get(flow)
        if run is None or not run.extend(packet, segment_info):
            run = _Run(packet, segment_info)
            order.append(run)
            open_runs[flow] = run
        if run.closed:
            del open_runs[flow]
    return [item.build() if isinstance(item, _Run) else (_PLAIN_HEADER, item) for item in order]


# What coalesce() needs of a segment that may merge: (ipv6, ip_len, hdr_len, same, seq, push),
# where `same` holds the header bytes every member of a run must share.
_SegmentInfo = tuple[bool, int, int, bytes, int, bool]


def _parse_for_coalesce(packet: bytes) -> tuple[bytes, _SegmentInfo | None] | None:
    """None for non-TCP packets; else the flow key and, if the packet may merge, its details."""
    size = len(packet)
    if size < 40:
        return None
    version = packet[0] >> 4
    if version == 4:
        ip_len = (packet[0] & 0x0F) * 4
        fragment = (packet[6] & 0x3F) | packet[7]
        if packet[9] != _IPPROTO_TCP or ip_len < 20 or size < ip_len + 20 or fragment:
            return None
        flow = packet[12:ip_len + 4] if ip_len == 20 else packet[12:20] + packet[ip_len:ip_len + 4]
        ip_ok = ip_len == 20 and packet[2] << 8 | packet[3] == size
        same = packet[0:2] + packet[6:10]
    elif version == 6:
        if size < 60 or packet[6] != _IPPROTO_TCP:
            return None
        ip_len = 40
        flow = packet[8:44]
        ip_ok = (packet[4] << 8 | packet[5]) + 40 == size
        same = packet[0:4] + packet[7:8]
    else:
        return None
    tcp = ip_len
    tcp_len = (packet[tcp + 12] >> 4) * 4
    hdr_len = ip_len + tcp_len
    flags = packet[tcp + 13]
    if not ip_ok or tcp_len < 20 or hdr_len >= size or flags & ~_TCP_PSH != _TCP_ACK:
        return flow, None
    same += packet[tcp + 8:tcp + 13] + packet[tcp + 14:tcp + 16] + packet[tcp + 18:hdr_len]
    (seq,) = _SEQ.unpack_from(packet, tcp + 4)
    return flow, (version == 6, ip_len, hdr_len, same, seq, bool(flags & _TCP_PSH))


class _Run:
    """Segments of one flow that will be written as one super-packet."""

    __slots__ = ("closed", "gso_size", "info", "length", "next_seq", "packets", "push")

    def __init__(self, packet: bytes, info: _SegmentInfo) -> None:
        _, _, hdr_len, _, seq, push = info
        self.info = info
        self.packets = [packet]
        self.gso_size = len(packet) - hdr_len
        self.length = len(packet)
        self.next_seq = (seq + self.gso_size) & 0xFFFFFFFF
        self.push = push
        self.closed = push

    def extend(self, packet: bytes, info: _SegmentInfo) -> bool:
        _, _, hdr_len, same, seq, push = info
        payload_len = len(packet) - hdr_len
        if (
            seq != self.next_seq
            or payload_len > self.gso_size
            or self.length + payload_len > _MAX_IP_PACKET
            or same != self.info[3]
        ):
            return False
        self.packets.append(packet)
        self.length += payload_len
        self.next_seq = (seq + payload_len) & 0xFFFFFFFF
        self.push = push
        self.closed = push or payload_len < self.gso_size
        return True

    def build(self) -> tuple[bytes, bytes]:
        first = self.packets[0]
        if len(self.packets) == 1:
            return _PLAIN_HEADER, first
        ipv6, ip_len, hdr_len = self.info[:3]
        header = bytearray(first[:hdr_len])
        tcp_length = self.length - ip_len
        if ipv6:
            struct.pack_into("!H", header, 4, tcp_length)
        else:
            struct.pack_into("!H", header, 2, self.length)
            struct.pack_into("!H", header, 10, 0)
            struct.pack_into("!H", header, 10, _checksum(ones_sum(header[:ip_len])))
        if self.push:
            header[ip_len + 13] |= _TCP_PSH
        pseudo = (_pseudo_header_sum(first, ipv6) + tcp_length) % 0xFFFF
        struct.pack_into("!H", header, ip_len + _TCP_CHECKSUM_OFFSET, pseudo)
        body = b"".join([header, *(memoryview(packet)[hdr_len:] for packet in self.packets)])
        vnet = VnetHeader(
            flags=NEEDS_CSUM,
            gso_type=GSO_TCPV6 if ipv6 else GSO_TCPV4,
            hdr_len=hdr_len,
            gso_size=self.gso_size,
            csum_start=ip_len,
            csum_offset=_TCP_CHECKSUM_OFFSET,
        )
        return vnet.pack(), body
