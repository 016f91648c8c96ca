"""The router never waits on a lock another account can hold."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import replace
from pathlib import Path

from aura_common.config import ServerConfig
from aura_common.state.registry import RegisteredPeer, Registry
from tests.unit.held_lock import held_elsewhere
from tests.unit.router_fakes import FakeTransport, claim, new_router, router_config


def dynamic_config(tmp_path: Path) -> ServerConfig:
    config = router_config(tmp_path)
    return replace(config, network=replace(config.network, strategy="dynamic"))


def test_a_held_leases_lock_does_not_stall_a_session(tmp_path: Path) -> None:
    config = dynamic_config(tmp_path)
    with Registry.edit(config.peers_file) as registry:
        registry.add(RegisteredPeer("alice", b"a" * 32))
    with held_elsewhere(config.leases_file) as holder:

        async def scenario() -> float:
            router = new_router(config)
            transport = FakeTransport()
            router.transports[transport] = "udp"  # type: ignore[index]
            started = time.monotonic()
            claim(router, transport, "alice")
            elapsed = time.monotonic() - started
            assert router.sessions.get("alice") is not None
            assert router.leases.unsaved
            holder.kill()
            holder.wait()
            router.leases.flush()
            assert not router.leases.unsaved
            return elapsed

        # In a thread, so that a blocking lock fails the test instead of hanging it.
        result: list[float] = []
        worker = threading.Thread(target=lambda: result.append(asyncio.run(scenario())))
        worker.start()
        worker.join(10)
        assert result and result[0] < 1
        leases = json.loads(Path(config.leases_file).read_text())["leases"]
        assert leases["alice"]["v4"] == "10.77.0.2"
