"""In-tunnel control messages: exact wire form, padding tolerance, strict parsing, fuzzing."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import struct

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_common.pki import manifest as m
from aura_common.wire import control as c

CA = ed25519.Ed25519PrivateKey.generate()
SIGNED = m.sign(
    m.Manifest.create(
        serial=1,
        issued=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        expires_days=30,
        server_public_key=bytes(32),
        endpoints=[m.HostPorts("vpn.example.com", udp=8443, tcp=443)],
    ),
    CA,
)
MESSAGE = c.ControlMessage(
    address=(ipaddress.ip_interface("10.77.0.5/32"), ipaddress.ip_interface("fd77::5/128")),
    dns=(ipaddress.ip_address("10.77.0.1"),),
    routes=(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")),
    manifest=SIGNED,
)


def frame(value: object, *, version: int = 1, padding: int = 0) -> bytes:
    body = msgpack.packb(value, use_bin_type=True)
    return struct.pack("!BBH", 0xA7, version, len(body)) + body + bytes(padding)


def valid_map() -> dict[str, object]:
    return {"address": ["10.77.0.5/32"], "dns": [], "routes": [], "manifest": None}


def test_round_trip_with_manifest() -> None:
    payload = c.encode_control(MESSAGE)
    assert payload[0] == 0xA7 and payload[0] >> 4 not in (4, 6)
    assert payload[1] == 1
    assert int.from_bytes(payload[2:4], "big") == len(payload) - 4
    assert c.decode_control(payload) == MESSAGE


def test_wireguard_zero_padding_is_tolerated() -> None:
    payload = c.encode_control(MESSAGE)
    padded = payload + bytes(-len(payload) % 16)
    assert c.decode_control(padded) == MESSAGE
    assert c.decode_control(payload + bytes(15)) == MESSAGE


def test_ip_packets_are_not_control_messages() -> None:
    assert c.decode_control(bytes([0x45]) + bytes(19)) is None
    assert c.decode_control(bytes([0x60]) + bytes(39)) is None
    assert c.decode_control(b"") is None


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (bytes([0xA7, 1, 0]), "shorter than its header"),
        (frame(valid_map(), version=2), "unsupported version 2"),
        (frame(valid_map())[:-1], "runs past"),
        (frame(valid_map()) + b"\0\1", "zero padding"),
        (frame([1, 2]), "exactly"),
        (frame({**valid_map(), "extra": 1}), "not a msgpack map"),  # more keys than allowed
        (frame({k: v for k, v in valid_map().items() if k != "dns"}), "exactly"),
        (frame({**valid_map(), "address": "10.0.0.1/32"}), "address: expected a list"),
        (frame({**valid_map(), "address": [b"\n\0\0\1"]}), "not a msgpack map"),  # bin refused
        (frame({**valid_map(), "dns": [5]}), "dns: expected strings"),
        (frame({**valid_map(), "dns": ["10.0.0.0/8"]}), "is not valid"),
        (frame({**valid_map(), "routes": ["10.0.0.1/8"]}), "is not valid"),
        (frame({**valid_map(), "address": ["10.0.0.1/32"] * 9}), "at most 8"),
        (frame({**valid_map(), "manifest": {"body": 1}}), "manifest: field body"),
        (frame({**valid_map(), "manifest": "x"}), "manifest: field manifest"),
        (bytes([0xA7, 1, 0, 1, 0xC1]), "not a msgpack map"),
    ],
)
def test_malformed_control_messages_are_refused(payload: bytes, complaint: str) -> None:
    with pytest.raises(c.ControlError, match=complaint):
        c.decode_control(payload)


def test_encoder_refuses_too_many_entries() -> None:
    with pytest.raises(ValueError, match="dns: at most 8"):
        c.encode_control(c.ControlMessage(dns=(ipaddress.ip_address("10.0.0.1"),) * 9))


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_payloads(tail: bytes) -> None:
    for payload in (tail, bytes([0xA7, 1]) + tail, struct.pack("!BBH", 0xA7, 1, len(tail)) + tail):
        with contextlib.suppress(c.ControlError):
            c.decode_control(payload)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=30)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from([*valid_map(), "x"]), msgpack_values, max_size=5))
def test_fuzz_structured_maps(changes: dict[str, object]) -> None:
    try:
        message = c.decode_control(frame({**valid_map(), **changes}, padding=3))
    except c.ControlError:
        return
    assert message is not None
    assert c.decode_control(c.encode_control(message)) == message


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.ip_addresses(), max_size=c.MAX_ADDRESSES),
    st.lists(st.ip_addresses(), max_size=c.MAX_DNS),
    st.lists(st.ip_addresses(), max_size=20),
    st.booleans(),
)
def test_fuzz_round_trip(
    addresses: list[c.IPAddress], dns: list[c.IPAddress], routes: list[c.IPAddress],
    with_manifest: bool,
) -> None:
    message = c.ControlMessage(
        address=tuple(ipaddress.ip_interface(a) for a in addresses),
        dns=tuple(dns),
        routes=tuple(ipaddress.ip_network(r) for r in routes),
        manifest=SIGNED if with_manifest else None,
    )
    assert c.decode_control(c.encode_control(message)) == message
