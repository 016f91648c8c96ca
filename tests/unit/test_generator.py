"""aura-generator: socket unit drop-ins from server.yaml, and nothing at all on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from aura_common.config import ServerConfig
from services.generator import main as generator


def write_config(tmp_path: Path, udp: int = 8443, tcp: int = 8443, quic: int = 8444,
                 listen: str = "::") -> Path:
    text = ServerConfig.default("vpn.example").dump()
    # udp's `port: 8443` comes first, then tcp's.
    text = text.replace("    port: 8443", "    port: UDP", 1)
    text = text.replace("    port: 8443", f"    port: {tcp}", 1).replace("UDP", str(udp))
    text = text.replace("    port: 8444", f"    port: {quic}")
    text = text.replace('    listen: "::"', f'    listen: "{listen}"')
    path = tmp_path / "server.yaml"
    path.write_text(text)
    return path


def test_drop_ins_reset_and_set_each_transport_port(tmp_path: Path) -> None:
    config = ServerConfig.load(write_config(tmp_path, udp=9001, tcp=9002, quic=9003))
    files = generator.drop_ins(config)
    assert files["aura-udp.socket.d/50-aura-listen.conf"].endswith(
        "[Socket]\nListenDatagram=\nListenDatagram=9001\n")
    assert files["aura-tcp.socket.d/50-aura-listen.conf"].endswith(
        "[Socket]\nListenStream=\nListenStream=9002\n")
    assert files["aura-quic.socket.d/50-aura-listen.conf"].endswith(
        "[Socket]\nListenDatagram=\nListenDatagram=9003\n")


def test_a_cluster_member_hands_the_router_its_registry_secrets(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    assert not any("aura-router" in name for name in generator.drop_ins(ServerConfig.load(path)))
    with path.open("a") as f:
        f.write('registry:\n  database: "host=db1,db2 dbname=aura user=aura"\n'
                "  member: a\n  password_file: /etc/aura/registry%1.password\n")
    files = generator.drop_ins(ServerConfig.load(path))
    text = files["aura-router.service.d/50-aura-registry.conf"]
    assert text.endswith("[Service]\nLoadCredential=cluster.key:/etc/aura/cluster.key\n"
                         "LoadCredential=registry-password:/etc/aura/registry%%1.password\n")


@pytest.mark.parametrize(("listen", "expected"), [
    ("::", "8443"), ("0.0.0.0", "0.0.0.0:8443"), ("192.0.2.7", "192.0.2.7:8443"),
    ("2001:db8::7", "[2001:db8::7]:8443"),
])
def test_listen_address(listen: str, expected: str) -> None:
    assert generator.listen_address(listen, 8443) == expected


def test_generate_writes_the_drop_ins(tmp_path: Path) -> None:
    out = tmp_path / "generator"
    generator.generate(str(write_config(tmp_path, udp=51820)), str(out))
    text = (out / "aura-udp.socket.d" / "50-aura-listen.conf").read_text()
    assert "ListenDatagram=51820" in text
    assert sorted(p.name for p in out.iterdir()) == [
        "aura-quic.socket.d", "aura-tcp.socket.d", "aura-udp.socket.d"]


def test_missing_config_writes_nothing_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "generator"
    generator.generate(str(tmp_path / "server.yaml"), str(out))
    assert not out.exists()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("text", ["version: [\n", "version: 1\ntransports: {udp: {port: 0}}\n",
                                  "\x00\xff"])
def test_broken_config_writes_nothing_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    config = tmp_path / "server.yaml"
    config.write_text(text, errors="surrogateescape")
    out = tmp_path / "generator"
    generator.generate(str(config), str(out))
    assert not out.exists()
    err = capsys.readouterr().err
    assert err.startswith("aura-generator: ") and str(config) in err, err
    assert err.count("\n") == 1


def test_main_never_fails_the_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(generator, "CONFIG", str(write_config(tmp_path)))
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    assert generator.main([str(blocked), "early", "late"]) == 0
    assert "keep their default ports" in capsys.readouterr().err
