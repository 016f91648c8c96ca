"""A two-member cluster with 10,000 peers in its registry: provisioning and revocation across
members, and `aura status --cluster`, each against a reference measured in the same run.

    python3 -m bench.cluster [--peers 10000] [--samples 5]

The cluster is tests/e2e/cluster.py's (PostgreSQL and two members in namespaces); the peers
go into the database before the members start. A probe (this module with `--probe`, in a
client namespace) runs the WireGuard handshake with the project's core every 20 ms against
one member and reports when that member first answers a peer (it accepts it) or last did (it
dropped it). Figures, each a median over the samples:

* provisioning: from `aura provision-client` on a returning until b answers the new peer
  (across members), against until a answers it (the member that made the change);
* revocation: from `aura revoke-client` on b returning until a stops answering the peer,
  against revoking on a;
* `aura status --cluster --json`: its run time, against `aura status --json` (the router's
  own view of 10,000 peers) in the same run; once with the members' real rows and once with
  a third row carrying 10,000 sessions (published by `presence.member_info`, the router's own
  code, as a member with every peer connected would).

Commands run in the members' namespaces as an operator types them, so each time includes the
CLI's start-up (reported as measured, and as ratios).
"""

from __future__ import annotations

import argparse
import base64
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
from aura_common.keys import read_key_file
from aura_common.registry import Peer
from aura_common.wireguard import (
    Device,
    HandshakeCompleted,
    Transmit,
    generate_private_key,
    public_key,
)
from tests import pg
from tests.e2e.cluster import Cluster, Member, running_cluster

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
    """Handshakes every PROBE_INTERVAL until the member answers ("answered": the first answer's
    time) or has stopped answering ("silent": the last answer's time), or the timeout."""
    device = Device(bytes.fromhex(request["private_key"]))
    endpoint = (request["host"], request["port"])
    peer = device.add_peer(bytes.fromhex(request["server_key"]),
                           preshared_key=bytes.fromhex(request["preshared_key"]),
                           endpoint=endpoint)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(endpoint)
    deadline = time.monotonic() + request["timeout"]
    last_answer: float | None = None
    next_initiation = 0.0
    try:
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_initiation:
                next_initiation = now + PROBE_INTERVAL
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
                    last_answer = time.time()
                    if request["until"] == "answered":
                        return {"at": last_answer}
            if (request["until"] == "silent" and last_answer is not None
                    and time.time() - last_answer >= SILENT_AFTER):
                return {"at": last_answer}
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
                registry.add(Peer(name=f"p{index}", public_key=public_key(generate_private_key()),
                                  preshared_key=generate_private_key(), address_v4=next(free)))

    return fill


def provisioned_keys(path: Path) -> dict[str, str]:
    fields = dict(line.split(" = ", 1) for line in path.read_text().splitlines() if " = " in line)
    return {"private_key": base64.b64decode(fields["PrivateKey"]).hex(),
            "preshared_key": base64.b64decode(fields["PresharedKey"]).hex()}


def timed(member: Member, *args: str) -> tuple[float, float]:
    """Run an `aura` command in the member's namespace: (started, returned), wall clock."""
    started = time.time()
    member.aura(*args)
    return started, time.time()


def provisioning(cluster: Cluster, probe: Probe, server_key: str, on: Member, name: str
                 ) -> tuple[float, float]:
    """Provision on a; (seconds from return until `on` answers, command seconds)."""
    conf = cluster.folder / f"{name}.conf"
    started, returned = timed(cluster.a, "provision-client", name, "--format", "wireguard",
                              "-o", str(conf))
    probe.start(until="answered", host=on.public_host, port=8443, server_key=server_key,
                timeout=30, **provisioned_keys(conf))
    at = probe.result()
    if at is None:
        raise RuntimeError(f"{on.public_host} never answered {name}")
    return at - returned, returned - started


def revocation(cluster: Cluster, probe: Probe, server_key: str, by: Member, name: str
               ) -> float:
    """Provision on a, connect to a, revoke on `by`; seconds from its return until a drops."""
    conf = cluster.folder / f"{name}.conf"
    cluster.a.aura("provision-client", name, "--format", "wireguard", "-o", str(conf))
    keys = provisioned_keys(conf)
    a = cluster.a.public_host
    target = dict(host=a, port=8443, server_key=server_key, timeout=30, **keys)
    probe.start(until="answered", **target)
    if probe.result() is None:
        raise RuntimeError(f"{a} never answered {name}")
    probe.start(until="silent", **target)  # shaking hands while the peer is revoked elsewhere
    time.sleep(0.3)
    _, returned = timed(by, "revoke-client", name)
    at = probe.result()
    if at is None:
        raise RuntimeError(f"{a} kept answering {name}")
    return at - returned


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
            probe = Probe(cluster)
            try:
                figures = measure(cluster, probe, server_key, peers, samples)
            finally:
                probe.close()
    return figures


def measure(cluster: Cluster, probe: Probe, server_key: str, peers: int, samples: int
            ) -> dict[str, Any]:
    local, cross, commands, revoke_local, revoke_cross = [], [], [], [], []
    for i in range(samples):
        seconds, command = provisioning(cluster, probe, server_key, cluster.a, f"la{i}")
        local.append(seconds)
        commands.append(command)
        seconds, command = provisioning(cluster, probe, server_key, cluster.b, f"xb{i}")
        cross.append(seconds)
        commands.append(command)
        revoke_local.append(revocation(cluster, probe, server_key, cluster.a, f"ra{i}"))
        revoke_cross.append(revocation(cluster, probe, server_key, cluster.b, f"rb{i}"))
    status = command_time(cluster.a, "status", "--json", samples=samples)
    cluster_status = command_time(cluster.a, "status", "--cluster", "--json", samples=samples)
    publish_full_row(cluster, peers)
    cluster_status_full = command_time(cluster.a, "status", "--cluster", "--json",
                                       samples=samples)
    median = statistics.median
    return {
        "peers": peers, "samples": samples,
        "provision_command_s": median(commands),
        "provision_to_same_member_s": median(local),
        "provision_to_other_member_s": median(cross),
        "provision_ratio": median(cross) / max(median(local), 1e-3),
        "revoke_same_member_s": median(revoke_local),
        "revoke_other_member_s": median(revoke_cross),
        "revoke_ratio": median(revoke_cross) / max(median(revoke_local), 1e-3),
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
