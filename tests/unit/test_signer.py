"""The signer's request validation and serial bookkeeping, without the socket."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_common.config import ServerConfig
from aura_common.ipc.frames import TO_SIGNER, ProtocolError, Sign, from_map
from aura_common.pki import ca
from aura_common.pki.manifest import (
    MAX_ENDPOINTS,
    MAX_EXPIRES_DAYS,
    MAX_SERIAL,
    HostPorts,
    SignedManifest,
    verify,
)
from services.signer.main import RequestError, Signer
from tests.unit.held_lock import held_elsewhere


def make_signer(tmp_path: Path) -> Signer:
    config = ServerConfig.default(
        "vpn.test", state_dir=str(tmp_path / "state"), runtime_dir=str(tmp_path / "run"),
        key_dir=str(tmp_path / "keys"),
    )  # fmt: skip
    (tmp_path / "state" / "signer").mkdir(parents=True)
    ca.create_ca(tmp_path / "keys")
    return Signer(config)


def request(**changes: Any) -> Sign:
    """A `sign` request as the signer's channel hands it over: decoded, its types checked."""
    return cast(Sign, from_map({
        "t": "sign", "endpoints": [{"host": "vpn.test", "udp": 8443}], "expires_days": 3,
        "server_public_key": bytes(32), **changes,
    }, TO_SIGNER))  # fmt: skip


def test_sign_stores_manifest_and_serial(tmp_path: Path) -> None:
    signer = make_signer(tmp_path)
    signed, manifest = signer.sign([HostPorts("vpn.test", tcp=443)], 3, bytes(32))
    assert manifest.serial == 1
    assert (tmp_path / "state" / "signer" / "manifest.serial").read_text() == "1\n"
    stored = SignedManifest.from_json((tmp_path / "state" / "signer" / "manifest.json").read_text())
    assert stored == signed
    now = datetime.datetime.now(datetime.UTC)
    assert verify(stored, ca.load_ca_public_key(tmp_path / "keys"), now=now) == manifest
    assert signer.sign([HostPorts("vpn.test", tcp=443)], 3, bytes(32))[1].serial == 2


def test_damaged_serial_file_stops_signing(tmp_path: Path) -> None:
    signer = make_signer(tmp_path)
    (tmp_path / "state" / "signer" / "manifest.serial").write_text("garbage\n")
    with pytest.raises(RequestError, match="damaged"):
        signer.sign([HostPorts("vpn.test", tcp=443)], 3, bytes(32))
    assert not (tmp_path / "state" / "signer" / "manifest.json").exists()


def test_oversized_manifest_is_refused_without_using_a_serial(tmp_path: Path) -> None:
    signer = make_signer(tmp_path)
    host = ".".join(["a" * 60] * 4)
    with pytest.raises(RequestError, match="more than 4096"):
        signer.sign([HostPorts(host, 1, 2, 3)] * 16, 3, bytes(32))
    assert not (tmp_path / "state" / "signer" / "manifest.serial").exists()


def test_a_request_is_checked_as_it_is_decoded() -> None:
    frame = request()
    assert frame.endpoints == [HostPorts("vpn.test", udp=8443)] and frame.expires_days == 3
    assert frame.server_public_key == bytes(32) and frame.serial_above == 0
    assert request(serial_above=41).serial_above == 41
    for bad in (-1, 1 << 53):
        with pytest.raises(ProtocolError, match=r"^sign\.serial_above: expected an integer in"):
            request(serial_above=bad)
    for wrong_type in (True, "7", 1.0):
        with pytest.raises(ProtocolError, match=r"^sign\.serial_above: expected an integer"):
            request(serial_above=wrong_type)
    with pytest.raises(ProtocolError, match=r"^sign\.expires_days: expected an integer in 1\."):
        request(expires_days=0)
    with pytest.raises(ProtocolError, match=r"^sign\.endpoints\[0\]: expected a valid HostPorts "
                                            r"\(udp port: expected 1\.\.65535, found 0\)"):
        request(endpoints=[{"host": "vpn.test", "udp": 0}])
    with pytest.raises(ProtocolError, match=r"^sign\.endpoints: expected a list of at most 16 "):
        request(endpoints=[{"host": "vpn.test", "udp": 8443}] * 17)
    # An absent port may travel as nil, as the CLI sends it, or be left out.
    assert request(endpoints=[{"host": "vpn.test", "udp": None, "tcp": 443}]).endpoints == [
        HostPorts("vpn.test", tcp=443)]


def test_a_serial_above_another_members_goes_past_it_and_never_back(tmp_path: Path) -> None:
    signer = make_signer(tmp_path)
    endpoint = [HostPorts("vpn.test", tcp=443)]
    assert signer.sign(endpoint, 3, bytes(32), serial_above=40)[1].serial == 41
    assert signer.sign(endpoint, 3, bytes(32), serial_above=7)[1].serial == 42
    assert signer.sign(endpoint, 3, bytes(32))[1].serial == 43


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["endpoints", "expires_days", "server_public_key", "serial_above",
                         "other"]),
        st.none() | st.integers() | st.binary(max_size=40) | st.text(max_size=10)
        | st.lists(st.dictionaries(st.sampled_from(["host", "udp", "tcp", "quic", "x"]),
                                   st.integers(-1, 70000) | st.text(max_size=12)), max_size=3),
    )
)  # fmt: skip
def test_fuzz_requests_are_decoded_whole_or_refused(changes: dict[str, Any]) -> None:
    try:
        frame = request(**changes)
    except ProtocolError as error:
        assert str(error).startswith("sign")
        return
    assert all(isinstance(endpoint, HostPorts) for endpoint in frame.endpoints)
    assert len(frame.endpoints) <= MAX_ENDPOINTS and 1 <= frame.expires_days <= MAX_EXPIRES_DAYS
    assert 0 <= frame.serial_above <= MAX_SERIAL and len(frame.server_public_key) == 32


def test_a_held_serial_lock_is_refused_at_once_not_waited_for(tmp_path: Path) -> None:
    signer = make_signer(tmp_path)
    with held_elsewhere(signer.config.manifest_serial_file):
        started = time.monotonic()
        with pytest.raises(RequestError, match="locked by another process"):
            signer.sign([HostPorts("vpn.test", tcp=443)], 3, bytes(32))
        assert time.monotonic() - started < 1
    assert signer.sign([HostPorts("vpn.test", tcp=443)], 3, bytes(32))[1].serial == 1
