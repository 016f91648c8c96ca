"""The TUN device against a real kernel, inside a throw-away namespace."""

from __future__ import annotations

import json
import sys

import pytest

from aura_lab.netns import Lab

pytestmark = pytest.mark.e2e

# Runs inside the namespace: the TUN device must be created there.
SCRIPT = r"""
import json, socket, struct, time
from aura_common.errors import AuraError
from aura_common.netio import link
from aura_common.netio.tun import QUEUE_PACKETS, Tun

def verify(data):  # textbook ones' complement sum, independent of offload.py
    if len(data) % 2:
        data += b"\0"
    total = sum(word for (word,) in struct.iter_unpack("!H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF

def ipv4_checksum(header):
    total = sum(word for (word,) in struct.iter_unpack("!H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

def wait_for(tun, match):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for packet in tun.read_batch():
            if match(packet):
                return packet
        time.sleep(0.01)
    raise SystemExit("no matching packet")

result = {}
tun = Tun.open("aurt0", mtu=1400)
result["name"] = tun.name
with open(f"/sys/class/net/{tun.name}/tx_queue_len") as queue:
    result["queue_is_deep"] = int(queue.read()) == QUEUE_PACKETS > 500
link.configure(tun.name, ["10.9.0.1/24", "fd09::1/64"], 1400)
link.add_routes(tun.name, ["10.10.0.0/16"])
try:
    link.configure("missing0", ["10.11.0.1/24"], 1400)
except AuraError as error:
    result["missing"] = str(error)

# A bad packet fails alone; the valid echo request after it reaches the kernel, which answers.
icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, 77, 1) + b"ping-through-tun")
icmp[2:4] = struct.pack("!H", ipv4_checksum(bytes(icmp) + b"\0" * (len(icmp) % 2)))
ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0,
                           bytes([10, 9, 0, 2]), bytes([10, 9, 0, 1])))
ip[10:12] = struct.pack("!H", ipv4_checksum(bytes(ip)))
tun.write_batch([b"\x00not an ip packet", bytes(ip + icmp)])
reply = wait_for(tun, lambda p: p[9] == 1 and p[20] == 0)
result["echo_reply_payload"] = reply[28:].decode()
result["echo_reply_checksum_ok"] = verify(reply[20:])

# The kernel leaves a SYN's checksum partial; read_batch completes it.
client = socket.socket()
client.setblocking(False)
client.connect_ex(("10.10.0.5", 80))
syn = wait_for(tun, lambda p: p[9] == 6 and p[33] & 0x02)
segment = syn[20:]
result["syn_checksum_ok"] = verify(syn[12:20] + struct.pack("!BBH", 0, 6, len(segment)) + segment)
result["ip_checksum_ok"] = verify(syn[:20])
c = tun.counters
result["counters"] = {"write_errors": c.write_errors, "writes": c.writes,
                      "packets_written": c.packets_written, "reads": c.reads}
link.remove_routes(tun.name, ["10.10.0.0/16", "10.12.0.0/16"])
tun.close()
print(json.dumps(result))
"""


def test_tun_device_round_trips_with_the_kernel(lab: Lab) -> None:
    ns = lab.namespace("tun")
    output = lab.run(ns, [sys.executable, "-c", SCRIPT], timeout=60).stdout
    result = json.loads(output.strip().splitlines()[-1])
    assert result["name"] == "aurt0"
    assert result["queue_is_deep"]  # the kernel's ring for our reads, not the default 500
    assert "missing0" in result["missing"]
    assert result["echo_reply_payload"] == "ping-through-tun"
    assert result["echo_reply_checksum_ok"]
    assert result["syn_checksum_ok"] and result["ip_checksum_ok"]
    counters = result["counters"]
    assert counters["write_errors"] == 1 and counters["writes"] == 1
    assert counters["packets_written"] == 2 and counters["reads"] >= 2
