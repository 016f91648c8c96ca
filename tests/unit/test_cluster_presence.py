"""Member presence: what a member publishes, reading rows back, and the CLI views of them."""

from __future__ import annotations

import datetime
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given
from hypothesis import strategies as st

from aura_common.cluster import presence
from aura_common.cluster.presence import DOWN_AFTER, LiveSession, Member, member_info, parse_member
from aura_common.errors import AuraError
from aura_common.pki.manifest import HostPorts, Manifest, sign
from services.cli.bridges import endpoints_from_cluster, newest_serial
from services.cli.status import member_mapping, render_cluster
from tests.unit.strategies import json_values

SESSION = LiveSession("alice", "udp", "10.9.0.2:40000", 1_000.0)


def test_a_member_publishes_its_live_transports_ports_as_its_endpoint() -> None:
    info = member_info("a.example.net", {"udp": ["[::]:8443"], "tcp": ["0.0.0.0:8443",
                                                                       "[::]:8443"]}, [SESSION])
    assert info["endpoint"] == {"host": "a.example.net", "udp": 8443, "tcp": 8443}
    assert info["transports"] == [{"name": "tcp", "bound": ["0.0.0.0:8443", "[::]:8443"]},
                                  {"name": "udp", "bound": ["[::]:8443"]}]
    assert info["sessions"] == [{"peer": "alice", "transport": "udp",
                                 "endpoint": "10.9.0.2:40000", "handshake_at": 1_000.0}]
    assert info["sessions_total"] == 1
    # Nothing listening: no endpoint to list in a manifest.
    assert member_info("a.example.net", {}, [])["endpoint"] is None


def test_the_sessions_a_member_publishes_are_bounded_and_the_count_stays_true(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(presence, "MAX_SESSIONS", 3)
    sessions = [LiveSession(f"p{i}", "udp", "h:1", 0.0) for i in range(10)]
    info = member_info("h", {"udp": ["[::]:1"]}, sessions)
    assert len(info["sessions"]) == 3 and info["sessions_total"] == 10
    member = parse_member("h", 0.5, 0.0, json.loads(json.dumps(info)))
    assert len(member.sessions) == 3 and member.sessions_total == 10
    assert "... and 7 more" in render_cluster([member], now=10.0)


def test_a_row_reads_back_as_published() -> None:
    info = json.loads(json.dumps(member_info("10.0.0.1", {"udp": ["[::]:8443"]}, [SESSION])))
    member = parse_member("a", 1.5, 100.0, info)
    assert member == Member(
        name="a", silent_for=1.5, started_at=100.0, public_host="10.0.0.1",
        endpoint=HostPorts("10.0.0.1", udp=8443), transports={"udp": ("[::]:8443",)},
        sessions=(SESSION,), sessions_total=1,
    )
    assert member.up and not parse_member("a", DOWN_AFTER + 0.1, 100.0, info).up


@pytest.mark.parametrize("info", [
    None, [], {"public_host": 5}, {"public_host": "h", "endpoint": {"host": "a b", "udp": 1}},
    {"public_host": "h", "endpoint": None, "transports": [{"name": "ssh", "bound": []}],
     "sessions": [], "sessions_total": 0},
    {"public_host": "h", "endpoint": None, "transports": [], "sessions": [{"peer": "x"}],
     "sessions_total": 1},
    {"public_host": "h", "endpoint": None, "transports": [], "sessions": "all",
     "sessions_total": 0},
    {"public_host": "h", "endpoint": None, "transports": [], "sessions": [],
     "sessions_total": -1},
])
def test_a_damaged_row_is_a_member_without_endpoint_and_with_the_problem_named(
    info: object,
) -> None:
    member = parse_member("b", 0.0, None, info)
    assert member.endpoint is None and member.sessions == () and member.problem
    assert member.problem.startswith("unreadable info")


info_like = st.fixed_dictionaries({}, optional={
    "public_host": st.text(max_size=10) | json_values,
    "endpoint": st.none() | st.dictionaries(st.sampled_from(["host", "udp", "tcp", "quic"]),
                                            st.integers() | st.text(max_size=10)),
    "transports": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["udp", "x"]),
                                                  "bound": json_values})) | json_values,
    "sessions": st.lists(st.dictionaries(
        st.sampled_from(["peer", "transport", "endpoint", "handshake_at"]), json_values))
    | json_values,
    "sessions_total": json_values,
})


@given(st.one_of(json_values, info_like), json_values, json_values)
def test_any_row_reads_as_a_member_or_a_named_problem(
    info: object, silent_for: object, started_at: object,
) -> None:
    member = parse_member("m", silent_for, started_at, info)
    assert member.problem is not None or isinstance(member.public_host, str)
    render_cluster([member], now=0.0)
    json.dumps(member_mapping(member))


def members_list() -> list[Member]:
    base = parse_member("a", 1.0, 0.0, member_info("10.0.0.1", {"udp": ["[::]:8443"]},
                                                   [SESSION]))
    silent = parse_member("b", 60.0, 0.0, member_info("10.0.0.2", {"udp": ["[::]:8443"]}, []))
    idle = parse_member("c", 0.0, 0.0, member_info("10.0.0.3", {}, []))
    return [base, silent, idle]


def test_bridges_from_the_cluster_list_the_members_that_are_up_and_listening(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert endpoints_from_cluster(members_list()) == [HostPorts("10.0.0.1", udp=8443)]
    out = capsys.readouterr().out
    assert "leaving out b: down (silent for 60 s)" in out
    assert "leaving out c: no transport listening" in out
    with pytest.raises(AuraError, match="no member of the cluster is up"):
        endpoints_from_cluster(members_list()[1:])


def test_more_live_members_than_a_manifest_holds_is_an_error_naming_the_limit() -> None:
    many = [parse_member(f"m{i}", 0.0, 0.0, member_info(f"10.0.1.{i}", {"udp": ["[::]:1"]},
                                                        [])) for i in range(17)]
    with pytest.raises(AuraError, match="at most 16 endpoints"):
        endpoints_from_cluster(many)


def test_a_published_manifest_reads_back_and_only_verified_serials_count() -> None:
    ca = ed25519.Ed25519PrivateKey.generate()
    stranger = ed25519.Ed25519PrivateKey.generate()

    def with_manifest(name: str, serial: int, key: ed25519.Ed25519PrivateKey) -> Member:
        manifest = sign(Manifest.create(
            serial=serial, issued=datetime.datetime.now(datetime.UTC), expires_days=3,
            server_public_key=bytes(32), endpoints=[HostPorts("10.0.0.1", udp=1)]), key)
        info = json.loads(json.dumps(member_info("10.0.0.1", {}, [], manifest)))
        assert info["manifest_serial"] == serial
        member = parse_member(name, 0.0, 0.0, info)
        assert member.manifest == manifest
        return member

    members = [with_manifest("a", 4, ca), with_manifest("b", 9, stranger),
               with_manifest("c", 6, ca), *members_list()]
    assert newest_serial(members, ca.public_key()) == 6
    assert newest_serial(members_list(), ca.public_key()) == 0


def test_status_shows_every_member_its_transports_and_sessions_and_who_is_down() -> None:
    text = render_cluster(members_list(), now=1_010.0)
    assert text.splitlines()[0] == "cluster: 3 members, 2 up, 1 live sessions"
    assert "a: up, heard 1s ago, running 16m 50s; clients reach it at 10.0.0.1:udp=8443" in text
    assert "  udp   [::]:8443" in text
    assert "    alice            udp       10.9.0.2:40000           10s ago" in text
    assert "b: DOWN, silent for 1m 0s" in text
    assert "c: up" in text and "no transport running" in text
    document = [member_mapping(m) for m in members_list()]
    assert [m["up"] for m in document] == [True, False, True]
    assert document[0]["sessions"][0]["peer"] == "alice"
    assert document[0]["endpoint"] == {"host": "10.0.0.1", "udp": 8443}
