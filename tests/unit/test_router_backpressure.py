"""A transport that sends requests and never reads the replies costs the router a bounded
backlog of replies, not memory for every request it sends."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path

import msgpack
import pytest

from aura_common import ipc
from aura_common.ipc import channel as channel_module
from aura_common.ipc.frames import TO_ROUTER
from aura_common.state.registry import RegisteredPeer
from tests.unit.router_fakes import new_router, router_config

BOUND = 64 << 10


def test_replies_a_transport_leaves_unread_hold_back_its_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(channel_module, "MAX_POSTED_BYTES", BOUND)
    config = router_config(
        tmp_path, RegisteredPeer("alice", bytes(range(32)), address_v4="10.77.0.2"))

    async def scenario() -> int:
        router = new_router(config)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        link = ipc.Channel(ours, TO_ROUTER, "udp")
        link.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)  # fills soon
        serving = asyncio.create_task(router.on_channel(link))
        ticket = router.authority.ticket("udp", bytes(range(32)), time.time())
        # Each session_up (a valid ticket: the transport's own peer) earns a welcome.
        request = msgpack.packb({"t": "session_up", "peer": "alice", "endpoint": "192.0.2.1:5",
                                 "handshake_at": 1.0, "ticket": ticket}, use_bin_type=True)
        theirs.setblocking(False)
        most = 0
        for _ in range(5000):
            with contextlib.suppress(BlockingIOError):
                theirs.send(request)
            await asyncio.sleep(0)
            most = max(most, link.posted_bytes)
        serving.cancel()
        link.close()
        theirs.close()
        return most

    most = asyncio.run(scenario())
    assert 0 < most <= BOUND + (8 << 10)
