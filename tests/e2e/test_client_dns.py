"""Pushed DNS servers on the Linux client end to end, through the `/etc/resolv.conf` strategy.

The client runs in a private mount namespace (`unshare -m`) with a scratch file bind-mounted
over /etc/resolv.conf, so the host's resolver is never touched; systemd-resolved's runtime
directory is hidden and resolvconf left off PATH there, so the file strategy is the one picked.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import yaml

from aura_common.config import ClientConfig
from aura_lab.netns import Lab
from aura_lab.topology import AURA, build, client_status, client_with_scratch_resolv_conf
from aura_lab.topology import client_is_up as is_up

pytestmark = pytest.mark.e2e

ORIGINAL = "# the host's own\nnameserver 192.0.2.53\nsearch example.net\n"
PUSHED = ["10.77.0.1", "fd77:7777::1"]


def test_pushed_dns_is_applied_and_restored_on_down_and_after_a_crash(
    lab: Lab, tmp_path: Path
) -> None:
    host_before = Path("/etc/resolv.conf").read_bytes()
    server = build(lab, tmp_path)
    server.init(edit={"network.dns": PUSHED})
    server.start()
    config = server.provision("alice", "aura")
    document = yaml.safe_load(config.read_text())
    document["interface"]["dns"] = []  # only what the server pushes in-tunnel
    config.write_text(yaml.safe_dump(document))
    record = Path(ClientConfig.load(config).dns_state_file)
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(ORIGINAL)
    ns = server.add_client_namespace()
    log = tmp_path / "client.log"

    client_with_scratch_resolv_conf(lab, ns, config, resolv_conf, log)
    lab.wait_for(lambda: is_up(lab, ns, config), timeout=30, what="client up")
    lab.wait_for(lambda: "nameserver 10.77.0.1" in resolv_conf.read_text(), what="DNS applied")
    assert [line for line in resolv_conf.read_text().splitlines() if line[:1] != "#"] == [
        f"nameserver {a}" for a in PUSHED]
    status = client_status(lab, ns, config)
    assert status["dns"] == PUSHED and status["dns_applied_with"] == "file"
    assert record.exists()
    lab.run(ns, [*AURA, "client", "down", str(config)])
    lab.wait_for(lambda: not record.exists(), what="DNS record removed on down")
    assert resolv_conf.read_text() == ORIGINAL

    # Killed without a chance to clean up: the next start replays the record first.
    crashed = client_with_scratch_resolv_conf(lab, ns, config, resolv_conf, log)
    lab.wait_for(lambda: "nameserver 10.77.0.1" in resolv_conf.read_text(), timeout=30,
                 what="DNS applied again")
    lab.stop(crashed, signal.SIGKILL)
    assert "nameserver 10.77.0.1" in resolv_conf.read_text() and record.exists()
    client_with_scratch_resolv_conf(lab, ns, config, resolv_conf, log)
    lab.wait_for(lambda: is_up(lab, ns, config), timeout=30, what="client up after the crash")
    assert "restoring the DNS settings a previous run left (file)" in log.read_text()
    lab.wait_for(lambda: "nameserver 10.77.0.1" in resolv_conf.read_text(), what="DNS applied")
    lab.run(ns, [*AURA, "client", "down", str(config)])
    # Had the crash not been undone first, this run would have recorded the tunnel's file as
    # the one to give back.
    lab.wait_for(lambda: not record.exists(), what="DNS record removed on down")
    assert resolv_conf.read_text() == ORIGINAL
    assert Path("/etc/resolv.conf").read_bytes() == host_before
