"""Two Aura servers sharing one registry in a real PostgreSQL server, in namespaces.

    db (10.88.0.10; .11 holds no server) ─┐
    member a (10.88.1.2) ─────────────────┤
    member b (10.88.2.2) ─────────────────┼── hub (routes between them all)
    client namespaces (10.88.1N.2) ───────┘   (clients route only 10.88.0.0/16 to the hub)

PostgreSQL is Debian's, run by aura_lab/pg.py in its own namespace. Member a is initialised with
`aura server init --database`, member b joins with a's `aura cluster export` bundle, and b's
connection string names a host without a server first (`host=10.88.0.11,10.88.0.10`).
Used by tests/e2e/test_cluster.py and bench/cluster.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aura_common.config import ServerConfig
from aura_lab import pg
from aura_lab.netns import Lab
from aura_lab.topology import AuraServer, stock_wireguard_up
from services.cli.admin import router_status

DB, DB_DOWN = "10.88.0.10", "10.88.0.11"
SERVER_TUNNEL = "10.77.0.1"  # every member holds the pool's first address


@dataclass
class Member(AuraServer):
    public_host: str = ""

    def init_member(self, *args: str) -> None:
        self.aura("server", "init", "--public-host", self.public_host,
                  "--state-dir", str(self.folder / "state"),
                  "--runtime-dir", str(self.folder / "run"), "--uplink", self.uplink, *args)
        document = yaml.safe_load(self.config.read_text())
        for name in ("tcp", "quic"):
            document["transports"][name]["enabled"] = False
        document["metrics"] = {"enabled": False}
        self.config.write_text(yaml.safe_dump(document))

    def kill(self) -> None:
        """As a crash would: every process of the member at once, no goodbye."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def router_status(self) -> dict[str, Any]:
        """Straight from the router's admin socket (no CLI start-up in the measurement)."""
        return router_status(ServerConfig.load(self.config))

    def session_of(self, peer: str) -> dict[str, Any] | None:
        for entry in self.router_status()["peers"]:
            if entry["name"] == peer:
                return entry if entry["connected"] else None
        return None

    def knows(self, peer: str) -> bool:
        return any(entry["name"] == peer for entry in self.router_status()["peers"])


@dataclass
class Cluster:
    lab: Lab
    hub: str
    db: pg.PostgresServer
    a: Member
    b: Member
    folder: Path
    clients: int = 0

    def client_namespace(self) -> str:
        n = self.clients
        self.clients += 1
        ns = self.lab.namespace(f"c{n}")
        subnet = f"10.88.{10 + n}"
        # Not a default route: a full tunnel's /1 routes would capture its own carrier.
        self.lab.link(ns, f"{subnet}.2/24", self.hub, f"{subnet}.1/24")
        self.lab.run(ns, f"ip route add 10.88.0.0/16 via {subnet}.1")
        return ns

    def stock_client(self, member: Member, name: str, endpoint: Member | None = None
                     ) -> tuple[str, Path]:
        """A stock WireGuard client provisioned on `member`, pointed at `endpoint`'s address."""
        conf = member.provision(name, "wireguard")
        target = endpoint or member
        conf.write_text(conf.read_text().replace(f"Endpoint = {member.public_host}:",
                                                 f"Endpoint = {target.public_host}:"))
        ns = self.client_namespace()
        stock_wireguard_up(self.lab, ns, conf)
        return ns, conf

    def members_json(self, member: Member) -> dict[str, Any]:
        result = member.aura("status", "--cluster", "--json")
        return {m["name"]: m for m in json.loads(result.stdout)["members"]}

    def both_up(self) -> bool:
        members = self.members_json(self.a)
        return len(members) == 2 and all(m["up"] and m["endpoint"] for m in members.values())


def hub_link(lab: Lab, hub: str, ns: str, subnet: str) -> str:
    """A link from `ns` (.2) to the hub (.1) with the default route through it; the ns side."""
    inner, _ = lab.link(ns, f"{subnet}.2/24", hub, f"{subnet}.1/24")
    lab.run(ns, f"ip route add default via {subnet}.1")
    return inner


@contextlib.contextmanager
def running_cluster(
    folder: Path, before_start: Callable[[Member, pg.PostgresServer], None] | None = None,
    network: str | None = None,
) -> Iterator[Cluster]:
    """The cluster up, both members publishing; everything removed on exit, also on failure.
    `before_start` may fill the registry before the routers start; `network` is the pool."""
    lab = Lab()
    database: pg.PostgresServer | None = None
    try:
        hub = lab.namespace("hub")
        lab.run(hub, "sysctl -qw net.ipv4.ip_forward=1")
        db_ns = lab.namespace("db")
        db_link, _ = lab.link(db_ns, f"{DB}/24", hub, "10.88.0.1/24")
        lab.run(db_ns, f"ip addr add {DB_DOWN}/24 dev {db_link}")
        lab.run(db_ns, "ip route add default via 10.88.0.1")
        database = pg.PostgresServer(listen=DB, netns=db_ns)
        members = []
        for name, subnet in (("a", "10.88.1"), ("b", "10.88.2")):
            ns = lab.namespace(name)
            uplink = hub_link(lab, hub, ns, subnet)
            (folder / name).mkdir()
            members.append(Member(lab, ns, folder / name, hub, uplink,
                                  public_host=f"{subnet}.2"))
        a, b = members
        password = ("--database-password-file", database.password_file)
        a.init_member("--database", database.conninfo(tcp=True), *password, "--member", "a",
                      *(("--network", network) if network else ()))  # b's comes in the bundle
        bundle = folder / "cluster.bundle"
        a.aura("cluster", "export", "--output", str(bundle))
        b.init_member("--join", str(bundle), *password, "--member", "b")
        document = yaml.safe_load(b.config.read_text())
        document["registry"]["database"] = (
            f"host={DB_DOWN},{DB} port={database.port} dbname=aura user={pg.ROLE} "
            "target_session_attrs=read-write")
        b.config.write_text(yaml.safe_dump(document))
        if before_start is not None:
            before_start(a, database)
        a.start()
        b.start()
        cluster = Cluster(lab, hub, database, a, b, folder)
        lab.wait_for(cluster.both_up, timeout=30, what="both members' heartbeats")
        yield cluster
    finally:
        if database is not None:
            database.close()
        lab.close()
