"""One Aura server (UDP) with many live peers: loss, a bulk client's share, handshakes, memory,
and `aura status`, each against a reference measured in the same run.

    python3 -m bench.scale [--peers 1000] [--rate 10] [--seconds 20] [--write-readme]

The server's pool is a /20, its registry gets `--peers` generated peers (written before it
starts), and `bench.loadgen` runs them all in one process in a client namespace: it connects
every peer, holds, sends `--rate` ICMP echo requests per peer per second to the server's tunnel
address for `--seconds`, then offers re-handshakes at rates that search for where cookies
begin. An Aura client in another namespace is the bulk client: iperf3 upload alone first (the
reference), then during the steady phase. Figures:

* loss: echo requests without a reply during the steady phase (the target: < 0.1%), and
  where the kernel dropped meanwhile: full UDP sockets (server, load generator) and the
  router's full TUN queue (the bulk client's traffic included);
* bulk share: the bulk client's throughput under the load / alone (the target: >= 0.8);
* handshakes/s: completed per second at the highest rate offered that the server kept up
  with (no cookie reply, every initiation answered within a second), and the lowest it did
  not (the load generator's steps search between them);
* memory per peer: (RSS of aura-udp + aura-router with every peer connected - RSS before
  any connected) / peers, and the ratio of those RSS totals;
* `aura status`: the admin request's time with every peer live / with only the bulk client.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from ipaddress import IPv4Network
from pathlib import Path

from aura_common.config import ServerConfig
from aura_common.pki.keys import load_server_private_key
from aura_common.state.registry import RegisteredPeer, Registry
from aura_common.wireguard import generate_private_key, public_key
from aura_lab.netns import Lab
from aura_lab.topology import INTERNET_HOST, PUBLIC_HOST, SERVER_TUNNEL_V4, AuraServer, build
from bench import readme
from bench.transports import aura_client_on
from services.cli.admin import router_status

NETWORK = "10.77.0.0/20"
HOLD = 6.0  # seconds the load generator idles after connecting: memory and status then
STATUS_SAMPLES = 5


@dataclass
class Scale:
    peers: int
    connected: int
    connect_seconds: float
    sent: int
    received: int
    offered_per_s: float
    load_cpu_seconds: float  # the load generator's CPU time over the steady phase
    bulk_solo_bps: float
    bulk_loaded_bps: float
    rss_idle: Rss
    rss_connected: Rss
    status_idle_s: float
    status_connected_s: float
    status_idle_peers: int
    status_peers: int
    ramp: list[dict[str, float]]
    router_received: int  # echo requests (and the ramp's keepalives) the router got
    router_sent: int  # echo replies the router sent towards the peers
    kernel: KernelDrops  # over the same stretch as router_received and router_sent
    cpu_solo: CpuShare  # while the bulk client uploaded alone
    cpu_loaded: CpuShare  # while it uploaded under the load
    overlap: float  # the share of that upload's time during which the peers were sending

    @property
    def loss(self) -> float:
        return 1 - self.received / max(self.sent, 1)


def add_peers(config: ServerConfig, count: int) -> list[dict[str, str]]:
    """Register `count` peers with static addresses; returns what the load generator needs."""
    hosts = IPv4Network(NETWORK).hosts()
    next(hosts)  # the server's own address
    entries = []
    with Registry.edit(config.peers_file) as registry:
        taken = registry.taken_addresses()
        for index in range(count):
            address = next(h for h in hosts if str(h) not in taken)
            private, psk = generate_private_key(), generate_private_key()
            registry.add(RegisteredPeer(name=f"load{index}", public_key=public_key(private),
                              preshared_key=psk, address_v4=str(address)))
            entries.append({"private_key": private.hex(), "preshared_key": psk.hex(),
                            "address": str(address)})
    return entries


UDP, ROUTER = ("services.udp",), ("services.router",)
SERVER = UDP + ROUTER
LOAD_GENERATOR = ("bench.loadgen",)
BULK_CLIENT = ("client up",)
IPERF = ("iperf3",)


def processes(lab: Lab, ns: str, words: tuple[str, ...]) -> list[str]:
    """Pids of the processes in `ns` whose command line contains one of `words`."""
    found = []
    for pid in lab.run(ns, ["ip", "netns", "pids", ns]).stdout.split():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(word in cmdline for word in words):
            found.append(pid)
    return found


def process_rss_kib(lab: Lab, ns: str, words: tuple[str, ...]) -> int:
    total = 0
    for pid in processes(lab, ns, words):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += int(next(line.split()[1] for line in status.splitlines()
                          if line.startswith("VmRSS:")))
    return total


@dataclass
class Rss:
    """Resident memory (KiB) of the server's two processes."""

    udp: int
    router: int

    @property
    def total(self) -> int:
        return self.udp + self.router


def server_rss(lab: Lab, ns: str) -> Rss:
    return Rss(process_rss_kib(lab, ns, UDP), process_rss_kib(lab, ns, ROUTER))


Ticks = dict[str, tuple[int, int]]


def cpu_ticks(lab: Lab, ns: str, words: tuple[str, ...]) -> Ticks:
    """User and system CPU time so far (clock ticks) of each of those processes, by pid."""
    ticks = {}
    for pid in processes(lab, ns, words):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks[pid] = (int(fields[11]), int(fields[12]))  # utime, stime
    return ticks


@dataclass
class Cores:
    """CPU seconds per second: in the process itself (user) and in the kernel for it
    (system: its system calls, and the network stack's work done on its behalf)."""

    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system

    def __str__(self) -> str:
        return f"{self.total:.2f} ({self.user:.2f} user)"


def cpu_used(before: Ticks, after: Ticks, seconds: float) -> Cores:
    """Cores used between two `cpu_ticks` samples `seconds` apart. Only what a process used
    in between counts: one that started meanwhile counts from zero, and one that was gone (or
    a zombie, whose command line reads empty) at the second sample drops out of both, where a
    difference of totals would subtract its whole lifetime's time."""
    user = sum(spent[0] - before.get(pid, (0, 0))[0] for pid, spent in after.items())
    system = sum(spent[1] - before.get(pid, (0, 0))[1] for pid, spent in after.items())
    tick = os.sysconf("SC_CLK_TCK")
    return Cores(user / tick / seconds, system / tick / seconds)


def machine_ticks() -> tuple[int, int]:
    """The machine's busy and total CPU ticks so far (/proc/stat), every process included."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


@dataclass
class KernelDrops:
    server_socket: int  # datagrams the server's full UDP sockets dropped
    tun_queue: int  # packets dropped because the router had not read its TUN queue
    load_socket: int  # datagrams the load generator's full sockets dropped

    def __sub__(self, earlier: KernelDrops) -> KernelDrops:
        return KernelDrops(self.server_socket - earlier.server_socket,
                           self.tun_queue - earlier.tun_queue,
                           self.load_socket - earlier.load_socket)


def udp_socket_drops(lab: Lab, ns: str) -> int:
    """The namespace's UDP RcvbufErrors (/proc/net/snmp): datagrams a full socket dropped."""
    rows = [line.split()[1:] for line in lab.run(ns, ["cat", "/proc/net/snmp"]).stdout
            .splitlines() if line.startswith("Udp:")]
    return int(dict(zip(rows[0], rows[1], strict=True))["RcvbufErrors"])


def kernel_drops(lab: Lab, server: AuraServer, config: ServerConfig, load_ns: str
                 ) -> KernelDrops:
    tun = lab.run(server.ns, ["cat", f"/sys/class/net/{config.tun.name}/statistics/tx_dropped"])
    return KernelDrops(udp_socket_drops(lab, server.ns), int(tun.stdout),
                       udp_socket_drops(lab, load_ns))


@dataclass
class CpuShare:
    """Cores each part used while the bulk client uploaded, and the whole machine's busy
    cores (everything else on it included: the two cores are all that is shared)."""

    udp: Cores
    router: Cores
    load_generator: Cores
    bulk_client: Cores
    iperf: Cores  # both ends of the bulk upload
    machine: float
    cores: int

    @property
    def server(self) -> float:
        return self.udp.total + self.router.total


def upload_with_cpu(lab: Lab, server: AuraServer, bulk_ns: str, load_ns: str, seconds: float,
                    folder: Path) -> tuple[float, CpuShare, tuple[float, float]]:
    """Bits/s of one upload, the cores each part used, and when it ran (monotonic)."""
    parts = ((server.ns, UDP), (server.ns, ROUTER), (load_ns, LOAD_GENERATOR),
             (bulk_ns, BULK_CLIENT))
    iperf_ns = (bulk_ns, server.internet_ns)
    busy_before, total_before = machine_ticks()
    before = [cpu_ticks(lab, ns, words) for ns, words in parts]
    start = time.monotonic()
    bps, iperf = iperf_upload(lab, bulk_ns, server.internet_ns, seconds, folder,
                                    lambda: [cpu_ticks(lab, ns, IPERF) for ns in iperf_ns])
    elapsed = time.monotonic() - start
    used = [cpu_used(ticks, cpu_ticks(lab, ns, words), elapsed)
            for (ns, words), ticks in zip(parts, before, strict=True)]
    busy_after, total_after = machine_ticks()
    cores = os.cpu_count() or 1
    machine = cores * (busy_after - busy_before) / max(total_after - total_before, 1)
    udp, router, load_generator, bulk_client = used
    share = CpuShare(udp, router, load_generator, bulk_client, iperf, machine, cores)
    return bps, share, (start, start + elapsed)


def status_time(config: ServerConfig) -> tuple[float, int]:
    """Median seconds of the admin `status` request, and how many live peers it listed."""
    times, live = [], 0
    for _ in range(STATUS_SAMPLES):
        start = time.perf_counter()
        reply = router_status(config)
        times.append(time.perf_counter() - start)
        live = sum(1 for p in reply.get("peers", []) if p.get("connected"))
    return statistics.median(times), live


def router_packets(config: ServerConfig) -> tuple[int, int]:
    """Packets the router received from and sent to the load peers (its counters)."""
    peers = router_status(config).get("peers", [])
    load = [p for p in peers if p["name"].startswith("load")]
    return (sum(p.get("rx_packets") or 0 for p in load),
            sum(p.get("tx_packets") or 0 for p in load))


def iperf_upload(lab: Lab, ns: str, server_ns: str, seconds: float, folder: Path,
                 ticks: Callable[[], list[Ticks]]) -> tuple[float, Cores]:
    """iperf3 TCP upload through the bulk client's tunnel, bits/s (0 if it never finishes),
    and the cores both iperf3 ends used meanwhile (`ticks` samples them)."""
    port = 5201 + int(time.monotonic_ns() % 1000)
    server = lab.spawn(server_ns, ["iperf3", "-s", "-1", "-p", str(port)])
    report = folder / f"iperf3-{port}-{time.monotonic_ns()}.json"
    client = None
    cores = Cores(0, 0)
    try:
        time.sleep(0.3)
        before, start = ticks(), time.monotonic()
        client = lab.spawn(ns, ["iperf3", "-c", INTERNET_HOST, "-p", str(port), "-t",
                                str(int(seconds)), "--json", "--connect-timeout", "5000"],
                           log=report)
        # Sampled before either end exits (the upload's last second is left out).
        time.sleep(max(seconds - 1, 0.5))
        after, elapsed = ticks(), time.monotonic() - start
        used = [cpu_used(b, a, elapsed) for b, a in zip(before, after, strict=True)]
        cores = Cores(sum(c.user for c in used), sum(c.system for c in used))
        client.wait(seconds + 30)
        result = json.loads(report.read_text())
        bps = float(result["end"]["sum_received"]["bits_per_second"]) if "end" in result else 0
        return bps, cores
    except (subprocess.TimeoutExpired, json.JSONDecodeError, KeyError):
        return 0.0, cores
    finally:
        if client is not None:
            lab.stop(client)
        lab.stop(server)


def run(peers: int, rate: float, seconds: float) -> Scale:
    lab = Lab()
    try:
        with tempfile.TemporaryDirectory(prefix="aura-bench-") as tmp:
            folder = Path(tmp)
            server: AuraServer = build(lab, folder)
            server.init(extra=("--network", NETWORK))
            config = ServerConfig.load(server.config)
            spec = {
                "server": [PUBLIC_HOST, config.transports.udp.port],
                "server_public_key": public_key(load_server_private_key(config)).hex(),
                "target": SERVER_TUNNEL_V4,
                "peers": add_peers(config, peers),
            }
            server.start()
            bulk_ns = server.add_client_namespace()
            load_ns = server.add_client_namespace()
            bulk_client = aura_client_on(lab, server, bulk_ns, "udp", folder)
            bulk_seconds = max(seconds - 4, 3)
            solo, cpu_solo, _ = upload_with_cpu(lab, server, bulk_ns, load_ns, bulk_seconds,
                                                folder)
            rss_idle = server_rss(lab, server.ns)
            status_idle, status_idle_peers = status_time(config)

            peers_file, result_file = folder / "load-peers.json", folder / "load-result.json"
            peers_file.write_text(json.dumps(spec))
            generator = lab.spawn(load_ns, [sys.executable, "-m", "bench.loadgen", str(peers_file),
                                            str(result_file), "--rate", str(rate), "--seconds",
                                            str(seconds), "--hold", str(HOLD)],
                                  log=folder / "loadgen.log")
            connected_file = result_file.with_suffix(".connected")
            lab.wait_for(lambda: connected_file.exists() or generator.poll() is not None,
                         timeout=peers / 50 + 120, what="the load generator's peers connected")
            if generator.poll() is not None:
                raise AssertionError((folder / "loadgen.log").read_text())
            connected_at = time.monotonic()
            time.sleep(1)
            rss_connected = server_rss(lab, server.ns)
            status_connected, status_peers = status_time(config)
            router_before = router_packets(config)
            kernel_before = kernel_drops(lab, server, config, load_ns)
            time.sleep(max(connected_at + HOLD + 1 - time.monotonic(), 0))
            loaded, cpu_loaded, upload = upload_with_cpu(lab, server, bulk_ns, load_ns,
                                                         bulk_seconds, folder)
            generator.wait(timeout=seconds + 120)
            router_after = router_packets(config)
            kernel = kernel_drops(lab, server, config, load_ns) - kernel_before
            lab.stop(bulk_client)
            result = json.loads(result_file.read_text())
    finally:
        lab.close()
    connect, steady = result["connect"], result["steady"]
    # On a starved machine the upload can start late; what ran beside no load is no figure.
    beside = min(upload[1], steady["ended_at"]) - max(upload[0], steady["started_at"])
    overlap = max(beside, 0) / (upload[1] - upload[0])
    return Scale(peers, connect["connected"], connect["seconds"], steady["sent"],
                 steady["received"], steady["offered_per_s"], steady["cpu_seconds"], solo,
                 loaded, rss_idle,
                 rss_connected, status_idle, status_connected, status_idle_peers, status_peers,
                 result["ramp"], router_after[0] - router_before[0],
                 router_after[1] - router_before[1], kernel, cpu_solo, cpu_loaded, overlap)


def fell_behind(step: dict[str, float]) -> bool:
    """A handshake step the server did not keep up with: a cookie reply, or an initiation
    not answered within the second after the step (`bench.loadgen.RampSearch`)."""
    return bool(step["cookie_replies"]) or step["completed"] < step["initiations"]


def table(s: Scale) -> str:
    kept_up = [step for step in s.ramp if not fell_behind(step)]
    knee = max(kept_up, key=lambda step: step["offered_per_s"], default=None)
    behind = min((step for step in s.ramp if fell_behind(step)),
                 key=lambda step: step["offered_per_s"], default=None)
    peers = max(s.connected, 1)
    per_peer = (s.rss_connected.total - s.rss_idle.total) / peers
    udp_per_peer = (s.rss_connected.udp - s.rss_idle.udp) / peers
    router_per_peer = (s.rss_connected.router - s.rss_idle.router) / peers
    loaded, solo = s.cpu_loaded, s.cpu_solo
    rows = [
        ("peers connected", f"{s.connected} of {s.peers} in {s.connect_seconds:.1f} s",
         f"x{s.connected / s.peers:.3f} of the peers"),
        ("echo requests, steady phase", f"{s.sent} at {s.offered_per_s:.0f}/s, "
         f"{s.sent - s.received} unanswered: {s.sent - s.router_received} before the router, "
         f"{s.router_sent - s.received} after it", f"loss {100 * s.loss:.3f}%"),
        ("kernel drops meanwhile", f"server: {s.kernel.server_socket} datagrams by its full "
         f"UDP socket, {s.kernel.tun_queue} packets by the router's full TUN queue; load "
         f"generator: {s.kernel.load_socket} datagrams by its full sockets",
         f"x{s.kernel.tun_queue / max(s.router_received, 1):.4f} of the requests the router "
         "got (TUN queue)"),
        ("bulk client upload (Aura UDP)", f"{s.bulk_loaded_bps / 1e9:.3f} Gb/s under load "
         f"(the peers sent during x{s.overlap:.2f} of it), {s.bulk_solo_bps / 1e9:.3f} Gb/s "
         "alone",
         f"x{s.bulk_loaded_bps / max(s.bulk_solo_bps, 1):.2f} of alone"),
        ("handshakes/s before cookies",
         (f"{knee['completed_per_s']:.0f}/s completed at {knee['offered_per_s']:.0f}/s offered"
          if knee else "behind from the first step")
         + (f"; at {behind['offered_per_s']:.0f}/s {behind['cookie_replies']} cookie replies, "
            f"{behind['initiations'] - behind['completed']} of {behind['initiations']} "
            "unanswered within a second" if behind else ""),
         f"behind from {behind['offered_per_s']:.0f}/s offered ({len(s.ramp)} steps)"
         if behind else f"kept up in all {len(s.ramp)} steps"),
        ("memory, aura-udp + aura-router", f"{s.rss_connected.total / 1024:.1f} MiB with "
         f"every peer live, {s.rss_idle.total / 1024:.1f} MiB with none: aura-udp "
         f"{udp_per_peer:.1f}, aura-router {router_per_peer:.1f} KiB per peer",
         f"{per_peer:.1f} KiB per peer, x{s.rss_connected.total / s.rss_idle.total:.2f}"),
        ("CPU while the bulk client uploads (cores)",
         f"under load / alone: aura-udp {loaded.udp} / {solo.udp}, aura-router "
         f"{loaded.router} / {solo.router}, bulk client {loaded.bulk_client} / "
         f"{solo.bulk_client}, iperf3 {loaded.iperf} / {solo.iperf}; load generator "
         f"{loaded.load_generator}, {1e6 * s.load_cpu_seconds / max(s.sent, 1):.0f} µs per "
         f"echo request; the machine {loaded.machine:.2f} / {solo.machine:.2f} busy of "
         f"{loaded.cores}",
         f"bulk client x{loaded.bulk_client.total / max(solo.bulk_client.total, 1e-3):.2f} "
         "of its CPU alone"),
        ("`aura status` request", f"{1e3 * s.status_connected_s:.1f} ms with {s.status_peers} "
         f"live, {1e3 * s.status_idle_s:.1f} ms with {s.status_idle_peers}",
         f"x{s.status_connected_s / s.status_idle_s:.1f}"),
    ]
    lines = ["| figure | measured | ratio |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | {ratio} |" for name, measured, ratio in rows]
    lines.append(f"\n{s.peers} peers sending {s.offered_per_s / s.peers:.0f} echo requests/s "
                 "each from one load generator process; references measured in the same run.")
    return "\n".join(lines)


def main() -> None:
    parser = readme.arguments(__doc__, "scale")
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10, help="echo requests/s per peer")
    parser.add_argument("--seconds", type=float, default=20, help="steady phase length")
    args = parser.parse_args()
    result = run(args.peers, args.rate, args.seconds)
    print(json.dumps(asdict(result), indent=1), file=sys.stderr)
    readme.publish("scale", table(result), args.write_readme)


if __name__ == "__main__":
    main()
