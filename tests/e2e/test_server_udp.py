"""The UDP transport end to end: stock WireGuard clients through the Aura server suite."""

from __future__ import annotations

import base64
import json
import os
import random
import struct
import subprocess
import sys
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
    iperf3,
    stock_wireguard_up,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(lab: Lab, tmp_path: Path) -> AuraServer:
    aura = build(lab, tmp_path)
    aura.init()
    aura.start()
    return aura


def wg_rx_bytes(lab: Lab, ns: str, ifname: str) -> int:
    line = lab.run(ns, f"wg show {ifname} transfer").stdout.split()
    return int(line[1])


def test_stock_client_reaches_server_and_internet(lab: Lab, server: AuraServer) -> None:
    conf = server.provision("alice", "wireguard")
    ns = server.add_client_namespace()
    stock_wireguard_up(lab, ns, conf)

    assert_traffic(lab, ns, server)
    assert lab.ping(ns, SERVER_TUNNEL_V6), "IPv6 inside the tunnel"

    status = server.status()
    alice = next(p for p in status["peers"] if p["name"] == "alice")
    assert alice["connected"] and alice["transport"] == "udp"
    assert alice["endpoint"].endswith(":" + alice["endpoint"].rsplit(":", 1)[1])
    assert alice["rx_bytes"] > 1_000_000 and alice["tx_bytes"] > 1_000_000
    assert time.time() - alice["last_handshake"] < 60


def test_two_clients_get_only_their_own_traffic_and_revocation_is_immediate(
    lab: Lab, server: AuraServer
) -> None:
    alice_ns, bob_ns = server.add_client_namespace(), server.add_client_namespace()
    stock_wireguard_up(lab, alice_ns, server.provision("alice", "wireguard"))
    bob_if = stock_wireguard_up(lab, bob_ns, server.provision("bob", "wireguard"))
    assert lab.ping(alice_ns, SERVER_TUNNEL_V4) and lab.ping(bob_ns, SERVER_TUNNEL_V4)
    assert lab.ping(alice_ns, "10.77.0.3"), "clients reach each other through the router"

    # 200 KB addressed to alice must not show up at bob.
    bob_before = wg_rx_bytes(lab, bob_ns, bob_if)
    lab.run(server.ns, ["ping", "-c", "200", "-i", "0.005", "-s", "1000", "-q", "10.77.0.2"])
    assert wg_rx_bytes(lab, bob_ns, bob_if) - bob_before < 20_000

    server.aura("revoke-client", "bob")
    revoked_at = time.monotonic()
    time.sleep(1.0)
    assert not lab.ping(bob_ns, SERVER_TUNNEL_V4, count=2), "revoked client still passes traffic"
    assert lab.ping(alice_ns, SERVER_TUNNEL_V4), "the other client is disturbed"
    assert time.monotonic() - revoked_at < 10
    assert [p["name"] for p in server.status()["peers"]] == ["alice"]
    # Not only the router: the transport dropped bob's keys, so he cannot even handshake.
    assert "peer bob withdrawn: session closed" in server.log.read_text()


def captured_datagrams(pcap: Path, port: int) -> list[bytes]:
    """UDP payloads sent to `port` from a pcap file (Ethernet or Linux cooked framing)."""
    data = pcap.read_bytes()
    link_type = struct.unpack_from("<I", data, 20)[0]
    link_header = {1: 14, 113: 16, 276: 20}[link_type]  # Ethernet, Linux SLL, SLL2
    offset, payloads = 24, []
    while offset + 16 <= len(data):
        _, _, captured, _ = struct.unpack_from("<IIII", data, offset)
        frame = data[offset + 16: offset + 16 + captured]
        offset += 16 + captured
        ip = frame[link_header:]
        if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        udp = ip[(ip[0] & 0xF) * 4:]
        if struct.unpack_from("!H", udp, 2)[0] == port:
            payloads.append(udp[8:])
    return payloads


def test_garbage_truncated_and_replayed_datagrams_do_not_disturb_a_client(
    lab: Lab, server: AuraServer, tmp_path: Path
) -> None:
    ns = server.add_client_namespace()
    attacker = server.add_client_namespace()
    pcap = tmp_path / "alice.pcap"
    capture_log = tmp_path / "tcpdump.log"
    capture = lab.spawn(server.ns, ["tcpdump", "-i", "any", "-w", str(pcap), "-U",
                                     "udp", "dst", "port", "8443"], log=capture_log)
    lab.wait_for(lambda: "listening on" in capture_log.read_text(), what="tcpdump ready")
    stock_wireguard_up(lab, ns, server.provision("alice", "wireguard"))
    assert lab.ping(ns, SERVER_TUNNEL_V4, count=5)

    def has_handshake_and_data() -> bool:
        if not pcap.exists() or pcap.stat().st_size < 24:  # not even its header yet
            return False
        kinds = {d[0] for d in captured_datagrams(pcap, 8443) if d}
        return {1, 4} <= kinds

    # tcpdump drops what it has not read from the kernel yet when it is stopped: on a busy
    # machine that can be everything, so it stops once the file (written per packet) has both.
    lab.wait_for(has_handshake_and_data, what="the handshake and data in the capture")
    lab.stop(capture, sig=2)
    recorded = captured_datagrams(pcap, 8443)

    rng = random.Random(7)
    junk = [os.urandom(rng.randrange(0, 1500)) for _ in range(300)]
    junk += [bytes([kind, 0, 0, 0]) + os.urandom(rng.randrange(0, 200)) for kind in (1, 2, 3, 4)
             for _ in range(50)]
    junk += [d[: rng.randrange(1, len(d))] for d in recorded]  # truncated real messages
    junk += recorded * 5  # replays: old initiations and data counters
    script = (
        "import socket, sys, json\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for d in json.load(sys.stdin):\n"
        "    s.sendto(bytes.fromhex(d), ('198.51.100.1', 8443))\n"
    )
    pinger = lab.spawn(ns, ["ping", "-c", "40", "-i", "0.05", "-W", "1", SERVER_TUNNEL_V4],
                       log=tmp_path / "ping.log")
    flood = subprocess.run(
        ["ip", "netns", "exec", attacker, sys.executable, "-c", script],
        input=json.dumps([d.hex() for d in junk]), text=True, timeout=60, check=True,
    )
    assert flood.returncode == 0
    assert pinger.wait(30) == 0, (tmp_path / "ping.log").read_text()
    assert lab.ping(ns, SERVER_TUNNEL_V4)
    assert server.process is not None and server.process.poll() is None
    assert server.status()["peers"][0]["connected"]


def test_busy_port_moves_the_transport_and_is_recorded(lab: Lab, tmp_path: Path) -> None:
    aura = build(lab, tmp_path)
    aura.init()
    blocker = lab.spawn(aura.ns, [sys.executable, "-c",
                                  "import socket,time; s=socket.socket(socket.AF_INET6, "
                                  "socket.SOCK_DGRAM); s.bind(('::', 8443)); time.sleep(120)"])
    time.sleep(0.5)
    aura.start()
    udp = json.loads((tmp_path / "state" / "transports" / "udp" / "runtime.json").read_text())
    assert udp["bound"][0].endswith(":8444")
    conf = aura.provision("alice", "wireguard")
    assert "Endpoint = 198.51.100.1:8444" in conf.read_text()
    ns = aura.add_client_namespace()
    stock_wireguard_up(lab, ns, conf)
    assert lab.ping(ns, SERVER_TUNNEL_V4)
    lab.stop(blocker)



def test_replies_leave_from_the_address_a_client_wrote_to(
    lab: Lab, server: AuraServer, tmp_path: Path
) -> None:
    # This client's link is 198.51.101.0/24, but it writes to the server's public address
    # 198.51.100.1 on another link. Answers from 198.51.101.1 (the kernel's pick for a
    # wildcard socket) never reach the Aura client's connected UDP socket.
    server.add_client_namespace()
    ns = server.add_client_namespace()
    config = server.provision("alice", "aura")
    document = yaml.safe_load(config.read_text())
    document["runtime_dir"] = str(tmp_path / "alice-run")
    config.write_text(yaml.safe_dump(document))
    lab.spawn(ns, [*AURA, "client", "up", "--foreground", str(config)],
              log=tmp_path / "client.log")

    def up_over_udp() -> bool:
        result = lab.run(ns, [*AURA, "client", "status", str(config), "--json"], check=False)
        status = json.loads(result.stdout) if result.returncode == 0 else {}
        return status.get("state") == "up" and status.get("transport") == "udp"

    lab.wait_for(up_over_udp, timeout=20, what="the aura client up over udp")
    assert lab.ping(ns, INTERNET_HOST), "NAT to the host behind the server"
    upload = iperf3(lab, ns, server.internet_ns, INTERNET_HOST, seconds=2)
    download = iperf3(lab, ns, server.internet_ns, INTERNET_HOST, seconds=2, reverse=True)
    assert upload > 1e6 and download > 1e6, (upload, download)


# The flood opens with a burst that aura-udp reads at once (it is stopped while the burst
# arrives), so the server is under load whatever this machine's speed; the rest keeps it there.
FLOOD_SCRIPT = """
import hashlib, os, signal, socket, sys, time
server_public, udp_pid = bytes.fromhex(sys.argv[1]), int(sys.argv[2])
mac1_key = hashlib.blake2s(b"mac1----" + server_public).digest()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
def initiation():
    body = bytes([1, 0, 0, 0]) + os.urandom(112)
    return body + hashlib.blake2s(body, digest_size=16, key=mac1_key).digest() + bytes(16)
os.kill(udp_pid, signal.SIGSTOP)
try:
    for _ in range(300):
        s.sendto(initiation(), ("198.51.100.1", 8443))
finally:
    os.kill(udp_pid, signal.SIGCONT)
replies = {}


def count_replies():
    while True:
        try:
            reply = s.recv(2048)
        except BlockingIOError:
            return
        replies[reply[0]] = replies.get(reply[0], 0) + 1


deadline = time.monotonic() + 10
for i in range(3000):
    try:
        s.sendto(initiation(), ("198.51.100.1", 8443))
    except BlockingIOError:
        time.sleep(0.001)
    if i % 100 == 0:
        time.sleep(0.01)
    count_replies()
    if time.monotonic() > deadline:
        break
time.sleep(0.5)
count_replies()
print(replies.get(2, 0), replies.get(3, 0))
"""


def test_handshake_flood_gets_cookie_replies_and_spares_a_connected_client(
    lab: Lab, server: AuraServer, tmp_path: Path
) -> None:
    ns = server.add_client_namespace()
    attacker = server.add_client_namespace()
    stock_wireguard_up(lab, ns, server.provision("alice", "wireguard"))
    assert lab.ping(ns, SERVER_TUNNEL_V4)
    server_public = base64.b64decode((tmp_path / "server.pub").read_text())
    pinger = lab.spawn(ns, ["ping", "-c", "30", "-i", "0.1", "-W", "2", SERVER_TUNNEL_V4],
                       log=tmp_path / "ping.log")
    # Initiations with a valid mac1 (the server's public key is public) from an unknown key:
    # each costs the server a DH unless the cookie mechanism steps in.
    udp = json.loads((tmp_path / "state" / "transports" / "udp" / "runtime.json").read_text())
    udp_pid = str(udp["pid"])
    flood = lab.run(attacker, [sys.executable, "-c", FLOOD_SCRIPT, server_public.hex(), udp_pid],
                    timeout=60)
    responses, cookies = map(int, flood.stdout.split())
    assert responses == 0, "an unknown key must never get a handshake response"
    assert cookies > 0, "under load the server answers with cookie replies"
    assert pinger.wait(30) == 0, (tmp_path / "ping.log").read_text()
    assert server.status()["peers"][0]["connected"]
