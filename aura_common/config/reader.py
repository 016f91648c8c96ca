"""Reading and writing a config through its schema.

A schema is a frozen dataclass whose fields are declared with `key(default, check, doc)`: the
default, the check a value from the file must pass and the comment `dump_section` writes stand
in one place, so a new key is one line. `read_section` walks the fields of a YAML mapping and
`dump_section` writes them back as commented YAML that reads back to an equal config.

Every problem raises `ConfigError(path, "dotted.key", "what was expected", found)`, so a bad
file stops a service at start with one line the operator can act on.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Generic, Self, TypeVar

import yaml

from aura_common.errors import ConfigError

CONFIG_VERSION = 1
T = TypeVar("T")
_NO_DEFAULT: Any = dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class Place:
    """Where a value stands: the file and the dotted key ("" for the whole file)."""

    path: str
    key: str = ""

    def at(self, name: str) -> Place:
        return Place(self.path, f"{self.key}.{name}" if self.key else name)

    def item(self, index: int) -> Place:
        return Place(self.path, f"{self.key}[{index}]")

    def error(self, expected: str, found: object = None) -> ConfigError:
        return ConfigError(self.path, self.key, expected, found)


class Check(Generic[T]):
    """What a key's value must be. `read` turns a value from the file into the field's value
    or raises `at.error(...)`; `dump` turns a field's value back into plain YAML data."""

    def read(self, value: object, at: Place) -> T:
        raise NotImplementedError

    def dump(self, value: T) -> object:
        return value

    def section(self) -> Nested[Any] | None:
        """The schema this check reads a section with, if it does."""
        return None


def key(default: Any = _NO_DEFAULT, check: Check[Any] | None = None, doc: str = "", *,
        stated: bool = False, hash: bool | None = None) -> Any:
    """A config key: its default (none: the file must have it), its check and the comment the
    dump writes beside it. `stated`: the file must have it although code gets the default."""
    return dataclasses.field(default=default, hash=hash,
                             metadata={"check": check, "doc": doc, "stated": stated})


def keys(schema: type) -> Iterator[dataclasses.Field[Any]]:
    """The config keys of a schema, in file order (fields not declared with `key` are not)."""
    return (f for f in dataclasses.fields(schema) if f.metadata.get("check") is not None)


def mapping(value: object, at: Place, known: tuple[str, ...]) -> Mapping[Any, Any]:
    """`value` as a mapping with no key outside `known`."""
    if not isinstance(value, dict):
        raise at.error("a mapping", value)
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise at.at(unknown[0]).error(f"one of the known keys: {', '.join(known)}")
    return value


def read_section(schema: type[T], value: object, at: Place, **extra: Any) -> T:
    """A schema's instance from a YAML mapping: each key checked, absent keys defaulted; then
    the schema's `checked(at, raw)` where its keys must agree with each other."""
    fields = list(keys(schema))
    raw = mapping(value, at, tuple(f.name for f in fields))
    values = dict(extra)
    for f in fields:
        if f.name in raw:
            values[f.name] = f.metadata["check"].read(raw[f.name], at.at(f.name))
        elif f.default is _NO_DEFAULT or f.metadata["stated"]:
            raise at.at(f.name).error("a value (the key is required)")
    result = schema(**values)
    checked = getattr(result, "checked", None)
    return checked(at, raw) if checked is not None else result


def dump_section(section: object, indent: int = 0) -> list[str]:
    """The lines of a schema's instance in block style, each key with its comment."""
    lines, pad = [], " " * indent
    for f in keys(type(section)):
        check, value = f.metadata["check"], getattr(section, f.name)
        comment = f"  # {f.metadata['doc']}" if f.metadata["doc"] else ""
        inner = check.section()
        if inner is not None and value is not None:
            lines.append(f"{pad}{f.name}:{comment}")
            if inner.under:
                lines.append(f"{pad}  {inner.under}:")
            lines += dump_section(value, indent + (4 if inner.under else 2))
            continue
        if inner is not None:
            continue  # an absent optional section: none of its keys exist
        data = check.dump(value)
        if isinstance(data, dict) and data:
            lines.append(f"{pad}{f.name}:{comment}")
            block = yaml.safe_dump(data, default_flow_style=False, sort_keys=False)
            lines += [f"{pad}  {line}" for line in block.splitlines()]
        else:
            lines.append(f"{pad}{f.name}: {yaml_value(data)}{comment}")
    return lines


class ConfigFile:
    """A schema that is a whole file: read from a path or a mapping (its `path` field set to
    where it came from), dumped under a header comment."""

    UNNAMED: ClassVar[str]  # how messages name a config that came from no file

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        path = os.fspath(path)
        return cls.from_mapping(read_yaml(path), path)

    @classmethod
    def from_mapping(cls, raw: object, path: str | None = None) -> Self:
        path = cls.UNNAMED if path is None else path
        return read_section(cls, raw, Place(path), path=path)

    def header(self) -> str:
        raise NotImplementedError

    def dump(self) -> str:
        """YAML with short comments; `load` of the text gives an equal config."""
        return "\n".join([self.header(), *dump_section(self), ""])


class Nested(Check[T]):
    """A section of its own, read by its schema; `under` a further level of the file that the
    schema does not have (`tunnel: {split: {...}}`)."""

    def __init__(self, schema: type[T], under: str = "") -> None:
        self.schema, self.under = schema, under

    def read(self, value: object, at: Place) -> T:
        if self.under:
            value = mapping(value, at, (self.under,)).get(self.under, {})
            at = at.at(self.under)
        return read_section(self.schema, value, at)

    def section(self) -> Nested[Any] | None:
        return self

    def dump(self, value: T) -> object:
        """Flow form (inside a list): the keys that differ from their default."""
        data = {f.name: f.metadata["check"].dump(getattr(value, f.name))
                for f in keys(self.schema) if getattr(value, f.name) != f.default}
        return {self.under: data} if self.under else data


# libyaml's parser where PyYAML was built with it: a few times faster, same documents.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# A config is a few KiB; the bound keeps one another account planted (a client config its
# user owns, read by root) from costing its reader more.
CONFIG_FILE_LIMIT = 1 << 20


def read_yaml(path: str) -> object:
    try:
        # O_NONBLOCK: a FIFO in the file's place must not hang the (root) command.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(path, "", "an existing config file (not found)") from None
    except PermissionError:
        raise ConfigError(path, "", "a file this user may read (permission denied)") from None
    with os.fdopen(fd, "rb") as file:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(path, "", "a file, not a directory")
        if not stat.S_ISREG(mode):
            raise ConfigError(path, "", "a regular file (not a FIFO or a device)")
        data = file.read(CONFIG_FILE_LIMIT + 1)
    if len(data) > CONFIG_FILE_LIMIT:
        raise ConfigError(path, "", f"a config file of at most {CONFIG_FILE_LIMIT} bytes")
    try:
        return yaml.load(data, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(path, "", f"valid YAML{where}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "UTF-8 text") from None
    except RecursionError:
        raise ConfigError(path, "", "valid YAML (nested too deeply)") from None


def yaml_value(value: object) -> str:
    """One value in YAML flow style, for lines with comments."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...")
