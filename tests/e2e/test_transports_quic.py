"""aura-quic end to end: a server with several addresses, and a tunnel MTU that keeps QUIC
datagrams unfragmented.

Topology from aura_lab/topology.py: the first client namespace sits on 198.51.100.0/24; a
second one on the server's second link (198.51.101.0/24) writes to the server's public address
198.51.100.1 on the first.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from aura_lab.netns import Lab
from aura_lab.topology import (
    AURA,
    INTERNET_HOST,
    PUBLIC_HOST,
    SERVER_TUNNEL_V4,
    block,
    build,
    client_config,
    client_status,
    iperf3,
    wait_transport,
)
from services.client.carriers.quic import TUNNEL_MTU

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



FRAGMENTS = "(ip and ip[6:2] & 0x3fff != 0) or (ip6 and ip6[6] == 44)"
# Near full-sized QUIC packets: frames of at least the size a tunnel packet of the QUIC tunnel
# MTU makes in IPv4 (tcpdump counts the link header too).
FULL_SIZED = f"udp and greater {TUNNEL_MTU + 32 + 30 + 8 + 20}"


def uplink(lab: Lab, ns: str) -> str:
    """The client namespace's link to the server (its only interface with an IPv4 address
    besides loopback and the tunnel)."""
    for entry in json.loads(lab.run(ns, ["ip", "-j", "-4", "addr", "show"]).stdout):
        if entry["ifname"] != "lo" and not entry["ifname"].startswith("aura-"):
            return str(entry["ifname"])
    raise AssertionError(f"no uplink in {ns}")


def link_mtu(lab: Lab, ns: str, name: str) -> int:
    return int(json.loads(lab.run(ns, ["ip", "-j", "link", "show", "dev", name]).stdout)[0]
               ["mtu"])


def capture(lab: Lab, ns: str, device: str, bpf: str, pcap: Path) -> subprocess.Popen[bytes]:
    log = pcap.with_suffix(".log")
    process = lab.spawn(ns, ["tcpdump", "-i", device, "-n", "-U", "-w", str(pcap), bpf],
                        log=log)
    lab.wait_for(lambda: "listening on" in log.read_text(), what=f"tcpdump for {bpf}")
    return process


def captured(lab: Lab, ns: str, pcap: Path) -> int:
    return len(lab.run(ns, ["tcpdump", "-n", "-r", str(pcap)]).stdout.splitlines())


def test_quic_tunnel_mtu_keeps_datagrams_unfragmented_and_udp_restores_it(
    lab: Lab, tmp_path: Path
) -> None:
    server = build(lab, tmp_path)
    server.init(transports=("udp", "quic"))
    server.start()
    ns = server.add_client_namespace()
    block(lab, ns, tmp_path, "udp dport 8443")  # the WireGuard port only; QUIC gets through
    config = client_config(server, tmp_path, keepalive=3)
    configured_mtu = yaml.safe_load(config.read_text())["interface"]["mtu"]
    assert configured_mtu > TUNNEL_MTU
    log = tmp_path / "client.log"
    lab.spawn(ns, [*AURA, "--verbose", "client", "up", "--foreground", str(config)], log=log)
    wait_transport(lab, ns, config, "quic")
    status = client_status(lab, ns, config)
    assert status["mtu"] == link_mtu(lab, ns, status["tun"]) == TUNNEL_MTU

    device = uplink(lab, ns)
    fragments = capture(lab, ns, device, FRAGMENTS, tmp_path / "fragments.pcap")
    full_sized = capture(lab, ns, device, FULL_SIZED, tmp_path / "full.pcap")
    upload = iperf3(lab, ns, server.internet_ns, INTERNET_HOST, seconds=3)
    download = iperf3(lab, ns, server.internet_ns, INTERNET_HOST, seconds=3, reverse=True)
    # The capture does see fragments: an echo too large for the link, beside the tunnel, is
    # two each way.
    lab.run(ns, ["ping", "-c", "1", "-W", "2", "-s", "2000", PUBLIC_HOST])
    lab.wait_for(lambda: captured(lab, ns, tmp_path / "fragments.pcap") >= 2 + 2,
                 timeout=5, what="the echo's fragments in the capture")
    for process in (fragments, full_sized):
        lab.stop(process, sig=signal.SIGINT)
    assert upload > 1e6 and download > 1e6, (upload, download)
    assert captured(lab, ns, tmp_path / "full.pcap") > 1000, "full-sized packets both ways"
    assert captured(lab, ns, tmp_path / "fragments.pcap") == 2 + 2, "the echo's only"

    lab.run(ns, ["nft", "delete", "table", "inet", "censor"])
    wait_transport(lab, ns, config, "udp", timeout=45)  # the next probe round moves it back
    status = client_status(lab, ns, config)
    assert status["mtu"] == link_mtu(lab, ns, status["tun"]) == configured_mtu
    assert "moved from quic to udp" in log.read_text()
    assert lab.ping(ns, INTERNET_HOST)
