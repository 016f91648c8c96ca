"""Throughput and latency through Aura against a wireguard-go pair and the bare link, in one run.

    python3 -m bench.compare [--seconds 5] [--write-readme]

Everything runs in throw-away network namespaces on this machine: a client namespace and a
server namespace joined by a veth. For each path, iperf3 TCP upload and download (client to
the server's address on that path) and the mean ping RTT are measured back to back, and the
ratios against the wireguard-go pair are printed. The machine is shared and noisy: compare
ratios within one run, not absolute figures across runs. `--write-readme` puts the table into
README.md.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aura_lab.netns import Lab
from aura_lab.topology import (
    SERVER_TUNNEL_V4,
    AuraServer,
    iperf3,
    running_server,
    stock_wireguard_up,
)
from bench import readme

WG_PAIR_SERVER = "10.99.0.1"


@dataclass
class Result:
    path: str
    upload: float
    download: float
    rtt_ms: float


def ping_rtt(lab: Lab, ns: str, address: str, count: int = 20) -> float:
    out = lab.run(ns, ["ping", "-c", str(count), "-i", "0.05", "-q", address]).stdout
    match = re.search(r"= [\d.]+/([\d.]+)/", out)
    assert match, out
    return float(match.group(1))


def measure(lab: Lab, name: str, client_ns: str, server_ns: str, address: str,
            seconds: int) -> Result:
    lab.ping(client_ns, address)  # warm up: handshakes, ARP, route caches
    upload = iperf3(lab, client_ns, server_ns, address, seconds=seconds)
    download = iperf3(lab, client_ns, server_ns, address, seconds=seconds, reverse=True)
    return Result(name, upload, download, ping_rtt(lab, client_ns, address))


def wireguard_go_pair(lab: Lab, folder: Path, client_ns: str, server_ns: str) -> None:
    keys = {}
    for side in ("client", "server"):
        private = lab.run(client_ns, "wg genkey").stdout.strip()
        public = lab.run(client_ns, ["sh", "-c", f"echo {private} | wg pubkey"]).stdout.strip()
        keys[side] = (private, public)
    for side, ns, mine, theirs, address in (
        ("server", server_ns, "server", "client", "10.99.0.1/24"),
        ("client", client_ns, "client", "server", "10.99.0.2/24"),
    ):
        ifname = f"wgp{lab.prefix[2:8]}{side[0]}"
        lab.spawn(ns, ["wireguard-go", "-f", ifname], env={"WG_PROCESS_FOREGROUND": "1"})
        def link_up(ns: str = ns, ifname: str = ifname) -> bool:
            return lab.run(ns, f"ip link show {ifname}", check=False).returncode == 0

        lab.wait_for(link_up)
        key_file = folder / f"wg-pair-{side}.key"
        key_file.write_text(keys[mine][0])
        peer = ["peer", keys[theirs][1], "allowed-ips", "10.99.0.0/24"]
        if side == "client":
            peer += ["endpoint", "198.51.100.1:51820"]
        lab.run(ns, ["wg", "set", ifname, "private-key", str(key_file),
                     *(["listen-port", "51820"] if side == "server" else []), *peer])
        lab.run(ns, ["ip", "address", "add", address, "dev", ifname])
        lab.run(ns, ["ip", "link", "set", ifname, "mtu", "1420", "up"])


def aura_client_up(lab: Lab, server: AuraServer, ns: str, folder: Path) -> None:
    config = server.provision("bench-aura", "aura", "--vpn-cidrs", "10.77.0.0/24")
    lab.spawn(ns, [*AURA_CLIENT, "up", "--foreground", str(config)],
              log=folder / "aura-client.log")
    lab.wait_for(lambda: lab.ping(ns, SERVER_TUNNEL_V4, count=1, timeout=2), timeout=30,
                 what="the aura client tunnel")


AURA_CLIENT = ["python3", "-m", "services.cli.main", "client"]


def run(seconds: int) -> list[Result]:
    results: list[Result] = []
    with running_server() as server:
        lab, folder = server.lab, server.folder
        bare_ns = server.add_client_namespace()
        wg_ns = server.add_client_namespace()
        stock_ns = server.add_client_namespace()
        aura_ns = server.add_client_namespace()
        wireguard_go_pair(lab, folder, wg_ns, server.ns)
        stock_wireguard_up(lab, stock_ns, server.provision("bench-stock", "wireguard",
                                                           "--vpn-cidrs", "10.77.0.0/24"))
        paths: list[tuple[str, Callable[[], Result]]] = [
            ("bare veth", lambda: measure(lab, "bare veth", bare_ns, server.ns,
                                          "198.51.100.1", seconds)),
            ("wireguard-go pair", lambda: measure(lab, "wireguard-go pair", wg_ns,
                                                  server.ns, WG_PAIR_SERVER, seconds)),
            ("wireguard-go -> aura", lambda: measure(lab, "wireguard-go -> aura", stock_ns,
                                                     server.ns, SERVER_TUNNEL_V4, seconds)),
        ]
        for _, run_one in paths:
            results.append(run_one())
            print(f"measured {results[-1]}", flush=True)
            time.sleep(1)
        aura_client_up(lab, server, aura_ns, folder)
        results.append(measure(lab, "aura -> aura (udp)", aura_ns, server.ns,
                               SERVER_TUNNEL_V4, seconds))
    return results


def report(results: list[Result]) -> str:
    reference = next(r for r in results if r.path == "wireguard-go pair")
    lines = [f"{'path':<22} {'upload':>11} {'download':>11} {'rtt':>9}   vs wireguard-go pair"]
    for r in results:
        lines.append(
            f"{r.path:<22} {r.upload / 1e9:>7.3f} Gb/s {r.download / 1e9:>7.3f} Gb/s "
            f"{r.rtt_ms:>6.3f} ms   up x{r.upload / reference.upload:.2f} "
            f"down x{r.download / reference.download:.2f} rtt x{r.rtt_ms / reference.rtt_ms:.2f}"
        )
    mean = statistics.mean(r.upload + r.download for r in results if "aura ->" in r.path) / 2
    lines.append(f"aura client mean throughput: {mean / 1e9:.3f} Gb/s")
    return "\n".join(lines)


def markdown(results: list[Result]) -> str:
    reference = next(r for r in results if r.path == "wireguard-go pair")
    lines = ["| path | upload | download | ping RTT |", "|---|---|---|---|"]
    for r in results:
        name = f"{r.path} (reference)" if r is reference else r.path
        lines.append(f"| {name} | {r.upload / 1e9:.3f} Gb/s (x{r.upload / reference.upload:.2f}) "
                     f"| {r.download / 1e9:.3f} Gb/s (x{r.download / reference.download:.2f}) "
                     f"| {r.rtt_ms:.2f} ms (x{r.rtt_ms / reference.rtt_ms:.2f}) |")
    return "\n".join(lines)


def main() -> None:
    args = readme.arguments(__doc__, "compare", seconds=5).parse_args()
    results = run(args.seconds)
    print(report(results))
    if args.write_readme:
        readme.write("compare", markdown(results))


if __name__ == "__main__":
    main()
