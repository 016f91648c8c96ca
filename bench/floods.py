"""Handshake capacity of aura-udp on one core, and what floods cost a connected client.

    python3 -m bench.floods [--seconds 5] [--only NAME ...]

1. The core alone (this process, one core): handshake responses per second for valid
   initiations from known peers, cookie replies per second under load, and junk initiations
   (valid mac1, unknown key) rejected per second below the load mark.
   The same through the split the server runs: a device without the static key hands each
   initiation to a `HandshakeAuthority` (the router's part), in-process, no IPC.
2. One aura-udp and the router that answers its handshakes, both pinned to one CPU
   (`taskset`), in a namespace: real initiations of LOAD_PEERS registered peers from
   LOAD_SOURCES source addresses (each peer from seven of its own, so that its initiations
   arrive in the order they were made), offered at increasing rates; responses and cookie replies
   per second come back. Above capacity the backlog puts the server under load: handshakes
   need a cookie, and each proven source meets the rate limit (20/s). A source answers a
   cookie reply as a real client does: it proves itself with the cookie in its next
   initiation, REKEY_TIMEOUT later (sooner, the server drops it as a flood would be). So
   each step sends CAPACITY_WARMUP seconds before it counts, time for every source to earn
   its cookie under load.
3. Floods: each function below starts one flood (aura_lab/flood.py) against the same server
   while a stock WireGuard client runs iperf3 through the tunnel; the result is its throughput
   as a ratio of its throughput without a flood, measured in the same run (before and after
   the floods), and what the flood itself cost aura-udp, in cores (`flood_ratios`). A last
   line sums up: handshake responses/s and the ratio for each flood. To add a flood (TCP,
   QUIC), write one more function and list it in FLOODS.
4. TCP and QUIC floods (aura_lab/stream_flood.py): a second server with both transports, an
   Aura client pinned to each; each function below floods one transport, and the result is
   that transport's client's iperf3 upload under the flood over just before it. A control
   that starts the generator and opens nothing gives the noise floor of those ratios.

The flood generator shares the machine with the server and the client (on two cores, with
both of them): it builds every datagram before it starts and hands the kernel a batch per
wakeup, and each flood line gives the CPU it used, so that the ratio measures the server.
The machine is shared and noisy: compare ratios within one run, not figures across runs.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aura_common.state.registry import RegisteredPeer, Registry
from aura_common.wireguard import (
    Device,
    HandshakeAuthority,
    HandshakeRequested,
    generate_private_key,
    public_key,
)
from aura_common.wireguard.constants import REKEY_TIMEOUT
from aura_lab.flood import SERVER_V4, SERVER_V6, attacker_namespace, junk_initiation
from aura_lab.netns import Lab
from aura_lab.topology import INTERNET_HOST, AuraServer, build, iperf3, stock_wireguard_up
from bench.transports import aura_client_on

LOAD_PEERS = 150  # each may initiate 50 times a second (INITIATION_MIN_INTERVAL)
LOAD_SOURCES = 7 * LOAD_PEERS  # each may start 20 handshakes a second once proven
OFFERED_RATES = (1000, 2000, 4000, 8000)
STEP_SECONDS = 3.0
CAPACITY_WARMUP = REKEY_TIMEOUT + 1.0
FLOOD_RATE = 10_000
SERVER_CPU = 0


# -- 1. the core alone -----------------------------------------------------------------------
def core_capacity(count: int = 1500) -> dict[str, float]:
    server_key = generate_private_key()
    server_public = public_key(server_key)
    server = Device(server_key)
    clients = []
    for _ in range(LOAD_PEERS):
        key = generate_private_key()
        device = Device(key)
        clients.append((device, device.add_peer(server_public, endpoint=(SERVER_V4, 8443))))
        server.add_peer(public_key(key))
    initiations = [
        d.initiate(p, 0.0)[0].datagrams[0]  # type: ignore[union-attr]
        for _ in range(count // LOAD_PEERS) for d, p in clients
    ]

    def rate(messages: list[bytes], device: Device, endpoints: int = 50) -> float:
        started = time.perf_counter()
        for n, message in enumerate(messages):
            device.receive([message], ("192.0.2.1", 1000 + n % endpoints), n / len(messages))
        return len(messages) / (time.perf_counter() - started)

    responses = rate(initiations, server)
    relayed = relayed_rate(server_key, [d.public_key for d, _ in clients], initiations)
    junk = [junk_initiation(server_public) for _ in range(count)]
    rejections = rate(junk, Device(server_key))
    # Under load, each from an endpoint of its own (a cookie reply each), and all from one
    # (one reply: the rest are dropped after the mac checks, the endpoint was just answered).
    cookies = rate(junk, Device(server_key, under_load_after=0), endpoints=len(junk))
    paced = rate(junk, Device(server_key, under_load_after=0), endpoints=1)
    return {"responses": responses, "relayed_responses": relayed, "junk_rejections": rejections,
            "cookie_replies": cookies, "paced_rejections": paced}


def relayed_rate(server_key: bytes, peers: list[bytes], initiations: list[bytes]) -> float:
    """Responses/s of a device without the static key and an authority, called in turn."""
    authority = HandshakeAuthority(server_key)
    relay = Device(public_key=authority.public_key)
    for peer in peers:
        authority.add_peer(peer)
        relay.add_peer(peer)
    started = time.perf_counter()
    for n, message in enumerate(initiations):
        now = n / len(initiations)
        for event in relay.receive([message], ("192.0.2.1", 1000 + n % 50), now):
            if isinstance(event, HandshakeRequested):
                answer = authority.answer(event.initiation, event.local_index, "udp", now, 0.0)
                relay.complete_handshake(event.local_index, answer, now)
    return len(initiations) / (time.perf_counter() - started)


# -- the namespace setup ---------------------------------------------------------------------
@dataclass
class Setup:
    lab: Lab
    server: AuraServer
    folder: Path
    attacker: str
    client_ns: str
    server_public: bytes
    load_peers: list[tuple[Device, object]]


def register_load_peers(server: AuraServer) -> list[tuple[Device, object]]:
    """LOAD_PEERS peers written straight into the registry (the CLI takes a second each)."""
    server_public = base64.b64decode((server.folder / "server.pub").read_text())
    peers: list[tuple[Device, object]] = []
    with Registry.edit(server.folder / "state" / "router" / "peers.json") as registry:
        for n in range(LOAD_PEERS):
            key = generate_private_key()
            registry.add(RegisteredPeer(f"load{n}", public_key(key),
                                        address_v4=f"10.77.0.{100 + n}"))
            device = Device(key)
            peers.append((device, device.add_peer(server_public, endpoint=(SERVER_V4, 8443))))
    return peers


def start(lab: Lab, folder: Path) -> Setup:
    server = build(lab, folder)
    server.init()
    load_peers = register_load_peers(server)
    server.start()
    # The router answers aura-udp's handshakes: both on one core, as aura-udp alone was.
    for name in ("udp", "router"):
        subprocess.run(["taskset", "-a", "-cp", str(SERVER_CPU), str(server.service_pid(name))],
                       check=True, capture_output=True)
    client_ns = server.add_client_namespace()
    attacker = attacker_namespace(lab, server)
    stock_wireguard_up(lab, client_ns, server.provision("alice", "wireguard"))
    lab.wait_for(lambda: lab.ping(client_ns, INTERNET_HOST, count=1), timeout=20,
                 what="alice's tunnel")
    server_public = base64.b64decode((folder / "server.pub").read_text())
    return Setup(lab, server, folder, attacker, client_ns, server_public, load_peers)


def flooder(setup: Setup, name: str, *args: str, family: int = 4, rate: float = FLOOD_RATE,
            seconds: float = 10.0) -> tuple[subprocess.Popen[bytes], Path]:
    target = f"{SERVER_V4}:8443" if family == 4 else f"[{SERVER_V6}]:8443"
    log = setup.folder / f"flood-{name}.json"
    process = setup.lab.spawn(setup.attacker, [
        sys.executable, "-m", "aura_lab.flood", "--target", target, "--server-public",
        setup.server_public.hex(), "--rate", str(rate), "--seconds", str(seconds), *args,
    ], log=log)
    return process, log


def flood_report(process: subprocess.Popen[bytes], log: Path, timeout: float) -> dict:
    process.wait(timeout)
    return json.loads(log.read_text().strip().splitlines()[-1])


# -- 2. one aura-udp on one core --------------------------------------------------------------
def process_capacity(setup: Setup) -> list[dict[str, float]]:
    results = []
    for offered in OFFERED_RATES:
        rounds = int(offered * (CAPACITY_WARMUP + STEP_SECONDS)) // LOAD_PEERS + 1
        messages = b"".join(
            device.initiate(peer, 0.0)[0].datagrams[0]  # type: ignore[arg-type,union-attr]
            for _ in range(rounds) for device, peer in setup.load_peers
        )
        path = setup.folder / f"initiations-{offered}.bin"
        path.write_bytes(messages)
        process, log = flooder(setup, f"capacity-{offered}", "--messages", str(path),
                               "--sources", str(LOAD_SOURCES), "--cookies",
                               "--rest", str(REKEY_TIMEOUT), "--warmup", str(CAPACITY_WARMUP),
                               rate=offered, seconds=STEP_SECONDS)
        report = flood_report(process, log, CAPACITY_WARMUP + STEP_SECONDS + 60)
        seconds = report["seconds"] or STEP_SECONDS
        results.append({
            "offered": offered, "sent_per_s": report["sent"] / seconds,
            "responses_per_s": report["replies"].get("2", 0) / seconds,
            "cookie_replies_per_s": report["replies"].get("3", 0) / seconds,
            "flooder_core": report["cpu_seconds"] / seconds,
        })
        time.sleep(1.5)  # out of the sticky "under load" second before the next step
    return results


# -- 3. floods against a connected client ----------------------------------------------------
# Each starts one flood lasting `seconds` and returns it with the file its report goes to.
Flood = Callable[[Setup, float], tuple[subprocess.Popen[bytes], Path]]


def junk_from_one_address(setup: Setup, seconds: float) -> tuple[subprocess.Popen[bytes], Path]:
    return flooder(setup, "junk-one", seconds=seconds)


def proven_from_one_address(setup: Setup, seconds: float
                            ) -> tuple[subprocess.Popen[bytes], Path]:
    return flooder(setup, "proven-one", "--cookies", seconds=seconds)


def junk_from_4096_ipv4_sources(setup: Setup, seconds: float
                                ) -> tuple[subprocess.Popen[bytes], Path]:
    return flooder(setup, "junk-v4", "--sources", "4096", seconds=seconds)


def junk_from_4096_ipv6_prefixes(setup: Setup, seconds: float
                                 ) -> tuple[subprocess.Popen[bytes], Path]:
    return flooder(setup, "junk-v6", "--sources", "4096", family=6, seconds=seconds)


def proven_from_4096_ipv6_prefixes(setup: Setup, seconds: float
                                   ) -> tuple[subprocess.Popen[bytes], Path]:
    return flooder(setup, "proven-v6", "--sources", "4096", "--cookies", family=6,
                   seconds=seconds)


FLOODS: list[Flood] = [
    junk_from_one_address,
    proven_from_one_address,
    junk_from_4096_ipv4_sources,
    junk_from_4096_ipv6_prefixes,
    proven_from_4096_ipv6_prefixes,
]


def client_throughput(setup: Setup, seconds: int) -> float:
    return iperf3(setup.lab, setup.client_ns, setup.server.internet_ns, INTERNET_HOST,
                  seconds=seconds)


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time the processes have used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measured_throughput(setup: Setup, pids: list[int], seconds: int) -> tuple[float, float]:
    """The client's throughput, and the share of a core the processes used meanwhile."""
    cpu, started = cpu_seconds(pids), time.monotonic()
    throughput = client_throughput(setup, seconds)
    return throughput, (cpu_seconds(pids) - cpu) / (time.monotonic() - started)


def flood_ratios(setup: Setup, floods: list[Flood], seconds: int, repeat: int
                 ) -> list[dict]:
    """Per flood: the client's throughput under it over its throughput just before, `repeat`
    times in turn (the machine's other load drifts; adjacent pairs share most of it).

    Also what the flood itself cost aura-udp and aura-router (pinned to one CPU together), as
    a share of one core: their CPU under the flood less what the data they still moved cost
    at the rate measured just before. On a machine shared with other work they get less than
    their core, and a flood's fixed cost is then a larger share of what they get: this figure
    says what the ratio would be on a core of their own (about 1 - share, where the client
    is limited by their CPU).
    """
    pids = [setup.server.service_pid("udp"), setup.server.service_pid("router")]
    measured: dict[str, dict] = {f.__name__: {"ratios": [], "flood_cores": [], "cores": [],
                                              "sent": 0, "seconds": 0.0, "cpu": 0.0,
                                              "replies": {}}
                                 for f in floods}
    for _ in range(repeat):
        for flood in floods:
            baseline, baseline_cores = measured_throughput(setup, pids, seconds)
            process, log = flood(setup, seconds + 3.0)
            time.sleep(1.5)  # the flood is under way and the server under load
            throughput, cores = measured_throughput(setup, pids, seconds)
            report = flood_report(process, log, seconds + 60)
            entry = measured[flood.__name__]
            entry["ratios"].append(throughput / baseline)
            entry["flood_cores"].append(cores - baseline_cores * throughput / baseline)
            entry["cores"].append(cores)
            entry["baseline"] = baseline
            entry["sent"] += report["sent"]
            entry["seconds"] += report["seconds"]
            entry["cpu"] += report["cpu_seconds"]
            for kind, count in report["replies"].items():
                entry["replies"][kind] = entry["replies"].get(kind, 0) + count
            time.sleep(1.5)  # out of the sticky "under load" second
    return [{"flood": name, "ratio": statistics.median(entry["ratios"]),
             "flood_core": statistics.median(entry["flood_cores"]), **entry}
            for name, entry in measured.items()]


# -- 4. TCP and QUIC floods against Aura clients on those transports ---------------------------
STREAM_FLOOD_RATE = 40.0  # new connections per second


@dataclass
class StreamSetup:
    lab: Lab
    server: AuraServer
    folder: Path
    attacker: str
    clients: dict[str, str]  # transport -> namespace of the Aura client pinned to it


def start_streams(lab: Lab, folder: Path) -> StreamSetup:
    server = build(lab, folder)
    server.init(transports=("tcp", "quic"))
    server.start()
    attacker = attacker_namespace(lab, server)
    clients = {}
    for transport in ("tcp", "quic"):
        clients[transport] = server.add_client_namespace()
        aura_client_on(lab, server, clients[transport], transport, folder)
    return StreamSetup(lab, server, folder, attacker, clients)


def stream_flooder(setup: StreamSetup, kind: str, seconds: float, *args: str
                   ) -> tuple[subprocess.Popen[bytes], Path]:
    port = 8443 if kind.startswith("tcp") else 8444
    log = setup.folder / f"flood-{kind}.json"
    process = setup.lab.spawn(setup.attacker, [
        sys.executable, "-m", "aura_lab.stream_flood", kind, "--target", f"{SERVER_V4}:{port}",
        "--rate", str(STREAM_FLOOD_RATE), "--seconds", str(seconds), *args], log=log)
    return process, log


def tcp_dribbled_hellos_from_10_addresses(setup: StreamSetup, seconds: float
                                          ) -> tuple[subprocess.Popen[bytes], Path]:
    return stream_flooder(setup, "tcp-dribble", seconds, "--connections", "150",
                          "--sources", "10")


def tcp_stalled_hellos_from_one_address(setup: StreamSetup, seconds: float
                                        ) -> tuple[subprocess.Popen[bytes], Path]:
    return stream_flooder(setup, "tcp-stall", seconds, "--connections", "300")


def tcp_unfinished_tls_from_30_addresses(setup: StreamSetup, seconds: float
                                         ) -> tuple[subprocess.Popen[bytes], Path]:
    return stream_flooder(setup, "tcp-no-finish", seconds, "--connections", "300",
                          "--sources", "30")


def quic_handshakes_from_one_port(setup: StreamSetup, seconds: float
                                  ) -> tuple[subprocess.Popen[bytes], Path]:
    return stream_flooder(setup, "quic-one-port", seconds, "--connections", "200")


def quic_handshakes_from_20_addresses(setup: StreamSetup, seconds: float
                                      ) -> tuple[subprocess.Popen[bytes], Path]:
    return stream_flooder(setup, "quic-many-ports", seconds, "--connections", "200",
                          "--sources", "20")


def quic_control_without_connections(setup: StreamSetup, seconds: float
                                     ) -> tuple[subprocess.Popen[bytes], Path]:
    """No flood: the generator starts and opens nothing. Its ratio is the noise floor of
    the floods' ratios on this machine (two adjacent runs of the same upload)."""
    return stream_flooder(setup, "quic-many-ports", seconds, "--connections", "0")


StreamFlood = Callable[[StreamSetup, float], tuple[subprocess.Popen[bytes], Path]]
STREAM_FLOODS: list[StreamFlood] = [
    tcp_dribbled_hellos_from_10_addresses,
    tcp_stalled_hellos_from_one_address,
    tcp_unfinished_tls_from_30_addresses,
    quic_handshakes_from_one_port,
    quic_handshakes_from_20_addresses,
    quic_control_without_connections,
]


def stream_flood_ratios(setup: StreamSetup, floods: list[StreamFlood], seconds: int,
                        repeat: int) -> list[dict]:
    """Per flood: its transport's client's throughput under it over just before it, the
    transport process's CPU under it over just before it (a share of one core each), and what
    the flood itself cost that process: its CPU under the flood less what the data it still
    moved cost at the rate measured just before (as `flood_ratios`)."""
    measured: dict[str, dict] = {f.__name__: {"ratios": [], "cores": [], "baseline_cores": [],
                                              "flood_cores": []}
                                 for f in floods}
    for _ in range(repeat):
        for flood in floods:
            transport = flood.__name__.split("_")[0]
            ns, pid = setup.clients[transport], setup.server.service_pid(transport)

            def throughput(ns: str = ns, pid: int = pid) -> tuple[float, float]:
                cpu, started = cpu_seconds([pid]), time.monotonic()
                rate = iperf3(setup.lab, ns, setup.server.internet_ns, INTERNET_HOST,
                              seconds=seconds)
                return rate, (cpu_seconds([pid]) - cpu) / (time.monotonic() - started)

            baseline, baseline_cores = throughput()
            process, log = flood(setup, seconds + 5.0)
            time.sleep(2.0)  # the flood holds its connections
            under, cores = throughput()
            entry = measured[flood.__name__]
            entry["ratios"].append(under / baseline)
            entry["cores"].append(cores)
            entry["baseline_cores"].append(baseline_cores)
            entry["flood_cores"].append(cores - baseline_cores * under / baseline)
            entry["baseline"] = baseline
            entry["report"] = flood_report(process, log, seconds + 60)
    return [{"flood": name, "ratio": statistics.median(entry["ratios"]), **entry}
            for name, entry in measured.items()]


def run_stream_floods(floods: list[StreamFlood], seconds: int, repeat: int) -> None:
    lab = Lab()
    try:
        with tempfile.TemporaryDirectory() as folder:
            setup = start_streams(lab, Path(folder))
            print(f"TCP and QUIC floods at {STREAM_FLOOD_RATE:.0f} connections/s; that "
                  f"transport's Aura client, iperf3 upload under the flood / just before it, "
                  f"median of {repeat}; the transport process's CPU (share of a core) just "
                  f"before / under the flood, medians:")
            for entry in stream_flood_ratios(setup, floods, seconds, repeat):
                report = entry["report"]
                ratios = ", ".join(f"{r:.2f}" for r in entry["ratios"])
                print(f"  {entry['flood']:<40} ratio {entry['ratio']:.2f} ({ratios}; last "
                      f"baseline {entry['baseline'] / 1e6:.0f} Mbit/s), CPU "
                      f"{statistics.median(entry['baseline_cores']):.2f} / "
                      f"{statistics.median(entry['cores']):.2f}, the flood's own cost "
                      f"{statistics.median(entry['flood_cores']):.2f}; last flood: "
                      f"{report['opened']} opened, {report['closed_by_server']} closed by the "
                      f"server, {report['handshakes']} QUIC handshakes, the flooder used "
                      f"{report['cpu_seconds'] / report['seconds']:.2f} core")
    finally:
        lab.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="iperf3 seconds per run")
    parser.add_argument("--only", nargs="*", help="flood function names to run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each flood")
    parser.add_argument("--skip-capacity", action="store_true")
    args = parser.parse_args()
    floods = [f for f in FLOODS if not args.only or f.__name__ in args.only]
    stream_floods = [f for f in STREAM_FLOODS if not args.only or f.__name__ in args.only]
    if args.only and not floods:  # TCP and QUIC floods only: no UDP server needed
        run_stream_floods(stream_floods, args.seconds, args.repeat)
        return

    print(f"load average {Path('/proc/loadavg').read_text().split()[0]} on "
          f"{len(Path('/proc/cpuinfo').read_text().split('processor')) - 1} CPUs")
    if not args.skip_capacity:
        core = core_capacity()
        print(f"core, one core: {core['responses']:.0f} responses/s "
              f"({core['relayed_responses']:.0f}/s relayed to an authority in-process), "
              f"{core['cookie_replies']:.0f} cookie replies/s (under load, each to a new "
              f"endpoint), {core['paced_rejections']:.0f} junk initiations/s from an endpoint "
              f"just answered dropped (under load), {core['junk_rejections']:.0f} junk "
              "initiations rejected/s (below the mark)")
    lab = Lab()
    capacity = float("nan")  # responses/s of aura-udp on one core (not measured: nan)
    try:
        with tempfile.TemporaryDirectory() as folder:
            setup = start(lab, Path(folder))
            if not args.skip_capacity:
                print(f"aura-udp and aura-router on CPU {SERVER_CPU}, {LOAD_PEERS} peers from "
                      f"{LOAD_SOURCES} addresses, answering cookies as clients do, after "
                      f"{CAPACITY_WARMUP:.0f} s of each rate:")
                steps = process_capacity(setup)
                capacity = max(step["responses_per_s"] for step in steps)
                for step in steps:
                    print(f"  offered {step['offered']:>5}/s (sent {step['sent_per_s']:.0f}/s):"
                          f" {step['responses_per_s']:.0f} responses/s,"
                          f" {step['cookie_replies_per_s']:.0f} cookie replies/s"
                          f" (the sender used {step['flooder_core']:.2f} core)")
            print(f"floods at {FLOOD_RATE}/s; client iperf3 upload under the flood / just "
                  f"before it, median of {args.repeat}; the flood's own cost to aura-udp and "
                  "aura-router in cores, the share of a core they had under it, and the "
                  "generator's own CPU (it builds every datagram in advance and sends them "
                  "in sendmmsg batches, so that the ratio measures the server):")
            results = flood_ratios(setup, floods, args.seconds, args.repeat)
            for entry in results:
                replies = entry["replies"]
                ratios = ", ".join(f"{r:.2f}" for r in entry["ratios"])
                print(f"  {entry['flood']:<32} {entry['sent'] / entry['seconds']:>6.0f}/s sent: "
                      f"ratio {entry['ratio']:.2f} ({ratios}; last baseline "
                      f"{entry['baseline'] / 1e6:.0f} Mbit/s), flood cost "
                      f"{entry['flood_core']:.2f} core (they had "
                      f"{statistics.median(entry['cores']):.2f}; the flooder used "
                      f"{entry['cpu'] / entry['seconds']:.2f}), responses "
                      f"{replies.get('2', 0)}, cookie replies {replies.get('3', 0)}")
            summary = ", ".join(f"{entry['flood']} {entry['ratio']:.2f}" for entry in results)
            print(f"summary: handshake responses/s {capacity:.0f}; client throughput ratio "
                  f"per flood at {FLOOD_RATE}/s: {summary}")
    finally:
        lab.close()
    if stream_floods:
        run_stream_floods(stream_floods, args.seconds, args.repeat)


if __name__ == "__main__":
    main()
