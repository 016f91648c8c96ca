"""The generic config reader and writer: every server and client config survives dump -> read,
and a schema's keys are read, defaulted, required and listed from their declarations alone."""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
from collections.abc import Mapping
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_common.config import ClientConfig, ServerConfig
from aura_common.config.checks import (
    Boolean,
    Choice,
    Integer,
    Items,
    Optional,
    Seconds,
    Text,
    Version,
)
from aura_common.config.reader import (
    Check,
    Nested,
    Place,
    dump_section,
    key,
    keys,
    read_section,
)
from aura_common.config.server import FallbackHandler, MetricsConfig, NetworkConfig, RegistryConfig
from aura_common.errors import ConfigError
from aura_common.roles import CLIENT_ORDER

# -- valid values, by key ---------------------------------------------------------------------

_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_IPV4 = st.ip_addresses(v=4).map(str)
_IP = st.ip_addresses().map(str)
HOSTS = st.lists(_LABEL, min_size=1, max_size=3).map(".".join).filter(
    lambda h: not h.replace(".", "").isdigit()) | _IP
PATHS = st.lists(st.from_regex(r"[a-z0-9_.-]{1,8}", fullmatch=True).filter(
    lambda p: p not in (".", "..")), max_size=3).map(lambda parts: "/" + "/".join(parts))
ACCOUNTS = st.from_regex(r"[a-z_][a-z0-9_-]{0,31}", fullmatch=True)
INTERFACES = st.from_regex(r"[A-Za-z0-9_.-]{1,15}", fullmatch=True).filter(
    lambda n: n not in (".", ".."))
PORTS = st.integers(1, 65535)
HOST_PORTS = st.tuples(HOSTS, PORTS)
NETWORKS = st.ip_addresses().flatmap(lambda a: st.integers(0, a.max_prefixlen).map(
    lambda bits: ipaddress.ip_network(f"{a}/{bits}", strict=False)))

# Keys whose values a check of their kind alone does not describe (a predicate or a parser).
BY_KEY: dict[str, st.SearchStrategy[Any]] = {
    "ServerConfig.public_host": HOSTS,
    "ServerConfig.admin_group": ACCOUNTS,
    "ServiceUsers.*": ACCOUNTS,
    "TunConfig.name": INTERFACES,
    "NetworkConfig.dns": st.lists(_IP, max_size=3).map(tuple),
    "NetworkConfig.uplink": st.none() | INTERFACES,
    "*.listen": _IP,
    "ClientConfig.name": st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,31}", fullmatch=True),
    "ClientInterface.private_key": st.binary(min_size=32, max_size=32),
    "ClientInterface.addresses": st.lists(st.ip_addresses().flatmap(
        lambda a: st.integers(0, a.max_prefixlen).map(
            lambda bits: ipaddress.ip_interface(f"{a}/{bits}"))), max_size=3).map(tuple),
    "ClientInterface.dns": st.lists(_IP, max_size=3).map(tuple),
    "ClientServer.host": HOSTS,
    "ClientServer.preshared_key": st.none() | st.binary(min_size=32, max_size=32),
    "ClientServer.*_key": st.binary(min_size=32, max_size=32),
    "ClientTransports.order": st.permutations(CLIENT_ORDER).flatmap(
        lambda order: st.integers(1, len(order)).map(lambda n: tuple(order[:n]))),
    "ClientTransports.server_name": st.none() | HOSTS,
    "ClientTunnel.*": st.lists(NETWORKS, max_size=3).map(tuple),
    "ClientConfig.manifest": st.none() | st.dictionaries(
        st.sampled_from(["body", "signature", "key_id"]), st.text(max_size=30), min_size=1),
    "ClientConfig.runtime_dir": PATHS,
    "ClientConfig.state_file": st.none() | PATHS,
    "ServerConfig.*_dir": PATHS,
    "RegistryConfig.password_file": st.none() | PATHS,
}


def _by_key(schema: type, name: str) -> st.SearchStrategy[Any] | None:
    """The first pattern of BY_KEY that names this key."""
    return next((strategy for pattern, strategy in BY_KEY.items()
                 if fnmatch.fnmatchcase(f"{schema.__name__}.{name}", pattern)), None)


def of_check(check: Check[Any]) -> st.SearchStrategy[Any]:
    """Values a check of this kind accepts and writes back."""
    if isinstance(check, Nested):
        return schemas(check.schema)
    if isinstance(check, Optional):
        return st.none() | of_check(check.check)
    if isinstance(check, Items):
        return st.lists(of_check(check.check), max_size=3).map(tuple)
    if isinstance(check, Boolean):
        return st.booleans()
    if isinstance(check, Integer):
        return st.integers(check.low, check.high)
    if isinstance(check, Seconds):
        return st.floats(min_value=1e-3, max_value=999_999, allow_nan=False)
    if isinstance(check, Choice):
        return st.sampled_from(check.choices)
    if isinstance(check, Version):
        return st.just(1)
    raise LookupError(f"no strategy for {check!r}: add the key to BY_KEY")


def schemas(schema: type) -> st.SearchStrategy[Any]:
    """Instances of a schema, every key from its valid values; where keys must agree, they do."""
    special = {NetworkConfig: networks(), MetricsConfig: metrics(), RegistryConfig: registries(),
               FallbackHandler: fallbacks()}
    if schema in special:
        return special[schema]
    fields = {}
    for f in keys(schema):
        by_key = _by_key(schema, f.name)
        fields[f.name] = of_check(f.metadata["check"]) if by_key is None else by_key
    return st.builds(schema, **fields)


def fallbacks() -> st.SearchStrategy[FallbackHandler]:
    return st.builds(FallbackHandler, type=st.just("reject")) | st.builds(
        FallbackHandler, type=st.just("proxy"), upstream=HOST_PORTS)


@st.composite
def networks(draw: st.DrawFn) -> NetworkConfig:
    v4_bits = draw(st.integers(0, 30))
    ipv4 = ipaddress.IPv4Network(f"{draw(_IPV4)}/{v4_bits}", strict=False)
    ipv6 = None
    if draw(st.booleans()):
        # A peer's IPv6 address has its IPv4 host index: the IPv6 network is at least as large.
        v6_bits = draw(st.integers(0, min(120, 96 + v4_bits)))
        ipv6 = ipaddress.IPv6Network(f"{draw(st.ip_addresses(v=6))}/{v6_bits}", strict=False)
    return NetworkConfig(
        ipv4=ipv4, ipv6=ipv6, strategy=draw(st.sampled_from(("static", "dynamic"))),
        dns=draw(BY_KEY["NetworkConfig.dns"]), uplink=draw(BY_KEY["NetworkConfig.uplink"]),
        lease_idle_timeout=draw(of_check(Seconds())),
    )


@st.composite
def metrics(draw: st.DrawFn) -> MetricsConfig:
    services = [f.name for f in keys(MetricsConfig) if f.name != "enabled"]
    addresses = draw(st.lists(st.tuples(_IP, PORTS), min_size=len(services),
                              max_size=len(services), unique=True))
    absent = draw(st.sets(st.sampled_from(services)))
    chosen = {name: None if name in absent else address
              for name, address in zip(services, addresses, strict=True)}
    return MetricsConfig(enabled=draw(st.booleans()), **chosen)


def registries() -> st.SearchStrategy[RegistryConfig]:
    return st.builds(
        RegistryConfig,
        database=st.sampled_from(["dbname=aura", "host=db1,db2 dbname=aura user=aura"]),
        member=HOSTS,
        password_file=BY_KEY["RegistryConfig.password_file"],
    )


def _same(a: object, b: object) -> bool:
    """Equal, a manifest's mapping compared as plain data."""
    return a == b or (isinstance(a, Mapping) and isinstance(b, Mapping) and dict(a) == dict(b))


@settings(max_examples=150, deadline=None)
@given(schemas(ServerConfig))
def test_every_server_config_reads_back_from_its_dump(config: ServerConfig) -> None:
    assert ServerConfig.from_mapping(yaml.safe_load(config.dump())) == config


@settings(max_examples=150, deadline=None)
@given(schemas(ClientConfig))
def test_every_client_config_reads_back_from_its_dump(config: ClientConfig) -> None:
    loaded = ClientConfig.from_mapping(yaml.safe_load(config.dump()))
    assert all(_same(getattr(loaded, f.name), getattr(config, f.name))
               for f in dataclasses.fields(ClientConfig) if f.compare)


# -- the reader on a schema of its own ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Inner:
    depth: int = key(3, Integer(1, 9), "how deep")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Scratch:
    version: int = key(1, Version(), stated=True)
    name: str = key(check=Text())
    loud: bool = key(False, Boolean())
    inner: Inner = key(Inner(), Nested(Inner, under="level"))
    extra: Inner | None = key(None, Optional(Nested(Inner)))

    def checked(self, at: Place, raw: Mapping[str, Any]) -> Scratch:
        if self.loud and self.name.islower():
            raise at.at("name").error("capitals when loud", raw["name"])
        return self


def test_a_key_is_read_defaulted_and_written_from_its_declaration() -> None:
    scratch = read_section(Scratch, {"version": 1, "name": "a"}, Place("s.yaml"))
    assert scratch == Scratch(name="a")
    assert dump_section(scratch) == [
        "version: 1", "name: a", "loud: false", "inner:", "  level:", "    depth: 3  # how deep",
    ]
    deep = read_section(Scratch, {"version": 1, "name": "a", "inner": {"level": {"depth": 5}},
                                  "extra": {}}, Place("s.yaml"))
    assert deep.inner == Inner(5) and deep.extra == Inner()
    assert read_section(Scratch, yaml.safe_load("\n".join(dump_section(deep))),
                        Place("s.yaml")) == deep


@pytest.mark.parametrize(("raw", "message"), [
    ({"name": "a"}, "s.yaml: version: expected a value (the key is required)"),
    ({"version": 1}, "s.yaml: name: expected a value (the key is required)"),
    ({"version": 1, "name": "a", "nmae": 1},
     "s.yaml: nmae: expected one of the known keys: version, name, loud, inner, extra"),
    ({"version": 1, "name": "a", "inner": {"level": {"depth": 10}}},
     "s.yaml: inner.level.depth: expected an integer from 1 to 9, found 10"),
    ({"version": 1, "name": "a", "inner": {"depth": 1}},
     "s.yaml: inner.depth: expected one of the known keys: level"),
    ({"version": 1, "name": "a", "loud": True},
     "s.yaml: name: expected capitals when loud, found 'a'"),
    ({"version": 1, "name": "a", "extra": 7}, "s.yaml: extra: expected a mapping, found 7"),
])
def test_a_bad_key_is_one_line_naming_file_key_and_expectation(
    raw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        read_section(Scratch, raw, Place("s.yaml"))
    assert str(info.value) == message
