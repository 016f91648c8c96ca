"""The flow queue in front of sealing: sparse flows first, each flow's order kept, backlogged
flows in turn, CoDel per flow marking ECN-capable packets instead of dropping them, and a
byte limit that drops from the fattest flow."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from aura_common.netio.codel import INTERVAL, TARGET
from aura_common.netio.fq import (
    LIMIT_CEILING,
    LIMIT_FLOOR,
    RATE_WINDOW,
    TIME_LIMIT,
    FlowQueue,
    FlowQueues,
    flow_key,
    mark_ce,
)

NOT_ECT, ECT0, CE = 0x00, 0x02, 0x03


def ipv4(src: int, dst: int, sport: int, dport: int, size: int = 1000, tos: int = NOT_ECT,
         tag: int = 0) -> bytes:
    payload = tag.to_bytes(4, "big") + bytes(size - 4)
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, tos, 24 + size, 0, 0, 64, 17, 0,
                                   bytes([10, 0, 0, src]), bytes([10, 0, 0, dst])))
    header[10:12] = struct.pack("!H", ~ones_sum(bytes(header)) & 0xFFFF)
    return bytes(header) + struct.pack("!HH", sport, dport) + payload


def ipv6(sport: int, tclass: int) -> bytes:
    first = (6 << 28 | tclass << 20).to_bytes(4, "big")
    return first + struct.pack("!HBB", 8, 17, 64) + bytes(15) + b"\x01" + bytes(15) + b"\x02" + \
        struct.pack("!HH", sport, 53) + bytes(4)


def ones_sum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def bulk(count: int, tos: int = NOT_ECT) -> list[bytes]:
    return [ipv4(1, 2, 4000, 5201, tos=tos, tag=i) for i in range(count)]


def test_a_sparse_flow_goes_before_the_backlog_of_a_bulk_flow() -> None:
    queue = FlowQueue(quantum=8000)
    queue.push(bulk(100), 0.0)
    queue.pop(8000, 0.0)  # the bulk flow has been served: it is backlogged now
    ping = ipv4(1, 2, 0, 0, size=56)
    queue.push([ping], 0.001)
    assert queue.pop(1, 0.001) == [ping]


def test_each_flow_keeps_its_order_and_backlogged_flows_take_turns() -> None:
    queue = FlowQueue(quantum=3000)
    a = [ipv4(1, 2, 1, 1, tag=i) for i in range(9)]
    b = [ipv4(1, 2, 2, 2, tag=i) for i in range(9)]
    queue.push(a + b, 0.0)
    first = queue.pop(6000, 0.0)
    assert first == a[:3] + b[:3]  # a quantum (three packets) each
    rest = []
    while queue:
        rest += queue.pop(3000, 0.0)
    assert [p for p in first + rest if p in a] == a
    assert [p for p in first + rest if p in b] == b
    assert queue.bytes == 0


def test_a_standing_backlog_is_marked_when_ecn_capable_and_dropped_when_not() -> None:
    for tos, marks in ((ECT0, True), (NOT_ECT, False)):
        queue = FlowQueue()
        now, sent = 0.0, 0
        out: list[bytes] = []
        # One packet in, one out, every millisecond, each having waited 2 * TARGET.
        queue.push(bulk(int(2 * TARGET / 0.001), tos), now)
        for i in range(int(3 * INTERVAL / 0.001)):
            now = i * 0.001 + 2 * TARGET
            queue.push([ipv4(1, 2, 4000, 5201, tos=tos, tag=10_000 + i)], now)
            out += queue.pop(1, now)
            sent += 1
        if marks:
            assert queue.marked > 0 and queue.dropped == 0
            assert len(out) == sent
            assert sum(1 for p in out if p[1] & CE == CE) == queue.marked
        else:
            assert queue.dropped > 0 and queue.marked == 0
            assert len(out) == sent - queue.dropped


def test_a_backlog_that_drains_within_target_is_neither_marked_nor_dropped() -> None:
    queue = FlowQueue()
    for i in range(1000):
        now = i * 0.001
        queue.push(bulk(3), now)
        queue.pop(3000, now + TARGET / 2)
    assert queue.dropped == queue.marked == 0


def test_past_its_byte_limit_it_drops_the_head_of_the_fattest_flow() -> None:
    queue = FlowQueue(quantum=2000)
    queue.limit = 10_000
    fat = bulk(9)
    thin = ipv4(1, 2, 7, 7, size=500)
    queue.push([thin, *fat], 0.0)
    queue.push([ipv4(1, 2, 4000, 5201, tag=99)], 0.0)  # over the limit
    assert queue.bytes <= 10_000
    out = queue.pop(1 << 20, 0.0)
    assert thin in out
    assert fat[0] not in out and fat[1] in out
    assert queue.dropped == 1


def test_a_burst_of_many_light_flows_passes_the_byte_limit_whole() -> None:
    queue = FlowQueue(quantum=2000)
    queue.limit = 10_000
    pings = [ipv4(1, 2, port, 7, size=1000) for port in range(100)]
    queue.push(pings, 0.0)
    assert queue.dropped == 0
    assert queue.pop(1 << 20, 0.0) == pings


def test_the_byte_limit_is_the_time_limit_at_the_rate_the_queue_drains() -> None:
    queue = FlowQueue()
    assert queue.limit == LIMIT_FLOOR
    step = 0.001
    per_step = 100  # packets of 1028 bytes: about 100 MB/s
    for i in range(round(3 * RATE_WINDOW / step)):
        queue.push(bulk(per_step), i * step)
        queue.pop(per_step * 1028, i * step)
    assert abs(queue.limit - 102_800_000 * TIME_LIMIT) < 0.05 * queue.limit
    assert LIMIT_FLOOR < queue.limit < LIMIT_CEILING
    queue.push(bulk(2 * queue.limit // 1028), 1.0)
    assert queue.bytes <= queue.limit
    queue.pop(1 << 30, 1.0)
    queue.pop(1, 2.0)  # a second without traffic
    assert queue.limit == LIMIT_FLOOR


def test_ce_marking_keeps_the_ipv4_header_checksum_valid() -> None:
    for tos in (0x01, 0x02, 0xB9, 0xBA):
        marked = mark_ce(ipv4(1, 2, 3, 4, tos=tos))
        assert marked is not None
        assert marked[1] == tos | CE
        assert ones_sum(marked[:20]) == 0xFFFF
    assert mark_ce(ipv4(1, 2, 3, 4, tos=0xB8)) is None  # not ECN-capable


def test_ce_marking_of_ipv6_sets_the_traffic_class_ecn_bits() -> None:
    marked = mark_ce(ipv6(1, 0xB8 | ECT0))
    assert marked is not None and (marked[1] >> 4) & CE == CE
    assert marked[0] == 0x6B and marked[2:] == ipv6(1, 0xB8 | ECT0)[2:]
    assert mark_ce(ipv6(1, 0xB8)) is None


def test_flows_are_told_apart_by_addresses_and_ports() -> None:
    assert flow_key(ipv4(1, 2, 3, 4, tag=1)) == flow_key(ipv4(1, 2, 3, 4, tag=2))
    assert flow_key(ipv4(1, 2, 3, 4)) != flow_key(ipv4(1, 2, 3, 5))
    assert flow_key(ipv4(1, 3, 3, 4)) != flow_key(ipv4(1, 2, 3, 4))
    assert flow_key(ipv6(1, 0)) != flow_key(ipv6(2, 0))


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(40, 1500)), max_size=200),
       st.integers(1, 20_000), st.integers(1, 400_000))
def test_every_packet_comes_out_once_in_flow_order_or_is_counted_dropped(
        packets: list[tuple[int, int]], budget: int, limit: int) -> None:
    queue = FlowQueue(quantum=2000)
    queue.limit = limit
    sent = [ipv4(1, 2, flow, flow, size=size, tag=i) for i, (flow, size) in
            enumerate(packets)]
    queue.push(sent, 0.0)
    out: list[bytes] = []
    while queue:
        batch = queue.pop(budget, 0.0)
        assert batch
        out += batch
    assert len(out) + queue.dropped == len(sent)
    for flow in range(4):
        mine = [p for p in sent if p[21] == flow]
        kept = [p for p in out if p[21] == flow]
        assert kept == mine[len(mine) - len(kept):]  # drops are from the head


def test_flow_queues_count_the_drops_of_closed_outlets_and_what_was_left_in_them() -> None:
    queues: FlowQueues[str] = FlowQueues()
    queues.of("udp").push([ipv4(1, 2, 5, 6) for _ in range(3)], 0.0)
    queues.of("udp").dropped = 2
    queues.of("tcp").marked = 1
    assert queues and queues.dropped == 2 and queues.marked == 1
    queues.close("udp")
    assert "udp" not in queues.queues
    assert queues.dropped == 2 + 3 and queues.marked == 1
    queues.close("tcp")
    assert not queues and queues.dropped == 5 and queues.marked == 1
