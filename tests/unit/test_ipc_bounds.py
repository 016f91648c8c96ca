"""IPC bounds: queues in bytes, decoding expansion, frame shapes, frames that outgrow one frame.

Real SEQPACKET socketpairs; the router side is the real Router with a 20,000-peer registry.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_common import ipc
from aura_common.config import NetworkConfig, ServerConfig
from services.router.main import Router
from tests.unit.test_router_claims import new_router

PEERS = 20_000
# The session table only keeps and compares the link a session came over: any object will do.
LINK = cast(ipc.Channel, object())


def pair() -> tuple[ipc.Channel, ipc.Channel]:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return ipc.Channel(left, "router"), ipc.Channel(right, "udp")


def deep_size(value: object) -> int:
    """Memory held by a decoded frame: every object once (small ints and the like are shared,
    so counting them again only overstates)."""
    seen: set[int] = set()
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


# -- decoding ------------------------------------------------------------------------------
def frame_with(value: object, pad: int = 0) -> bytes:
    return msgpack.packb({"t": "x", "x": value, "pad": b"\0" * pad}, use_bin_type=True)


HOSTILE = {
    "empty maps": lambda n: [{}] * n,
    "empty lists": lambda n: [[]] * n,
    "nested lists": lambda n: [[[]]] * (n // 3),
    "small maps": lambda n: [{"": None}] * (n // 3),
    "negative fixints": lambda n: [-32] * n,
    "short strings": lambda n: ["abc"] * (n // 4),
    "nils": lambda n: [None] * n,
    "lists of ints": lambda n: [[-32] * 4000 for _ in range(n // 4000)],
}


@pytest.mark.parametrize("build", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("pad", [0, 10_000, 200_000])
def test_a_frame_never_decodes_beyond_the_expansion_bound(
    build: Callable[[int], object], pad: int
) -> None:
    for count in (100, 4000, 16_000, 200_000):
        data = frame_with(build(count), pad)
        if len(data) > ipc.MAX_FRAME:
            continue
        try:
            frame = ipc.decode(data)
        except ValueError:
            continue
        assert deep_size(frame) <= ipc.DECODE_EXPANSION * len(data) + 8192, (count, pad)


def test_nesting_is_bounded() -> None:
    with pytest.raises(ValueError):
        ipc.decode(b"\x82\xa1t\xa1x\xa1x" + b"\x91" * 100_000 + b"\x90")


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=8) | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=40)
    | st.dictionaries(st.text(max_size=4), children, max_size=8),
    max_leaves=200,
)


@settings(max_examples=80, deadline=None)
@given(msgpack_values)
def test_any_decodable_frame_stays_within_the_expansion_bound(value: object) -> None:
    data = frame_with(value)
    try:
        frame = ipc.decode(data)
    except ValueError:
        return
    assert deep_size(frame) <= ipc.DECODE_EXPANSION * len(data) + 8192


def test_legitimate_frames_fit_the_object_budget() -> None:
    packets = [bytes(20)] * ipc.MAX_ITEMS  # the smallest IP packets, as many as a frame holds
    frame = {"t": "pkts", "batches": [["a", packets]]}
    assert ipc.decode(ipc.encode(frame)) == frame
    # One packet for each of as many peers as a frame holds.
    frame = {"t": "pkts", "batches": [["a", [bytes(20)]]] * ipc.MAX_ITEMS}
    assert ipc.decode(ipc.encode(frame)) == frame
    entry = {"name": "a", "enabled": True, "address": ["10.77.0.2"], "connected": False,
             "refused": None, "quota": None, "expires": None, "rx_bytes": 0, "tx_bytes": 0}
    status = {"t": "status_reply", "uptime": 1.0, "transports": [], "peers": [entry] * 500}
    assert ipc.decode(ipc.encode(status)) == status


# -- queue bound in bytes ------------------------------------------------------------------
def test_the_receive_queue_is_bounded_in_bytes() -> None:
    async def scenario() -> None:
        sender, receiver = pair()
        frame = {"t": "pkts", "batches": [["a", [bytes(200_000)]]]}
        for _ in range(200):  # the receiver takes nothing; its reader runs between rounds
            while sender.send(frame):
                pass
            await asyncio.sleep(0)
        held = receiver.queued * len(ipc.encode(frame))
        assert held <= ipc.MAX_QUEUED_BYTES + ipc.MAX_FRAME
        assert receiver.queued_bytes == held
        # Taking frames resumes reading; nothing accepted by the socket is lost.
        taken = 0
        while receiver.queued or taken == 0:
            taken += len(await asyncio.wait_for(receiver.recv_many(), 5))
        assert taken > receiver.queued
        sender.close()
        receiver.close()

    asyncio.run(scenario())


# -- shapes --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "frame",
    [
        {"t": "pkts", "at": 1.0, "batches": "not a list"},
        {"t": "pkts", "at": 1.0, "batches": [["a"]]},
        {"t": "pkts", "at": 1.0, "batches": [[7, []]]},
        {"t": "pkts", "at": 1.0, "batches": [["a", b"x"]]},
        {"t": "pkts", "at": 1.0, "batches": [["a", [b"x", 3]]]},
        {"t": "pkts", "at": 1.0, "batches": [["a", [b"x"], "extra"]]},
        {"t": "pkts", "at": 1.0, "peer": "a", "data": [b"x"]},
        {"t": "pkts", "batches": [["a", [b"x"]]]},
        {"t": "pkts", "at": "now", "batches": [["a", [b"x"]]]},
        {"t": "session_up", "peer": "a", "endpoint": "x", "handshake_at": "now"},
        {"t": "session_up", "peer": "a", "endpoint": "x", "handshake_at": 1},  # no ticket
        {"t": "peers", "peers": [{"name": "a", "public_key": b"short"}]},
        {"t": "peers", "peers": [{"name": "a"}]},
        {"t": "hs", "items": [[1, bytes(147)]]},
        {"t": "hs", "items": [[1 << 32, bytes(148)]]},
        {"t": "hs", "items": [[1, bytes(148), "extra"]]},
        {"t": "hs_done", "answers": [[1, bytes(32), bytes(92), bytes(32), bytes(32), 2]],
         "refused": []},
        {"t": "hs_done", "answers": [], "refused": [[1, 2]]},
        {"t": "peers", "peers": [1], "chunk": "peers", "end": True},
        {"t": "peers", "peers": 1, "chunk": "peers", "end": True},
        {"t": "peers", "peers": [], "chunk": "peers", "end": "yes"},
        {"t": "peers", "peers": [], "chunk": 5, "end": True},
    ],
)
def test_a_frame_of_the_wrong_shape_closes_the_channel_with_a_warning(
    frame: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        sender, receiver = pair()
        receiver.shapes = ipc.ROUTER_FRAMES
        sender.sock.send(msgpack.packb(frame, use_bin_type=True))
        with pytest.raises(ipc.ChannelClosed):
            await asyncio.wait_for(receiver.recv(), 5)
        assert receiver.closed
        error = await asyncio.wait_for(sender.recv(), 5)  # told why, then closed
        assert error["t"] == "error"
        sender.close()

    asyncio.run(scenario())
    [record] = [r for r in caplog.records if r.name == "aura_common.ipc"]
    assert record.levelname == "WARNING"


def test_parts_of_another_frame_may_not_interleave() -> None:
    async def scenario() -> None:
        sender, receiver = pair()
        for part in ({"t": "peers", "peers": [], "chunk": "peers", "end": False},
                     {"t": "status_reply", "peers": [], "chunk": "peers", "end": True}):
            sender.sock.send(ipc.encode(part))
        with pytest.raises(ipc.ChannelClosed, match="malformed part"):
            await asyncio.wait_for(receiver.recv(), 5)

    asyncio.run(scenario())


# -- frames that outgrow one frame ---------------------------------------------------------
def registry_file(path: Path, count: int) -> None:
    key = base64.b64encode(bytes(32)).decode()
    peers = [
        {"name": f"peer-{i:05d}", "public_key": base64.b64encode(i.to_bytes(32, "big")).decode(),
         "preshared_key": key, "address_v4": str(ipaddress.ip_address("10.64.0.2") + i),
         "address_v6": None, "enabled": True, "created": "2026-01-01T00:00:00Z"}
        for i in range(count)
    ]
    path.write_text(json.dumps({"version": 1, "peers": peers}))


@pytest.fixture
def router(tmp_path: Path) -> Router:
    config = ServerConfig(public_host="192.0.2.1", state_dir=str(tmp_path),
                          network=NetworkConfig(ipv4=ipaddress.IPv4Network("10.64.0.0/10")))
    registry_file(Path(config.peers_file), PEERS)
    return new_router(config)


def test_20000_peers_reach_a_transport_in_one_joined_peers_frame(router: Router) -> None:
    async def scenario() -> None:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        transport = ipc.Channel(left, "router")
        transport.shapes = ipc.ROUTER_FRAMES
        serving = asyncio.ensure_future(router.on_channel(ipc.Channel(right, "udp")))
        frame = await asyncio.wait_for(transport.recv(), 30)
        assert frame["t"] == "peers" and "chunk" not in frame and "end" not in frame
        assert len(frame["peers"]) == PEERS
        assert frame["peers"][-1]["name"] == f"peer-{PEERS - 1:05d}"
        assert len(ipc.encode(frame)) > ipc.MAX_FRAME  # one frame could never have held it
        # A registry change pushes the whole list again, still joined as one.
        router.reload()
        again = await asyncio.wait_for(transport.recv(), 30)
        assert [p["name"] for p in again["peers"]] == [p["name"] for p in frame["peers"]]
        serving.cancel()
        transport.close()

    asyncio.run(scenario())


def test_status_of_20000_connected_peers_reaches_the_admin(router: Router) -> None:
    async def scenario() -> None:
        for i, peer in enumerate(router.registry):
            router.sessions.up(peer.name, LINK, "udp", f"198.51.100.{i % 250}:{1024 + i}",
                               peer.addresses, 1_700_000_000.0)
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        admin = ipc.Channel(left, "router")
        admin.shapes = ipc.ROUTER_FRAMES
        serving = asyncio.ensure_future(router.on_channel(ipc.Channel(right, "admin")))
        await admin.send_reliable({"t": "status"})
        reply = await asyncio.wait_for(admin.recv(), 60)
        assert reply["t"] == "status_reply" and len(reply["peers"]) == PEERS
        assert all(p["connected"] for p in reply["peers"])
        assert len(ipc.encode(reply)) > ipc.MAX_FRAME
        serving.cancel()
        admin.close()

    asyncio.run(scenario())


def test_chunk_parts_stay_within_chunk_bytes() -> None:
    async def scenario() -> None:
        sender, receiver = pair()
        items = [{"name": f"p{i}", "blob": bytes(i % 700)} for i in range(5000)]
        task = asyncio.ensure_future(sender.send_chunked({"t": "peers", "peers": items}, "peers"))
        sizes = []
        raw = receiver.sock
        receiver._stop_reading()  # read the parts by hand to see their sizes
        while True:
            await asyncio.sleep(0)
            try:
                data = raw.recv(ipc.MAX_FRAME + 1)
            except BlockingIOError:
                continue
            sizes.append(len(data))
            if ipc.decode(data)["end"]:
                break
        await task
        assert len(sizes) > 1 and max(sizes) <= ipc.CHUNK_BYTES

    asyncio.run(scenario())


def test_one_wakeup_reads_at_most_the_read_budget() -> None:
    async def scenario() -> None:
        sender, receiver = pair()
        receiver.shapes = ipc.ROUTER_FRAMES
        handled: list[list[tuple[str, list[bytes]]]] = []
        receiver.on_packets = handled.append
        receiver._stop_reading()  # this test plays the event loop
        packet = b"\x45" + bytes(59_999)
        for _ in range(10):
            assert sender.send(ipc.packets_frame([("a", [packet])]))
        receiver._readable()
        assert 0 < len(handled) <= ipc.READ_BUDGET // len(packet) + 1 < 10
        receiver._readable()  # the next wakeup goes on where the last stopped
        assert len(handled) == min(10, 2 * (ipc.READ_BUDGET // len(packet) + 1))
        sender.close()
        receiver.close()

    asyncio.run(scenario())
