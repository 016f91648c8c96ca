"""aura-quic end to end on a server with several addresses.

Topology from tests/e2e/topology.py: the client sits on the server's second link
(198.51.101.0/24) and writes to the server's public address 198.51.100.1 on the first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.e2e.test_client_udp import client_config
from tests.e2e.test_transports_fallback import wait_transport
from tests.e2e.topology import AURA, INTERNET_HOST, PUBLIC_HOST, SERVER_TUNNEL_V4, build, iperf3
from tests.netns import Lab

pytestmark = pytest.mark.e2e


def test_replies_leave_from_the_address_a_client_wrote_to(lab: Lab, tmp_path: Path) -> None:
    # The kernel's pick of source for a reply to 198.51.101.2 is 198.51.101.1; the Aura
    # client's connected UDP socket drops anything not from 198.51.100.1, so without the
    # carrier choosing the source the QUIC handshake never completes.
    server = build(lab, tmp_path)
    server.init(transports=("quic",))
    server.start()
    server.add_client_namespace()
    ns = server.add_client_namespace()
    assert server.server_address_for(1) != PUBLIC_HOST
    config = client_config(server, tmp_path)
    document = yaml.safe_load(config.read_text())
    document["transports"]["order"] = ["quic"]
    config.write_text(yaml.safe_dump(document))
    lab.spawn(ns, [*AURA, "client", "up", "--foreground", str(config)],
              log=tmp_path / "client.log")
    wait_transport(lab, ns, config, "quic", timeout=30)
    assert lab.ping(ns, SERVER_TUNNEL_V4)
    assert lab.ping(ns, INTERNET_HOST), "NAT to the host behind the server"
    upload = iperf3(lab, ns, server.internet_ns, INTERNET_HOST, seconds=2)
    download = iperf3(lab, ns, server.internet_ns, INTERNET_HOST, seconds=2, reverse=True)
    assert upload > 1e6 and download > 1e6, (upload, download)

