"""A two-member cluster with 10,000 peers in its registry: how fast a change reaches the
members, and `aura status --cluster`, against references measured in the same run.

    python3 -m bench.cluster [--peers 10000] [--samples 5]

The cluster is aura_lab/cluster.py's (PostgreSQL and two members in namespaces); the peers
go into the database before the members start. Two probes (this module with `--probe`, each in
a client namespace) run the WireGuard handshake with the project's core every 20 ms, one
against each member, and report when their member first answers a peer (it accepts it) or
first leaves it unanswered (it dropped it). Figures, medians over the samples:

* provisioning: from the commit that adds a peer (the transaction `aura provision-client`
  makes, made here so its moment is known) until member a, and member b, answer it;
* revocation: from the commit that removes it (as `aura revoke-client`) until a, and b, drop it;
  the two members learn both only from the database's notification, as any member but the
  one where the command ran does;
* the reference for both: `aura provision-client` and `aura revoke-client` themselves, as an
  operator types them (start-up, 10,000 peers read and checked, the commit);
* `aura status --cluster --json`: its run time against `aura status --json` (the router's own
  view of 10,000 peers) in the same run; once with the members' real rows and once with a
  third row carrying 10,000 sessions (written by `presence.member_info`, the router's own
  code, as a member with every peer connected would).
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from psycopg.types.json import Jsonb

from aura_common.cluster.presence import HEARTBEAT, LiveSession, member_info
from aura_common.cluster.store import DatabaseStore
from aura_common.config import ServerConfig
from aura_common.pki.keys import read_key_file
from aura_common.state.registry import RegisteredPeer
from aura_common.wireguard import (
    Device,
    HandshakeCompleted,
    Transmit,
    generate_private_key,
    public_key,
)
from aura_lab import pg
from aura_lab.cluster import Cluster, Member, running_cluster

NETWORK = "10.77.0.0/18"  # room for 10,000 static addresses and more
PROBE_INTERVAL = 0.02
SILENT_AFTER = 0.5  # no answer for this long: the member dropped the peer


# -- the probe (runs in a client namespace) ------------------------------------------------------
def probe() -> None:
    """One JSON request per stdin line; one JSON answer per line on stdout."""
    for line in sys.stdin:
        request = json.loads(line)
        print(json.dumps(watch(request)), flush=True)


def watch(request: dict[str, Any]) -> dict[str, Any]:
    """Handshakes every PROBE_INTERVAL until the member answers ("answered": the first
    answer's time) or has stopped answering ("silent": when the first initiation it left
    unanswered was sent), or the timeout. Both are upper bounds, PROBE_INTERVAL apart."""
    device = Device(bytes.fromhex(request["private_key"]))
    endpoint = (request["host"], request["port"])
    peer = device.add_peer(bytes.fromhex(request["server_key"]),
                           preshared_key=bytes.fromhex(request["preshared_key"]),
                           endpoint=endpoint)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(endpoint)
    deadline = time.monotonic() + request["timeout"]
    answered = False
    unanswered_since: float | None = None  # send time of the oldest initiation not answered
    next_initiation = 0.0
    try:
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_initiation:
                next_initiation = now + PROBE_INTERVAL
                if unanswered_since is None:
                    unanswered_since = time.time()
                for event in device.initiate(peer, now):
                    if isinstance(event, Transmit):
                        for datagram in event.datagrams:
                            sock.send(datagram)
            readable, _, _ = select.select([sock], [], [], max(0.0, next_initiation - now))
            if readable:
                try:
                    data = sock.recv(2048)
                except ConnectionRefusedError:
                    continue
                events = device.receive([data], endpoint, time.monotonic())
                if any(isinstance(e, HandshakeCompleted) for e in events):
                    if request["until"] == "answered":
                        return {"at": time.time()}
                    answered, unanswered_since = True, None
            if (request["until"] == "silent" and answered and unanswered_since is not None
                    and time.time() - unanswered_since >= SILENT_AFTER):
                return {"at": unanswered_since}
        return {"at": None}
    finally:
        sock.close()


class Probe:
    """The probe process in its own client namespace; one request at a time."""

    def __init__(self, cluster: Cluster) -> None:
        ns = cluster.client_namespace()
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "bench.cluster", "--probe"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def start(self, **request: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()

    def result(self) -> float | None:
        assert self.process.stdout is not None
        at: float | None = json.loads(self.process.stdout.readline())["at"]
        return at

    def close(self) -> None:
        self.process.kill()
        self.process.wait(10)


# -- the run -----------------------------------------------------------------------------------
def fill_registry(count: int) -> Callable[[Member, pg.PostgresServer], None]:
    """A `before_start` hook: `count` peers with static addresses, straight into the database."""

    def fill(a: Member, database: pg.PostgresServer) -> None:
        document = yaml.safe_load(a.config.read_text())
        document["registry"]["database"] = database.conninfo()  # its Unix socket, from here
        local = a.folder / "bench-local.yaml"
        local.write_text(yaml.safe_dump(document))
        config = ServerConfig.load(local)
        with DatabaseStore(config).edit() as registry:
            free = (f"10.77.{i // 250}.{i % 250 + 2}" for i in range(count))
            for index in range(count):
                registry.add(RegisteredPeer(name=f"p{index}",
                                            public_key=public_key(generate_private_key()),
                                            preshared_key=generate_private_key(),
                                            address_v4=next(free)))

    return fill


def database_store(cluster: Cluster) -> DatabaseStore:
    """The registry as `aura provision-client` / `revoke-client` change it, reached from
    here through the database's Unix socket (fill_registry wrote that config)."""
    return DatabaseStore(ServerConfig.load(cluster.a.folder / "bench-local.yaml"))


def change_latency(cluster: Cluster, probes: tuple[Probe, Probe], server_key: str,
                   name: str, address: str) -> tuple[list[float], list[float]]:
    """Add a peer in one transaction, then revoke it in another, while a probe on each member
    shakes hands as it; seconds from each commit until (a, b) answered / dropped it."""
    store = database_store(cluster)
    private, psk = generate_private_key(), generate_private_key()
    keys = {"private_key": private.hex(), "preshared_key": psk.hex(), "server_key": server_key,
            "port": 8443, "timeout": 30}
    members = (cluster.a, cluster.b)
    for probe, member in zip(probes, members, strict=True):
        probe.start(until="answered", host=member.public_host, **keys)
    time.sleep(0.2)  # both probes knocking, unanswered
    with store.edit() as registry:
        registry.add(RegisteredPeer(name=name, public_key=public_key(private), preshared_key=psk,
                          address_v4=address))
    committed = time.time()
    answered = [probe.result() for probe in probes]
    if None in answered:
        raise RuntimeError(f"{name}: a member never answered: {answered}")
    for probe, member in zip(probes, members, strict=True):
        probe.start(until="silent", host=member.public_host, **keys)
    time.sleep(0.3)  # answered handshakes on both
    with store.edit() as registry:
        registry.revoke(name)
    revoked = time.time()
    dropped = [probe.result() for probe in probes]
    if None in dropped:
        raise RuntimeError(f"{name}: a member kept answering: {dropped}")
    return ([at - committed for at in answered if at is not None],
            [at - revoked for at in dropped if at is not None])


def command_time(member: Member, *args: str, samples: int) -> float:
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        member.aura(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def publish_full_row(cluster: Cluster, peers: int) -> None:
    """A third member row with `peers` live sessions, as a member with all connected writes."""
    sessions = [LiveSession(f"p{i}", "udp", f"198.51.100.{i % 250}:{10000 + i}", time.time())
                for i in range(peers)]
    info = member_info("10.88.3.2", {"udp": ["[::]:8443"]}, sessions)
    with cluster.db.superuser("aura") as conn:
        conn.execute(HEARTBEAT, ("c-all-connected", time.time(), Jsonb(info)))


def run(peers: int, samples: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="aura-bench-cluster-") as tmp:
        folder = Path(tmp)
        with running_cluster(folder, fill_registry(peers), network=NETWORK) as cluster:
            server_key = read_key_file(str(cluster.a.folder / "server.pub")).hex()
            probes = (Probe(cluster), Probe(cluster))
            try:
                figures = measure(cluster, probes, server_key, peers, samples)
            finally:
                for probe in probes:
                    probe.close()
    return figures


def measure(cluster: Cluster, probes: tuple[Probe, Probe], server_key: str, peers: int,
            samples: int) -> dict[str, Any]:
    provisioned: list[list[float]] = [[], []]
    revoked: list[list[float]] = [[], []]
    for i in range(samples):
        added, dropped = change_latency(cluster, probes, server_key, f"x{i}", f"10.77.60.{i + 2}")
        for member in (0, 1):
            provisioned[member].append(added[member])
            revoked[member].append(dropped[member])
    provision_command = command_time(cluster.a, "provision-client", "cli", "--format",
                                     "wireguard", "-o", str(cluster.folder / "cli.conf"),
                                     samples=1)
    revoke_command = command_time(cluster.b, "revoke-client", "cli", samples=1)
    status = command_time(cluster.a, "status", "--json", samples=samples)
    cluster_status = command_time(cluster.a, "status", "--cluster", "--json", samples=samples)
    publish_full_row(cluster, peers)
    cluster_status_full = command_time(cluster.a, "status", "--cluster", "--json",
                                       samples=samples)
    median = statistics.median
    return {
        "peers": peers, "samples": samples,
        "provision_to_a_s": median(provisioned[0]), "provision_to_b_s": median(provisioned[1]),
        "revoke_on_a_s": median(revoked[0]), "revoke_on_b_s": median(revoked[1]),
        "provision_command_s": provision_command, "revoke_command_s": revoke_command,
        "propagation_share_of_provision_command": max(median(provisioned[0]),
                                                      median(provisioned[1]))
        / provision_command,
        "status_s": status,
        "status_cluster_s": cluster_status,
        "status_cluster_all_connected_s": cluster_status_full,
        "status_cluster_ratio": cluster_status / status,
        "status_cluster_all_connected_ratio": cluster_status_full / status,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe()
        return
    result = run(args.peers, args.samples)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
