"""Aura's three transports side by side, with OpenVPN over TCP as the reference for TLS/TCP.

    python3 -m bench.transports [--seconds 5] [--repeat 3] [--write-readme]

One Aura server in a namespace with UDP, QUIC and TCP enabled; one Aura client namespace per
transport, each pinned to it (`transports.order: [<name>]`); one OpenVPN pair over TCP (TLS
with a throw-away PKI, AES-256-GCM, userspace data path) between another client namespace and
the server namespace. iperf3 TCP upload and download and ping RTT for each, then the ratios:
Aura clients reach the host behind the server (through its NAT, one hop more than OpenVPN,
which ends at the server's tunnel address). The machine is shared and noisy: compare ratios
within one run, not absolute figures across runs; `--repeat` runs it again and reports the
median of each ratio. `--write-readme` puts the table into README.md.

For each Aura path it also prints the CPU time (user and system, from /proc) that the client,
the transport and the router spent per full-sized tunnel packet during each iperf3 run: a
figure that other load on the machine skews far less than throughput, and that shows which
process a transport's cost falls on.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from aura_common.roles import CLIENT_ORDER
from aura_lab.netns import Lab
from aura_lab.topology import INTERNET_HOST, AuraServer, iperf3, running_server
from bench import readme
from bench.compare import AURA_CLIENT, Result, measure, ping_rtt

OPENVPN_SERVER, OPENVPN_CLIENT = "10.98.0.1", "10.98.0.2"
TRANSPORTS = CLIENT_ORDER  # the rows in the order a client tries them
# IPv4 and TCP headers with timestamps: what a full-sized tunnel packet carries beyond the
# iperf3 payload.
TCP_OVERHEAD = 20 + 20 + 12
# Per Aura path and direction: CPU microseconds per full-sized tunnel packet, per process.
CpuShares = dict[str, dict[str, float]]


def aura_client_on(lab: Lab, server: AuraServer, ns: str, transport: str, folder: Path
                   ) -> subprocess.Popen[bytes]:
    config = server.provision(f"bench-{transport}", "aura")
    document = yaml.safe_load(config.read_text())
    document["transports"]["order"] = [str(transport)]  # a Transport is no YAML type
    document["runtime_dir"] = str(folder / f"client-{transport}")
    config.write_text(yaml.safe_dump(document))
    client = lab.spawn(ns, [*AURA_CLIENT, "up", "--foreground", str(config)],
                       log=folder / f"client-{transport}.log")
    lab.wait_for(lambda: lab.ping(ns, INTERNET_HOST, count=1, timeout=2), timeout=40,
                 what=f"the aura client tunnel over {transport}")
    return client


def process_cpu(pid: int) -> float:
    """CPU seconds, user and system, that process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_pid(lab: Lab, ns: str, module: str) -> int:
    """The pid of the `python -m <module>` process in namespace `ns`."""
    for pid in lab.run(ns, ["ip", "netns", "pids", ns]).stdout.split():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if module.encode() in argv:
            return int(pid)
    raise LookupError(f"no {module} process in {ns}")


def tunnel_mtu(lab: Lab, ns: str) -> int:
    links = json.loads(lab.run(ns, ["ip", "-j", "link", "show"]).stdout)
    return next(int(link["mtu"]) for link in links if link.get("link_type") == "none")


def cpu_per_packet(pids: dict[str, int], payload: int, seconds: int,
                   transfer: Callable[[], float]) -> tuple[float, dict[str, float]]:
    """Run `transfer` (returning bits/s over `seconds`); its result and each process's CPU
    microseconds per tunnel packet of `payload` bytes."""
    before = {name: process_cpu(pid) for name, pid in pids.items()}
    rate = transfer()
    packets = rate * seconds / 8 / payload
    return rate, {name: (process_cpu(pid) - before[name]) / packets * 1e6
                  for name, pid in pids.items()}


def measure_aura(lab: Lab, server: AuraServer, ns: str, transport: str,
                 client: subprocess.Popen[bytes], seconds: int) -> tuple[Result, CpuShares]:
    """`bench.compare.measure`, with the CPU each process spends per packet."""
    pids = {"client": client.pid, transport: service_pid(lab, server.ns, f"services.{transport}"),
            "router": service_pid(lab, server.ns, "services.router")}
    payload = tunnel_mtu(lab, ns) - TCP_OVERHEAD
    lab.ping(ns, INTERNET_HOST)  # warm up: handshakes, ARP, route caches
    upload, up_cpu = cpu_per_packet(pids, payload, seconds, lambda: iperf3(
        lab, ns, server.internet_ns, INTERNET_HOST, seconds=seconds))
    download, down_cpu = cpu_per_packet(pids, payload, seconds, lambda: iperf3(
        lab, ns, server.internet_ns, INTERNET_HOST, seconds=seconds, reverse=True))
    result = Result(f"aura {transport}", upload, download, ping_rtt(lab, ns, INTERNET_HOST))
    return result, {"up": up_cpu, "down": down_cpu}


def quick_pki(lab: Lab, ns: str, folder: Path) -> None:
    def run(*argv: str) -> None:
        lab.run(ns, list(argv))

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("openssl", "req", "-x509", *ec, "-subj", "/CN=bench-ca", "-days", "2",
        "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.crt"))
    for name in ("server", "client"):
        run("openssl", "req", *ec, "-subj", f"/CN={name}", "-keyout",
            str(folder / f"{name}.key"), "-out", str(folder / f"{name}.csr"))
        run("openssl", "x509", "-req", "-in", str(folder / f"{name}.csr"), "-days", "2",
            "-CA", str(folder / "ca.crt"), "-CAkey", str(folder / "ca.key"),
            "-CAcreateserial", "-out", str(folder / f"{name}.crt"))


def openvpn_tcp_pair(lab: Lab, server: AuraServer, folder: Path) -> str:
    ns = server.add_client_namespace()
    quick_pki(lab, server.ns, folder)
    common = ["openvpn", "--dev", "tun", "--disable-dco", "--verb", "1", "--tun-mtu", "1420",
              "--ca", str(folder / "ca.crt"), "--dh", "none"]
    lab.spawn(server.ns, [*common, "--proto", "tcp-server", "--lport", "1194",
                          "--ifconfig", OPENVPN_SERVER, OPENVPN_CLIENT, "--tls-server",
                          "--cert", str(folder / "server.crt"),
                          "--key", str(folder / "server.key")],
              log=folder / "openvpn-server.log")
    time.sleep(1)
    lab.spawn(ns, [*common, "--proto", "tcp-client", "--remote", "198.51.100.1", "1194",
                   "--ifconfig", OPENVPN_CLIENT, OPENVPN_SERVER, "--tls-client",
                   "--cert", str(folder / "client.crt"), "--key", str(folder / "client.key")],
              log=folder / "openvpn-client.log")
    lab.wait_for(lambda: lab.ping(ns, OPENVPN_SERVER, count=1, timeout=2), timeout=30,
                 what="the OpenVPN tunnel")
    return ns


def run(seconds: int) -> tuple[list[Result], dict[str, CpuShares]]:
    results: list[Result] = []
    cpu: dict[str, CpuShares] = {}
    with running_server(TRANSPORTS) as server:
        lab, folder = server.lab, server.folder
        # One client namespace on the link whose address is the server's public one, one
        # transport at a time.
        aura_ns = server.add_client_namespace()
        for transport in TRANSPORTS:
            client = aura_client_on(lab, server, aura_ns, transport, folder)
            result, shares = measure_aura(lab, server, aura_ns, transport, client, seconds)
            results.append(result)
            cpu[result.path] = shares
            print(f"measured {result}; CPU us per packet {shares}", flush=True)
            lab.stop(client)
            time.sleep(1)
        ns = openvpn_tcp_pair(lab, server, folder)
        results.append(measure(lab, "openvpn tcp", ns, server.ns, OPENVPN_SERVER, seconds))
        print(f"measured {results[-1]}", flush=True)
    return results, cpu


def report(results: list[Result]) -> str:
    by_path = {r.path: r for r in results}
    udp, openvpn = by_path["aura udp"], by_path["openvpn tcp"]
    lines = [f"{'path':<12} {'upload':>11} {'download':>11} {'rtt':>9}   "
             f"{'vs aura udp':<24} vs openvpn tcp"]
    for r in results:
        lines.append(
            f"{r.path:<12} {r.upload / 1e9:>7.3f} Gb/s {r.download / 1e9:>7.3f} Gb/s "
            f"{r.rtt_ms:>6.3f} ms   up x{r.upload / udp.upload:<5.2f} "
            f"down x{r.download / udp.download:<5.2f}   "
            f"up x{r.upload / openvpn.upload:.2f} down x{r.download / openvpn.download:.2f}")
    return "\n".join(lines)


def cpu_report(cpu: dict[str, CpuShares]) -> str:
    """CPU microseconds per full-sized tunnel packet, per process and in all."""
    lines = ["CPU time per full-sized tunnel packet (us; client + transport + router = total)"]
    for path, directions in cpu.items():
        for direction, shares in directions.items():
            parts = " + ".join(f"{name} {us:.1f}" for name, us in shares.items())
            lines.append(f"{path:<12} {direction:<5} {parts} = {sum(shares.values()):.1f}")
    return "\n".join(lines)


def ratios(results: list[Result]) -> dict[str, tuple[float, float, float, float]]:
    """Per path: upload and download against Aura UDP, then against OpenVPN over TCP."""
    by_path = {r.path: r for r in results}
    udp, openvpn = by_path["aura udp"], by_path["openvpn tcp"]
    return {r.path: (r.upload / udp.upload, r.download / udp.download,
                     r.upload / openvpn.upload, r.download / openvpn.download)
            for r in results}


def markdown(runs: list[list[Result]]) -> str:
    """The last run's figures with the median ratios of all runs."""
    per_run = [ratios(results) for results in runs]
    lines = ["| path | upload | download | ping RTT | vs Aura UDP (up / down) "
             "| vs OpenVPN TCP (up / down) |", "|---|---|---|---|---|---|"]
    for r in runs[-1]:
        medians = [statistics.median(run[r.path][i] for run in per_run) for i in range(4)]
        lines.append(f"| {r.path} | {r.upload / 1e9:.3f} Gb/s | {r.download / 1e9:.3f} Gb/s | "
                     f"{r.rtt_ms:.2f} ms | x{medians[0]:.2f} / x{medians[1]:.2f} | "
                     f"x{medians[2]:.2f} / x{medians[3]:.2f} |")
    lines += readme.medians_note(len(runs))
    return "\n".join(lines)


def main() -> None:
    args = readme.arguments(__doc__, "transports", seconds=5, repeat=True).parse_args()
    runs = []
    for _ in range(args.repeat):
        results, cpu = run(args.seconds)
        runs.append(results)
        print(report(results), cpu_report(cpu), sep="\n", flush=True)
    readme.publish("transports", markdown(runs), args.write_readme)


if __name__ == "__main__":
    main()
