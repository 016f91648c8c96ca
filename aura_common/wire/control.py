"""In-tunnel control messages: address, DNS, routes and the bridge manifest, sent by the server
inside the encrypted WireGuard channel. I/O-free.

Wire form (the plaintext of one WireGuard data packet):

    0xA7            magic; its high nibble is neither 4 nor 6, so a stock client, which
                    expects an IP packet, drops the payload
    version         1
    length          u16 big-endian: the size of the map that follows
    map             msgpack {"address": [interface CIDR...], "dns": [IP...],
                             "routes": [network CIDR...], "manifest": <signed manifest> | nil}
    zero bytes      WireGuard pads every plaintext to a multiple of 16; nothing else may follow

The map must hold exactly these four keys with these types; anything else is refused.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import msgpack

from aura_common.addresses import IPAddress
from aura_common.pki.manifest import ManifestError, SignedManifest

MAGIC = 0xA7
CONTROL_VERSION = 1
HEADER = struct.Struct("!BBH")
MAX_ADDRESSES = 8
MAX_DNS = 8
MAX_ROUTES = 1024
MAX_TEXT = 4096  # longest string: the manifest body
_KEYS = ("address", "dns", "routes", "manifest")

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_T = TypeVar("_T")


class ControlError(ValueError):
    """A payload carried the control magic but is not a valid control message."""


@dataclass(frozen=True, slots=True)
class ControlMessage:
    address: tuple[Interface, ...] = ()
    dns: tuple[IPAddress, ...] = ()
    routes: tuple[Network, ...] = ()
    manifest: SignedManifest | None = None


def is_control(payload: bytes) -> bool:
    return payload[:1] == bytes([MAGIC])


def encode_control(message: ControlMessage) -> bytes:
    _check_counts(message.address, message.dns, message.routes)
    body = msgpack.packb(
        {
            "address": [str(interface) for interface in message.address],
            "dns": [str(address) for address in message.dns],
            "routes": [str(network) for network in message.routes],
            "manifest": None if message.manifest is None else message.manifest.to_mapping(),
        },
        use_bin_type=True,
    )
    if len(body) > 0xFFFF:
        raise ValueError(f"control message is {len(body)} bytes, more than 65535")
    return HEADER.pack(MAGIC, CONTROL_VERSION, len(body)) + body


def decode_control(payload: bytes) -> ControlMessage | None:
    """The control message in `payload`; None if it is not one (an IP packet, say).

    Raises ControlError for a payload that has the magic byte but is malformed.
    """
    if not is_control(payload):
        return None
    if len(payload) < HEADER.size:
        raise ControlError(f"control message: {len(payload)} bytes, shorter than its header")
    _, version, length = HEADER.unpack_from(payload)
    if version != CONTROL_VERSION:
        raise ControlError(f"control message: unsupported version {version}")
    end = HEADER.size + length
    if end > len(payload):
        raise ControlError(f"control message: length {length} runs past the payload")
    if payload[end:].strip(b"\0"):
        raise ControlError("control message: bytes other than zero padding after the map")
    try:
        value = msgpack.unpackb(
            payload[HEADER.size : end],
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=MAX_TEXT,
            max_bin_len=0,
            max_array_len=MAX_ROUTES,
            max_map_len=len(_KEYS),
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise ControlError(f"control message: not a msgpack map ({error})") from None
    if not isinstance(value, dict) or set(value) != set(_KEYS):
        raise ControlError(f"control message: expected a map with exactly {', '.join(_KEYS)}")
    address = _parse_list(value["address"], "address", ipaddress.ip_interface)
    dns = _parse_list(value["dns"], "dns", ipaddress.ip_address)
    routes = _parse_list(value["routes"], "routes", ipaddress.ip_network)
    try:
        _check_counts(address, dns, routes)
    except ValueError as error:
        raise ControlError(f"control message: {error}") from None
    manifest = None
    if value["manifest"] is not None:
        try:
            manifest = SignedManifest.from_mapping(value["manifest"])
        except ManifestError as error:
            raise ControlError(f"control message: manifest: {error.detail}") from None
    return ControlMessage(tuple(address), tuple(dns), tuple(routes), manifest)


def _parse_list(value: object, field: str, parse: Callable[[str], _T]) -> list[_T]:
    if not isinstance(value, list):
        raise ControlError(f"control message: {field}: expected a list")
    parsed = []
    for item in value:
        if not isinstance(item, str):
            raise ControlError(f"control message: {field}: expected strings, found {item!r}")
        try:
            parsed.append(parse(item))
        except ValueError:
            raise ControlError(f"control message: {field}: {item!r} is not valid") from None
    return parsed


def _check_counts(
    address: Sequence[object], dns: Sequence[object], routes: Sequence[object]
) -> None:
    for field, items, limit in (
        ("address", address, MAX_ADDRESSES),
        ("dns", dns, MAX_DNS),
        ("routes", routes, MAX_ROUTES),
    ):
        if len(items) > limit:
            raise ValueError(f"{field}: at most {limit} entries, found {len(items)}")
