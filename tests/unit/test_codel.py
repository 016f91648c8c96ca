"""CoDel on a receive queue: no drop while the queue drains within TARGET, none for a burst
shorter than INTERVAL, then drops at INTERVAL / sqrt(count) while the queue stands, and back
to none as soon as it falls below TARGET."""

from __future__ import annotations

import itertools
import socket
import time

from hypothesis import given
from hypothesis import strategies as st

from aura_common.netio import udp
from aura_common.netio.codel import INTERVAL, MAX_PACKET, TARGET, CoDel


def drops(codel: CoDel, sojourn: float, start: float, seconds: float, step: float = 0.001
          ) -> list[float]:
    """Dequeue one packet every `step` seconds, each having waited `sojourn`."""
    times = []
    for i in range(round(seconds / step)):
        now = start + i * step
        if codel.should_drop(sojourn, now):
            times.append(now)
    return times


@given(st.floats(min_value=0, max_value=TARGET * 0.999), st.floats(min_value=0.1, max_value=5))
def test_a_queue_below_target_is_never_dropped(sojourn: float, seconds: float) -> None:
    assert drops(CoDel(), sojourn, 0.0, seconds) == []


def test_a_burst_shorter_than_the_interval_is_kept() -> None:
    codel = CoDel()
    assert drops(codel, 0.050, 0.0, INTERVAL * 0.9) == []
    assert drops(codel, 0.001, INTERVAL, 1.0) == []
    assert codel.dropped == 0


def test_a_standing_queue_is_dropped_ever_more_often() -> None:
    codel = CoDel()
    times = drops(codel, 0.020, 0.0, 2.0)
    assert times[0] >= INTERVAL, "not before the sojourn stayed above target a whole interval"
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) > 5
    assert all(later <= earlier + 0.002 for earlier, later in itertools.pairwise(gaps))
    assert gaps[0] >= INTERVAL / 1.5 - 0.002 and gaps[-1] < gaps[0]
    assert codel.dropped == len(times)


def test_dropping_stops_once_the_queue_drains() -> None:
    codel = CoDel()
    assert drops(codel, 0.020, 0.0, 1.0)
    assert drops(codel, TARGET / 2, 1.0, 1.0) == []
    # back above target soon after: dropping resumes without a fresh full interval of grace
    # only after the sojourn has been above target for an interval again
    resumed = drops(codel, 0.020, 2.0, 0.5)
    assert resumed and resumed[0] >= 2.0 + INTERVAL


def wait_for_receive_timestamps(receiver: socket.socket, sender: socket.socket) -> None:
    """The kernel turns receive timestamps on from a work queue after the first socket asks:
    until then a datagram is stamped when it is read, and so never seems to have waited."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        sender.sendto(b"probe", receiver.getsockname())
        time.sleep(0.01)
        _, ancillary, _, _ = receiver.recvmsg(64, socket.CMSG_SPACE(16))
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == udp.SO_TIMESTAMPNS:
                seconds, nanoseconds = udp._TIMESPEC.unpack(data[:16])
                if time.time() - (seconds + nanoseconds * 1e-9) >= 0.005:
                    return
    raise AssertionError("receive timestamps never came on")


def test_a_socket_queue_is_judged_by_the_kernels_receive_time() -> None:
    """recv_batch reads SO_TIMESTAMPNS: datagrams that waited in the socket past the target are
    dropped at dequeue (here with no grace interval), the first one of a stretch kept."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with receiver, sender:
        receiver.bind(("127.0.0.1", 0))
        udp.enable_timestamps(receiver)
        wait_for_receive_timestamps(receiver, sender)
        for payload in (b"a", b"b", b"c", b"d"):
            sender.sendto(payload, receiver.getsockname())
        time.sleep(0.02)  # they wait in the socket's queue
        codel = CoDel(target=0.005, interval=0.0)
        batches = udp.recv_batch(receiver, aqm=codel)
        assert [d for datagrams, _ in batches for d in datagrams] == [b"a"]
        assert codel.dropped == 3
        sender.sendto(b"fresh", receiver.getsockname())
        time.sleep(0.001)
        assert udp.recv_batch(receiver, aqm=CoDel()) != []


def test_a_drop_goes_to_the_source_that_brought_the_most_bytes() -> None:
    """Each dequeue of a small peer's datagram may trigger CoDel, but the datagram dropped is
    the heaviest source's: here the light peer's one datagram comes last, after CoDel has
    started dropping, and survives while the bulk source pays."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bulk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    light = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with receiver, bulk, light:
        receiver.bind(("127.0.0.1", 0))
        udp.enable_timestamps(receiver)
        wait_for_receive_timestamps(receiver, bulk)
        for payload in (b"b1" * 500, b"b2" * 500, b"b3" * 500):
            bulk.sendto(payload, receiver.getsockname())
        light.sendto(b"light", receiver.getsockname())
        time.sleep(0.02)  # they wait in the socket's queue
        codel = CoDel(target=0.005, interval=0.0)  # drops from the second dequeue on
        batches = udp.recv_batch(receiver, aqm=codel)
        assert batches == [([b"light"], ("127.0.0.1", light.getsockname()[1]))]
        assert codel.dropped == 3


def test_no_more_than_one_packet_behind_is_no_standing_queue() -> None:
    codel = CoDel(target=0.005, interval=0.1)
    # Every packet waited 50 ms (a busy reader), but nothing was queued behind it.
    assert not any(codel.should_drop(0.05, t / 100, behind=MAX_PACKET) for t in range(100))
    # The same waits with a queue behind them: dropped after an interval.
    assert any(codel.should_drop(0.05, 1 + t / 100, behind=MAX_PACKET + 1) for t in range(100))
