"""A dynamic address pool end to end: clients provisioned without an address learn it in-tunnel.

`aura server init --strategy dynamic`; `aura provision-client NAME --format aura` writes
`interface.addresses: []`; the router leases an address when the session comes up and tells the
client in the control message. The lease is released when the transport reports the session
down. WireGuard has no goodbye message, so over UDP that is when the session has been idle for
`network.lease_idle_timeout`: no authenticated packet (data, keepalive, handshake) from the
client for that long.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from aura_lab.netns import Lab
from aura_lab.topology import (
    AURA,
    INTERNET_HOST,
    SERVER_TUNNEL_V4,
    AuraServer,
    build,
    client_status,
)

pytestmark = pytest.mark.e2e

IDLE = 8.0  # network.lease_idle_timeout for the test (default 300 s)
KEEPALIVE = 2  # the clients' keepalive: shorter than IDLE, so a live client is never idle


def leases(server: AuraServer) -> dict[str, str]:
    document = json.loads((server.folder / "state" / "router" / "leases.json").read_text())
    return {name: lease["v4"] for name, lease in document["leases"].items()}


def peer(server: AuraServer, name: str) -> dict[str, object]:
    return next(p for p in server.status()["peers"] if p["name"] == name)


def up(lab: Lab, server: AuraServer, name: str) -> tuple[str, Path, str]:
    """Provision `name` without an address, start its client detached; (ns, config, v4)."""
    config = server.provision(name, "aura")
    document = yaml.safe_load(config.read_text())
    assert document["interface"]["addresses"] == []
    document["runtime_dir"] = str(server.folder / f"{name}-run")
    document["keepalive"] = KEEPALIVE
    config.write_text(yaml.safe_dump(document))
    ns = server.add_client_namespace()
    started = lab.run(ns, [*AURA, "client", "up", str(config)], timeout=30)
    assert "connected over udp" in started.stdout, started.stdout + started.stderr
    addresses = client_status(lab, ns, config)["addresses"]
    v4 = next(a.split("/")[0] for a in addresses if "." in a)
    assert v4 in started.stdout
    return ns, config, v4


def test_dynamic_pool_leases_addresses_in_tunnel(lab: Lab, tmp_path: Path) -> None:
    server = build(lab, tmp_path)
    server.init(extra=("--strategy", "dynamic"), edit={"network.lease_idle_timeout": IDLE})
    server.start()

    alice_ns, alice_config, alice_v4 = up(lab, server, "alice")
    assert lab.ping(alice_ns, SERVER_TUNNEL_V4)
    assert lab.ping(alice_ns, INTERNET_HOST)
    assert peer(server, "alice")["address"][0] == alice_v4  # type: ignore[index]
    assert alice_v4 in server.aura("status").stdout
    assert leases(server) == {"alice": alice_v4}
    human = lab.run(alice_ns, [*AURA, "client", "status", str(alice_config)]).stdout
    assert f"addresses:      {alice_v4}/32" in human

    bob_ns, bob_config, bob_v4 = up(lab, server, "bob")
    assert bob_v4 != alice_v4
    assert lab.ping(bob_ns, INTERNET_HOST)
    assert lab.ping(alice_ns, INTERNET_HOST), "alice keeps her address and her traffic"
    assert leases(server) == {"alice": alice_v4, "bob": bob_v4}

    lab.run(alice_ns, [*AURA, "client", "down", str(alice_config)])
    down = time.monotonic()
    lab.wait_for(lambda: "alice" not in leases(server), timeout=IDLE + 15,
                 what="alice's lease released once her session was idle")
    silent = time.monotonic() - down
    # Her last keepalive may have left up to KEEPALIVE before `down`; ticks add up to 0.25 s.
    assert IDLE - KEEPALIVE - 0.5 <= silent <= IDLE + 5, silent
    assert peer(server, "alice")["connected"] is False
    # Bob sent no data for longer than IDLE, but his keepalives count: he keeps his address.
    assert peer(server, "bob")["connected"] is True
    assert leases(server) == {"bob": bob_v4}
    assert lab.ping(bob_ns, INTERNET_HOST)
    lab.run(bob_ns, [*AURA, "client", "down", str(bob_config)])
