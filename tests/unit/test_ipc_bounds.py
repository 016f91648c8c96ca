"""IPC bounds: queues in bytes, decoding expansion, frame shapes, frames that outgrow one frame.

Real SEQPACKET socketpairs; the router side is the real Router with a 20,000-peer registry.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_common import ipc
from aura_common.config import NetworkConfig, ServerConfig
from aura_common.ipc import channel, frames
from aura_common.ipc.frames import (
    FROM_CLIENT,
    FROM_ROUTER,
    FROM_SIGNER,
    MAX_FRAME,
    TO_ROUTER,
    TO_SIGNER,
    ClientState,
    ClientStatus,
    DroppedPackets,
    HandshakeCounts,
    ManifestText,
    Packets,
    PeerKey,
    Peers,
    PeerState,
    RegistryState,
    RouterStatus,
    Sign,
    Signed,
    Status,
    TransportState,
    TunnelState,
)
from aura_common.pki.manifest import HostPorts
from fuzz.targets.ipc_frames import deep_size
from services.router.main import Router
from tests.unit.router_fakes import new_router

PEERS = 20_000
# The session table only keeps and compares the link a session came over: any object will do.
LINK = cast(ipc.Channel, object())


def pair(receives: frames.Protocol = TO_ROUTER) -> tuple[ipc.Channel, ipc.Channel]:
    """The router's end (left) and a transport's, which accepts the frames of `receives`."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return ipc.Channel(left, FROM_ROUTER, "router"), ipc.Channel(right, receives, "udp")


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
        if len(data) > MAX_FRAME:
            continue
        try:
            frame = frames.read_map(data)
        except ValueError:
            continue
        assert deep_size(frame) <= frames.DECODE_EXPANSION * len(data) + 8192, (count, pad)


def test_nesting_is_bounded() -> None:
    with pytest.raises(ValueError):
        frames.read_map(b"\x82\xa1t\xa1x\xa1x" + b"\x91" * 100_000 + b"\x90")


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
        frame = frames.read_map(data)
    except ValueError:
        return
    assert deep_size(frame) <= frames.DECODE_EXPANSION * len(data) + 8192


def test_legitimate_frames_fit_the_object_budget() -> None:
    packets = [bytes(20)] * frames.MAX_ITEMS  # the smallest IP packets, as many as fit a list
    frame = Packets(1.0, [("a", packets)])
    assert frames.decode(frames.encode(frame), TO_ROUTER) == frame
    # One packet for each of as many peers as a frame holds.
    frame = Packets(1.0, [("a", [bytes(20)])] * frames.MAX_ITEMS)
    assert frames.decode(frames.encode(frame), TO_ROUTER) == frame
    entry = PeerState("a", True, ["10.77.0.2"], False, 0, None, None, None, None)
    status = RouterStatus(1.0, "aura0", [TransportState("udp", True, ["[::]:8443"])],
                          [entry] * 500, DroppedPackets(0, 0), HandshakeCounts(0, 0, 0))
    assert frames.decode(frames.encode(status), FROM_ROUTER) == status


# -- queue bound in bytes ------------------------------------------------------------------
def test_the_receive_queue_is_bounded_in_bytes() -> None:
    async def scenario() -> None:
        sender, receiver = pair()
        frame = Packets(time.monotonic(), [("a", [bytes(200_000)])])
        for _ in range(200):  # the receiver takes nothing; its reader runs between rounds
            while sender.send(frame):
                pass
            await asyncio.sleep(0)
        held = receiver.queued * len(frames.encode(frame))
        assert held <= channel.MAX_QUEUED_BYTES + MAX_FRAME
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
        {"t": "hs", "items": [], "extra": 1},  # a field no frame of the kind has
        {"t": "peers", "peers": [{"name": "a", "public_key": bytes(32), "psk": bytes(32)}]},
        {"t": "session_up", "peer": "a", "endpoint": "x", "handshake_at": float("nan"),
         "ticket": bytes(24)},
        {"t": "session_up", "peer": "a", "endpoint": "x", "handshake_at": 1.0,
         "ticket": bytes(25)},
        {"t": "pkts", "at": True, "batches": []},  # a boolean is no time
        {"t": "hs_done", "answers": [], "refused": [[-1, "no"]]},
        {"t": "status_reply", "uptime": 1.0},  # admin frames go to the router, not transports
        {"t": "signed", "manifest": {}},  # a frame of another socket
        {"t": "no such frame"},
    ],
)
def test_a_frame_of_the_wrong_shape_closes_the_channel_with_a_warning(
    frame: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        sender, receiver = pair(FROM_ROUTER if frame["t"] in ("peers", "hs_done") else TO_ROUTER)
        sender.sock.send(msgpack.packb(frame, use_bin_type=True))
        with pytest.raises(ipc.ChannelClosed):
            await asyncio.wait_for(receiver.recv(), 5)
        assert receiver.closed
        error = await asyncio.wait_for(sender.recv(), 5)  # told why, then closed
        assert isinstance(error, frames.Error)
        sender.close()

    asyncio.run(scenario())
    [record] = [r for r in caplog.records if r.name == "aura_common.ipc"]
    assert record.levelname == "WARNING"


# The records of status and signing, as their peers send them, and the side that reads each.
SIGNATURE = base64.b64encode(bytes(64)).decode()
RECORDS = {
    "registry": (RouterStatus(1.0, "aura0", [], [], DroppedPackets(1, 2),
                              HandshakeCounts(3, 4, 5),
                              RegistryState("database", True, 1.7e9, "db.test/aura")),
                 FROM_ROUTER, ("registry",)),
    "dropped": (RouterStatus(1.0, "aura0", [], [], DroppedPackets(1, 2), HandshakeCounts(3, 4, 5)),
                FROM_ROUTER, ("dropped",)),
    "client": (ClientStatus(ClientState(TunnelState.UP, "udp", "192.0.2.1:8443", 1.7e9, 1, 2, 3, 4,
                                        ["10.77.0.2/32"], ["0.0.0.0/0"], [], None, 3, "aura-a",
                                        1420, None, 42)),
               FROM_CLIENT, ("status",)),
    "endpoint": (Sign([HostPorts("vpn.test", udp=8443, quic=8444)], 30, bytes(32)), TO_SIGNER,
                 ("endpoints", 0)),
    "manifest": (Signed(ManifestText("{}", SIGNATURE, "0123456789abcdef")), FROM_SIGNER,
                 ("manifest",)),
}


def record_map(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The map of RECORDS[name]'s frame, and the record's map in it."""
    frame, _, path = RECORDS[name]
    mapping = frames.to_map(frame)
    record: Any = mapping
    for step in path:
        record = record[step]
    return mapping, record


def with_field(name: str, field: str, value: object) -> dict[str, Any]:
    """The map of RECORDS[name]'s frame, `field` of its record set to `value`."""
    mapping, record = record_map(name)
    record[field] = value
    return mapping


@pytest.mark.parametrize(("name", "field", "value", "message"), [
    ("registry", "source", "elsewhere",
     "status_reply.registry.source: expected one of 'database', 'copy'"),
    ("dropped", "spoofed", -1, "status_reply.dropped.spoofed: expected an integer in 0.."),
    ("client", "endpoint", "x" * 257,
     "status_reply.status.endpoint: expected a string of at most 256 characters"),
    ("client", "addresses", ["10.77.0.2/32", 7],
     "status_reply.status.addresses[1]: expected a string of at most 256"),
    ("client", "pid", 0, "status_reply.status.pid: expected an integer in 1.."),
    ("client", "state", "hacked",
     "status_reply.status.state: expected one of 'connecting', 'backoff', 'up'"),
    ("client", "state", 1, "status_reply.status.state: expected one of 'connecting'"),
    ("endpoint", "udp", 0, "sign.endpoints[0]: expected a valid HostPorts (udp port: expected"),
    ("endpoint", "host", "no such host!", "sign.endpoints[0]: expected a valid HostPorts (host"),
    ("endpoint", "host", "h" * 60_000, "sign.endpoints[0]: expected a valid HostPorts (host"),
    ("endpoint", "quic", "8444", "sign.endpoints[0].quic: expected an integer"),
    ("manifest", "signature", "AA", "signed.manifest.signature: expected a string of 88 "),
    ("manifest", "body", "x" * 4097, "signed.manifest.body: expected a string of at most 4096 "),
    ("manifest", "key_id", "0" * 17, "signed.manifest.key_id: expected a string of 16 "),
])
def test_a_record_field_out_of_bounds_is_refused_by_name(
    name: str, field: str, value: object, message: str
) -> None:
    with pytest.raises(frames.ProtocolError) as refused:
        frames.from_map(with_field(name, field, value), RECORDS[name][1])
    assert str(refused.value).startswith(message)
    assert len(str(refused.value)) < 300  # a hostile value is not quoted whole


hostile_values: st.SearchStrategy[object] = (
    msgpack_values | st.text(min_size=250, max_size=5000)
    | st.sampled_from([-1, 0, (1 << 64) - 1, 65536, True, 1.5, float("nan"), "", "x" * 89, [],
                      {}, None])
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(RECORDS)), st.data())
def test_a_record_field_of_any_value_decodes_checked_or_is_refused_by_name(
    name: str, data: st.DataObject
) -> None:
    frame, protocol, path = RECORDS[name]
    field = data.draw(st.sampled_from(sorted(record_map(name)[1])))
    mapping = with_field(name, field, data.draw(hostile_values))
    where = "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path)
    try:
        decoded = frames.from_map(mapping, protocol)
    except frames.ProtocolError as error:
        assert str(error).startswith(f"{frame.TAG}{where}"), error
        return
    # Accepted: it is what its peer could have sent, and travels on unchanged.
    assert type(decoded) is type(frame)
    assert frames.encode(frames.decode(frames.encode(decoded), protocol)) == frames.encode(decoded)
    assert len(frames.encode(decoded)) <= len(msgpack.packb(mapping, use_bin_type=True)) + 64


def test_a_field_that_may_be_absent_travels_only_when_set_as_peers_always_sent_it() -> None:
    sign = Sign([HostPorts("vpn.test", udp=8443)], 7, bytes(32))
    assert frames.to_map(sign)["endpoints"] == [{"host": "vpn.test", "udp": 8443}]
    assert frames.to_map(Signed(ManifestText("{}", SIGNATURE)))["manifest"] == {
        "body": "{}", "signature": SIGNATURE}
    peer = PeerState("a", True, [], False, 0, None, None, None, None)
    status = frames.to_map(RouterStatus(1.0, "aura0", [], [peer], DroppedPackets(0, 0),
                                        HandshakeCounts(0, 0, 0)))
    assert "registry" not in status and "transport" not in status["peers"][0]
    assert status["peers"][0]["quota_bytes"] is None  # nil has a meaning here: unlimited
    # Sent either way, they decode to the same frame.
    for mapping in (frames.to_map(sign), {**frames.to_map(sign), "endpoints": [
            {"host": "vpn.test", "udp": 8443, "tcp": None, "quic": None}]}):
        assert frames.from_map(mapping, TO_SIGNER) == sign


def test_parts_of_another_frame_may_not_interleave() -> None:
    async def scenario() -> None:
        sender, receiver = pair(FROM_ROUTER)
        for part in ({"t": "peers", "peers": [], "chunk": "peers", "end": False},
                     {"t": "status_reply", "peers": [], "chunk": "peers", "end": True}):
            sender.sock.send(msgpack.packb(part))
        with pytest.raises(ipc.ChannelClosed, match="malformed part"):
            await asyncio.wait_for(receiver.recv(), 5)

    asyncio.run(scenario())


@pytest.mark.parametrize("part", [
    # A transport (or an operator) may send no parts at all: the router's frames are whole.
    {"t": "hs", "items": [[1, bytes(148)]], "chunk": "items", "end": False},
    {"t": "status", "junk": [bytes(60_000)], "chunk": "junk", "end": False},
    {"t": "pkts", "at": 1.0, "batches": [["a", [bytes(60_000)]]], "chunk": "batches",
     "end": False},
])
def test_a_frame_that_is_never_sent_in_parts_may_not_start_one(part: dict[str, Any]) -> None:
    """Else the joiner holds part after part (a terabyte in 1 MiB frames) for a frame that
    never ends: memory no receive-queue bound sees."""
    async def scenario() -> None:
        sender, receiver = pair(TO_ROUTER)
        sender.sock.send(msgpack.packb(part, use_bin_type=True))
        with pytest.raises(ipc.ChannelClosed, match="not sent in parts"):
            await asyncio.wait_for(receiver.recv(), 5)

    asyncio.run(scenario())


def test_parts_name_their_frames_own_chunked_list() -> None:
    async def scenario() -> None:
        sender, receiver = pair(FROM_ROUTER)
        part = {"t": "peers", "peers": [], "junk": [bytes(60_000)], "chunk": "junk",
                "end": False}
        sender.sock.send(msgpack.packb(part, use_bin_type=True))
        with pytest.raises(ipc.ChannelClosed, match="not sent in parts"):
            await asyncio.wait_for(receiver.recv(), 5)

    asyncio.run(scenario())


def test_parts_are_joined_within_a_bound_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frames, "MAX_JOINED_BYTES", 1 << 20)
    joiner = frames.Joiner(FROM_ROUTER)
    part = {"t": "peers", "peers": [["x" * 60_000]], "chunk": "peers", "end": False}
    size = len(msgpack.packb(part, use_bin_type=True))
    for _ in range((1 << 20) // size):
        assert joiner.add(dict(part, peers=[["x" * 60_000]]), size) is None
    with pytest.raises(frames.ProtocolError, match="bytes"):
        joiner.add(dict(part, peers=[["x" * 60_000]]), size)


# -- frames that outgrow one frame ---------------------------------------------------------
def registry_file(path: Path, count: int) -> None:
    key = base64.b64encode(bytes(32)).decode()
    peers = [
        {"name": f"peer-{i:05d}", "public_key": base64.b64encode(i.to_bytes(32, "big")).decode(),
         "preshared_key": key, "address_v4": str(ipaddress.ip_address("10.64.0.2") + i),
         "address_v6": None, "enabled": True, "created": "2026-01-01T00:00:00Z"}
        for i in range(count)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
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
        transport = ipc.Channel(left, FROM_ROUTER, "router")
        serving = asyncio.ensure_future(router.on_channel(ipc.Channel(right, TO_ROUTER, "udp")))
        frame = await asyncio.wait_for(transport.recv(), 30)
        assert isinstance(frame, Peers)
        assert len(frame.peers) == PEERS
        assert frame.peers[-1].name == f"peer-{PEERS - 1:05d}"
        assert len(frames.encode(frame)) > MAX_FRAME  # one frame could never have held it
        # A registry change pushes the whole list again, still joined as one.
        router.reload()
        again = await asyncio.wait_for(transport.recv(), 30)
        assert isinstance(again, Peers) and again.peers == frame.peers
        serving.cancel()
        transport.close()

    asyncio.run(scenario())


def test_status_of_20000_connected_peers_reaches_the_admin(router: Router) -> None:
    async def scenario() -> None:
        for i, peer in enumerate(router.registry):
            router.sessions.up(peer.name, LINK, "udp", f"198.51.100.{i % 250}:{1024 + i}",
                               peer.addresses, 1_700_000_000.0)
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        admin = ipc.Channel(left, FROM_ROUTER, "router")
        serving = asyncio.ensure_future(router.on_channel(ipc.Channel(right, TO_ROUTER, "admin")))
        await admin.send_reliable(Status())
        reply = await asyncio.wait_for(admin.recv(), 60)
        assert isinstance(reply, RouterStatus) and len(reply.peers) == PEERS
        assert all(p.connected for p in reply.peers)
        assert len(frames.encode(reply)) > MAX_FRAME
        serving.cancel()
        admin.close()

    asyncio.run(scenario())


def test_chunk_parts_stay_within_chunk_bytes() -> None:
    async def scenario() -> None:
        sender, receiver = pair(FROM_ROUTER)
        items = [PeerKey("p" * (i % 700), bytes(32), bytes(16)) for i in range(5000)]
        task = asyncio.ensure_future(sender.send_reliable(Peers(items)))
        sizes = []
        raw = receiver.sock
        receiver._stop_reading()  # read the parts by hand to see their sizes
        while True:
            await asyncio.sleep(0)
            try:
                data = raw.recv(MAX_FRAME + 1)
            except BlockingIOError:
                continue
            sizes.append(len(data))
            if frames.read_map(data)["end"]:
                break
        await task
        assert len(sizes) > 1 and max(sizes) <= frames.CHUNK_BYTES

    asyncio.run(scenario())


def test_one_wakeup_reads_at_most_the_read_budget() -> None:
    async def scenario() -> None:
        sender, receiver = pair()
        handled: list[list[tuple[str, list[bytes]]]] = []
        receiver.on_packets = handled.append
        receiver._stop_reading()  # this test plays the event loop
        packet = b"\x45" + bytes(59_999)
        for _ in range(10):
            assert sender.send(Packets(time.monotonic(), [("a", [packet])]))
        receiver._readable()
        assert 0 < len(handled) <= channel.READ_BUDGET // len(packet) + 1 < 10
        receiver._readable()  # the next wakeup goes on where the last stopped
        assert len(handled) == min(10, 2 * (channel.READ_BUDGET // len(packet) + 1))
        sender.close()
        receiver.close()

    asyncio.run(scenario())


def test_the_client_state_travels_as_its_string_and_decodes_to_its_member() -> None:
    frame = RECORDS["client"][0]
    assert isinstance(frame, ClientStatus)
    wire = frames.encode(frame)
    assert msgpack.unpackb(wire)["status"]["state"] == "up"
    decoded = frames.from_map(msgpack.unpackb(wire), FROM_CLIENT)
    assert isinstance(decoded, ClientStatus) and decoded.status.state is TunnelState.UP
