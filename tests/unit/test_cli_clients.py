"""Client provisioning and status helpers."""

from __future__ import annotations

import pytest

from aura_common.errors import AuraError
from aura_common.ipc.frames import ClientState, TunnelState
from aura_common.state.client_limits import format_size
from services.cli.clients import parse_networks
from services.cli.status import human_duration


def test_bad_cidr_names_the_option() -> None:
    with pytest.raises(AuraError, match=r"--vpn-cidrs 10\.0\.0\.0/33"):
        parse_networks(["10.0.0.0/33"], "--vpn-cidrs")


def test_human_units() -> None:
    assert format_size(512) == "512 B"
    assert format_size(3 * 1024 * 1024) == "3.0 MiB"
    assert human_duration(59) == "59s"
    assert human_duration(3600 + 120) == "1h 2m"
    assert human_duration(2 * 86400 + 3600) == "2d 1h"


def test_client_status_is_readable() -> None:
    from services.cli.client import render

    status = ClientState(
        state=TunnelState.UP, transport="quic", endpoint="198.51.100.1:8444", last_handshake=95.0,
        rx_packets=3, rx_bytes=2048, tx_packets=4, tx_bytes=100, addresses=["10.77.0.2/32"],
        routes=["0.0.0.0/1", "128.0.0.0/1"], dns=[], dns_applied_with=None, manifest_serial=2,
        tun="aura-a", mtu=1376, last_error=None, pid=42,
    )
    text = render("alice", status, now=100.0)
    assert "up over quic to 198.51.100.1:8444 (tunnel aura-a, mtu 1376, pid 42)" in text
    assert "last handshake: 5s ago" in text and "2.0 KiB" in text and "serial 2" in text
