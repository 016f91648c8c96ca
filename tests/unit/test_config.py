"""Server and client config loading: defaults, round trips, and errors that name file and key."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_common.config import (
    ClientConfig,
    ClientInterface,
    ClientServer,
    ClientTransports,
    ClientTunnel,
    FallbackHandler,
    ServerConfig,
    is_host,
    parse_host_port,
)
from aura_common.config.values import host_problem
from aura_common.errors import ConfigError
from aura_common.roles import Transport

REPO = str(Path(__file__).resolve().parents[2])

KEY = base64.b64encode(bytes(range(32))).decode()

SERVER_EXAMPLE = """\
version: 1
public_host: vpn.example.org
state_dir: /var/lib/aura
runtime_dir: /run/aura
key_dir: /etc/aura
admin_group: aura-admin
tun: {name: aura0, mtu: 1420}
network:
  ipv4: 10.77.0.0/24
  ipv6: fd77:7777::/64
  strategy: static
  dns: []
  uplink: null
transports:
  udp:  {enabled: true, listen: "::", port: 8443}
  tcp:  {enabled: true, listen: "::", port: 8443, fallback: [{type: reject}],
         handshake_timeout: 10, idle_timeout: 60, max_pending: 256}
  quic: {enabled: true, listen: "::", port: 8444, idle_timeout: 30, max_connections: 1024}
"""

CLIENT_EXAMPLE = f"""\
version: 1
name: alice
interface: {{private_key: "{KEY}", addresses: [10.77.0.2/32, "fd77:7777::2/128"],
             mtu: 1420, dns: []}}
server: {{public_key: "{KEY}", preshared_key: null, host: vpn.example.org,
          ca_public_key: "{KEY}"}}
transports: {{order: [udp, quic, tcp], udp: 8443, quic: 8444, tcp: 8443,
              server_name: vpn.example.org}}
tunnel: {{split: {{vpn: [{{cidr: 0.0.0.0/0}}, {{cidr: "::/0"}}], direct: []}}}}
manifest: null
runtime_dir: /run/aura-client
state_file: null
keepalive: 25
"""


def write(tmp_path: Path, text: str, name: str = "server.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def server_raw() -> dict[str, Any]:
    return yaml.safe_load(SERVER_EXAMPLE)


def client_raw() -> dict[str, Any]:
    return yaml.safe_load(CLIENT_EXAMPLE)


def test_server_example_loads_with_derived_paths(tmp_path: Path) -> None:
    config = ServerConfig.load(write(tmp_path, SERVER_EXAMPLE))
    assert config.public_host == "vpn.example.org"
    assert str(config.server_address_v4) == "10.77.0.1"
    assert str(config.server_address_v6) == "fd77:7777::1"
    assert config.router_socket == "/run/aura/router.sock"
    assert config.signer_socket == "/run/aura/signer.sock"
    assert config.peers_file == "/var/lib/aura/router/peers.json"
    assert config.leases_file == "/var/lib/aura/router/leases.json"
    assert config.transports_dir == "/var/lib/aura/transports"
    assert config.manifest_serial_file == "/var/lib/aura/signer/manifest.serial"
    assert config.server_key_file == "/etc/aura/server.key"
    assert config.ca_key_file == "/etc/aura/ca.key"
    assert config.tls_cert_file == "/etc/aura/tls.crt"
    assert config.transports.tcp.fallback == (FallbackHandler("reject"),)
    assert config.transports.quic.port == 8444
    assert config == ServerConfig.default("vpn.example.org")


def test_minimal_server_config_takes_defaults(tmp_path: Path) -> None:
    config = ServerConfig.load(write(tmp_path, "version: 1\npublic_host: 192.0.2.1\n"))
    assert config.tun.name == "aura0"
    assert config.network.strategy == "static"
    assert config.transports.udp.listen == "::"


def test_default_dump_round_trips(tmp_path: Path) -> None:
    config = ServerConfig.default(
        "vpn.example.org",
        state_dir=str(tmp_path / "state"),
        runtime_dir=str(tmp_path / "run"),
        network="10.9.0.0/16",
        network_v6=None,
        tun="test0",
        uplink="eth0",
    )
    text = config.dump()
    assert "# " in text  # commented for the operator
    loaded = ServerConfig.load(write(tmp_path, text))
    assert loaded == config
    assert loaded.server_address_v6 is None


def test_proxy_fallback_round_trips(tmp_path: Path) -> None:
    raw = server_raw()
    raw["transports"]["tcp"]["fallback"] = [
        {"type": "proxy", "upstream": "[::1]:8080"},
        {"type": "proxy", "upstream": "decoy.example:443"},
        {"type": "reject"},
    ]
    config = ServerConfig.from_mapping(raw)
    assert config.transports.tcp.fallback[0] == FallbackHandler("proxy", ("::1", 8080))
    assert ServerConfig.load(write(tmp_path, config.dump())) == config


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        ServerConfig.load(tmp_path / "nope.yaml")


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\npublic_host: [unclosed\n")
    with pytest.raises(ConfigError, match=r"server.yaml: expected valid YAML \(line \d\)"):
        ServerConfig.load(path)



@pytest.mark.parametrize(
    "text", ["[" * 5000, "- " * 5000 + "x", "{a: " * 3000 + "1"], ids=["flow", "block", "map"]
)
def test_deeply_nested_yaml_is_a_config_error_not_a_crash(tmp_path: Path, text: str) -> None:
    # One short line naming the file, never a RecursionError (from the parser or the message).
    with pytest.raises(ConfigError, match=r"server\.yaml: .*expected") as info:
        ServerConfig.load(write(tmp_path, text))
    assert len(str(info.value)) < 400
    with pytest.raises(ConfigError, match=r"client\.yaml: .*expected"):
        ClientConfig.load(write(tmp_path, text, "client.yaml"))


BAD_SERVER_VALUES = [
    (("version",), 2, "version", "1"),
    (("public_host",), "bad host!", "public_host", "host name or IP"),
    (("state_dir",), "relative/dir", "state_dir", "absolute path"),
    (("tun", "name"), "much-too-long-name", "tun.name", "interface name"),
    (("tun", "name"), "a/b", "tun.name", "interface name"),
    (("tun", "mtu"), 1000, "tun.mtu", "from 1280 to 9000"),
    (("tun", "mtu"), True, "tun.mtu", "integer"),
    (("network", "ipv4"), "10.77.0.1/24", "network.ipv4", "IPv4 network"),
    (("network", "ipv4"), "10.77.0.0/31", "network.ipv4", "/30 or larger"),
    (("network", "ipv4"), 167772160, "network.ipv4", "IPv4 network"),
    (("network", "ipv6"), "fd77::/121", "network.ipv6", "/120 or larger"),
    (("network", "ipv6"), "10.0.0.0/8", "network.ipv6", "IPv6 network"),
    (("network", "strategy"), "random", "network.strategy", "static | dynamic"),
    (("network", "dns"), ["1.1.1.1", "dns.example"], "network.dns[1]", "IP address"),
    (("network", "dns"), [16843009], "network.dns[0]", "IP address"),
    (("transports", "udp", "port"), 0, "transports.udp.port", "from 1 to 65535"),
    (("transports", "quic", "port"), 70000, "transports.quic.port", "from 1 to 65535"),
    (("transports", "udp", "enabled"), "yes please", "transports.udp.enabled", "true or false"),
    (("transports", "tcp", "listen"), "anywhere", "transports.tcp.listen", "IP address"),
    (("transports", "tcp", "idle_timeout"), -1, "transports.tcp.idle_timeout", "positive"),
    (("transports", "tcp", "fallback"), [{"type": "dance"}], "transports.tcp.fallback[0].type",
     "reject | proxy"),
    (("transports", "tcp", "fallback"), [{"type": "proxy"}],
     "transports.tcp.fallback[0].upstream", "required"),
    (("transports", "tcp", "fallback"), [{"type": "proxy", "upstream": "nohost"}],
     "transports.tcp.fallback[0].upstream", "HOST:PORT"),
    (("transports", "tcp"), "on", "transports.tcp", "a mapping"),
]  # fmt: skip


@pytest.mark.parametrize(("keys", "value", "dotted", "expected"), BAD_SERVER_VALUES)
def test_bad_server_values_name_file_key_and_expectation(
    tmp_path: Path, keys: tuple[str, ...], value: object, dotted: str, expected: str
) -> None:
    raw = server_raw()
    target = raw
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    path = write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        ServerConfig.load(path)
    error = info.value
    assert error.path == str(path)
    assert error.key == dotted
    assert expected in str(error)
    assert str(error).startswith(f"{path}: {dotted}: expected")


def test_unknown_key_lists_the_known_ones(tmp_path: Path) -> None:
    raw = server_raw()
    raw["transports"]["udp"]["prot"] = 1
    with pytest.raises(ConfigError) as info:
        ServerConfig.load(write(tmp_path, yaml.safe_dump(raw)))
    assert info.value.key == "transports.udp.prot"
    assert "enabled, listen, port" in str(info.value)


def test_missing_public_host_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="public_host: expected a value"):
        ServerConfig.load(write(tmp_path, "version: 1\n"))


def test_ipv6_network_must_cover_ipv4_host_indexes() -> None:
    raw = server_raw()
    raw["network"]["ipv4"] = "10.0.0.0/16"
    raw["network"]["ipv6"] = "fd00::/120"
    with pytest.raises(ConfigError, match=r"network\.ipv6: expected a network at least as large"):
        ServerConfig.from_mapping(raw)


def test_default_validates_its_arguments() -> None:
    with pytest.raises(ConfigError, match=r"tun\.name"):
        ServerConfig.default("vpn.example.org", tun="way-too-long-name0")
    with pytest.raises(ConfigError, match=r"network\.ipv4"):
        ServerConfig.default("vpn.example.org", network="300.0.0.0/24")


def test_parse_host_port() -> None:
    assert parse_host_port("example.org:443") == ("example.org", 443)
    assert parse_host_port("[2001:db8::1]:80") == ("2001:db8::1", 80)
    for bad in ("example.org", "example.org:0", "2001:db8::1:80", "[zz]:1", ":80", "a:b"):
        with pytest.raises(ValueError):
            parse_host_port(bad)


def test_ports_are_ascii_digits_everywhere() -> None:
    # int() reads other scripts' digits too; a port in a file or a manifest is ASCII.
    for bad in ("example.org:\u0663", "[::1]:8\u0660", "example.org:\uff18\uff10"):
        with pytest.raises(ValueError):
            parse_host_port(bad)


def test_a_final_dot_is_a_config_host_but_not_a_manifest_host() -> None:
    assert is_host("vpn.example.org.") and is_host("vpn.example.org")
    assert host_problem("vpn.example.org") is None and host_problem("192.0.2.1") is None
    assert host_problem("vpn.example.org.") == (
        "a DNS name (letters, digits, hyphens, dot-separated labels) or an IP address")
    assert not is_host(".") and not is_host("") and not is_host("::1.")


# -- client config ------------------------------------------------------------------------


def test_client_example_loads(tmp_path: Path) -> None:
    path = write(tmp_path, CLIENT_EXAMPLE, "alice.yaml")
    config = ClientConfig.load(path)
    assert config.name == "alice"
    assert config.interface.private_key == bytes(range(32))
    assert config.interface.addresses[1] == ipaddress.ip_interface("fd77:7777::2/128")
    assert config.server.preshared_key is None
    assert config.transports.order == ("udp", "quic", "tcp")
    assert config.tunnel.vpn == (
        ipaddress.ip_network("0.0.0.0/0"),
        ipaddress.ip_network("::/0"),
    )
    assert config.control_socket == "/run/aura-client/alice.sock"
    assert config.manifest_state_file == str(tmp_path / "alice.state.json")
    assert config.server_name == "vpn.example.org"


def test_client_dump_round_trips_with_manifest(tmp_path: Path) -> None:
    config = ClientConfig(
        name="bob.laptop",
        interface=ClientInterface(
            private_key=os.urandom(32),
            addresses=(ipaddress.ip_interface("10.77.0.9/32"),),
            dns=("10.77.0.1",),
        ),
        server=ClientServer(
            public_key=os.urandom(32),
            host="203.0.113.5",
            ca_public_key=os.urandom(32),
            preshared_key=os.urandom(32),
        ),
        transports=ClientTransports(order=("tcp", "udp"), tcp=443),
        tunnel=ClientTunnel(
            vpn=(ipaddress.ip_network("10.0.0.0/8"),),
            direct=(ipaddress.ip_network("192.168.0.0/16"),),
        ),
        manifest={"version": 2, "serial": 7, "endpoints": [{"host": "a.example", "udp": 1}],
                  "signature": "c2ln"},
        state_file="/var/lib/aura-client/bob.json",
        keepalive=0,
    )  # fmt: skip
    text = config.dump()
    assert "Keep it secret" in text
    assert ClientConfig.load(write(tmp_path, text, "bob.yaml")) == config


BAD_CLIENT_VALUES = [
    (("name",), "Alice!", "name", "[a-z0-9]"),
    (("interface", "private_key"), "c2hvcnQ=", "interface.private_key", "32 bytes"),
    (("interface", "private_key"), "not base64 at all", "interface.private_key", "base64"),
    (("interface", "addresses"), ["10.77.0.300/32"], "interface.addresses[0]", "address"),
    (("server", "preshared_key"), 12, "server.preshared_key", "base64"),
    (("server", "host"), "", "server.host", "non-empty"),
    (("transports", "order"), ["udp", "udp"], "transports.order", "distinct"),
    (("transports", "order"), ["carrier-pigeon"], "transports.order", "distinct"),
    (("tunnel", "split", "vpn"), [{"cidr": "10.0.0.1/8"}], "tunnel.split.vpn[0].cidr",
     "network"),
    (("tunnel", "split", "direct"), [{"net": "10.0.0.0/8"}], "tunnel.split.direct[0].net",
     "known keys: cidr"),
    (("manifest",), [1, 2], "manifest", "mapping"),
    (("runtime_dir",), "run", "runtime_dir", "absolute"),
    (("keepalive",), -5, "keepalive", "0 to 65535"),
]  # fmt: skip


@pytest.mark.parametrize(("keys", "value", "dotted", "expected"), BAD_CLIENT_VALUES)
def test_bad_client_values_name_file_key_and_expectation(
    tmp_path: Path, keys: tuple[str, ...], value: object, dotted: str, expected: str
) -> None:
    raw = client_raw()
    target = raw
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    path = write(tmp_path, yaml.safe_dump(raw), "client.yaml")
    with pytest.raises(ConfigError) as info:
        ClientConfig.load(path)
    assert info.value.key == dotted
    assert str(info.value).startswith(f"{path}: {dotted}: expected")
    assert expected in str(info.value)


# -- garbage never escapes as anything but ConfigError ----------------------------------------

yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


def _mutate(raw: dict[str, Any], path: list[str], value: object) -> dict[str, Any]:
    target: Any = raw
    for key in path[:-1]:
        if not isinstance(target, dict) or not isinstance(target.get(key), dict):
            return raw
        target = target[key]
    if isinstance(target, dict):
        target[path[-1]] = value
    return raw


SERVER_KEY_PATHS = [
    ["version"], ["public_host"], ["state_dir"], ["tun"], ["tun", "mtu"], ["tun", "name"],
    ["network"], ["network", "ipv4"], ["network", "ipv6"], ["network", "dns"],
    ["network", "uplink"], ["transports"], ["transports", "udp"], ["transports", "tcp", "port"],
    ["transports", "tcp", "fallback"], ["transports", "quic", "idle_timeout"], ["extra"],
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SERVER_KEY_PATHS), yaml_values)
def test_server_garbage_values_raise_only_config_error(path: list[str], value: object) -> None:
    raw = _mutate(server_raw(), path, value)
    with contextlib.suppress(ConfigError):
        ServerConfig.from_mapping(raw)


CLIENT_KEY_PATHS = [
    ["name"], ["interface"], ["interface", "private_key"], ["interface", "addresses"],
    ["interface", "dns"], ["server", "public_key"], ["server", "preshared_key"],
    ["server", "host"], ["transports", "order"], ["transports", "udp"], ["tunnel"],
    ["tunnel", "split"], ["manifest"], ["state_file"], ["keepalive"],
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CLIENT_KEY_PATHS), yaml_values)
def test_client_garbage_values_raise_only_config_error(path: list[str], value: object) -> None:
    raw = _mutate(client_raw(), path, value)
    with contextlib.suppress(ConfigError):
        ClientConfig.from_mapping(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_files_raise_only_config_error(tmp_path_factory: Any, data: bytes) -> None:
    path = tmp_path_factory.mktemp("garbage") / "server.yaml"
    path.write_bytes(data)
    for loader in (ServerConfig.load, ClientConfig.load):
        with pytest.raises(ConfigError):
            loader(path)


def test_each_transport_has_its_section_and_its_client_port() -> None:
    server = ServerConfig.from_mapping({"version": 1, "public_host": "vpn.example",
                                        "transports": {"udp": {"port": 1}, "tcp": {"port": 2},
                                                       "quic": {"port": 3}}})
    assert [server.transports.listener(t).port for t in Transport] == [1, 2, 3]
    moved = server.transports.with_port(Transport.TCP, 9)
    assert [moved.listener(t).port for t in Transport] == [1, 9, 3]
    assert moved.tcp == replace(server.transports.tcp, port=9)  # the rest of the section kept
    client = ClientTransports(udp=1, tcp=2, quic=3)
    assert [client.port(t) for t in Transport] == [1, 2, 3]


def test_a_fifo_device_or_huge_file_in_place_of_a_config_is_refused_at_once(
    tmp_path: Path,
) -> None:
    """Root reads a client config its user owns: what that user puts there is refused with
    one error, without waiting on a FIFO or reading without end (the child is limited to
    1 GiB and 30 s, so a reader that falls for it fails instead of taking the machine)."""
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from aura_common.config import ClientConfig\n"
        "from aura_common.errors import ConfigError\n"
        "try:\n"
        "    ClientConfig.load(sys.argv[1])\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
    )
    os.mkfifo(tmp_path / "fifo.yaml")
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    (tmp_path / "huge.yaml").write_bytes(b"#" * ((1 << 20) + 1))
    for name, why in (("fifo.yaml", "a regular file"), ("zero.yaml", "a regular file"),
                      ("huge.yaml", "a config file of at most 1048576 bytes")):
        child = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / name)], capture_output=True,
            text=True, timeout=30, env={**os.environ, "PYTHONPATH": REPO},
        )  # fmt: skip
        assert child.stdout.startswith(f"{tmp_path / name}: expected {why}"), child.stderr
