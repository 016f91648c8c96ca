"""Dynamic pool: an idle session ends (and its lease with it) after `lease_idle_timeout`.

Idle means no authenticated message from the peer: neither data, nor keepalive, nor
handshake. What the server sends does not count.
"""

from __future__ import annotations

import pytest

from aura_common.config import ServerConfig
from aura_common.errors import ConfigError
from aura_common.wireguard import (
    Device,
    HandshakeCompleted,
    Received,
    SessionExpired,
    public_key,
)
from tests.unit.wireguard_pair import Pair, ipv4_packet, of_type, transmits

IDLE = 30.0  # the loop below stays inside REKEY_AFTER_TIME


@pytest.fixture
def pair() -> Pair:
    pair = Pair()
    pair.server = Device(pair.server_key, idle_timeout=IDLE)
    pair.to_client = pair.server.add_peer(public_key(pair.client_key))
    pair.connect(0.0)
    return pair


def test_a_session_ends_after_the_idle_time_without_packets_from_the_peer(pair: Pair) -> None:
    assert not of_type(pair.server.tick(IDLE - 0.1), SessionExpired)
    # What the server sends does not keep the session: the peer must be heard.
    pair.server.send(pair.to_client, [ipv4_packet(b"down")], IDLE - 0.05)
    (expired,) = of_type(pair.server.tick(IDLE), SessionExpired)
    assert expired.peer is pair.to_client and not pair.to_client.has_session(IDLE)
    assert not of_type(pair.server.tick(IDLE + 1), SessionExpired), "reported once"


def test_keepalives_and_data_from_the_peer_keep_it(pair: Pair) -> None:
    now = 0.0
    for _ in range(3):
        now += IDLE - 1
        pair.at_server(pair.client.send(pair.to_server, [b""], now), now)  # a keepalive
        assert not of_type(pair.server.tick(now + 0.5), SessionExpired)
    now += IDLE - 1
    got = pair.at_server(pair.client.send(pair.to_server, [ipv4_packet(b"up")], now), now)
    assert of_type(got, Received)
    assert not of_type(pair.server.tick(now + IDLE - 0.1), SessionExpired)
    assert of_type(pair.server.tick(now + IDLE), SessionExpired)


def test_the_peer_comes_back_with_a_new_handshake(pair: Pair) -> None:
    pair.server.tick(IDLE)
    stale = pair.client.send(pair.to_server, [ipv4_packet(b"late")], IDLE + 1)
    assert not of_type(pair.at_server(stale, IDLE + 1), Received), "old keys were erased"
    response = pair.at_server(pair.client.initiate(pair.to_server, IDLE + 2), IDLE + 2)
    confirmation = pair.at_client(response, IDLE + 2)
    assert of_type(pair.at_server(confirmation, IDLE + 2), HandshakeCompleted)
    assert transmits(pair.server.send(pair.to_client, [ipv4_packet(b"ok")], IDLE + 3))


def test_without_an_idle_timeout_only_key_expiry_ends_it() -> None:
    pair = Pair()
    pair.connect(0.0)
    assert not of_type(pair.server.tick(IDLE * 2), SessionExpired)


def test_config_default_and_bad_values() -> None:
    config = ServerConfig.default("vpn.example")
    assert config.network.lease_idle_timeout == 300.0
    assert "lease_idle_timeout: 300.0" in config.dump()
    raw = {"version": 1, "public_host": "vpn.example",
           "network": {"strategy": "dynamic", "lease_idle_timeout": 45}}
    assert ServerConfig.from_mapping(raw).network.lease_idle_timeout == 45.0
    raw["network"]["lease_idle_timeout"] = -1  # type: ignore[index]
    with pytest.raises(ConfigError) as error:
        ServerConfig.from_mapping(raw)
    assert error.value.key == "network.lease_idle_timeout"
