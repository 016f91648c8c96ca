"""The checks config keys declare (`reader.key`): each reads one kind of value from a YAML
file, names what it expected when the value is not that, and writes it back."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from aura_common.config.reader import CONFIG_VERSION, Check, Nested, Place, mapping
from aura_common.config.values import decode_key, encode_key, format_host_port, parse_host_port

T = TypeVar("T")


class Version(Check[int]):
    def read(self, value: object, at: Place) -> int:
        if value != CONFIG_VERSION or isinstance(value, bool):
            raise at.error(str(CONFIG_VERSION), value)
        return CONFIG_VERSION


class Text(Check[str]):
    """A non-empty string, and where `valid` is given one it accepts (else `expected`)."""

    def __init__(self, valid: Callable[[str], bool] | None = None, expected: str = "") -> None:
        self.valid, self.expected = valid, expected

    def read(self, value: object, at: Place) -> str:
        if not isinstance(value, str) or not value:
            raise at.error("a non-empty string", value)
        if self.valid is not None and not self.valid(value):
            raise at.error(self.expected, value)
        return value


class AbsolutePath(Text):
    def __init__(self) -> None:
        super().__init__(os.path.isabs, "an absolute path")

    def read(self, value: object, at: Place) -> str:
        return os.path.normpath(super().read(value, at))


class Integer(Check[int]):
    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def read(self, value: object, at: Place) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not (
            self.low <= value <= self.high
        ):
            raise at.error(f"an integer from {self.low} to {self.high}", value)
        return value


PORT = Integer(1, 65535)


class Seconds(Check[float]):
    def read(self, value: object, at: Place) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e6:
            raise at.error("a positive number of seconds", value)
        return float(value)


class Boolean(Check[bool]):
    def read(self, value: object, at: Place) -> bool:
        if not isinstance(value, bool):
            raise at.error("true or false", value)
        return value


class Choice(Check[str]):
    def __init__(self, choices: tuple[str, ...]) -> None:
        self.choices = choices

    def read(self, value: object, at: Place) -> str:
        if value not in self.choices:
            raise at.error(" | ".join(self.choices), value)
        return str(value)


class Optional(Check[T | None]):
    """`null` or what `check` accepts."""

    def __init__(self, check: Check[T]) -> None:
        self.check = check

    def read(self, value: object, at: Place) -> T | None:
        return None if value is None else self.check.read(value, at)

    def dump(self, value: T | None) -> object:
        return None if value is None else self.check.dump(value)

    def section(self) -> Nested[Any] | None:
        return self.check.section()


class Items(Check[tuple[T, ...]]):
    """A list, each item read by `check` (errors name `key[index]`)."""

    def __init__(self, check: Check[T]) -> None:
        self.check = check

    def read(self, value: object, at: Place) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise at.error("a list", value)
        return tuple(self.check.read(item, at.item(i)) for i, item in enumerate(value))

    def dump(self, value: tuple[T, ...]) -> object:
        return [self.check.dump(item) for item in value]


class Parsed(Check[T]):
    """A string `parse` accepts (ipaddress would read an integer as an address, so only a
    string), as that value; written back as `str`, or by `show`."""

    def __init__(self, parse: Callable[[str], T], expected: str,
                 show: Callable[[T], object] = str) -> None:
        self.parse, self.expected, self.show = parse, expected, show

    def read(self, value: object, at: Place) -> T:
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            return self.parse(value)
        except ValueError:
            raise at.error(self.expected, value) from None

    def dump(self, value: T) -> object:
        return self.show(value)


def ip_address(expected: str) -> Parsed[str]:
    """An IP address in its normal form."""
    return Parsed(lambda text: str(ipaddress.ip_address(text)), expected)


def host_port(expected: str, *, ip_only: bool = False) -> Parsed[tuple[str, int]]:
    """`HOST:PORT` (`[V6]:PORT`); `ip_only`: the host an IP address, in its normal form."""

    def parse(text: str) -> tuple[str, int]:
        host, port = parse_host_port(text)
        return (str(ipaddress.ip_address(host)), port) if ip_only else (host, port)

    return Parsed(parse, expected, lambda address: format_host_port(*address))


KEY = Parsed(decode_key, "a base64 key of 32 bytes", encode_key)


class Plain(Check[Mapping[str, Any]]):
    """A mapping kept as it is (a document another part checks, such as a signed manifest)."""

    def __init__(self, expected: str) -> None:
        self.expected = expected

    def read(self, value: object, at: Place) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise at.error(self.expected, value)
        return value

    def dump(self, value: Mapping[str, Any]) -> object:
        return _plain(value)


def _plain(value: object) -> object:
    """Mappings and sequences as plain dicts and lists, for yaml.safe_dump."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class Entry(Check[T]):
    """A one-key mapping `{name: value}` (a list item such as `{cidr: 10.0.0.0/8}`)."""

    def __init__(self, name: str, check: Check[T]) -> None:
        self.name, self.check = name, check

    def read(self, value: object, at: Place) -> T:
        raw = mapping(value, at, (self.name,))
        if self.name not in raw:
            raise at.at(self.name).error("a value (the key is required)")
        return self.check.read(raw[self.name], at.at(self.name))

    def dump(self, value: T) -> object:
        return {self.name: self.check.dump(value)}



AnyNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Network(Parsed[AnyNetwork]):
    """A network (`parse`: IPv4Network or IPv6Network) of at most `longest` prefix bits."""

    def __init__(self, parse: Callable[[str], AnyNetwork], expected: str, longest: int) -> None:
        super().__init__(parse, expected)
        self.longest = longest

    def read(self, value: object, at: Place) -> AnyNetwork:
        network = super().read(value, at)
        if network.prefixlen > self.longest:
            raise at.error(f"a network of /{self.longest} or larger", value)
        return network
