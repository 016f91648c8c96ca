"""Bridge manifests: round trip, every tampering refused, the v1 path, operator syntax, fuzzing."""

from __future__ import annotations

import base64
import datetime
import errno
import json
import logging
import os
import re
import stat
import subprocess
import sys
from ipaddress import ip_interface
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_common.config import ClientConfig
from aura_common.config.client import ClientInterface, ClientServer
from aura_common.errors import AuraError
from aura_common.pki import manifest as m
from services.client.manifest_store import ManifestStore
from services.client.order import TransportOrder
from tests.unit.strategies import json_values

REPO = str(Path(__file__).resolve().parents[2])

NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)
CA = ed25519.Ed25519PrivateKey.generate()
SERVER_KEY = bytes(range(32))
ENDPOINTS = (
    m.HostPorts("vpn.example.com", udp=8443, tcp=8443, quic=8444),
    m.HostPorts("2001:db8::1", tcp=443),
)


def make(serial: int = 5, *, issued: datetime.datetime = NOW, days: int = 30) -> m.Manifest:
    return m.Manifest.create(
        serial=serial,
        issued=issued,
        expires_days=days,
        server_public_key=SERVER_KEY,
        endpoints=ENDPOINTS,
    )


def reason(signed: m.SignedManifest, key: object = None, **kwargs: object) -> str:
    with pytest.raises(m.ManifestError) as caught:
        m.verify(signed, key or CA.public_key(), **{"now": NOW, **kwargs})  # type: ignore[arg-type]
    return caught.value.reason


def resign(body: dict[str, object]) -> m.SignedManifest:
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return m.SignedManifest(raw, CA.sign(raw))


# -- round trip ---------------------------------------------------------------------------------
def test_round_trip_through_serialised_form() -> None:
    manifest = make()
    signed = m.sign(manifest, CA)
    carried = m.SignedManifest.from_json(signed.to_json())
    assert carried == signed
    assert m.verify(carried, CA.public_key(), now=NOW) == manifest
    assert m.verify(carried, CA.public_key().public_bytes_raw(), now=NOW) == manifest


def test_bridges_line_is_synthesised_from_endpoints() -> None:
    assert make().bridges == ("vpn.example.com:8443", "vpn.example.com:8444", "[2001:db8::1]:443")


def test_canonical_body_is_sorted_compact_json() -> None:
    body = m.canonical_bytes(make())
    parsed = json.loads(body)
    assert body == json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()
    assert parsed["endpoints"][1] == {"host": "2001:db8::1", "tcp": 443}
    assert parsed["issued"] == "2026-03-01T12:00:00Z"
    assert parsed["expires"] == "2026-03-31T12:00:00Z"


# -- tampering ----------------------------------------------------------------------------------
def test_every_single_bit_flip_in_the_body_is_refused() -> None:
    signed = m.sign(make(), CA)
    for bit in range(len(signed.body) * 8):
        body = bytearray(signed.body)
        body[bit // 8] ^= 1 << (bit % 8)
        assert reason(m.SignedManifest(bytes(body), signed.signature)) == "bad_signature"


def test_every_single_bit_flip_in_the_signature_is_refused() -> None:
    signed = m.sign(make(), CA)
    for bit in range(len(signed.signature) * 8):
        signature = bytearray(signed.signature)
        signature[bit // 8] ^= 1 << (bit % 8)
        assert reason(m.SignedManifest(signed.body, bytes(signature))) == "bad_signature"


def test_signed_by_another_ca_is_refused_and_named() -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    signed = m.sign(make(), other)
    with pytest.raises(m.ManifestError, match="another CA") as caught:
        m.verify(signed, CA.public_key(), now=NOW)
    assert caught.value.reason == "wrong_key"
    # Without the key id hint it is still refused, as a bad signature.
    assert reason(m.SignedManifest(signed.body, signed.signature)) == "bad_signature"


def test_expired_and_not_yet_valid() -> None:
    signed = m.sign(make(days=1), CA)
    assert reason(signed, now=NOW + datetime.timedelta(days=1)) == "expired"
    assert reason(signed, now=NOW - datetime.timedelta(hours=1)) == "not_yet_valid"
    # Small clock skew is tolerated.
    m.verify(signed, CA.public_key(), now=NOW - datetime.timedelta(minutes=5))


def test_serial_rollback_is_refused_equal_is_accepted() -> None:
    signed = m.sign(make(serial=5), CA)
    with pytest.raises(m.ManifestError, match="serial 5 is lower than 6"):
        m.verify(signed, CA.public_key(), now=NOW, min_serial=6)
    assert m.verify(signed, CA.public_key(), now=NOW, min_serial=5).serial == 5


# -- the v1 path and malformed bodies -------------------------------------------------------------
def v1_body() -> dict[str, object]:
    return {
        "version": 1,
        "serial": 3,
        "issued": "2026-03-01T00:00:00Z",
        "expires": "2026-04-01T00:00:00Z",
        "server_public_key": base64.b64encode(SERVER_KEY).decode(),
        "bridges": ["vpn.example.com:443", "[2001:db8::1]:8443"],
    }


def test_manifest_with_only_v1_bridges_is_accepted() -> None:
    manifest = m.verify(resign(v1_body()), CA.public_key(), now=NOW)
    assert manifest.endpoints is None
    assert manifest.bridges == ("vpn.example.com:443", "[2001:db8::1]:8443")
    assert "(v1)" in manifest.summary()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"version": 2}, "version"),
        ({"version": True}, "version"),
        ({"serial": 0}, "serial"),
        ({"serial": "3"}, "serial"),
        ({"issued": "2026-03-01 00:00:00"}, "issued"),
        ({"expires": "2026-02-01T00:00:00Z"}, "expires"),
        ({"server_public_key": "AAAA"}, "server_public_key"),
        ({"bridges": []}, "bridges"),
        ({"bridges": ["2001:db8::1:443"]}, "bridges[0]"),
        ({"bridges": ["host:0"]}, "bridges[0]"),
        ({"extra": 1}, "extra"),
        ({"endpoints": [{"host": "a.example", "tcp": 70000}]}, "endpoints[0].tcp"),
        ({"endpoints": [{"host": "a.example"}]}, "endpoints[0]"),
        ({"endpoints": [{"host": "a.example", "tcp": 443}]}, "bridges"),
        ({"endpoints": [{"host": "bad host", "tcp": 443}]}, "endpoints[0]"),
    ],
)
def test_malformed_field_is_named(change: dict[str, object], field: str) -> None:
    body = {**v1_body(), **change}
    with pytest.raises(m.ManifestError, match=rf"field {re.escape(field)}:") as caught:
        m.verify(resign(body), CA.public_key(), now=NOW)
    assert caught.value.reason == "malformed"


def test_non_canonical_body_is_refused_even_when_signed() -> None:
    raw = json.dumps(v1_body(), sort_keys=True, indent=1).encode()
    with pytest.raises(m.ManifestError, match="canonical"):
        m.verify(m.SignedManifest(raw, CA.sign(raw)), CA.public_key(), now=NOW)


def test_duplicate_keys_are_refused() -> None:
    raw = m.canonical_bytes(make()).replace(b'{"bridges"', b'{"serial":99,"bridges"', 1)
    with pytest.raises(m.ManifestError, match="canonical"):
        m.verify(m.SignedManifest(raw, CA.sign(raw)), CA.public_key(), now=NOW)


@pytest.mark.parametrize(
    "mapping",
    [
        None,
        [],
        {"body": "{}"},
        {"body": "{}", "signature": "short"},
        {"body": "{}", "signature": "!" * 88},
        {"body": "{}", "signature": "A" * 88},  # base64 of 66 bytes, not 64 (found by fuzz)
        {"body": "x" * 5000, "signature": "A" * 86 + "=="},
        {"body": "{}", "signature": "A" * 86 + "==", "key_id": "XYZ"},
        {"body": "{}", "signature": "A" * 86 + "==", "other": 1},
        {"body": "é", "signature": "A" * 86 + "=="},
    ],
)
def test_bad_serialised_forms_are_malformed(mapping: object) -> None:
    with pytest.raises(m.ManifestError) as caught:
        m.SignedManifest.from_mapping(mapping)
    assert caught.value.reason == "malformed"


# -- operator syntax ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("vpn.example.com:tcp=443", m.HostPorts("vpn.example.com", tcp=443)),
        ("VPN.Example.com:udp=1:quic=2:tcp=3", m.HostPorts("vpn.example.com", 1, 3, 2)),
        ("192.0.2.1:quic=8444", m.HostPorts("192.0.2.1", quic=8444)),
        ("[2001:DB8::1]:udp=8443", m.HostPorts("2001:db8::1", udp=8443)),
    ],
)
def test_endpoint_spec_parses(spec: str, expected: m.HostPorts) -> None:
    assert m.parse_endpoint_spec(spec) == expected
    assert m.parse_endpoint_spec(str(expected)) == expected


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("vpn.example.com", "at least one transport"),
        ("vpn.example.com:", "at least one transport"),
        ("vpn.example.com:ssh=22", "transport 'ssh': expected udp, tcp or quic"),
        ("vpn.example.com:tcp=0", "tcp port '0': expected a port number 1..65535"),
        ("vpn.example.com:tcp=65536", "1..65535"),
        ("vpn.example.com:tcp=x", "1..65535"),
        ("vpn.example.com:tcp=1:tcp=2", "at most once"),
        ("vpn.example.com:tcp", "transport=port"),
        ("2001:db8::1:tcp=443", "IPv6 address in brackets"),
        ("2001:db8::1", "IPv6 address in brackets"),
        ("[2001:db8::1:tcp=443", "closing ]"),
        ("[192.0.2.1]:tcp=443", "IPv6 address inside brackets"),
        ("[::1]tcp=443", ":transport=port"),
        ("tcp=443", "a host first"),
        ("bad_host:tcp=443", "DNS name"),
        (":tcp=443", "host name or IP address"),
    ],
)
def test_endpoint_spec_errors_name_option_part_and_expectation(spec: str, complaint: str) -> None:
    with pytest.raises(AuraError) as caught:
        m.parse_endpoint_spec(spec)
    message = str(caught.value)
    assert message.startswith(f"--endpoints {spec!r}: bad ")
    assert complaint in message


# -- fuzzing --------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_signed_random_bodies_never_crash(body: bytes) -> None:
    try:
        m.verify(m.SignedManifest(body, CA.sign(body)), CA.public_key(), now=NOW)
    except m.ManifestError as error:
        assert error.reason == "malformed"




@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*v1_body(), "endpoints", "x"]), json_values, max_size=8))
def test_fuzz_structured_bodies_only_raise_malformed(changes: dict[str, object]) -> None:
    body = {**v1_body(), **changes}
    try:
        m.verify(resign(body), CA.public_key(), now=NOW)
    except m.ManifestError as error:
        assert error.reason in {"malformed", "expired", "not_yet_valid"}


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fuzz_serialised_form_parser(value: object) -> None:
    try:
        m.SignedManifest.from_mapping(value)
    except m.ManifestError as error:
        assert error.reason == "malformed"


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="abc.[]:=0123456789tcpudqiv6f", max_size=40))
def test_fuzz_endpoint_spec(spec: str) -> None:
    try:
        endpoint = m.parse_endpoint_spec(spec)
    except AuraError as error:
        assert str(error).startswith("--endpoints ")
    else:
        assert m.parse_endpoint_spec(str(endpoint)) == endpoint


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.builds(
            m.HostPorts,
            st.sampled_from(["a.example", "192.0.2.9", "2001:db8::7", "x-1.y"]),
            st.none() | st.integers(1, 65535),
            st.integers(1, 65535),
            st.none() | st.integers(1, 65535),
        ),
        min_size=1,
        max_size=m.MAX_ENDPOINTS,
    ),
    st.integers(1, m.MAX_SERIAL),
)
def test_fuzz_round_trip(endpoints: list[m.HostPorts], serial: int) -> None:
    manifest = m.Manifest.create(
        serial=serial,
        issued=NOW,
        expires_days=7,
        server_public_key=SERVER_KEY,
        endpoints=endpoints,
    )
    signed = m.SignedManifest.from_mapping(m.sign(manifest, CA).to_mapping())
    assert m.verify(signed, CA.public_key(), now=NOW) == manifest


# -- the client's store ---------------------------------------------------------------------------
def test_store_accepts_newer_refuses_rollback_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ManifestStore(tmp_path / "manifest.json", CA.public_key(), SERVER_KEY)
    assert store.serial == 0 and store.stored() is None
    assert store.accept(m.sign(make(serial=7), CA), now=NOW).serial == 7
    assert store.serial == 7
    assert stat.S_IMODE((tmp_path / "manifest.json").stat().st_mode) == 0o600
    assert store.accept(m.sign(make(serial=7), CA), now=NOW).serial == 7
    with pytest.raises(m.ManifestError) as caught:
        store.accept(m.sign(make(serial=6), CA), now=NOW)
    assert caught.value.reason == "serial_rollback"
    assert "refused bridge manifest: serial 6 is lower than 7" in caplog.text
    assert store.serial == 7
    store.accept(m.sign(make(serial=8), CA), now=NOW)
    raw_ca = CA.public_key().public_bytes_raw()
    assert ManifestStore(tmp_path / "manifest.json", raw_ca, SERVER_KEY).serial == 8


def test_store_keeps_its_floor_after_the_stored_manifest_expires(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path / "manifest.json", CA.public_key(), SERVER_KEY)
    store.accept(m.sign(make(serial=4, days=1), CA), now=NOW)
    later = NOW + datetime.timedelta(days=3)
    with pytest.raises(m.ManifestError, match="lower than 4"):
        store.accept(m.sign(make(serial=3, issued=later), CA), now=later)


def test_store_refuses_tampered_and_ignores_a_damaged_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "manifest.json"
    store = ManifestStore(path, CA.public_key(), SERVER_KEY)
    signed = m.sign(make(), CA)
    with pytest.raises(m.ManifestError, match="altered"):
        store.accept(m.SignedManifest(signed.body, bytes(64)), now=NOW)
    assert not path.exists()
    path.write_text("{not json")
    assert store.serial == 0
    assert "ignoring stored manifest" in caplog.text


def test_store_refuses_a_manifest_for_another_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ManifestStore(tmp_path / "manifest.json", CA.public_key(), SERVER_KEY)
    other = m.Manifest.create(
        serial=9, issued=NOW, expires_days=7, server_public_key=bytes(32),
        endpoints=ENDPOINTS,
    )
    with pytest.raises(m.ManifestError) as caught:
        store.accept(m.sign(other, CA), now=NOW)
    assert caught.value.reason == "another_server"
    assert "refused bridge manifest: it is for the server with key AAAA" in caplog.text
    assert store.serial == 0 and not (tmp_path / "manifest.json").exists()


def _one_error(caplog: pytest.LogCaptureFixture) -> str:
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelno for r in problems] == [logging.ERROR]
    assert problems[0].exc_info is None
    line = problems[0].getMessage()
    assert "\n" not in line
    return line


def test_a_manifest_the_full_folder_cannot_take_is_used_and_one_error_names_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the OSError escaped to the carrier's callback: asyncio's "Exception in callback".
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("services.client.manifest_store.write_atomic", full)
    path = tmp_path / "manifest.json"
    store = ManifestStore(path, CA.public_key(), SERVER_KEY)
    assert store.accept(m.sign(make(serial=7), CA), now=NOW).serial == 7
    assert _one_error(caplog) == (f"{path}: cannot store bridge manifest serial 7 (No space "
                                  "left on device); it applies until the client stops")
    assert store.serial == 0


def test_a_manifest_whose_lock_cannot_be_opened_is_used_by_the_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A real failure of the lock step: a folder where the lock file belongs.
    state = tmp_path / "alice.state.json"
    Path(f"{state}.lock").mkdir()
    config = ClientConfig(
        name="alice", path=str(tmp_path / "alice.yaml"), state_file=str(state),
        interface=ClientInterface(bytes(32), (ip_interface("10.77.0.2/32"),)),
        server=ClientServer(SERVER_KEY, "192.0.2.1", CA.public_key().public_bytes_raw()),
    )
    order = TransportOrder(config, ["udp", "quic", "tcp"])
    issued = datetime.datetime.now(datetime.UTC)
    order.accept_manifest(m.sign(make(serial=3, issued=issued), CA), now=0.0)
    assert order.manifest_serial == 3 and order.changed.is_set()
    assert _one_error(caplog).startswith(f"{state}: cannot store bridge manifest serial 3 ")
    assert "alice.state.json.lock: not a regular file" in caplog.text and not state.exists()


def test_store_reads_no_fifo_link_or_endless_file_in_its_place(tmp_path: Path) -> None:
    """The store lives beside a client config, in a folder its owner may fill with traps
    for the client, which runs as root: each is ignored with a warning, at once."""
    script = (
        "import logging, sys\n"
        "from cryptography.hazmat.primitives.asymmetric import ed25519\n"
        "from services.client.manifest_store import ManifestStore\n"
        "logging.basicConfig()\n"
        "key = ed25519.Ed25519PrivateKey.generate().public_key()\n"
        "print(ManifestStore(sys.argv[1], key, bytes(32)).serial)\n"
    )
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    for name, why in (("fifo.json", "a regular file"), ("zero.json", "a symlink is refused")):
        child = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / name)], capture_output=True,
            text=True, env={**os.environ, "PYTHONPATH": REPO}, timeout=30,
        )  # fmt: skip
        assert child.stdout == "0\n", child.stderr
        assert f"ignoring stored manifest: {tmp_path / name}" in child.stderr, child.stderr
        assert why in child.stderr
