"""The client's transport order and backoff, driven with an injected clock and jitter."""

from __future__ import annotations

import datetime

import pytest

from aura_common.config import ClientConfig
from aura_common.pki.manifest import HostPorts, Manifest
from services.client.schedule import (
    BACKOFF_MAX,
    PROBE_INTERVAL,
    STABLE_AFTER,
    Schedule,
    Target,
    targets,
)

KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
ALL = ("udp", "quic", "tcp")


def config(**transports: object) -> ClientConfig:
    return ClientConfig.from_mapping({
        "version": 1,
        "name": "alice",
        "interface": {"private_key": KEY, "addresses": ["10.77.0.2/32"]},
        "server": {"public_key": KEY, "host": "vpn.example.net", "ca_public_key": KEY},
        "transports": transports,
    })


def manifest(*endpoints: HostPorts) -> Manifest:
    return Manifest.create(serial=2, issued=datetime.datetime.now(datetime.UTC), expires_days=30,
                           server_public_key=bytes(32), endpoints=endpoints)


def test_default_order_and_config_ports() -> None:
    assert targets(config(), None, ALL) == [
        Target("udp", "vpn.example.net", 8443),
        Target("quic", "vpn.example.net", 8444),
        Target("tcp", "vpn.example.net", 8443),
    ]


def test_configured_order_and_missing_carriers() -> None:
    order = targets(config(order=["tcp", "udp"], tcp=443), None, ("udp", "tcp"))
    assert [str(t) for t in order] == ["tcp vpn.example.net:443", "udp vpn.example.net:8443"]
    assert targets(config(order=["quic"]), None, ("udp",)) == []


def test_manifest_ports_for_the_server_host_win_and_other_hosts_follow() -> None:
    signed = manifest(HostPorts("other.example.net", udp=1), HostPorts("VPN.example.net", udp=9000,
                                                                    tcp=9443))
    assert targets(config(), signed, ALL) == [
        Target("udp", "vpn.example.net", 9000),
        Target("tcp", "vpn.example.net", 9443),
        Target("udp", "other.example.net", 1),
    ]
    # No endpoint for our host: the config's ports stand, and the other host comes after.
    assert targets(config(), manifest(HostPorts("other.example.net", udp=1)), ALL) == [
        *targets(config(), None, ALL), Target("udp", "other.example.net", 1),
    ]


def test_cluster_members_come_after_the_home_server_each_in_transport_order() -> None:
    signed = manifest(HostPorts("10.0.0.2", udp=8443, tcp=8443),
                      HostPorts("vpn.example.net", udp=8443, quic=8444),
                      HostPorts("10.0.0.3", quic=7000, udp=7001),
                      HostPorts("10.0.0.2", udp=1))  # listed twice: the first one counts
    order = targets(config(order=["udp", "tcp", "quic"]), signed, ALL)
    assert [str(t) for t in order] == [
        "udp vpn.example.net:8443", "quic vpn.example.net:8444",
        "udp 10.0.0.2:8443", "tcp 10.0.0.2:8443",
        "udp 10.0.0.3:7001", "quic 10.0.0.3:7000",
    ]


def test_a_client_on_another_member_probes_its_home_server_and_moves_back() -> None:
    signed = manifest(HostPorts("vpn.example.net", udp=8443), HostPorts("10.0.0.2", udp=8443))
    home, member = targets(config(order=["udp"]), signed, ALL)
    schedule = Schedule([home, member], rng=lambda: 0.5)
    schedule.connected(now=0.0)
    schedule.lost(now=100.0)  # home went silent: try it first (it may be a blip), then the next
    assert schedule.current == home and schedule.failed() == 0.0
    assert schedule.current == member
    schedule.connected(now=101.0)
    assert schedule.probes_due(101.0 + PROBE_INTERVAL) == [home]
    schedule.moved(home, now=131.0)
    assert schedule.live == home and schedule.seconds_to_probe(131.0) is None


ORDER = [Target("udp", "h", 1), Target("quic", "h", 2), Target("tcp", "h", 3)]


def test_a_round_of_failures_backs_off_doubling_to_the_cap() -> None:
    schedule = Schedule(ORDER, rng=lambda: 0.5)  # no jitter
    delays = []
    for _ in range(8):
        assert [schedule.current.transport, schedule.failed()] == ["udp", 0.0]
        assert [schedule.current.transport, schedule.failed()] == ["quic", 0.0]
        assert schedule.current.transport == "tcp"
        delays.append(schedule.failed())
    assert delays == [1, 2, 4, 8, 16, BACKOFF_MAX, BACKOFF_MAX, BACKOFF_MAX]
    assert schedule.current.transport == "udp"


def test_jitter_stays_within_bounds() -> None:
    low = Schedule(ORDER[:1], rng=lambda: 0.0).failed()
    high = Schedule(ORDER[:1], rng=lambda: 0.999999).failed()
    assert 0.75 < low < 1.0 < high < 1.25


def test_a_stable_session_that_breaks_starts_over_at_once_with_the_preferred_transport() -> None:
    schedule = Schedule(ORDER, rng=lambda: 0.5)
    schedule.failed()
    schedule.failed()
    schedule.failed()  # a round failed: backoff grew
    schedule.failed()  # udp
    assert schedule.current.transport == "quic"
    schedule.connected(now=100.0)
    assert schedule.lost(now=100.0 + STABLE_AFTER) == 0.0
    assert schedule.current.transport == "udp"
    assert schedule.backoff == 1.0


def test_a_path_that_breaks_right_after_coming_up_counts_as_a_failure() -> None:
    schedule = Schedule(ORDER, rng=lambda: 0.5)
    delays = []
    for now in (0.0, 10.0, 20.0):
        schedule.connected(now)
        delays.append(schedule.lost(now + 1))
        assert schedule.current.transport == "udp"
    assert delays == [1.0, 2.0, 4.0]


def test_a_new_manifest_order_applies_from_the_first_target() -> None:
    schedule = Schedule(ORDER)
    schedule.failed()
    schedule.replace_order([Target("tcp", "h", 443)], now=0.0)
    assert schedule.current == Target("tcp", "h", 443)
    schedule.replace_order([], now=0.0)
    assert schedule.current == Target("tcp", "h", 443)


def test_an_empty_order_is_refused() -> None:
    with pytest.raises(ValueError):
        Schedule([])


def on_tcp(now: float = 0.0, rng: float = 0.5) -> Schedule:
    """A schedule whose udp and quic attempts failed and whose tcp attempt came up at `now`."""
    schedule = Schedule(ORDER, rng=lambda: rng)
    schedule.failed()
    schedule.failed()
    schedule.connected(now)
    return schedule


def test_on_the_preferred_transport_nothing_is_probed() -> None:
    schedule = Schedule(ORDER, rng=lambda: 0.5)
    schedule.connected(now=0.0)
    assert schedule.better() == []
    assert schedule.seconds_to_probe(0.0) is None
    assert schedule.probes_due(1e6) == []


def test_on_a_fallback_the_better_transports_are_probed_every_interval_best_first() -> None:
    schedule = on_tcp(now=100.0)
    assert schedule.seconds_to_probe(100.0) == PROBE_INTERVAL
    assert schedule.probes_due(100.0 + PROBE_INTERVAL - 0.1) == []
    due = 100.0 + PROBE_INTERVAL
    assert [t.transport for t in schedule.probes_due(due)] == ["udp", "quic"]
    # A round that found nothing costs nothing but waiting for the next one.
    schedule.probes_failed(due + 7.0)
    assert schedule.seconds_to_probe(due + 7.0) == PROBE_INTERVAL
    assert schedule.probes_due(due + 8.0) == []
    assert schedule.live == ORDER[2] and schedule.backoff == 1.0


def test_probe_intervals_are_jittered_within_bounds() -> None:
    low = on_tcp(rng=0.0).seconds_to_probe(0.0)
    high = on_tcp(rng=0.999999).seconds_to_probe(0.0)
    assert low is not None and high is not None
    assert 0.75 * PROBE_INTERVAL <= low < PROBE_INTERVAL < high < 1.25 * PROBE_INTERVAL


def test_moving_to_the_preferred_transport_stops_probing() -> None:
    schedule = on_tcp(now=0.0)
    schedule.moved(ORDER[0], now=31.0)
    assert schedule.live == ORDER[0] and schedule.current == ORDER[0]
    assert schedule.seconds_to_probe(31.0) is None
    # It counts as a fresh session: breaking at once is a failure, later a clean restart.
    assert schedule.lost(now=31.0 + STABLE_AFTER) == 0.0


def test_moving_to_a_middle_transport_keeps_probing_the_better_ones() -> None:
    schedule = on_tcp(now=0.0)
    schedule.moved(ORDER[1], now=30.0)
    assert schedule.current == ORDER[1]
    assert schedule.probes_due(30.0 + PROBE_INTERVAL) == [ORDER[0]]


def test_a_lost_path_stops_probing() -> None:
    schedule = on_tcp(now=0.0)
    schedule.lost(now=40.0)
    assert schedule.live is None and schedule.seconds_to_probe(40.0) is None
    assert schedule.probes_due(1e6) == []


def test_a_manifest_that_moves_the_ports_makes_the_live_path_probe_the_new_order() -> None:
    schedule = Schedule(ORDER[:1], rng=lambda: 0.5)
    schedule.connected(now=0.0)  # on udp h:1, the best; nothing to probe
    assert schedule.seconds_to_probe(0.0) is None
    moved = [Target("udp", "h", 11), Target("quic", "h", 12), Target("tcp", "h", 3)]
    schedule.replace_order(moved, now=5.0)
    # The live target is no longer listed: everything in the new order is better.
    assert schedule.probes_due(5.0 + PROBE_INTERVAL) == moved
    # Live on tcp h:3, which the new order keeps: only what is ahead of it is better.
    schedule = on_tcp(now=0.0)
    schedule.replace_order(moved, now=5.0)
    assert schedule.probes_due(PROBE_INTERVAL) == moved[:2]
    schedule.moved(moved[0], now=40.0)
    assert schedule.current == moved[0] and schedule.seconds_to_probe(40.0) is None


def test_a_probe_succeeding_for_a_target_the_order_dropped_meanwhile_is_still_live() -> None:
    schedule = on_tcp(now=0.0)
    schedule.replace_order([Target("tcp", "h", 3)], now=1.0)
    schedule.moved(ORDER[0], now=31.0)
    assert schedule.live == ORDER[0] and schedule.current == Target("tcp", "h", 3)
    assert schedule.probes_due(31.0 + PROBE_INTERVAL) == [Target("tcp", "h", 3)]
