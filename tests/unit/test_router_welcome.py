"""The router's in-tunnel welcome (address, DNS, routes, manifest) follows every handshake."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aura_common.config import ServerConfig
from aura_common.ipc.frames import Packets
from aura_common.state.registry import RegisteredPeer, Registry
from aura_common.wire.control import decode_control
from tests.unit.router_fakes import FakeTransport, claim, new_router


def test_a_client_that_restarts_within_its_old_session_is_welcomed_again(tmp_path: Path) -> None:
    config = ServerConfig.from_mapping({
        "version": 1, "public_host": "vpn.example", "state_dir": str(tmp_path),
        "network": {"dns": ["10.77.0.1"]},
    })
    with Registry.edit(config.peers_file) as registry:
        registry.add(RegisteredPeer("alice", bytes(range(32)), address_v4="10.77.0.2"))

    async def scenario() -> list[object]:
        router = new_router(config)
        link = FakeTransport()
        router.transports[link] = "udp"  # type: ignore[index]
        for at in (1.0, 2.0):  # the second: same transport, the old session still listed
            claim(router, link, "alice", handshake_at=at)
        await asyncio.sleep(0)
        return [decode_control(f.batches[0][1][0]) for f in link.frames if isinstance(f, Packets)]

    welcomes = asyncio.run(scenario())
    assert len(welcomes) == 2
    assert all([str(a) for a in w.dns] == ["10.77.0.1"] for w in welcomes)  # type: ignore[attr-defined]
