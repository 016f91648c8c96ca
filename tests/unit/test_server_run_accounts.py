"""`aura server run` starts each service as its own user when that user exists."""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

import pytest

from aura_common.config import ServerConfig
from services.cli.server import Account, launch_command, run_accounts

ARGV = ["python", "-m", "services.udp"]


def test_a_transport_keeps_only_the_right_to_bind_low_ports() -> None:
    command = launch_command(ARGV, "udp", Account(901, 900), listens=False)
    assert command == ["setpriv", "--reuid=901", "--regid=900", "--clear-groups",
                       "--inh-caps=-all,+net_bind_service",
                       "--bounding-set=-all,+net_bind_service",
                       "--ambient-caps=+net_bind_service", *ARGV]


def test_the_signer_keeps_no_capability_and_the_router_net_admin() -> None:
    signer = launch_command(ARGV, "signer", Account(905, 900), listens=True)
    assert signer[:4] == ["sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh"]
    assert "--inh-caps=-all" in signer and "--bounding-set=-all" in signer
    assert not any(a.startswith("--ambient-caps") for a in signer)
    router = launch_command(ARGV, "router", Account(904, 900), listens=True)
    assert "--ambient-caps=+net_admin" in router and "--bounding-set=-all,+net_admin" in router


def test_only_existing_users_other_than_root_are_used(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv")
    nobody = pwd.getpwnam("nobody")
    config = ServerConfig.from_mapping({
        "version": 1, "public_host": "vpn.example",
        "users": {"router": "root", "udp": "nobody", "tcp": "no-such-user-aura",
                  "quic": "no-such-user-aura", "signer": "no-such-user-aura"},
    })  # fmt: skip
    accounts = run_accounts(config, ["router", "udp", "tcp", "signer"])
    assert accounts == {"udp": Account(nobody.pw_uid, nobody.pw_gid)}
