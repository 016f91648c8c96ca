"""Handshake floods against aura-udp: a connected client keeps working, a new one gets in.

Floods of initiations with a valid mac1 at up to 10,000 per second, from one address (which
also proves itself with cookies, so it meets the per-source rate limit) and from thousands of
IPv4 and IPv6 sources (aura_lab/flood.py). Meanwhile a connected stock WireGuard client
keeps pinging, and a new stock client from another address must complete its handshake
within one WireGuard retry: its first initiation may earn a cookie reply, the retry
REKEY_TIMEOUT later carries mac2 and must be answered.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import sys
import time
from pathlib import Path

import pytest

from aura_lab.flood import SERVER_V4, SERVER_V6, attacker_namespace
from aura_lab.netns import Lab
from aura_lab.topology import SERVER_TUNNEL_V4, AuraServer, build, stock_wireguard_up

pytestmark = pytest.mark.e2e

FLOOD_SECONDS = 25


def handshake_messages(pcap: Path, port: int) -> list[tuple[str, int]]:
    """("out" to `port` | "in" from it, WireGuard message type) of each captured IPv4 datagram."""
    data = pcap.read_bytes()
    link_header = {1: 14, 113: 16, 276: 20}[struct.unpack_from("<I", data, 20)[0]]
    offset, messages = 24, []
    while offset + 16 <= len(data):
        captured = struct.unpack_from("<IIII", data, offset)[2]
        ip = data[offset + 16 + link_header: offset + 16 + captured]
        offset += 16 + captured
        if len(ip) < 29 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        udp = ip[(ip[0] & 0xF) * 4:]
        source_port, destination_port = struct.unpack_from("!HH", udp)
        if destination_port == port:
            messages.append(("out", udp[8]))
        elif source_port == port:
            messages.append(("in", udp[8]))
    return messages


def answered(ping_log: str) -> float:
    match = re.search(r"(\d+) packets transmitted, (\d+) received", ping_log)
    assert match, ping_log
    return int(match.group(2)) / int(match.group(1))


# Every flood runs at the 10,000/s maximum. Proven junk from thousands of /64s is let through
# by the rate limiter (each /64 may start 20 handshakes a second) to cost a key exchange each,
# far more than one core does in a second: a new client's retry goes ahead of it (its source
# has had no handshake queued lately: aura_common/wireguard/backlog.py), and the connected
# client's packets ahead of the key exchanges (services/router/timeshare.py).
# bench/floods.py measures what each flood costs the connected client.
@pytest.mark.parametrize(("family", "sources", "cookies", "rate"), [
    (4, 0, True, 10_000),     # one address, proving itself with cookies: meets the rate limit
    (4, 4096, False, 10_000),  # thousands of spoofed IPv4 sources: a cookie reply at most
    (6, 4096, False, 10_000),  # thousands of spoofed IPv6 /64s
    (6, 4096, True, 10_000),  # thousands of IPv6 /64s, each proving itself: the limiter's table
], ids=["v4-one-address-proven", "v4-4096-sources", "v6-4096-prefixes",
        "v6-4096-prefixes-proven"])
def test_initiation_flood_spares_connected_and_new_clients(
    lab: Lab, tmp_path: Path, family: int, sources: int, cookies: bool, rate: int
) -> None:
    server: AuraServer = build(lab, tmp_path)
    server.init()
    server.start()
    alice_ns, bob_ns = server.add_client_namespace(), server.add_client_namespace()
    attacker = attacker_namespace(lab, server)
    stock_wireguard_up(lab, alice_ns, server.provision("alice", "wireguard"))
    assert lab.ping(alice_ns, SERVER_TUNNEL_V4)
    bob_conf = server.provision("bob", "wireguard")
    server_public = base64.b64decode((tmp_path / "server.pub").read_text())

    target = f"{SERVER_V4}:8443" if family == 4 else f"[{SERVER_V6}]:8443"
    flood_log = tmp_path / "flood.json"
    argv = [sys.executable, "-m", "aura_lab.flood", "--target", target,
            "--server-public", server_public.hex(), "--rate", str(rate),
            "--seconds", str(FLOOD_SECONDS), "--sources", str(sources)]
    flood = lab.spawn(attacker, [*argv, *(["--cookies"] if cookies else [])], log=flood_log)
    time.sleep(3)  # the server is under load by now
    assert flood.poll() is None, flood_log.read_text()

    ping_log = tmp_path / "alice-ping.log"
    alice_ping = lab.spawn(alice_ns, ["ping", "-c", "50", "-i", "0.2", "-W", "2",
                                      SERVER_TUNNEL_V4], log=ping_log)
    pcap, capture_log = tmp_path / "bob.pcap", tmp_path / "tcpdump.log"
    capture = lab.spawn(bob_ns, ["tcpdump", "-i", "any", "--immediate-mode", "-w", str(pcap),
                                 "-U", "udp", "port", "8443"], log=capture_log)
    lab.wait_for(lambda: "listening on" in capture_log.read_text(), what="tcpdump ready")
    stock_wireguard_up(lab, bob_ns, bob_conf)
    lab.wait_for(lambda: lab.ping(bob_ns, SERVER_TUNNEL_V4, count=1, timeout=1), timeout=16,
                 what="bob's tunnel during the flood")
    assert flood.poll() is None, "the flood ended before bob was in: the test proved nothing"
    time.sleep(0.5)  # tcpdump writes what it has seen
    lab.stop(capture, sig=2)

    messages = handshake_messages(pcap, 8443)
    first_response = messages.index(("in", 2))
    initiations = messages[:first_response].count(("out", 1))
    assert initiations <= 2, f"bob needed {initiations} initiations: {messages[:20]}"

    assert alice_ping.wait(30) in (0, 1)
    assert answered(ping_log.read_text()) >= 0.8, ping_log.read_text()
    assert flood.wait(FLOOD_SECONDS + 30) == 0
    report = json.loads(flood_log.read_text().strip().splitlines()[-1])
    assert report["sent"] >= rate * FLOOD_SECONDS * 0.5, report
    assert report["replies"].get("2", 0) == 0, "a stranger got a handshake response"
    assert server.process is not None and server.process.poll() is None
    alice = next(p for p in server.status()["peers"] if p["name"] == "alice")
    assert alice["connected"]
