"""TCP segmentation and coalescing for the TUN data path (aura_common.netio.offload)."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from aura_common.netio import offload
from aura_common.netio.offload import (
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    NEEDS_CSUM,
    VnetHeader,
    coalesce,
    parse_vnet_header,
    segment,
)

FIN, SYN, PSH, ACK, CWR = 0x01, 0x02, 0x08, 0x10, 0x80


# -- an independent reference: textbook RFC 1071 checksum, word by word ---------------------


def reference_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def reference_checksum(data: bytes) -> int:
    return ~reference_sum(data) & 0xFFFF


def pseudo_header(packet: bytes, protocol: int, length: int) -> bytes:
    if packet[0] >> 4 == 4:
        return packet[12:20] + struct.pack("!BBH", 0, protocol, length)
    return packet[8:40] + struct.pack("!IxxxB", length, protocol)


def ip_header_len(packet: bytes | bytearray) -> int:
    return (packet[0] & 0x0F) * 4 if packet[0] >> 4 == 4 else 40


def transport_checksum_ok(packet: bytes, protocol: int = 6) -> bool:
    start = ip_header_len(packet)
    body = packet[start:]
    return reference_sum(pseudo_header(packet, protocol, len(body)) + body) == 0xFFFF


def ip_checksum_ok(packet: bytes) -> bool:
    return packet[0] >> 4 == 6 or reference_sum(packet[: ip_header_len(packet)]) == 0xFFFF


def fix_ipv4_checksum(header: bytearray) -> None:
    header[10:12] = b"\0\0"
    header[10:12] = reference_checksum(bytes(header)).to_bytes(2, "big")


# -- building test packets ---------------------------------------------------------------------


@dataclass
class Flow:
    version: int = 4
    src: str = "10.0.0.1"
    dst: str = "10.0.0.2"
    sport: int = 40000
    dport: int = 5201
    ack: int = 7777
    window: int = 512
    options: bytes = b""
    tos: int = 0
    ttl: int = 64


def tcp_packet(
    flow: Flow, seq: int, payload: bytes, flags: int = ACK, ident: int = 1, checksum: bool = True
) -> bytes:
    data_offset = (20 + len(flow.options)) // 4
    tcp = bytearray(
        struct.pack("!HHIIBBHHH", flow.sport, flow.dport, seq, flow.ack, data_offset << 4, flags,
                    flow.window, 0, 0)
        + flow.options
        + payload
    )
    src = ipaddress.ip_address(flow.src).packed
    dst = ipaddress.ip_address(flow.dst).packed
    if flow.version == 4:
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, flow.tos, 20 + len(tcp), ident, 0x4000,
                                   flow.ttl, 6, 0, src, dst))
        fix_ipv4_checksum(ip)
    else:
        ip = bytearray(struct.pack("!IHBB16s16s", 0x60000000 | flow.tos << 20, len(tcp), 6,
                                   flow.ttl, src, dst))
    if checksum:
        value = reference_checksum(pseudo_header(bytes(ip), 6, len(tcp)) + tcp)
        tcp[16:18] = value.to_bytes(2, "big")
    return bytes(ip + tcp)


def tcp_fields(packet: bytes) -> tuple[int, int, bytes]:
    """(sequence number, flags, payload) of a TCP packet."""
    start = ip_header_len(packet)
    seq = struct.unpack_from("!I", packet, start + 4)[0]
    data_offset = (packet[start + 12] >> 4) * 4
    return seq, packet[start + 13], packet[start + data_offset:]


def flow_segments(flow: Flow, data: bytes, mss: int, seq: int = 1000, last_flags: int = ACK,
                  ident: int = 1) -> list[bytes]:
    chunks = [data[i:i + mss] for i in range(0, len(data), mss)]
    return [
        tcp_packet(flow, (seq + i * mss) & 0xFFFFFFFF, chunk,
                   last_flags if i == len(chunks) - 1 else ACK, ident=(ident + i) & 0xFFFF)
        for i, chunk in enumerate(chunks)
    ]


def kernel_super_packet(flow: Flow, data: bytes, mss: int, flags: int = ACK | PSH,
                        seq: int = 1000) -> tuple[bytes, bytes]:
    """What a TSO-enabled TUN read returns: one big packet, checksum partial (pseudo-header)."""
    packet = bytearray(tcp_packet(flow, seq, data, flags, checksum=False))
    start = ip_header_len(packet)
    length = len(packet) - start
    partial = ~reference_checksum(pseudo_header(bytes(packet), 6, length)) & 0xFFFF
    packet[start + 16:start + 18] = partial.to_bytes(2, "big")
    gso = GSO_TCPV4 if flow.version == 4 else GSO_TCPV6
    header = VnetHeader(NEEDS_CSUM, gso, start + 20 + len(flow.options), mss, start, 16)
    return header.pack(), bytes(packet)


V4 = Flow()
V6 = Flow(version=6, src="fd00::1", dst="fd00::2")
TIMESTAMPS = bytes([1, 1, 8, 10]) + struct.pack("!II", 123456, 654321)


# -- virtio-net header -----------------------------------------------------------------------


def test_vnet_header_layout_is_little_endian() -> None:
    header = VnetHeader(NEEDS_CSUM, GSO_TCPV4, 52, 1400, 20, 16)
    assert header.pack() == bytes([1, 1, 52, 0, 0x78, 0x05, 20, 0, 16, 0])
    assert parse_vnet_header(header.pack() + b"rest") == header
    assert parse_vnet_header(b"\0" * 9) is None


@given(st.builds(VnetHeader, *(st.integers(0, 255) for _ in range(2)),
                 *(st.integers(0, 0xFFFF) for _ in range(4))))
def test_vnet_header_round_trip(header: VnetHeader) -> None:
    assert parse_vnet_header(header.pack()) == header


@given(st.binary(max_size=32))
def test_vnet_header_parse_never_raises(data: bytes) -> None:
    header = parse_vnet_header(data)
    assert header is None or header.pack() == data[:10]


def test_fast_sum_matches_reference() -> None:
    for data in (b"", b"\x01", b"\xff\xff", b"\x12\x34\x56", bytes(range(256)) * 5):
        assert reference_checksum(data) in (
            0xFFFF - offload.ones_sum(data),
            (0xFFFF - offload.ones_sum(data)) % 0xFFFF,
        )


# -- segmentation ----------------------------------------------------------------------------


def test_plain_packet_passes_unchanged() -> None:
    packet = tcp_packet(V4, 5, b"hello")
    assert segment(bytes(10), packet) == [packet]


def test_gso_tcpv4_super_packet_is_cut_at_mss() -> None:
    data = bytes(range(256)) * 20  # 5120 bytes
    header, packet = kernel_super_packet(V4, data, 1400, flags=ACK | PSH | FIN | CWR)
    pieces = segment(header, packet)
    assert [len(tcp_fields(p)[2]) for p in pieces] == [1400, 1400, 1400, 920]
    assert b"".join(tcp_fields(p)[2] for p in pieces) == data
    assert [tcp_fields(p)[0] for p in pieces] == [1000, 2400, 3800, 5200]
    assert [tcp_fields(p)[1] for p in pieces] == [ACK | CWR, ACK, ACK, ACK | PSH | FIN]
    assert [struct.unpack_from("!H", p, 4)[0] for p in pieces] == [1, 2, 3, 4]
    for piece in pieces:
        assert struct.unpack_from("!H", piece, 2)[0] == len(piece)
        assert ip_checksum_ok(piece) and transport_checksum_ok(piece)


def test_gso_tcpv6_with_options_and_ecn_flag() -> None:
    flow = Flow(version=6, src="fd00::1", dst="fd00::2", options=TIMESTAMPS)
    data = bytes(range(251)) * 11
    header, packet = kernel_super_packet(flow, data, 1000)
    header = VnetHeader(NEEDS_CSUM, GSO_TCPV6 | GSO_ECN, 72, 1000, 40, 16).pack()
    pieces = segment(header, packet)
    assert len(pieces) == 3
    assert b"".join(tcp_fields(p)[2] for p in pieces) == data
    for piece in pieces:
        assert struct.unpack_from("!H", piece, 4)[0] == len(piece) - 40
        assert piece[60:72] == TIMESTAMPS
        assert transport_checksum_ok(piece)


def test_sequence_numbers_wrap() -> None:
    header, packet = kernel_super_packet(V4, b"x" * 300, 100, seq=0xFFFFFF9C)
    assert [tcp_fields(p)[0] for p in segment(header, packet)] == [0xFFFFFF9C, 0, 100]


def test_needs_csum_completes_tcp_and_udp() -> None:
    _, packet = kernel_super_packet(V4, b"small payload", 1400)
    header = VnetHeader(NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16).pack()
    (done,) = segment(header, packet)
    assert transport_checksum_ok(done) and done[:36] == packet[:36]

    payload = b"datagram!"
    udp = bytearray(struct.pack("!HHHH", 53, 4000, 8 + len(payload), 0) + payload)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0,
                               bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])))
    partial = ~reference_checksum(pseudo_header(bytes(ip), 17, len(udp))) & 0xFFFF
    udp[6:8] = partial.to_bytes(2, "big")
    header = VnetHeader(NEEDS_CSUM, GSO_NONE, 0, 0, 20, 6).pack()
    (done,) = segment(header, bytes(ip + udp))
    assert transport_checksum_ok(done, protocol=17)
    assert done[26:28] != b"\0\0"


def test_malformed_reads_are_dropped() -> None:
    header, packet = kernel_super_packet(V4, b"x" * 3000, 1400)
    assert segment(header[:5], packet) == []
    assert segment(header, packet[:30]) == []
    assert segment(VnetHeader(NEEDS_CSUM, GSO_TCPV4, 40, 0, 20, 16).pack(), packet) == []
    assert segment(VnetHeader(NEEDS_CSUM, GSO_TCPV6, 40, 1400, 20, 16).pack(), packet) == []
    assert segment(VnetHeader(NEEDS_CSUM, 5, 28, 1400, 20, 6).pack(), packet) == []  # UDP_L4
    assert segment(VnetHeader(NEEDS_CSUM, GSO_NONE, 0, 0, 20, 9000).pack(), packet) == []


@given(st.binary(max_size=10), st.binary(max_size=200))
def test_segment_never_raises(header: bytes, packet: bytes) -> None:
    for piece in segment(header, packet):
        assert isinstance(piece, bytes)


@given(
    st.sampled_from([GSO_TCPV4, GSO_TCPV6, GSO_NONE]),
    st.integers(0, 3000),
    st.integers(0, 80),
    st.integers(0, 20),
    st.binary(min_size=0, max_size=400),
)
def test_segment_never_raises_on_plausible_headers(
    gso: int, gso_size: int, csum_start: int, csum_offset: int, packet: bytes
) -> None:
    for with_version in (packet, bytes([0x45]) + packet[1:], bytes([0x60]) + packet[1:]):
        segment(VnetHeader(NEEDS_CSUM, gso, 40, gso_size, csum_start, csum_offset).pack(),
                with_version)


# -- coalescing ------------------------------------------------------------------------------


def complete_like_the_kernel(header: bytes, packet: bytes) -> bytes:
    """The generic partial-checksum completion the kernel applies to a NEEDS_CSUM packet."""
    vnet = parse_vnet_header(header)
    assert vnet is not None
    field = vnet.csum_start + vnet.csum_offset
    value = reference_checksum(packet[vnet.csum_start:])
    return packet[:field] + value.to_bytes(2, "big") + packet[field + 2:]


def test_coalesce_merges_one_flow_into_a_super_packet() -> None:
    data = bytes(range(256)) * 16
    packets = flow_segments(V4, data, 1000, last_flags=ACK | PSH)
    ((header, merged),) = coalesce(packets)
    vnet = parse_vnet_header(header)
    assert vnet == VnetHeader(NEEDS_CSUM, GSO_TCPV4, 40, 1000, 20, 16)
    assert merged[40:] == data
    assert struct.unpack_from("!H", merged, 2)[0] == len(merged)
    assert ip_checksum_ok(merged)
    assert tcp_fields(merged)[:2] == (1000, ACK | PSH)
    assert transport_checksum_ok(complete_like_the_kernel(header, merged))


def test_coalesce_merges_ipv6_with_timestamps() -> None:
    flow = Flow(version=6, src="fd00::1", dst="fd00::2", options=TIMESTAMPS)
    data = b"q" * 5000
    ((header, merged),) = coalesce(flow_segments(flow, data, 1200))
    assert parse_vnet_header(header) == VnetHeader(NEEDS_CSUM, GSO_TCPV6, 72, 1200, 40, 16)
    assert struct.unpack_from("!H", merged, 4)[0] == len(merged) - 40
    assert transport_checksum_ok(complete_like_the_kernel(header, merged))


def test_coalesce_keeps_flows_apart_and_in_order() -> None:
    other = Flow(sport=40001)
    a = flow_segments(V4, b"a" * 3000, 1000)
    b = flow_segments(other, b"b" * 2000, 1000, seq=50)
    udp = bytes([0x45]) + bytes(8) + bytes([17]) + bytes(30)
    out = coalesce([a[0], b[0], udp, a[1], b[1], a[2]])
    assert [len(p) for _, p in out] == [3040, 2040, len(udp)]
    assert out[2] == (bytes(10), udp)


def test_coalesce_refuses_what_must_not_merge() -> None:
    segments = flow_segments(V4, b"z" * 4000, 1000)
    gap = [segments[0], segments[2]]
    shorter_then_more = [*flow_segments(V4, b"z" * 1500, 1000), tcp_packet(V4, 2500, b"z" * 500)]
    push_in_middle = [tcp_packet(V4, 1000, b"z" * 1000, ACK | PSH), segments[1]]
    bigger_after = [tcp_packet(V4, 1000, b"z" * 500), tcp_packet(V4, 1500, b"z" * 1000)]
    different_ack = [segments[0], tcp_packet(Flow(ack=1), 2000, b"z" * 1000)]
    different_ttl = [segments[0], tcp_packet(Flow(ttl=3), 2000, b"z" * 1000)]
    different_tos = [segments[0], tcp_packet(Flow(tos=3), 2000, b"z" * 1000)]
    syn = [tcp_packet(V4, 1000, b"z" * 1000, SYN | ACK), segments[1]]
    for case in (gap, push_in_middle, bigger_after, different_ack, different_ttl, different_tos,
                 syn):
        assert coalesce(case) == [(bytes(10), p) for p in case]
    merged = coalesce(shorter_then_more)
    assert [len(p) for _, p in merged] == [1540, 540]


def test_coalesce_trusts_the_tunnel_for_segment_checksums() -> None:
    # Packets written to the TUN were authenticated by WireGuard's AEAD; their checksums are
    # not re-verified, and the kernel computes the merged packet's from its bytes.
    segments = flow_segments(V4, b"c" * 2000, 1000)
    damaged = segments[1][:-2] + bytes([segments[1][-2] ^ 0xFF]) + segments[1][-1:]
    [(header, merged)] = coalesce([segments[0], damaged])
    assert merged[40:] == b"c" * 1000 + damaged[40:]
    assert transport_checksum_ok(complete_like_the_kernel(header, merged))


def test_a_non_mergeable_packet_ends_its_flows_run() -> None:
    segments = flow_segments(V4, b"k" * 3000, 1000)
    fin = tcp_packet(V4, 4000, b"", ACK | FIN)
    out = coalesce([segments[0], segments[1], fin, tcp_packet(V4, 4000, b"k" * 1000),
                    tcp_packet(V4, 5000, b"k" * 1000)])
    assert [len(p) for _, p in out] == [2040, 40, 2040]


def test_coalesce_stops_at_64k() -> None:
    packets = flow_segments(V4, b"m" * 100 * 1400, 1400)
    out = coalesce(packets)
    assert all(len(p) <= 0xFFFF for _, p in out)
    assert len(out) == 3
    assert b"".join(p[40:] for _, p in out) == b"m" * 100 * 1400


# -- properties ------------------------------------------------------------------------------


@st.composite
def flow_streams(draw: st.DrawFn) -> tuple[Flow, list[bytes]]:
    version = draw(st.sampled_from([4, 6]))
    flow = Flow(
        version=version,
        src="10.1.2.3" if version == 4 else "fd00::a",
        dst="10.9.8.7" if version == 4 else "fd00::b",
        sport=draw(st.integers(1, 0xFFFF)),
        dport=draw(st.integers(1, 0xFFFF)),
        ack=draw(st.integers(0, 0xFFFFFFFF)),
        window=draw(st.integers(0, 0xFFFF)),
        options=draw(st.sampled_from([b"", TIMESTAMPS])),
    )
    mss = draw(st.integers(1, 1500))
    data = draw(st.binary(min_size=1, max_size=6000))
    seq = draw(st.integers(0, 0xFFFFFFFF))
    last = draw(st.sampled_from([ACK, ACK | PSH]))
    return flow, flow_segments(flow, data, mss, seq=seq, last_flags=last,
                               ident=draw(st.integers(0, 0xFFFF)))


@settings(max_examples=150, deadline=None)
@given(flow_streams())
def test_segment_of_coalesce_reproduces_the_segments(stream: tuple[Flow, list[bytes]]) -> None:
    _, packets = stream
    out: list[bytes] = []
    for header, packet in coalesce(packets):
        vnet = parse_vnet_header(header)
        assert vnet is not None
        if vnet.flags & NEEDS_CSUM:
            assert transport_checksum_ok(complete_like_the_kernel(header, packet))
        out += segment(header, packet)
    assert out == packets
    for packet in out:
        assert ip_checksum_ok(packet) and transport_checksum_ok(packet)


def test_a_checksum_of_zero_survives_coalesce_and_segment() -> None:
    """A segment whose TCP checksum is 0x0000 (its other words sum to ones' complement zero)
    comes back from coalesce + segment the same to the byte, as the kernel wrote it."""
    flow = Flow(4, "10.1.2.3", "10.9.8.7")
    segments = []
    for index in range(2):
        seq = 1000 + index * 1000
        probe = tcp_packet(flow, seq, bytes(998) + b"\0\0", ident=1 + index)
        # The trailing word set to the probe's checksum makes the other words sum to 0xFFFF.
        checksum = probe[20 + 16:20 + 18]
        packet = tcp_packet(flow, seq, bytes(998) + checksum, ident=1 + index)
        assert packet[20 + 16:20 + 18] == b"\0\0"
        segments.append(packet)
    [(header, packet)] = coalesce(segments)
    assert segment(header, packet) == segments


@settings(max_examples=100, deadline=None)
@given(st.lists(flow_streams(), min_size=1, max_size=3), st.randoms(use_true_random=False))
def test_interleaved_flows_keep_each_flows_bytes(streams, rng) -> None:
    flows = []
    for port, (flow, _) in enumerate(streams, start=1):  # distinct flows, any mix of families
        flow.sport = port
        flows.append((flow, flow_segments(flow, bytes([port]) * 3333, 1111)))
    queues = [list(packets) for _, packets in flows]
    mixed: list[bytes] = []
    while any(queues):
        queue = rng.choice([q for q in queues if q])
        mixed.append(queue.pop(0))
    out = [piece for header, packet in coalesce(mixed) for piece in segment(header, packet)]
    assert sorted(out) == sorted(mixed)
    for _, packets in flows:
        assert [p for p in out if p in packets] == packets


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=120), max_size=8))
def test_coalesce_never_raises(packets: list[bytes]) -> None:
    out = coalesce(packets)
    assert sum(1 for _ in out) <= len(packets)


@settings(max_examples=200)
@given(st.lists(st.binary(min_size=40, max_size=120), max_size=6), st.sampled_from([0x45, 0x60]))
def test_coalesce_never_raises_on_tcp_looking_bytes(packets: list[bytes], first: int) -> None:
    tcp_like = [
        bytes([first]) + p[1:6] + (b"\x06" if first == 0x60 else p[6:7]) + p[7:9]
        + (p[9:10] if first == 0x60 else b"\x06") + p[10:]
        for p in packets
    ]
    for header, packet in coalesce(tcp_like):
        segment(header, packet)


@settings(max_examples=200)
@given(st.binary(min_size=40, max_size=120), st.sampled_from([0x45, 0x60]))
def test_a_lone_packet_goes_through_both_ways_as_it_came(packet: bytes, first: int) -> None:
    """What an idle ping is: written with a plain header, and read back unchanged."""
    tcp_like = bytes([first]) + packet[1:6] + b"\x06" + packet[7:9] + b"\x06" + packet[10:]
    for lone in (packet, tcp_like, tcp_packet(V4, 5, b"hello")):
        assert coalesce([lone]) == [(bytes(10), lone)]
        assert segment(bytes(10), lone) == [lone]
