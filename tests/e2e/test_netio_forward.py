"""TUN offloads and UDP batches end to end: a plaintext mini-tunnel between two namespaces.

Each namespace runs a forwarder (bench/netio_forward.py) that moves `Tun.read_batch` into
`send_batch` and `recv_batch` into `Tun.write_batch`. The kernels at both ends verify the IP
and TCP checksums of everything not merged; a byte-exact transfer checks the merged
super-packets (whose checksums the receiving kernel trusts) carried the right data.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import sys
from pathlib import Path

import pytest

from aura_lab.netns import Lab
from bench.netio_forward import Tunnel, iperf, start_iperf_server, start_tunnel

pytestmark = pytest.mark.e2e

TRANSFER_BYTES = 8 << 20
SEED = 20240601

RECEIVE = """
import hashlib, socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
with socket.create_server((sys.argv[1], 7000), family=family) as server:
    print("listening", flush=True)
    connection, _ = server.accept()
    digest, total = hashlib.sha256(), 0
    while chunk := connection.recv(1 << 16):
        digest.update(chunk)
        total += len(chunk)
    print("received", total, digest.hexdigest(), flush=True)
"""

SEND = """
import random, socket, sys
data = random.Random(int(sys.argv[2])).randbytes(int(sys.argv[3]))
with socket.create_connection((sys.argv[1], 7000), timeout=20) as connection:
    connection.sendall(data)
"""


def transfer(lab: Lab, sender_ns: str, receiver_ns: str, address: str, work: Path) -> None:
    log = work / f"receive-{receiver_ns}-{address}.log"
    receiver = lab.spawn(receiver_ns, [sys.executable, "-c", RECEIVE, address], log=log)
    lab.wait_for(lambda: "listening" in log.read_text(), what="receiver listening")
    lab.run(sender_ns, [sys.executable, "-c", SEND, address, str(SEED), str(TRANSFER_BYTES)],
            timeout=60)
    lab.wait_for(lambda: "received" in log.read_text(), timeout=30, what="transfer complete")
    lab.stop(receiver)
    expected = hashlib.sha256(random.Random(SEED).randbytes(TRANSFER_BYTES)).hexdigest()
    assert f"received {TRANSFER_BYTES} {expected}" in log.read_text()


def test_tcp_crosses_a_batching_tunnel_intact(lab: Lab, tmp_path: Path) -> None:
    if shutil.which("iperf3") is None:
        pytest.skip("needs iperf3")
    tunnel = start_tunnel(lab, tmp_path)
    for v6 in (False, True):
        assert lab.ping(tunnel.left, Tunnel.inner(2, v6)), f"ping over the tunnel (v6={v6})"

    for v6 in (False, True):
        transfer(lab, tunnel.left, tunnel.right, Tunnel.inner(2, v6), tmp_path)
        transfer(lab, tunnel.right, tunnel.left, Tunnel.inner(1, v6), tmp_path)

    start_iperf_server(lab, tunnel.right, tmp_path)
    for v6 in (False, True):
        for reverse in (False, True):
            result = iperf(lab, tunnel.left, Tunnel.inner(2, v6), seconds=3, reverse=reverse)
            assert result["bytes"] > 1 << 20, (v6, reverse, result)

    stats = tunnel.stop_and_read_stats()
    for ns, counters in stats.items():
        tun, udp = counters["tun"], counters["udp"]
        # TSO: one read carried many segments; coalescing: one write carried many packets.
        assert tun["packets_read"] / tun["reads"] > 2, (ns, tun)
        assert tun["packets_written"] / tun["writes"] > 2, (ns, tun)
        assert tun["read_drops"] == 0 and tun["write_errors"] == 0, (ns, tun)
        # GRO: a receive batch returned many datagrams.
        assert udp["datagrams_received"] / udp["receive_batches"] > 2, (ns, udp)
