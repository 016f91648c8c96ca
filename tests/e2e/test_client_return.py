"""The client returns to its preferred transport by itself once UDP works again.

nftables in the client's namespace blocks all UDP: the client falls back to TLS over TCP. Once
the block is lifted, its next probe (every 30 s, with jitter) completes a handshake over UDP
beside the TCP path, and the client moves there without dropping the tunnel.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from aura_lab.netns import Lab
from aura_lab.topology import (
    AURA,
    INTERNET_HOST,
    assert_traffic,
    block,
    build,
    client_config,
    client_status,
    wait_transport,
)

pytestmark = pytest.mark.e2e


def test_udp_unblocked_brings_the_client_back_from_tcp(lab: Lab, tmp_path: Path) -> None:
    server = build(lab, tmp_path)
    server.init(transports=("udp", "tcp", "quic"))
    server.start()
    ns = server.add_client_namespace()
    block(lab, ns, tmp_path, "meta l4proto udp")
    config = client_config(server, tmp_path, keepalive=3)
    log = tmp_path / "client.log"
    lab.spawn(ns, [*AURA, "--verbose", "client", "up", "--foreground", str(config)], log=log)
    wait_transport(lab, ns, config, "tcp")
    assert lab.ping(ns, INTERNET_HOST)

    # While UDP stays blocked, a round of probes fails quietly and costs the tunnel nothing.
    lab.wait_for(lambda: "probe of quic" in log.read_text(), timeout=60, what="a probe round")
    after_up = log.read_text().split("tunnel up over tcp", 1)[1]
    assert "probe of udp 198.51.100.1:8443 failed" in after_up
    assert not [line for line in after_up.splitlines()
                if any(word in line for word in ("WARNING", "ERROR", "Traceback"))]
    assert client_status(lab, ns, config)["transport"] == "tcp"
    assert lab.ping(ns, INTERNET_HOST)

    lab.run(ns, ["nft", "delete", "table", "inet", "censor"])
    unblocked = time.monotonic()
    wait_transport(lab, ns, config, "udp", timeout=45)
    took = time.monotonic() - unblocked
    status = client_status(lab, ns, config)
    assert status["endpoint"] == "198.51.100.1:8443"
    text = log.read_text()
    assert "moved from tcp to udp" in text
    assert "path broke" not in text, f"moving must not break the tunnel (after {took:.0f} s)"
    assert " ERROR " not in text

    alice = next(p for p in server.status()["peers"] if p["name"] == "alice")
    assert alice["connected"] and alice["transport"] == "udp"
    assert_traffic(lab, ns, server)
    assert client_status(lab, ns, config)["transport"] == "udp"
