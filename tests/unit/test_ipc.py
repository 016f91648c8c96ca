"""IPC channels over real SEQPACKET sockets: hello, credentials, limits, drops, closing."""

from __future__ import annotations

import asyncio
import functools
import os
import pwd
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_common import ipc
from aura_common.errors import AuraError
from aura_common.ipc import frames, listener
from aura_common.ipc.accounts import Accounts
from aura_common.ipc.frames import (
    MAX_FRAME,
    PROTOCOL_VERSION,
    Down,
    Frame,
    Packets,
    Protocol,
    SessionDown,
    Sign,
    Status,
)
from aura_common.netio.codel import CoDel

REPO = str(Path(__file__).resolve().parents[2])
Handler = Callable[[ipc.Channel], Awaitable[None]]


@frames.frame("echo")
@dataclass(frozen=True, slots=True)
class Echo(Frame):
    """What the test listener answers: the frame it got, encoded again, and the caller's role."""

    frame: bytes
    role: str


def echoed(mapping: dict[str, object], role: str) -> Echo:
    return Echo(msgpack.packb(mapping, use_bin_type=True), role)


# What the test listener takes, and what its callers take back.
TO_ECHO = Protocol("to echo", Packets, SessionDown, Status, Sign)
FROM_ECHO = Protocol("from echo", Echo, Packets, SessionDown)


async def echo(channel: ipc.Channel) -> None:
    while True:
        frame = await channel.recv()
        await channel.send_reliable(Echo(frames.encode(frame), channel.role))


async def connect(path: Path | str, role: str) -> ipc.Channel:
    return await ipc.connect(path, role, FROM_ECHO)


def pair() -> tuple[ipc.Channel, ipc.Channel]:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return ipc.Channel(left, FROM_ECHO, "router"), ipc.Channel(right, TO_ECHO, "udp")


def packets(batches: list[tuple[str, list[bytes]]], at: float | None = None) -> Packets:
    return Packets(time.monotonic() if at is None else at, batches)


def anyone(peer: ipc.Credentials, claimed: str) -> str:
    return claimed


def everyone(peer: ipc.Credentials) -> str:
    return f"uid {peer.uid}"


@asynccontextmanager
async def listening(
    path: Path, handler: Handler = echo, authorize: ipc.Authorize = anyone,
    admits: ipc.Admits = everyone,
) -> AsyncIterator[ipc.Listener]:
    started = await ipc.Listener.start(path, handler, authorize, admits, protocol=TO_ECHO)
    try:
        yield started
    finally:
        await started.close()


def raw_client(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(5)
    sock.connect(str(path))
    return sock


def test_hello_and_round_trip_keep_bytes_and_strings(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "router.sock"
        async with listening(path):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
            channel = await connect(path, "udp")
            assert channel.role == "router"
            assert channel.peer_credentials.pid == os.getpid()
            frame = packets([("alice", [b"\x45\x00", b""])], 1.0)
            assert channel.send(frame)
            reply = await asyncio.wait_for(channel.recv(), 5)
            sent = {"t": "pkts", "at": 1.0, "batches": [["alice", [b"\x45\x00", b""]]]}
            assert reply == echoed(sent, "udp")  # bytes stay bytes, strings strings
            channel.close()
            assert not channel.send(frame)
            with pytest.raises(ipc.ChannelClosed):
                await channel.recv()

    asyncio.run(scenario())


def test_listener_refuses_wrong_protocol_version(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "router.sock"
        async with listening(path):
            loop = asyncio.get_running_loop()
            sock = raw_client(path)
            sock.send(msgpack.packb({"t": "hello", "v": 99, "role": "udp"}))
            reply = msgpack.unpackb(await loop.run_in_executor(None, sock.recv, 65536))
            assert reply["t"] == "error"
            assert "protocol version 1" in reply["message"]
            assert await loop.run_in_executor(None, sock.recv, 65536) == b""  # then closed
            sock.close()

    asyncio.run(scenario())


def test_connect_raises_on_listener_with_other_version(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = str(tmp_path / "future.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        server.bind(path)
        server.listen(1)
        loop = asyncio.get_running_loop()

        def answer_with_v2() -> None:
            conn, _ = server.accept()
            conn.recv(65536)
            conn.send(msgpack.packb({"t": "hello", "v": 2, "role": "router"}))
            conn.recv(65536)  # our error frame, then EOF
            conn.close()

        answering = loop.run_in_executor(None, answer_with_v2)
        with pytest.raises(ipc.HelloRejected, match="version mismatch: ours 1, theirs 2"):
            await connect(path, "udp")
        await answering
        server.close()

    asyncio.run(scenario())
    assert issubclass(ipc.HelloRejected, AuraError)


def _connect_as(uid: int, gid: int, path: str) -> str:
    """In a forked child that drops to `uid`/`gid`: say hello and report the answer."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: plain blocking sockets, never the parent's event loop
        result = "crashed"
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            sock = raw_client(Path(path))
            sock.send(msgpack.packb({"t": "hello", "v": PROTOCOL_VERSION, "role": "admin"}))
            reply = msgpack.unpackb(sock.recv(65536))
            if reply["t"] == "hello":
                sock.send(msgpack.packb({"t": "status"}))
                reply = msgpack.unpackb(sock.recv(65536))
            result = f"{reply['t']}: {reply.get('message', '')}"
        except BaseException as exc:
            result = f"crashed: {exc!r}"
        finally:
            os.write(write_end, result.encode())
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            return pipe.read().decode()
    finally:
        os.waitpid(pid, 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child as nobody")
def test_peer_credentials_are_checked() -> None:
    nobody = pwd.getpwnam("nobody")

    async def scenario() -> None:
        # A directory and socket nobody may reach, so only SO_PEERCRED stands in the way.
        directory = tempfile.mkdtemp(prefix="aura-ipc-")
        os.chmod(directory, 0o755)
        path = os.path.join(directory, "admin.sock")
        loop = asyncio.get_running_loop()
        try:
            for admin_gid, expected in (
                (None, f"error: permission denied: uid {nobody.pw_uid} may not act as admin"),
                (nobody.pw_gid, "echo: "),
            ):
                accounts = Accounts({}, admin_gid, own_uid=0)
                authorize = functools.partial(accounts.role_of, served=("admin",))
                async with listening(Path(path), authorize=authorize):
                    os.chmod(path, 0o666)
                    answer = await asyncio.wait_for(
                        loop.run_in_executor(None, _connect_as, nobody.pw_uid, nobody.pw_gid, path),
                        30,
                    )
                    assert answer == expected
        finally:
            os.rmdir(directory)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "bad_frame",
    [
        b"\x00" * (MAX_FRAME + 100),  # oversized
        b"\xc1",  # a msgpack byte that is never valid
        msgpack.packb([1, 2, 3]),  # valid msgpack, but not a frame
        msgpack.packb({"no_t": 1}),
        msgpack.packb({"t": 1}),
        msgpack.packb({1: 2, "t": "x"}),  # non-string map key
        msgpack.packb({"t": "session_down", "peer": 7}),  # a field of the wrong type
        msgpack.packb({"t": "session_down"}),  # a field missing
        msgpack.packb({"t": "hs", "items": []}),  # a frame this socket does not take
    ],
    ids=["oversized", "invalid", "list", "no-t", "int-t", "int-key", "field-type",
         "field-missing", "other-frame"],
)
def test_bad_frame_closes_only_that_channel(tmp_path: Path, bad_frame: bytes) -> None:
    async def scenario() -> None:
        path = tmp_path / "router.sock"
        async with listening(path):
            good = await connect(path, "udp")
            bad = await connect(path, "tcp")
            bad.sock.send(bad_frame)
            with pytest.raises(ipc.ChannelClosed):
                while True:  # an error frame may come first; then the channel ends
                    frame = await asyncio.wait_for(bad.recv(), 5)
                    assert isinstance(frame, frames.Error)
            await good.send_reliable(Status())
            assert (await asyncio.wait_for(good.recv(), 5)) == echoed({"t": "status"}, "udp")
            good.close()

    asyncio.run(scenario())


def test_sending_too_large_a_frame_is_refused_locally(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "router.sock"
        async with listening(path):
            channel = await connect(path, "udp")
            with pytest.raises(ipc.FrameTooLarge):
                channel.send(packets([("a", [b"x" * MAX_FRAME])]))
            channel.close()

    asyncio.run(scenario())


def test_full_socket_drops_and_counts_batches_but_loses_no_accepted_frame() -> None:
    async def scenario() -> None:
        sender, receiver = pair()
        # The receiver's task does not run while we send, so nothing is taken off the socket.
        packet = b"p" * 60_000
        accepted = rejected = 0
        for index in range(5000):
            if sender.send(packets([("a", [packet])], float(index))):
                accepted += 1
            else:
                rejected += 1
        assert rejected > 0 and accepted > 0
        assert sender.dropped == rejected
        # A control frame waits for room instead of being dropped.
        reliable = asyncio.ensure_future(sender.send_reliable(SessionDown("a")))
        receiver.aqm = CoDel(target=1e9)  # the numbers ride in `at`: no dropping for delay
        numbers = []
        while True:
            for frame in await asyncio.wait_for(receiver.recv_many(), 5):
                if isinstance(frame, SessionDown):
                    break
                assert isinstance(frame, Packets)
                numbers.append(frame.at)
            else:
                continue
            break
        await asyncio.wait_for(reliable, 5)
        assert len(numbers) == accepted
        assert numbers == sorted(numbers)
        sender.close()
        receiver.close()

    asyncio.run(scenario())


async def received_batches(
    receiver: ipc.Channel, count: int
) -> tuple[list[tuple[str, bytes]], int]:
    """(peer, packet) pairs of `pkts` frames until `count` packets came, and the frames."""
    received: list[tuple[str, bytes]] = []
    count_frames = 0
    while len(received) < count:
        frame = await asyncio.wait_for(receiver.recv(), 5)
        assert isinstance(frame, Packets)
        count_frames += 1
        received += [(peer, packet) for peer, batch in frame.batches for packet in batch]
    return received, count_frames


def test_send_packets_splits_batches_to_the_frame_limit() -> None:
    async def scenario() -> None:
        sender, receiver = pair()
        sender.max_frame = 10_000
        batch = [bytes([i]) * 3000 for i in range(10)]
        assert sender.send_packets([("alice", batch)])
        received, count = await received_batches(receiver, len(batch))
        assert received == [("alice", p) for p in batch]
        assert count == 4  # three packets per 10 000-byte frame
        sender.close()
        receiver.close()

    asyncio.run(scenario())


def test_send_packets_puts_many_peers_in_one_frame_in_order() -> None:
    async def scenario() -> None:
        sender, receiver = pair()
        batches = [(f"peer{i}", [bytes([i % 256]) * 84] * (1 + i % 3)) for i in range(1000)]
        assert sender.send_packets(batches)
        expected = [(peer, p) for peer, batch in batches for p in batch]
        received, count = await received_batches(receiver, len(expected))
        assert received == expected
        assert count == 1
        # More peers than a list may hold: split at MAX_ITEMS pairs, nothing lost or reordered.
        many = [(f"p{i}", [b"x" * 20]) for i in range(frames.MAX_ITEMS + 10)]
        assert sender.send_packets(many)
        received, count = await received_batches(receiver, len(many))
        assert received == [(peer, batch[0]) for peer, batch in many]
        assert count == 2
        sender.close()
        receiver.close()

    asyncio.run(scenario())


def test_peer_close_ends_recv_after_queued_frames() -> None:
    async def scenario() -> None:
        left, right = pair()
        assert left.send(SessionDown("a")) and left.send(SessionDown("b"))
        left.close()
        assert await right.recv() == SessionDown("a")
        assert await right.recv() == SessionDown("b")
        with pytest.raises(ipc.ChannelClosed, match="closed by the other side"):
            await asyncio.wait_for(right.recv(), 5)
        assert not right.send(SessionDown("c"))
        with pytest.raises(ipc.ChannelClosed):
            await right.send_reliable(SessionDown("c"))

    asyncio.run(scenario())


def test_stale_socket_is_replaced_but_live_one_is_not(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "router.sock"
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        dead.bind(str(path))
        dead.close()  # leaves the socket file behind, as a crashed process would
        async with listening(path):
            with pytest.raises(AuraError, match="already listening"):
                await ipc.Listener.start(path, echo, anyone, everyone, protocol=TO_ECHO)
            channel = await connect(path, "udp")  # the first listener still works
            channel.close()
        assert not path.exists()  # removed on close
        path.write_text("not a socket")
        with pytest.raises(AuraError, match="not a socket"):
            await ipc.Listener.start(path, echo, anyone, everyone, protocol=TO_ECHO)

    asyncio.run(scenario())


def test_listener_on_an_activated_socket_and_failing_handlers(tmp_path: Path) -> None:
    calls = 0

    async def flaky(channel: ipc.Channel) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("handler bug")
        await echo(channel)

    async def scenario() -> None:
        path = tmp_path / "activated.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.bind(str(path))
        sock.listen(8)
        activated = await ipc.Listener.start(sock, flaky, anyone, everyone, protocol=TO_ECHO,
                                             role="signer")
        first = await connect(path, "admin")
        with pytest.raises(ipc.ChannelClosed):
            await asyncio.wait_for(first.recv(), 5)  # the handler failed: channel closed
        second = await connect(path, "admin")
        assert second.role == "signer"
        await second.send_reliable(Status())
        assert (await asyncio.wait_for(second.recv(), 5)) == echoed({"t": "status"}, "admin")
        second.close()
        await activated.close()
        assert path.exists()  # systemd owns an activated socket's file

    asyncio.run(scenario())


def test_listener_creates_its_directory_and_hands_the_socket_to_a_group(tmp_path: Path) -> None:
    group = pwd.getpwnam("nobody").pw_gid

    async def scenario() -> None:
        path = tmp_path / "run" / "aura" / "router.sock"
        started = await ipc.Listener.start(path, echo, anyone, everyone, protocol=TO_ECHO,
                                           group=group)
        info = os.stat(path)
        assert stat.S_ISSOCK(info.st_mode) and info.st_gid == group
        assert stat.S_IMODE(info.st_mode) == 0o660
        await started.close()

    asyncio.run(scenario())


def test_connect_to_nothing_raises_oserror(tmp_path: Path) -> None:
    async def scenario() -> None:
        with pytest.raises(OSError):
            await connect(tmp_path / "missing.sock", "udp")

    asyncio.run(scenario())


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_decode_garbage_raises_only_protocol_error(data: bytes) -> None:
    for protocol in (frames.TO_ROUTER, frames.FROM_ROUTER, frames.TO_SIGNER, TO_ECHO):
        try:
            frame = frames.decode(data, protocol)
        except frames.ProtocolError:
            continue
        assert type(frame) is protocol.frames[frame.TAG]


def test_callers_waiting_for_their_hello_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listener, "MAX_UNAUTHENTICATED", 2)

    async def scenario() -> None:
        path = tmp_path / "router.sock"
        loop = asyncio.get_running_loop()
        async with listening(path) as started:
            silent = [raw_client(path) for _ in range(2)]  # connected, never say hello
            await asyncio.sleep(0.2)
            extra = raw_client(path)
            turned_away = msgpack.unpackb(await loop.run_in_executor(None, extra.recv, 100))
            assert turned_away["t"] == "error"
            assert await loop.run_in_executor(None, extra.recv, 100) == b""  # closed at once
            assert started.refused == 1
            for sock in (*silent, extra):
                sock.close()
            await asyncio.sleep(0.2)
            channel = await connect(path, "udp")  # room again once they are gone
            channel.close()

    asyncio.run(scenario())


TRANSPORT_UID, OPERATOR_UID, STRANGER_UID = 61001, 61002, 61003


def _connected_as(uid: int, path: str) -> socket.socket:
    """A socket connected to `path` while this process's effective uid is `uid`: SO_PEERCRED
    records the connecting process's credentials at connect()."""
    os.seteuid(uid)
    try:
        return raw_client(Path(path))
    finally:
        os.seteuid(0)


def _first_reply(sock: socket.socket, role: str) -> str:
    sock.send(msgpack.packb({"t": "hello", "v": PROTOCOL_VERSION, "role": role}))
    data = sock.recv(65536)
    return "closed" if not data else msgpack.unpackb(data)["t"]


@asynccontextmanager
async def open_to_everyone(accounts: Accounts) -> AsyncIterator[tuple[str, ipc.Listener]]:
    """A router socket serving a transport and admins as `accounts` decides, in a folder and
    with a mode that let any local account connect: its path and its listener."""
    served = ("udp", "admin")
    directory = tempfile.mkdtemp(prefix="aura-ipc-")
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "router.sock")
    try:
        async with listening(
            Path(path), authorize=functools.partial(accounts.role_of, served=served),
            admits=functools.partial(accounts.share, served=served),
        ) as started:
            os.chmod(path, 0o666)
            yield path, started
    finally:
        shutil.rmtree(directory)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as other uids")
def test_no_caller_can_hold_the_hello_slots_of_another_account() -> None:
    """A stranger (no role here) is closed as accepted; an admitted account sitting on its
    connections without a hello holds only its own share: the transport still gets in."""
    accounts = Accounts({TRANSPORT_UID: frozenset({"udp"})}, admin_gid=4242, own_uid=0,
                        member=lambda uid, gid, group: uid == OPERATOR_UID)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with open_to_everyone(accounts) as (path, started):
            for holder in (STRANGER_UID, OPERATOR_UID):
                held = [_connected_as(holder, path)
                        for _ in range(listener.MAX_UNAUTHENTICATED + 8)]
                await asyncio.sleep(0.3)  # every one accepted (or turned away)
                transport = _connected_as(TRANSPORT_UID, path)
                reply = await loop.run_in_executor(None, _first_reply, transport, "udp")
                assert reply == "hello", f"the transport was locked out by uid {holder}"
                transport.close()
                for sock in held:
                    sock.close()
            # Its hello waits, unread, as it is turned away: it still gets the answer.
            stranger = _connected_as(STRANGER_UID, path)
            stranger.send(msgpack.packb({"t": "hello", "v": PROTOCOL_VERSION,
                                         "role": "admin"}))
            answer = await loop.run_in_executor(None, stranger.recv, 65536)
            assert msgpack.unpackb(answer)["t"] == "error"
            stranger.close()
            assert started.refused >= listener.MAX_UNAUTHENTICATED + 8

    asyncio.run(scenario())


# More operators than the slots in all would hold, each with all its own uid may keep waiting.
ADMIN_MEMBERS = range(
    62001, 62001 + listener.MAX_UNAUTHENTICATED // listener.MAX_UNAUTHENTICATED_PER_UID + 1)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as other uids")
def test_the_admin_groups_members_together_cannot_hold_the_transports_hello_slots() -> None:
    """However many operators sit on connections without a hello, each within its own uid's
    share, they fill only the admin group's share: a transport and root still get in."""
    accounts = Accounts({TRANSPORT_UID: frozenset({"udp"})}, admin_gid=4242, own_uid=0,
                        member=lambda uid, gid, group: uid in ADMIN_MEMBERS)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with open_to_everyone(accounts) as (path, started):
            held = [_connected_as(member, path) for member in ADMIN_MEMBERS
                    for _ in range(listener.MAX_UNAUTHENTICATED_PER_UID)]
            await asyncio.sleep(0.3)  # every one accepted (or turned away)
            assert started.refused == len(held) - listener.MAX_UNAUTHENTICATED_PER_SHARE
            for uid, role in ((TRANSPORT_UID, "udp"), (0, "admin")):
                caller = _connected_as(uid, path)
                reply = await loop.run_in_executor(None, _first_reply, caller, role)
                assert reply == "hello", f"uid {uid} was locked out by the admin group"
                caller.close()
            for sock in held:
                sock.close()

    asyncio.run(scenario())


def test_packets_that_keep_waiting_on_the_link_are_dropped_at_dequeue_but_not_control() -> None:
    async def scenario() -> None:
        sender, receiver = pair()
        receiver.aqm = CoDel(target=10.0, interval=0.0)  # drop from the second late frame
        ip, control = b"\x45" + bytes(999), b"\xa7control"  # more than MAX_PACKET behind
        late = time.monotonic() - 100.0
        sender.send(packets([("a", [control, ip]), ("b", [ip, ip])], late))
        sender.send(packets([("a", [control]), ("b", [ip, ip])], late))
        # Fresh: CoDel stops dropping. The long target keeps it fresh through any stall of a
        # loaded test machine between this send and the read.
        sender.send(packets([("a", [ip, ip])]))
        received: list[Frame] = []
        while len(received) < 3:
            received += await asyncio.wait_for(receiver.recv_many(), 5)
        assert [f.batches for f in received if isinstance(f, Packets)] == [
            [("a", [control, ip]), ("b", [ip, ip])],  # waiting over target starts the clock
            [("a", [control]), ("b", [ip])],  # the head IP packet goes, the control stays
            [("a", [ip, ip])],
        ]
        assert receiver.delay_dropped == 1
        sender.close()
        receiver.close()

    asyncio.run(scenario())


def test_a_packet_dropped_for_waiting_is_the_busiest_peers() -> None:
    async def scenario() -> None:
        sender, receiver = pair()
        receiver.aqm = CoDel(target=10.0, interval=0.0)  # drop from the second late frame
        light, heavy = b"\x45light" + bytes(994), b"\x45heavy" + bytes(994)
        late = time.monotonic() - 100.0
        for _ in range(2):
            sender.send(packets([("a", [light]), ("b", [heavy] * 3)], late))
        received: list[Frame] = []
        while len(received) < 2:
            received += await asyncio.wait_for(receiver.recv_many(), 5)
        assert [f.batches for f in received if isinstance(f, Packets)] == [
            [("a", [light]), ("b", [heavy] * 3)],
            [("a", [light]), ("b", [heavy] * 2)],
        ]
        sender.close()
        receiver.close()

    asyncio.run(scenario())


def test_a_lone_late_packet_is_not_dropped_for_waiting() -> None:
    """A packet that waited because the reader was busy, with nothing queued behind it, is no
    standing queue (RFC 8289's maxpacket): a ping through a busy server keeps its reply."""
    async def scenario() -> None:
        sender, receiver = pair()
        receiver.aqm = CoDel(target=10.0, interval=0.0)
        ping = b"\x45" + bytes(83)
        late = time.monotonic() - 100.0
        for _ in range(3):
            sender.send(packets([("a", [ping])], late))
            [frame] = await asyncio.wait_for(receiver.recv_many(), 5)
            assert isinstance(frame, Packets) and frame.batches == [("a", [ping])]
        assert receiver.delay_dropped == 0
        sender.close()
        receiver.close()

    asyncio.run(scenario())


def test_packets_reach_their_handler_from_the_reader_and_keep_their_place_after_control() -> None:
    async def scenario() -> None:
        sender, receiver = pair()
        handled: list[list[tuple[str, list[bytes]]]] = []
        receiver.on_packets = handled.append
        ip = b"\x45" + bytes(19)
        assert sender.send(packets([("a", [ip])]))
        for _ in range(500):  # the reader runs; nobody waits in recv (a busy machine is slow)
            if handled:
                break
            await asyncio.sleep(0.01)
        assert handled == [[("a", [ip])]]
        # Packets sent after a control frame that is not taken yet wait behind it.
        await sender.send_reliable(SessionDown("a"))
        assert sender.send(packets([("b", [ip])]))
        await asyncio.sleep(0.05)
        assert len(handled) == 1
        assert await asyncio.wait_for(receiver.recv(), 5) == SessionDown("a")
        with pytest.raises(TimeoutError):  # the next recv hands the packets over, returns none
            await asyncio.wait_for(receiver.recv(), 0.2)
        assert handled[1] == [("b", [ip])]
        sender.close()
        receiver.close()

    asyncio.run(scenario())


def test_packets_handled_in_the_reader_do_not_wake_a_task_waiting_for_frames() -> None:
    async def scenario() -> None:
        sender, receiver = pair()
        handled: list[list[tuple[str, list[bytes]]]] = []
        receiver.on_packets = handled.append
        waiting = asyncio.ensure_future(receiver.recv())
        await asyncio.sleep(0)  # it waits for a frame now
        waiter = receiver._waiter
        assert waiter is not None
        ip = b"\x45" + bytes(19)
        for peer in ("a", "b", "c"):
            assert sender.send(packets([(peer, [ip])]))
        for _ in range(500):  # a busy machine is slow
            if len(handled) == 3:
                break
            await asyncio.sleep(0.01)
        assert len(handled) == 3
        # The same wait, never woken: no turn of the loop spent on it per batch.
        assert receiver._waiter is waiter and not waiter.done()
        await sender.send_reliable(SessionDown("a"))
        assert await asyncio.wait_for(waiting, 5) == SessionDown("a")
        sender.close()
        receiver.close()

    asyncio.run(scenario())


def ask(path: Path, frame: Frame, reply: type[Frame]) -> Frame:
    return ipc.request(path, frame, reply, FROM_ECHO, service="the echo", start="start it",
                       allowed="run as root")


def test_one_request_gets_its_reply_or_one_line_saying_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "service.sock"
    ready, stop = threading.Event(), threading.Event()

    async def serve() -> None:
        async with listening(path):
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.01)

    server = threading.Thread(target=asyncio.run, args=(serve(),))
    server.start()
    try:
        assert ready.wait(10)
        assert ask(path, Status(), Echo) == echoed({"t": "status"}, "admin")
        with pytest.raises(AuraError, match=r"^the echo answered status with echo$"):
            ask(path, Status(), SessionDown)
        with pytest.raises(AuraError, match=r"^the echo refused down: unexpected frame 'down'"):
            ask(path, Down(), Echo)  # not a frame it takes
    finally:
        stop.set()
        server.join(10)
    with pytest.raises(ipc.NotRunning, match=r"^the echo is not running \(no answer on "
                                             r".*service\.sock\): start it$"):
        ask(path, Status(), Echo)


def test_the_sender_sees_the_bytes_its_peer_has_not_read_yet() -> None:
    async def scenario() -> None:
        sender, receiver = pair()
        assert sender.unread_by_peer() == 0
        sender.send(packets([("a", [b"\x45" + bytes(9999)])]))
        assert sender.unread_by_peer() >= 10000
        await asyncio.wait_for(receiver.recv_many(), 5)
        assert sender.unread_by_peer() == 0
        sender.close()
        receiver.close()

    asyncio.run(scenario())
