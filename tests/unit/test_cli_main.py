"""`aura`'s global options (--config, --verbose) work before and after the sub-command."""

from __future__ import annotations

from pathlib import Path

import pytest

from aura_common.config import ServerConfig
from services.cli.main import DEFAULT_CONFIG, build_parser, main


@pytest.mark.parametrize("argv", [
    ["--config", "/x/s.yaml", "status"],
    ["status", "--config", "/x/s.yaml"],
    ["status", "--json", "--config=/x/s.yaml"],
    ["server", "init", "--config", "/x/s.yaml", "--public-host", "h"],
    ["server", "--config", "/x/s.yaml", "init", "--public-host", "h"],
    ["server", "run", "--config", "/x/s.yaml"],
    ["provision-client", "alice", "--config", "/x/s.yaml"],
    ["revoke-client", "alice", "--config", "/x/s.yaml"],
    ["list-clients", "--config", "/x/s.yaml"],
    ["sign-bridges", "--from-runtime", "--config", "/x/s.yaml"],
])
def test_config_is_accepted_before_or_after_the_command(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).config == "/x/s.yaml"


@pytest.mark.parametrize("argv", [["status"], ["server", "init", "--public-host", "h"],
                                  ["provision-client", "alice"]])
def test_config_defaults_to_etc_aura(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).config == DEFAULT_CONFIG


@pytest.mark.parametrize("argv", [["-v", "status"], ["status", "-v"], ["status", "--verbose"],
                                  ["client", "up", "c.yaml", "--verbose"],
                                  ["server", "run", "-v"]])
def test_verbose_is_accepted_anywhere(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).verbose is True


def test_verbose_defaults_to_off_below_the_top() -> None:
    assert build_parser().parse_args(["--config", "/x", "status"]).verbose is False


def test_client_commands_keep_their_own_config_argument() -> None:
    parser = build_parser()
    assert parser.parse_args(["client", "up", "c.yaml"]).config == "c.yaml"
    assert parser.parse_args(["--config", "/x/s.yaml", "client", "status", "c.yaml"]).config == (
        "c.yaml")
    with pytest.raises(SystemExit):
        parser.parse_args(["client", "up", "c.yaml", "--config", "d.yaml"])


def test_init_with_config_after_the_command_writes_that_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "etc" / "server.yaml"
    code = main(["server", "init", "--config", str(config), "--public-host", "vpn.example",
                 "--state-dir", str(tmp_path / "state"), "--runtime-dir", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr()
    assert "public_host: vpn.example" in config.read_text()
    assert (tmp_path / "etc" / "server.key").exists()


def test_status_with_config_after_the_command_reads_that_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.yaml"
    assert main(["status", "--config", str(missing)]) == 1
    assert str(missing) in capsys.readouterr().err


def test_init_sets_transport_ports(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    assert main(["server", "init", "--config", str(config), "--public-host", "h",
                 "--state-dir", str(tmp_path / "state"), "--runtime-dir", str(tmp_path / "run"),
                 "--udp-port", "51820", "--quic-port", "4433"]) == 0
    loaded = ServerConfig.load(config)
    assert (loaded.transports.udp.port, loaded.transports.tcp.port,
            loaded.transports.quic.port) == (51820, 8443, 4433)


@pytest.mark.parametrize("port", ["0", "65536", "x"])
def test_init_refuses_a_bad_port(port: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["server", "init", "--public-host", "h", "--udp-port", port])
