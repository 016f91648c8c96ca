"""The `aura client` over UDP end to end: up, traffic, status, down."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from aura_lab.netns import Lab
from aura_lab.topology import (
    AURA,
    INTERNET_HOST,
    SERVER_TUNNEL_V4,
    SERVER_TUNNEL_V6,
    AuraServer,
    assert_traffic,
    build,
    client_config,
    client_status,
)
from aura_lab.topology import client_is_up as is_up

pytestmark = pytest.mark.e2e

TUN = "aura-alice"


@pytest.fixture
def server(lab: Lab, tmp_path: Path) -> AuraServer:
    aura = build(lab, tmp_path)
    aura.init()
    aura.start()
    return aura


def routes(lab: Lab, ns: str, family: str = "-4") -> str:
    return lab.run(ns, f"ip {family} route show").stdout


def test_client_over_udp_carries_traffic_and_goes_down_cleanly(
    lab: Lab, server: AuraServer, tmp_path: Path
) -> None:
    config = client_config(server, tmp_path)
    ns = server.add_client_namespace()
    client = lab.spawn(ns, [*AURA, "client", "up", "--foreground", str(config)],
                       log=tmp_path / "client.log")
    lab.wait_for(lambda: is_up(lab, ns, config), timeout=20, what="client up")

    # Split routing: everything through the tunnel except the server's own address, which
    # keeps the original default route.
    assert f"0.0.0.0/1 dev {TUN}" in routes(lab, ns)
    assert f"::/1 dev {TUN}" in routes(lab, ns, "-6")
    assert lab.run(ns, "ip route get 198.51.100.1").stdout.split()[2] != TUN
    assert f"dev {TUN}" in lab.run(ns, f"ip route get {INTERNET_HOST}").stdout

    assert_traffic(lab, ns, server)
    assert lab.ping(ns, SERVER_TUNNEL_V6), "IPv6 inside the tunnel"

    status = client_status(lab, ns, config)
    assert status["state"] == "up" and status["transport"] == "udp"
    assert status["endpoint"] == "198.51.100.1:8443"
    assert status["rx_bytes"] > 1_000_000 and status["tx_bytes"] > 1_000_000
    assert status["rx_packets"] > 100 and status["tx_packets"] > 100
    assert time.time() - status["last_handshake"] < 60
    assert "10.77.0.2" in " ".join(status["addresses"])

    alice = next(p for p in server.status()["peers"] if p["name"] == "alice")
    assert alice["connected"] and alice["transport"] == "udp"

    human = lab.run(ns, [*AURA, "client", "status", str(config)]).stdout
    assert "up over udp to 198.51.100.1:8443" in human

    down = lab.run(ns, [*AURA, "client", "down", str(config)])
    assert "stopped" in down.stdout
    assert client.wait(10) == 0
    assert lab.run(ns, f"ip link show {TUN}", check=False).returncode != 0
    assert TUN not in routes(lab, ns) and TUN not in routes(lab, ns, "-6")
    assert not (tmp_path / "alice-run" / "control.sock").exists()
    assert not lab.ping(ns, INTERNET_HOST, count=1)


def test_detached_up_reports_transport_and_address(
    lab: Lab, server: AuraServer, tmp_path: Path
) -> None:
    config = client_config(server, tmp_path)
    ns = server.add_client_namespace()
    up = lab.run(ns, [*AURA, "client", "up", str(config)], timeout=30)
    assert "connected over udp to 198.51.100.1:8443" in up.stdout
    assert "10.77.0.2" in up.stdout
    try:
        assert lab.ping(ns, INTERNET_HOST)
        again = lab.run(ns, [*AURA, "client", "up", str(config)], check=False)
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        lab.run(ns, [*AURA, "client", "down", str(config)])
    assert lab.run(ns, f"ip link show {TUN}", check=False).returncode != 0
    assert "tunnel up over udp" in (tmp_path / "alice-run" / "alice.log").read_text()


def test_direct_networks_bypass_the_tunnel(lab: Lab, server: AuraServer, tmp_path: Path) -> None:
    config = client_config(server, tmp_path)
    document = yaml.safe_load(config.read_text())
    document["tunnel"]["split"]["direct"] = [{"cidr": "203.0.113.0/24"}]
    config.write_text(yaml.safe_dump(document))
    ns = server.add_client_namespace()
    lab.run(ns, "ip route add default via 198.51.100.1")  # the LAN's own way out
    lab.spawn(ns, [*AURA, "client", "up", "--foreground", str(config)],
              log=tmp_path / "client.log")
    lab.wait_for(lambda: is_up(lab, ns, config), timeout=20, what="client up")
    assert lab.ping(ns, SERVER_TUNNEL_V4)
    assert TUN not in lab.run(ns, f"ip route get {INTERNET_HOST}").stdout
    assert f"dev {TUN}" in lab.run(ns, "ip route get 203.0.114.9").stdout


def test_client_survives_idle_periods_and_a_server_restart(
    lab: Lab, server: AuraServer, tmp_path: Path
) -> None:
    config = client_config(server, tmp_path, keepalive=3)
    ns = server.add_client_namespace()
    log = tmp_path / "client.log"
    client = lab.spawn(ns, [*AURA, "client", "up", "--foreground", str(config)], log=log)
    lab.wait_for(lambda: is_up(lab, ns, config), timeout=20, what="client up")
    assert lab.ping(ns, SERVER_TUNNEL_V4)

    # Idle for longer than keepalive + grace: the liveness probe keeps the path.
    time.sleep(10)
    assert is_up(lab, ns, config) and "path broke" not in log.read_text()

    server.stop()
    lab.wait_for(lambda: "path broke" in log.read_text(), timeout=15, what="broken path logged")
    broke = next(line for line in log.read_text().splitlines() if "path broke" in line)
    assert "WARNING" in broke and "udp" in broke
    assert not is_up(lab, ns, config)

    server.start()
    lab.wait_for(lambda: is_up(lab, ns, config), timeout=45, what="client back up")
    assert lab.ping(ns, INTERNET_HOST)
    assert client.poll() is None


def test_pushed_manifest_moves_the_client_to_new_ports(
    lab: Lab, server: AuraServer, tmp_path: Path
) -> None:
    config = client_config(server, tmp_path)
    ns = server.add_client_namespace()
    log = tmp_path / "client.log"
    lab.spawn(ns, [*AURA, "client", "up", "--foreground", str(config)], log=log)
    lab.wait_for(lambda: is_up(lab, ns, config), timeout=20, what="client up")

    # The operator announces the port the server is about to move to; the router pushes it.
    server.aura("sign-bridges", "--endpoints", "198.51.100.1:udp=8445")
    lab.wait_for(lambda: client_status(lab, ns, config)["manifest_serial"] >= 1, timeout=10,
                 what="manifest accepted by the client")
    assert (tmp_path / "alice.state.json").exists()

    server.stop()
    lab.ping(ns, SERVER_TUNNEL_V4, count=1)  # traffic meets the closed port at once
    lab.wait_for(lambda: not is_up(lab, ns, config), timeout=15, what="broken path noticed")
    document = yaml.safe_load(server.config.read_text())
    document["transports"]["udp"]["port"] = 8445
    server.config.write_text(yaml.safe_dump(document))
    server.start()
    lab.wait_for(lambda: is_up(lab, ns, config), timeout=45, what="client up on the new port")
    assert client_status(lab, ns, config)["endpoint"] == "198.51.100.1:8445"
    assert lab.ping(ns, INTERNET_HOST)
