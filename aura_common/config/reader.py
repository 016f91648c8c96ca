"""Reading a YAML config key by key: every problem raises `ConfigError(path, "dotted.key",
"what was expected", found)`, so a bad file stops a service at start with one line the operator
can act on."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from typing import Any

import yaml

from aura_common.config.values import decode_key, is_host
from aura_common.errors import ConfigError

CONFIG_VERSION = 1
_REQUIRED: Any = object()


def keys_of(schema: type) -> tuple[str, ...]:
    """The YAML keys of a section: its dataclass's fields, in order."""
    return tuple(f.name for f in dataclasses.fields(schema))


class Section:
    """One mapping of a config file; every error names the file and the dotted key."""

    def __init__(self, path: str, prefix: str, raw: object, known: tuple[str, ...]) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(path, prefix, "a mapping", raw)
        unknown = sorted(str(k) for k in raw if k not in known)
        if unknown:
            raise ConfigError(
                path, self._join(prefix, unknown[0]), f"one of the known keys: {', '.join(known)}"
            )
        self.path, self.prefix, self.raw = path, prefix, raw

    @staticmethod
    def _join(prefix: str, name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    def key(self, name: str) -> str:
        return self._join(self.prefix, name)

    def error(self, name: str, expected: str, found: object = None) -> ConfigError:
        return ConfigError(self.path, self.key(name), expected, found)

    def get(self, name: str, default: Any = _REQUIRED) -> Any:
        if name in self.raw:
            return self.raw[name]
        if default is _REQUIRED:
            raise ConfigError(self.path, self.key(name), "a value (the key is required)")
        return default

    def section(self, name: str, known: tuple[str, ...]) -> Section:
        return Section(self.path, self.key(name), self.get(name, {}), known)

    def string(self, name: str, default: Any = _REQUIRED) -> str:
        value = self.get(name, default)
        if not isinstance(value, str) or not value:
            raise self.error(name, "a non-empty string", value)
        return value

    def optional_string(self, name: str) -> str | None:
        return None if self.get(name, None) is None else self.string(name)

    def integer(self, name: str, low: int, high: int, default: Any = _REQUIRED) -> int:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(name, f"an integer from {low} to {high}", value)
        return value

    def seconds(self, name: str, default: float) -> float:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e6:
            raise self.error(name, "a positive number of seconds", value)
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise self.error(name, "true or false", value)
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: Any = _REQUIRED) -> str:
        value = self.get(name, default)
        if value not in choices:
            raise self.error(name, " | ".join(choices), value)
        return str(value)

    def listing(self, name: str, default: Any = _REQUIRED) -> list[Any]:
        value = self.get(name, default)
        if not isinstance(value, list):
            raise self.error(name, "a list", value)
        return value

    def absolute_path(self, name: str, default: Any = _REQUIRED) -> str:
        value = self.string(name, default)
        if not os.path.isabs(value):
            raise self.error(name, "an absolute path", value)
        return os.path.normpath(value)

    def host(self, name: str, default: Any = _REQUIRED) -> str:
        value = self.string(name, default)
        if not is_host(value):
            raise self.error(name, "a host name or IP address", value)
        return value

    def key_bytes(self, name: str) -> bytes:
        value = self.get(name)
        try:
            return decode_key(value) if isinstance(value, str) else decode_key("")
        except ValueError:
            raise self.error(name, "a base64 key of 32 bytes", value) from None

    def ip_addresses(self, name: str) -> tuple[str, ...]:
        result = []
        for index, item in enumerate(self.listing(name, [])):
            try:
                result.append(str(ipaddress.ip_address(text_of(item))))
            except ValueError:
                raise self.error(f"{name}[{index}]", "an IP address", item) from None
        return tuple(result)


def text_of(value: object) -> str:
    """`value` if it is a string: ipaddress would read an integer as an address."""
    if not isinstance(value, str):
        raise ValueError(value)
    return value


# libyaml's parser where PyYAML was built with it: a few times faster, same documents.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: str) -> object:
    try:
        with open(path, "rb") as f:
            return yaml.load(f, Loader=_YAML_LOADER)
    except FileNotFoundError:
        raise ConfigError(path, "", "an existing config file (not found)") from None
    except PermissionError:
        raise ConfigError(path, "", "a file this user may read (permission denied)") from None
    except IsADirectoryError:
        raise ConfigError(path, "", "a file, not a directory") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(path, "", f"valid YAML{where}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "UTF-8 text") from None
    except RecursionError:
        raise ConfigError(path, "", "valid YAML (nested too deeply)") from None


def check_version(top: Section) -> int:
    version = top.get("version")
    if version != CONFIG_VERSION or isinstance(version, bool):
        raise top.error("version", str(CONFIG_VERSION), version)
    return CONFIG_VERSION


def yaml_value(value: object) -> str:
    """One value in YAML flow style, for templates with comments."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...")
