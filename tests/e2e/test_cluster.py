"""Two Aura servers, one registry in a real PostgreSQL server: the cluster end to end
(topology: aura_lab/cluster.py). The tests run in order on one cluster (starting it costs
most of the time); each leaves it serving.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
import yaml

from aura_lab import pg
from aura_lab.cluster import DB, DB_DOWN, SERVER_TUNNEL, Cluster, running_cluster
from aura_lab.topology import AURA, client_is_up, client_status, stock_wireguard_up

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    for reason in (pg.unavailable(), None if os.geteuid() == 0 else "needs root"):
        if reason:
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
    with running_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


def test_a_client_provisioned_on_a_connects_to_b_and_both_show_in_status(
    cluster: Cluster,
) -> None:
    ns, _ = cluster.stock_client(cluster.a, "stock-b", endpoint=cluster.b)
    assert cluster.lab.ping(ns, SERVER_TUNNEL, timeout=6)  # a retried handshake at worst
    session = cluster.b.session_of("stock-b")
    assert session is not None and session["transport"] == "udp"
    members = cluster.members_json(cluster.a)
    cluster.lab.wait_for(
        lambda: [s["peer"] for s in cluster.members_json(cluster.a)["b"]["sessions"]]
        == ["stock-b"], timeout=5, what="b publishing the session")
    assert members["a"]["endpoint"] == {"host": cluster.a.public_host, "udp": 8443}
    assert members["b"]["transports"][0]["name"] == "udp"
    text = cluster.b.aura("status", "--cluster").stdout
    assert text.startswith("cluster: 2 members, 2 up") and "stock-b" in text


def test_revoked_on_b_its_sessions_on_a_end_within_a_second(cluster: Cluster) -> None:
    ns, _ = cluster.stock_client(cluster.a, "stock-a")
    assert cluster.lab.ping(ns, SERVER_TUNNEL, timeout=6)
    assert cluster.a.session_of("stock-a") is not None
    cluster.b.aura("revoke-client", "stock-a")
    revoked = time.monotonic()
    cluster.lab.wait_for(lambda: cluster.a.session_of("stock-a") is None, timeout=5,
                         interval=0.02, what="a dropping the revoked peer")
    assert time.monotonic() - revoked <= 1.0
    assert not cluster.lab.ping(ns, SERVER_TUNNEL, count=1, timeout=1)


def test_member_a_killed_the_aura_client_is_on_b_within_10_s_and_a_back_breaks_nothing(
    cluster: Cluster,
) -> None:
    a, b, lab = cluster.a, cluster.b, cluster.lab
    # The manifest lists every live member; a client provisioned now carries it.
    signed = a.aura("sign-bridges", "--from-cluster").stdout
    assert f"{a.public_host}:udp=8443" in signed and f"{b.public_host}:udp=8443" in signed
    config = a.provision("roamer", "aura")
    ns = cluster.client_namespace()
    lab.spawn(ns, [*AURA, "client", "up", "--foreground", str(config)],
              log=cluster.folder / "roamer.log")
    lab.wait_for(lambda: client_is_up(lab, ns, config), timeout=20, what="client up on a")
    assert client_status(lab, ns, config)["endpoint"] == f"{a.public_host}:8443"
    # Traffic flows the whole time, as for a client in use.
    pinger = lab.spawn(ns, ["ping", "-i", "0.2", SERVER_TUNNEL])
    try:
        a.kill()
        killed = time.monotonic()
        lab.wait_for(lambda: client_is_up(lab, ns, config)
                     and client_status(lab, ns, config)["endpoint"] == f"{b.public_host}:8443",
                     timeout=20, interval=0.2, what="client on b")
        assert time.monotonic() - killed <= 10.0
        assert lab.ping(ns, SERVER_TUNNEL)
        assert b.session_of("roamer") is not None
        # a, silent, shows as down to the rest of the cluster.
        lab.wait_for(lambda: not cluster.members_json(b)["a"]["up"], timeout=15,
                     what="a shown down")
        a.start()
        lab.wait_for(lambda: cluster.members_json(b)["a"]["up"], timeout=10, what="a up again")
        assert lab.ping(ns, SERVER_TUNNEL)
        # Probing its home server, the client comes back to a by itself.
        lab.wait_for(lambda: client_status(lab, ns, config)["endpoint"] == f"{a.public_host}:8443",
                     timeout=45, interval=0.5, what="client back on a")
        assert lab.ping(ns, SERVER_TUNNEL)
    finally:
        lab.stop(pinger)


def test_postgresql_stopped_members_keep_serving_refuse_changes_and_catch_up(
    cluster: Cluster,
) -> None:
    a, b, lab = cluster.a, cluster.b, cluster.lab
    connected, _ = cluster.stock_client(a, "steady")
    connected_b, _ = cluster.stock_client(a, "steady-b", endpoint=b)
    for ns in (connected, connected_b):
        assert lab.ping(ns, SERVER_TUNNEL, timeout=6)
    known_conf = b.provision("known", "wireguard")  # known to both, not yet connected
    lab.wait_for(lambda: a.knows("known"), timeout=5, what="a learning of known")
    cluster.db.stop()
    try:
        assert lab.ping(connected, SERVER_TUNNEL)  # connected peers, on a and on b
        assert lab.ping(connected_b, SERVER_TUNNEL)
        lab.wait_for(lambda: not b.router_status()["registry"]["connected"], timeout=10,
                     what="b noticing the database gone")
        ns = cluster.client_namespace()
        stock_wireguard_up(lab, ns, known_conf)  # known peer, connecting now, on b
        assert lab.ping(ns, SERVER_TUNNEL, count=3, timeout=6)
        refused = a.aura("provision-client", "late", check=False)
        assert refused.returncode != 0
        assert "registry database" in refused.stderr and DB in refused.stderr
    finally:
        cluster.db.start()
    # Both members back on the database (heartbeats flowing again), then a change made now
    # reaches both within a second.
    lab.wait_for(lambda: all(m.router_status()["registry"]["connected"] for m in (a, b)),
                 timeout=30, what="both members on the database again")
    b.provision("late", "wireguard")
    made = time.monotonic()
    lab.wait_for(lambda: a.knows("late") and b.knows("late"), timeout=5, interval=0.02,
                 what="both members knowing late")
    assert time.monotonic() - made <= 1.0
    assert lab.ping(connected, SERVER_TUNNEL)


def test_a_multi_host_connection_string_whose_first_host_is_down_still_works(
    cluster: Cluster,
) -> None:
    b = cluster.b
    database = yaml.safe_load(b.config.read_text())["registry"]["database"]
    assert database.startswith(f"host={DB_DOWN},{DB} ")
    # Its first host really is down: alone, it fails, naming the database.
    alone = cluster.folder / "b-first-host-only.yaml"
    document = yaml.safe_load(b.config.read_text())
    document["registry"]["database"] = database.replace(f",{DB}", "")
    alone.write_text(yaml.safe_dump(document))
    failed = cluster.lab.run(b.ns, [*AURA, "--config", str(alone), "list-clients"], check=False)
    assert failed.returncode != 0 and f"host={DB_DOWN}" in failed.stderr
    # With both, b provisions, its router follows, and a hears of it.
    b.provision("multi", "wireguard")
    cluster.lab.wait_for(lambda: cluster.a.knows("multi") and b.knows("multi"), timeout=5,
                         what="both members knowing multi")
    assert cluster.members_json(b)["b"]["up"]
