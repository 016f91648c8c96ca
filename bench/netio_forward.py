"""A plaintext mini-tunnel built from the netio helpers, and its throughput benchmark.

Each forwarder moves batches between a TUN device (vnet headers, TSO) and a UDP socket
(GSO/GRO): `Tun.read_batch` -> `send_batch`, `recv_batch` -> `Tun.write_batch`. No crypto, so
this measures the data-path plumbing alone.

    python -m bench.netio_forward            # from the repository root, as root: iperf3 -t 5
    python -m bench.netio_forward forward .. # one forwarder (started by the benchmark and by
                                             # tests/e2e/test_netio_forward.py)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import select
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from aura_common.netio import link
from aura_common.netio.tun import Tun
from aura_common.netio.udp import enable_gro, recv_batch, send_batch
from aura_lab.netns import Lab

REPOSITORY = Path(__file__).resolve().parent.parent
TUN_NAME = "nio0"
TUN_MTU = 1420
UDP_PORT = 51820
SOCKET_BUFFER = 4 << 20
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33


# -- one forwarder -----------------------------------------------------------------------------


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def forward(tun_name: str, addresses: list[str], listen: str, peer: str, stats: Path) -> None:
    """Shuttle packets until SIGTERM, then write the counters to `stats` as JSON."""
    tun = Tun.open(tun_name, mtu=TUN_MTU)
    link.configure(tun.name, addresses, TUN_MTU)
    local, remote = _endpoint(listen), _endpoint(peer)
    family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, SOCKET_BUFFER)
    sock.bind(local)
    sock.setblocking(False)
    udp = {"gro": enable_gro(sock), "datagrams_sent": 0, "datagrams_dropped": 0,
           "datagrams_received": 0, "receive_batches": 0}

    stopping = False

    def stop(_signal: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    poller = select.poll()
    poller.register(tun.fileno(), select.POLLIN)
    poller.register(sock.fileno(), select.POLLIN)
    print("ready", flush=True)
    while not stopping:
        for fd, _events in poller.poll(200):
            if fd == tun.fileno():
                packets = tun.read_batch()
                sent = send_batch(sock, packets, remote)
                udp["datagrams_sent"] += sent
                udp["datagrams_dropped"] += len(packets) - sent
            else:
                datagrams = [d for batch, _source in recv_batch(sock) for d in batch]
                udp["receive_batches"] += 1
                udp["datagrams_received"] += len(datagrams)
                tun.write_batch(datagrams)
    stats.write_text(json.dumps({"tun": dataclasses.asdict(tun.counters), "udp": udp}))
    tun.close()
    sock.close()


# -- two forwarders in namespaces ----------------------------------------------------------------


@dataclass
class Tunnel:
    """Namespaces `left` (tunnel addresses .1 / ::1) and `right` (.2 / ::2) joined by forwarders."""

    lab: Lab
    left: str
    right: str
    work: Path
    processes: dict[str, subprocess.Popen[bytes]]

    @staticmethod
    def inner(index: int, v6: bool = False) -> str:
        return f"fd01:201::{index}" if v6 else f"10.201.0.{index}"

    def stop_and_read_stats(self) -> dict[str, dict[str, dict[str, int]]]:
        """Stop both forwarders; their counters by namespace."""
        stats = {}
        for ns in (self.left, self.right):
            self.lab.stop(self.processes[ns])
            stats[ns] = json.loads((self.work / f"{ns}.json").read_text())
        return stats


def start_tunnel(lab: Lab, work: Path) -> Tunnel:
    left, right = lab.namespace("left"), lab.namespace("right")
    lab.link(left, "10.200.0.1/24", right, "10.200.0.2/24")
    processes: dict[str, subprocess.Popen[bytes]] = {}
    for ns, me, other in ((left, 1, 2), (right, 2, 1)):
        processes[ns] = lab.spawn(
            ns,
            [
                sys.executable, "-m", "bench.netio_forward", "forward", "--tun", TUN_NAME,
                "--address", f"{Tunnel.inner(me)}/24", "--address", f"{Tunnel.inner(me, True)}/64",
                "--listen", f"10.200.0.{me}:{UDP_PORT}", "--peer", f"10.200.0.{other}:{UDP_PORT}",
                "--stats", str(work / f"{ns}.json"),
            ],
            log=work / f"{ns}.log",
            env={"PYTHONPATH": str(REPOSITORY)},
        )
    for ns in (left, right):
        def ready(log: Path = work / f"{ns}.log") -> bool:
            return log.exists() and "ready" in log.read_text()

        lab.wait_for(ready, what=f"forwarder in {ns}")
    return Tunnel(lab, left, right, work, processes)


def start_iperf_server(lab: Lab, ns: str, work: Path) -> None:
    lab.spawn(ns, ["iperf3", "-s", "-p", "5201"], log=work / f"iperf3-{ns}.log")
    lab.wait_for(lambda: "5201" in lab.run(ns, "ss -Hltn sport = :5201").stdout,
                 what=f"iperf3 server in {ns}")


def iperf(lab: Lab, ns: str, server: str, seconds: int, reverse: bool = False) -> dict[str, float]:
    """One iperf3 TCP run from `ns` to `server`: received bytes and bits per second."""
    command = ["iperf3", "-c", server, "-p", "5201", "-t", str(seconds), "-J"]
    if reverse:
        command.append("-R")
    result = lab.run(ns, command, timeout=seconds + 30)
    received = json.loads(result.stdout)["end"]["sum_received"]
    return {"bytes": received["bytes"], "bits_per_second": received["bits_per_second"]}


# -- benchmark -----------------------------------------------------------------------------------


def benchmark(seconds: int) -> None:
    lab = Lab()
    try:
        with tempfile.TemporaryDirectory() as directory:
            work = Path(directory)
            tunnel = start_tunnel(lab, work)
            start_iperf_server(lab, tunnel.right, work)
            for v6 in (False, True):
                server = Tunnel.inner(2, v6)
                for reverse in (False, True):
                    result = iperf(lab, tunnel.left, server, seconds, reverse)
                    direction = "right->left" if reverse else "left->right"
                    print(f"IPv{6 if v6 else 4} {direction}: "
                          f"{result['bits_per_second'] / 1e9:.3f} Gb/s", flush=True)
            for ns, counters in tunnel.stop_and_read_stats().items():
                tun = counters["tun"]
                print(f"{ns}: {tun['packets_read'] / max(tun['reads'], 1):.1f} packets per TUN "
                      f"read, {tun['packets_written'] / max(tun['writes'], 1):.1f} per TUN write, "
                      f"udp {counters['udp']}")
    finally:
        lab.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    one = commands.add_parser("forward", help="run one forwarder in the current namespace")
    one.add_argument("--tun", required=True)
    one.add_argument("--address", action="append", required=True, help="CIDR, repeatable")
    one.add_argument("--listen", required=True, help="host:port of the UDP socket")
    one.add_argument("--peer", required=True, help="host:port of the other forwarder")
    one.add_argument("--stats", required=True, type=Path, help="JSON counters written on exit")
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    if args.command == "forward":
        forward(args.tun, args.address, args.listen, args.peer, args.stats)
    else:
        benchmark(args.seconds)


if __name__ == "__main__":
    main()
