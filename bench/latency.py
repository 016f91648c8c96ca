"""Round-trip time through each tunnel, idle and while iperf3 saturates it, against wireguard-go.

    python3 -m bench.latency [--seconds 8] [--repeat 1] [--write-readme]

One lab: the bare veth, a wireguard-go pair, and one Aura server with UDP, TCP and QUIC
enabled, reached by one Aura client pinned to each transport in turn. For every path: ping
RTT while idle, then while iperf3 TCP saturates the tunnel upload and then download (ping
starts once iperf3 is past its ramp-up), with the throughput of those iperf3 runs and the
segments their TCP sender retransmitted (what the path dropped: a path that drops nothing
leaves the sender's congestion window, and with it the queue, to the congestion control,
which is named too). Each RTT figure is the median of its pings. Printed as ratios against
the wireguard-go pair measured in the same run: idle *added* latency (over the bare veth)
and loaded RTT. The machine is shared and noisy: compare ratios within one run; `--repeat`
runs it again and reports medians of the ratios. `--write-readme` puts the table into
README.md. `python3 -m bench.hops` splits an idle ping's round trip into its hops.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aura_common.roles import Transport
from aura_lab.netns import Lab
from aura_lab.topology import PUBLIC_HOST, SERVER_TUNNEL_V4, running_server
from bench import readme
from bench.compare import WG_PAIR_SERVER, wireguard_go_pair
from bench.transports import aura_client_on

TRANSPORTS = tuple(Transport)
REFERENCE = "wireguard-go pair"
PING_INTERVAL = 0.05
RAMP_UP = 1.5  # seconds of iperf3 before the loaded pings start


@dataclass
class Latency:
    path: str
    idle_ms: float
    upload_ms: float  # RTT while the tunnel upload is saturated
    download_ms: float
    upload_bps: float  # iperf3 throughput during those pings
    download_bps: float
    upload_retransmits: int = 0  # segments the iperf3 sender retransmitted meanwhile
    download_retransmits: int = 0


def ping_rtts(lab: Lab, ns: str, address: str, count: int) -> list[float]:
    out = lab.run(ns, ["ping", "-n", "-c", str(count), "-i", str(PING_INTERVAL), "-W", "2",
                       address], check=False, timeout=count * PING_INTERVAL + 30).stdout
    rtts = [float(ms) for ms in re.findall(r"time=([\d.]+) ms", out)]
    if not rtts:
        raise AssertionError(f"no ping answer from {address}:\n{out}")
    return rtts


def loaded(lab: Lab, ns: str, server_ns: str, address: str, seconds: int, *, reverse: bool,
           folder: Path) -> tuple[float, float, int]:
    """Median ping RTT (ms) while iperf3 TCP saturates the path, iperf3's throughput and the
    segments its sender retransmitted."""
    port = 5201 + int(time.monotonic_ns() % 1000)
    server = lab.spawn(server_ns, ["iperf3", "-s", "-1", "-p", str(port)])
    report = folder / f"iperf3-{port}.json"
    report.unlink(missing_ok=True)  # the log is appended to
    try:
        time.sleep(0.3)
        client = lab.spawn(ns, ["iperf3", "-c", address, "-p", str(port), "-t", str(seconds),
                                "--json", "--connect-timeout", "5000",
                                *(["-R"] if reverse else [])], log=report)
        time.sleep(RAMP_UP)
        count = int((seconds - RAMP_UP - 1) / PING_INTERVAL)
        rtts = ping_rtts(lab, ns, address, count)
        client.wait(seconds + 30)
        result = json.loads(report.read_text())
        if "error" in result:
            raise AssertionError(f"iperf3 to {address}: {result['error']}")
        return (statistics.median(rtts), float(result["end"]["sum_received"]["bits_per_second"]),
                int(result["end"]["sum_sent"].get("retransmits", 0)))
    finally:
        lab.stop(server)


def measure(lab: Lab, name: str, ns: str, server_ns: str, address: str, seconds: int,
            folder: Path) -> Latency:
    lab.ping(ns, address)  # warm up: handshakes, ARP, route caches
    idle = statistics.median(ping_rtts(lab, ns, address, 40))
    upload_ms, upload, upload_lost = loaded(lab, ns, server_ns, address, seconds,
                                            reverse=False, folder=folder)
    download_ms, download, download_lost = loaded(lab, ns, server_ns, address, seconds,
                                                  reverse=True, folder=folder)
    result = Latency(name, idle, upload_ms, download_ms, upload, download, upload_lost,
                     download_lost)
    print(f"measured {result}", flush=True)
    return result


def run(seconds: int) -> list[Latency]:
    results: list[Latency] = []
    with running_server(TRANSPORTS) as server:
        lab, folder = server.lab, server.folder
        bare_ns = server.add_client_namespace()
        wg_ns = server.add_client_namespace()
        aura_ns = server.add_client_namespace()
        wireguard_go_pair(lab, folder, wg_ns, server.ns)
        paths: list[tuple[str, Callable[[], Latency]]] = [
            ("bare veth", lambda: measure(lab, "bare veth", bare_ns, server.ns,
                                          PUBLIC_HOST, seconds, folder)),
            (REFERENCE, lambda: measure(lab, REFERENCE, wg_ns, server.ns, WG_PAIR_SERVER,
                                        seconds, folder)),
        ]
        for _, run_one in paths:
            results.append(run_one())
        for transport in TRANSPORTS:
            client = aura_client_on(lab, server, aura_ns, transport, folder)
            results.append(measure(lab, f"aura {transport}", aura_ns, server.ns,
                                   SERVER_TUNNEL_V4, seconds, folder))
            lab.stop(client)
            time.sleep(1)
    return results


@dataclass
class Ratios:
    path: str
    idle_added: float  # (idle - bare) / (reference idle - bare)
    upload_rtt: float
    download_rtt: float
    upload_bps: float
    download_bps: float


def ratios(results: list[Latency]) -> list[Ratios]:
    by_path = {r.path: r for r in results}
    bare, reference = by_path["bare veth"], by_path[REFERENCE]
    added_reference = max(reference.idle_ms - bare.idle_ms, 1e-3)
    return [
        Ratios(r.path, (r.idle_ms - bare.idle_ms) / added_reference,
               r.upload_ms / reference.upload_ms, r.download_ms / reference.download_ms,
               r.upload_bps / reference.upload_bps, r.download_bps / reference.download_bps)
        for r in results if r.path != "bare veth"
    ]


def median_ratios(runs: list[list[Ratios]]) -> list[Ratios]:
    paths = [r.path for r in runs[0]]
    return [
        Ratios(path, *(statistics.median(getattr(run[i], field) for run in runs)
                       for field in ("idle_added", "upload_rtt", "download_rtt",
                                     "upload_bps", "download_bps")))
        for i, path in enumerate(paths)
    ]


def table(results: list[Latency], summary: list[Ratios], repeats: int) -> str:
    """A markdown table: the figures of the last run and the (median) ratios."""
    by_path = {r.path: r for r in results}
    bare = by_path["bare veth"]
    lines = [
        "| path | idle RTT (added) | RTT, upload saturated | RTT, download saturated "
        "| upload | download |",
        "|---|---|---|---|---|---|",
        f"| bare veth | {bare.idle_ms:.2f} ms | {bare.upload_ms:.2f} ms | "
        f"{bare.download_ms:.2f} ms | {bare.upload_bps / 1e9:.2f} Gb/s | "
        f"{bare.download_bps / 1e9:.2f} Gb/s |",
    ]
    for ratio in summary:
        r = by_path[ratio.path]
        name = f"{ratio.path} (reference)" if ratio.path == REFERENCE else ratio.path
        lines.append(
            f"| {name} | {r.idle_ms:.2f} ms (+{r.idle_ms - bare.idle_ms:.2f}, "
            f"x{ratio.idle_added:.2f}) | {r.upload_ms:.2f} ms (x{ratio.upload_rtt:.2f}) | "
            f"{r.download_ms:.2f} ms (x{ratio.download_rtt:.2f}) | "
            f"{r.upload_bps / 1e9:.2f} Gb/s (x{ratio.upload_bps:.2f}) | "
            f"{r.download_bps / 1e9:.2f} Gb/s (x{ratio.download_bps:.2f}) |")
    lost = "; ".join(f"{r.path} {r.upload_retransmits} / {r.download_retransmits}"
                     for r in results if r.path != "bare veth")
    lines.append(f"\nTCP segments the iperf3 sender retransmitted in the loaded runs (upload / "
                 f"download; congestion control {congestion_control()}): {lost}.")
    if repeats > 1:
        lines.append(f"Ratios (x) are medians of {repeats} runs; figures are the last run's.")
    return "\n".join(lines)


def congestion_control() -> str:
    """The TCP congestion control iperf3 runs with (the host's default)."""
    return Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()


def main() -> None:
    args = readme.arguments(__doc__, "latency", seconds=8, repeat=True).parse_args()
    runs = [run(args.seconds) for _ in range(args.repeat)]
    readme.publish("latency", table(runs[-1], median_ratios([ratios(r) for r in runs]),
                                    args.repeat), args.write_readme)


if __name__ == "__main__":
    main()
