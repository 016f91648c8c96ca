"""The transports' systemd units, made from one template each at package build time
(packaging/units.py): each unit names its own transport everywhere, listens on the config's
default port, and is handed exactly the keys `aura server run` hands that service."""

from __future__ import annotations

import configparser
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from aura_common.config import TransportsConfig
from aura_common.roles import Transport
from services.cli.server import SECRETS

TOP = Path(__file__).resolve().parents[2]


def load_units_module() -> ModuleType:
    # By path: `packaging` is also the name of an installed distribution.
    spec = importlib.util.spec_from_file_location("aura_units", TOP / "packaging" / "units.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(text: str) -> configparser.RawConfigParser:
    unit = configparser.RawConfigParser(strict=False, delimiters=("=",), comment_prefixes=("#",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(text)
    return unit


@pytest.fixture(scope="module")
def units() -> dict[str, str]:
    made: dict[str, str] = load_units_module().transport_units(str(TOP / "units"))
    return made


def test_one_service_and_one_socket_per_transport(units: dict[str, str]) -> None:
    assert sorted(units) == sorted(f"aura-{t}.{kind}" for t in Transport
                                   for kind in ("service", "socket"))
    for name, text in units.items():
        body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
        assert "@NAME@" not in body and "@DESCRIPTION@" not in body, name
        assert "@LISTEN@" not in body and "@CREDENTIALS@" not in body, name


@pytest.mark.parametrize("transport", list(Transport))
def test_the_service_runs_its_own_binary_as_its_own_user(units: dict[str, str],
                                                         transport: Transport) -> None:
    text = units[f"aura-{transport}.service"]
    unit, service = parse(text), parse(text)["Service"]
    assert unit["Unit"]["Requires"] == f"aura-{transport}.socket"
    assert unit["Unit"]["After"].split()[0] == f"aura-{transport}.socket"
    assert service["ExecStart"].split()[0] == f"/opt/aura/venv/bin/aura-{transport}"
    assert service["User"] == f"aura-{transport}"
    handed = [line.removeprefix("LoadCredential=").split(":", 1)
              for line in text.splitlines() if line.startswith("LoadCredential=")]
    assert handed == [[key, f"/etc/aura/{key}"] for key in SECRETS[transport]]
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    for other in set(Transport) - {transport}:
        assert f"aura-{other}" not in body


@pytest.mark.parametrize("transport", list(Transport))
def test_the_socket_listens_on_the_config_default_under_the_transport_name(
        units: dict[str, str], transport: Transport) -> None:
    socket = parse(units[f"aura-{transport}.socket"])["Socket"]
    directive = "ListenStream" if transport == Transport.TCP else "ListenDatagram"
    assert socket[directive] == str(TransportsConfig().listener(transport).port)
    assert socket["FileDescriptorName"] == transport.value
    # A stream listener binds again while a copy of the old one may live (tests/system).
    assert socket.get("ReusePort") == ("yes" if transport == Transport.TCP else None)
