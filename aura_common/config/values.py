"""Value checks shared by both configs, the CLI and the manifest: hosts, ports, keys, names."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re

MTU_MIN, MTU_MAX = 1280, 9000
_INTERFACE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_PEER_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")


def is_host(text: str) -> bool:
    """A DNS host name or an IP address literal."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    name = text[:-1] if text.endswith(".") else text
    return 0 < len(name) <= 253 and all(_HOST_LABEL.fullmatch(p) for p in name.split("."))


def is_interface_name(text: str) -> bool:
    """A Linux network interface name (at most 15 bytes, no '/', ':' or blanks)."""
    return bool(_INTERFACE_NAME.fullmatch(text)) and text not in (".", "..")


def is_peer_name(text: str) -> bool:
    return bool(_PEER_NAME.fullmatch(text))


def is_port(value: object) -> bool:
    """A port number: an int (not a bool) in 1..65535."""
    return type(value) is int and 1 <= value <= 65535


def parse_host_port(text: str) -> tuple[str, int]:
    """Split `HOST:PORT` or `[V6]:PORT`; ValueError when it is not that."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(text)
        ipaddress.IPv6Address(host)
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host or not is_host(host):
            raise ValueError(text)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(text)
    return host, int(port)


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def decode_key(text: str) -> bytes:
    """A base64 32-byte key; ValueError otherwise."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(text) from exc
    if len(raw) != 32:
        raise ValueError(text)
    return raw


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")
