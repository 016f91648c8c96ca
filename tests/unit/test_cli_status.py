"""`aura status` says when a transport listens elsewhere than server.yaml says."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aura_common.config import ServerConfig
from services.cli.status import PORT_HINT, port_differences, render


def config_with_udp_port(port: int) -> ServerConfig:
    config = replace(ServerConfig.default("vpn.test"), path="/etc/aura/server.yaml")
    udp = replace(config.transports.udp, port=port)
    return replace(config, transports=replace(config.transports, udp=udp))


TRANSPORTS = [
    {"name": "udp", "connected": True, "bound": ["[::]:8443"]},
    {"name": "tcp", "connected": True, "bound": ["[::]:8443"]},
    {"name": "quic", "connected": False, "bound": []},
]


def test_matching_ports_give_no_difference() -> None:
    assert port_differences(config_with_udp_port(8443), TRANSPORTS) == []


def test_a_moved_port_is_named_with_file_and_key() -> None:
    assert port_differences(config_with_udp_port(51820), TRANSPORTS) == [
        "udp listens on port 8443, but /etc/aura/server.yaml says transports.udp.port: 51820"]


def test_render_shows_differences_and_what_to_do() -> None:
    status: dict[str, Any] = {
        "uptime": 5, "tun": "aura0", "transports": TRANSPORTS, "peers": [],
        "config_differences": port_differences(config_with_udp_port(51820), TRANSPORTS)}
    text = render(status, now=0.0)
    assert "  ! udp listens on port 8443, but" in text
    assert PORT_HINT in text
    status["config_differences"] = []
    assert "!" not in render(status, now=0.0)
