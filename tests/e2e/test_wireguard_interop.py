"""Byte compatibility with stock WireGuard: the core against wireguard-go, in namespaces.

Two namespaces joined by a veth. One runs wireguard-go configured with `wg`; the other runs this
module as a small driver: the core plus a plain UDP socket, answering ICMP echo requests that
arrive through the tunnel and pinging wireguard-go's tunnel address itself.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from aura_lab import icmp

if TYPE_CHECKING:
    from aura_lab.netns import Lab

WG_UNDERLAY, CORE_UNDERLAY = "192.168.77.1", "192.168.77.2"
WG_PORT, CORE_PORT = 51820, 51821
WG_TUNNEL, CORE_TUNNEL = "10.9.0.1", "10.9.0.2"


# -- the driver (runs inside the core's namespace) ------------------------------------------
def echo_request(source: str, destination: str, sequence: int) -> bytes:
    return icmp.echo_request(source, destination, 0x4155, sequence, b"aura-interop-payload" * 3)


def run_driver(argv: list[str]) -> None:
    from aura_common.wireguard import Device, HandshakeCompleted, Received, Transmit

    parser = argparse.ArgumentParser()
    parser.add_argument("--private", required=True)
    parser.add_argument("--peer", required=True)
    parser.add_argument("--psk")
    parser.add_argument("--initiate", action="store_true")
    parser.add_argument("--status", type=Path, required=True)
    parser.add_argument("--duration", type=float, default=40)
    args = parser.parse_args(argv)

    status = args.status.open("a", buffering=1)
    device = Device(bytes.fromhex(args.private))
    peer = device.add_peer(
        bytes.fromhex(args.peer),
        preshared_key=bytes.fromhex(args.psk) if args.psk else None,
        endpoint=(WG_UNDERLAY, WG_PORT) if args.initiate else None,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((CORE_UNDERLAY, CORE_PORT))
    status.write("ready\n")
    start = time.monotonic()

    def handle(events: list) -> None:
        for event in events:
            if isinstance(event, Transmit):
                for datagram in event.datagrams:
                    sock.sendto(datagram, event.destination)
            elif isinstance(event, HandshakeCompleted):
                status.write("handshake\n")
                handle(device.send(peer, [echo_request(CORE_TUNNEL, WG_TUNNEL, 1)],
                                   time.monotonic()))
            elif isinstance(event, Received):
                replies = []
                for packet in event.packets:
                    if len(packet) >= 28 and packet[20] == 0 and packet[12:16] == socket.inet_aton(
                        WG_TUNNEL
                    ):
                        status.write("pong\n")
                    reply = icmp.echo_reply(packet)
                    if reply is not None:
                        replies.append(reply)
                if replies:
                    handle(device.send(peer, replies, time.monotonic()))

    if args.initiate:
        handle(device.initiate(peer, time.monotonic()))
    while time.monotonic() - start < args.duration:
        readable, _, _ = select.select([sock], [], [], 0.1)
        if readable:
            datagram, source = sock.recvfrom(65535)
            handle(device.receive([datagram], source, time.monotonic()))
        handle(device.tick(time.monotonic()))


# -- the tests ------------------------------------------------------------------------------
def _wg_available() -> str | None:
    for tool in ("wireguard-go", "wg"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


def _run_interop(lab: Lab, tmp_path: Path, *, core_initiates: bool, with_psk: bool) -> None:
    reason = _wg_available()
    if reason:
        pytest.skip(reason)
    from aura_common.wireguard import generate_private_key, public_key

    ns_wg, ns_core = lab.namespace("wg"), lab.namespace("core")
    lab.link(ns_wg, f"{WG_UNDERLAY}/24", ns_core, f"{CORE_UNDERLAY}/24")
    interface = f"{lab.prefix}wg"
    lab.spawn(ns_wg, ["wireguard-go", interface], log=tmp_path / "wireguard-go.log",
              env={"WG_PROCESS_FOREGROUND": "1"})
    lab.wait_for(lambda: lab.run(ns_wg, f"ip link show {interface}", check=False).returncode == 0,
                 what="wireguard-go interface")

    wg_private, core_private = generate_private_key(), generate_private_key()
    psk = os.urandom(32) if with_psk else None
    (tmp_path / "wg.key").write_text(_b64(wg_private))
    wg_command = [
        "wg", "set", interface, "private-key", str(tmp_path / "wg.key"),
        "listen-port", str(WG_PORT), "peer", _b64(public_key(core_private)),
        "allowed-ips", f"{CORE_TUNNEL}/32",
    ]
    if psk:
        (tmp_path / "psk").write_text(_b64(psk))
        wg_command += ["preshared-key", str(tmp_path / "psk")]
    if not core_initiates:
        wg_command += ["endpoint", f"{CORE_UNDERLAY}:{CORE_PORT}"]
    lab.run(ns_wg, wg_command)
    lab.run(ns_wg, f"ip addr add {WG_TUNNEL}/24 dev {interface}")
    lab.run(ns_wg, f"ip link set {interface} up")

    status = tmp_path / "status"
    status.touch()
    driver = [
        # As a module, as the services run: the code of this tree, aura_lab included.
        sys.executable, "-m", "tests.e2e.test_wireguard_interop", "--private", core_private.hex(),
        "--peer", public_key(wg_private).hex(), "--status", str(status),
    ]
    if psk:
        driver += ["--psk", psk.hex()]
    if core_initiates:
        driver.append("--initiate")
    lab.spawn(ns_core, driver, log=tmp_path / "driver.log")
    lab.wait_for(lambda: "ready" in status.read_text(), what="core driver socket")
    if core_initiates:
        lab.wait_for(lambda: "handshake" in status.read_text(), what="handshake with wireguard-go")

    assert lab.ping(ns_wg, CORE_TUNNEL, count=3), (tmp_path / "driver.log").read_text()
    lab.wait_for(lambda: "pong" in status.read_text(), what="echo reply from wireguard-go")
    assert "latest handshake" in lab.run(ns_wg, f"wg show {interface}").stdout


def _b64(key: bytes) -> str:
    import base64

    return base64.b64encode(key).decode()


@pytest.mark.e2e
@pytest.mark.parametrize("with_psk", [False, True], ids=["no-psk", "psk"])
@pytest.mark.parametrize("core_initiates", [False, True], ids=["responder", "initiator"])
def test_core_with_wireguard_go(
    lab: Lab, tmp_path: Path, core_initiates: bool, with_psk: bool
) -> None:
    _run_interop(lab, tmp_path, core_initiates=core_initiates, with_psk=with_psk)


if __name__ == "__main__":
    run_driver(sys.argv[1:])
