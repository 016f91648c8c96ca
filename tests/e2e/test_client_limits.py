"""Client limits end to end: a quota or expiry cuts a client off on every transport within a
second, refuses its handshakes, lets it back in when lifted, and usage survives a restart.

"Within a second" is measured on the data path: a bounded ping stream with per-reply wall-clock
times (`ping -D`) runs through the tunnel while the quota runs out; its last reply is compared
with the moment the router refused the peer (`refused_since` in `aura status --json`).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from aura_lab.netns import Lab
from aura_lab.topology import (
    AURA,
    INTERNET_HOST,
    SERVER_TUNNEL_V4,
    AuraServer,
    build,
    stock_wireguard_up,
)
from aura_lab.topology import client_is_up as is_up

pytestmark = pytest.mark.e2e

KIB = 1024
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from")


def peer_status(server: AuraServer, name: str) -> dict[str, Any]:
    return next(p for p in server.status()["peers"] if p["name"] == name)


def ping_stream(lab: Lab, ns: str, seconds: int) -> list[float]:
    """Wall-clock times of the replies to ~100 pings/s of 1200 bytes for `seconds` (bounded)."""
    result = lab.run(ns, ["ping", "-D", "-n", "-i", "0.01", "-s", "1200", "-W", "1",
                          "-c", str(100 * seconds), "-w", str(seconds), INTERNET_HOST],
                     check=False, timeout=seconds + 10)  # fmt: skip
    return [float(m.group(1)) for m in map(REPLY.match, result.stdout.splitlines()) if m]


def assert_cut_off_mid_transfer(replies: list[float], refused_since: float | None) -> None:
    assert refused_since is not None, "the router never refused the client"
    before = [t for t in replies if t <= refused_since]
    assert before and refused_since - before[-1] < 0.5, "no traffic was flowing at the cut"
    last = replies[-1]
    print(f"last reply {last - refused_since:+.3f}s after the router refused the client")
    assert last - refused_since < 1.0, "traffic flowed more than a second past the quota"


def test_stock_client_quota_cuts_off_refuses_handshakes_and_survives_a_restart(
    lab: Lab, tmp_path: Path
) -> None:
    server = build(lab, tmp_path)
    server.init()
    server.start()
    conf = server.provision("alice", "wireguard", "--quota", "600KiB")
    ns = server.add_client_namespace()
    ifname = stock_wireguard_up(lab, ns, conf)
    assert lab.ping(ns, SERVER_TUNNEL_V4)

    replies = ping_stream(lab, ns, seconds=8)
    alice = peer_status(server, "alice")
    assert alice["refused"].startswith("quota used up") and not alice["connected"]
    assert 600 * KIB <= alice["usage_bytes"] < 1200 * KIB, alice["usage_bytes"]
    assert_cut_off_mid_transfer(replies, alice["refused_since"])
    assert "NOTICE alice refused: quota used up" in server.log.read_text()

    # A fresh handshake is refused too: forget the session on the client and try again.
    public = lab.run(ns, f"wg show {ifname} peers").stdout.split()[0]
    lab.run(ns, ["wg", "set", ifname, "peer", public, "remove"])
    lab.run(ns, ["wg", "addconf", ifname, str(conf.parent / f"{conf.stem}.wg")])
    assert not lab.ping(ns, SERVER_TUNNEL_V4, count=3, timeout=2)
    handshakes = lab.run(ns, f"wg show {ifname} latest-handshakes").stdout.split()
    assert handshakes[1] == "0", "the server completed a handshake with a refused client"

    server.aura("edit-client", "alice", "--quota", "none")
    lab.wait_for(lambda: lab.ping(ns, SERVER_TUNNEL_V4, count=1), timeout=30,
                 what="alice back after lifting her quota")
    assert peer_status(server, "alice")["refused"] is None
    lab.run(ns, ["ping", "-q", "-i", "0.01", "-s", "1200", "-c", "100", INTERNET_HOST])
    used = peer_status(server, "alice")["usage_bytes"]

    server.stop()
    server.start()
    assert peer_status(server, "alice")["usage_bytes"] >= used, "usage lost in a restart"
    listing = yaml.safe_load(server.aura("list-clients", "--json").stdout)
    assert listing[0]["usage_bytes"] >= used and listing[0]["quota_bytes"] is None


@pytest.mark.parametrize("transport", ["tcp", "quic"])
def test_aura_client_expiry_refuses_lifting_lets_in_and_quota_cuts_off(
    lab: Lab, tmp_path: Path, transport: str
) -> None:
    server = build(lab, tmp_path)
    server.init(transports=(transport,))
    server.start()
    config = server.provision("bob", "aura", "--expires", "2020-01-01")
    document = yaml.safe_load(config.read_text())
    document["transports"]["order"] = [transport]
    config.write_text(yaml.safe_dump(document))
    ns = server.add_client_namespace()
    lab.spawn(ns, [*AURA, "client", "up", "--foreground", str(config)],
              log=tmp_path / "client.log")

    time.sleep(6)
    assert not is_up(lab, ns, config), "a client past its expiry got a session"
    bob = peer_status(server, "bob")
    assert bob["refused"] == "expired at 2020-01-01T00:00:00Z" and not bob["connected"]

    server.aura("edit-client", "bob", "--expires", "30d")
    lab.wait_for(lambda: is_up(lab, ns, config), timeout=60, what="bob up once his expiry moved")
    assert lab.ping(ns, INTERNET_HOST)
    used = peer_status(server, "bob")["usage_bytes"]
    server.aura("edit-client", "bob", "--quota", f"{used + 400 * KIB}B")

    replies = ping_stream(lab, ns, seconds=7)
    bob = peer_status(server, "bob")
    assert bob["refused"].startswith("quota used up") and not bob["connected"]
    assert_cut_off_mid_transfer(replies, bob["refused_since"])
