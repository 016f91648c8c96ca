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


def host_problem(text: object) -> str | None:
    """Why `text` is not a host as a bridge manifest carries it (an IP address literal, or a
    DNS name without a final dot), as an "expected ..." phrase; None when it is one."""
    if not isinstance(text, str) or not text:
        return "a host name or IP address"
    try:
        ipaddress.ip_address(text)
        return None
    except ValueError:
        return _name_problem(text)


def _name_problem(name: str) -> str | None:
    if len(name) > 253 or not name.isascii():
        return "a DNS name of at most 253 ASCII characters, or an IP address"
    if not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
        return "a DNS name (letters, digits, hyphens, dot-separated labels) or an IP address"
    return None


def is_host(text: str) -> bool:
    """A DNS host name (fully qualified with a final dot, or not) or an IP address literal."""
    if host_problem(text) is None:
        return True
    return len(text) > 1 and text.endswith(".") and _name_problem(text[:-1]) is None


def is_interface_name(text: str) -> bool:
    """A Linux network interface name (at most 15 bytes, no '/', ':' or blanks)."""
    return bool(_INTERFACE_NAME.fullmatch(text)) and text not in (".", "..")


def is_peer_name(text: str) -> bool:
    return bool(_PEER_NAME.fullmatch(text))


def is_port(value: object) -> bool:
    """A port number: an int (not a bool) in 1..65535."""
    return type(value) is int and 1 <= value <= 65535


def parse_port(text: str) -> int:
    """A port number in ASCII decimal digits, 1..65535; ValueError otherwise."""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise ValueError(text)
    return int(text)


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
    return host, parse_port(port)


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
