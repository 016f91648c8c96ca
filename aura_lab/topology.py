"""A small internet in namespaces: an Aura server, clients in front of it, a host behind it.

    client-N (198.51.10N.2) ── (198.51.10N.1) server (203.0.113.1) ── (203.0.113.2) internet

The server runs `aura server run` with its config in a temp folder; the internet host is only
reachable from clients through the tunnel and the server's NAT.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aura_common.roles import Transport
from aura_lab.netns import Lab

INTERNET_HOST = "203.0.113.2"
SERVER_TUNNEL_V4 = "10.77.0.1"
SERVER_TUNNEL_V6 = "fd77:7777::1"
PUBLIC_HOST = "198.51.100.1"
AURA = [sys.executable, "-m", "services.cli.main"]


@dataclass
class AuraServer:
    lab: Lab
    ns: str
    folder: Path
    internet_ns: str
    uplink: str
    clients: int = 0
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.folder / "server.log"

    @property
    def config(self) -> Path:
        return self.folder / "server.yaml"

    def aura(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.lab.run(self.ns, [*AURA, "--config", str(self.config), *args], check=check)

    def init(self, *, transports: tuple[str, ...] = ("udp",), extra: tuple[str, ...] = (),
             edit: dict[str, Any] | None = None) -> None:
        self.aura("server", "init", "--public-host", PUBLIC_HOST,
                  "--state-dir", str(self.folder / "state"),
                  "--runtime-dir", str(self.folder / "run"), "--uplink", self.uplink, *extra)
        document = yaml.safe_load(self.config.read_text())
        for name in Transport:
            document["transports"][name]["enabled"] = name in transports
        for key, value in (edit or {}).items():
            target = document
            *parents, last = key.split(".")
            for parent in parents:
                target = target[parent]
            target[last] = value
        self.config.write_text(yaml.safe_dump(document))

    def start(self) -> None:
        self.process = self.lab.spawn(
            self.ns, [*AURA, "--verbose", "--config", str(self.config), "server", "run"],
            log=self.log,
        )
        self.lab.wait_for(self._transports_ready, timeout=20, what="server transports up")

    def _transports_ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"aura server run exited:\n{self.log.read_text()}")
        result = self.aura("status", "--json", check=False)
        if result.returncode != 0:
            return False
        status = json.loads(result.stdout)
        document = yaml.safe_load(self.config.read_text())
        wanted = {n for n, t in document["transports"].items() if t["enabled"]}
        return wanted <= {t["name"] for t in status["transports"] if t["connected"]}

    def stop(self) -> None:
        if self.process is not None:
            self.lab.stop(self.process)

    def status(self) -> dict[str, Any]:
        return json.loads(self.aura("status", "--json").stdout)

    def provision(self, name: str, fmt: str, *args: str) -> Path:
        out = self.folder / (f"{name}.conf" if fmt == "wireguard" else f"{name}.yaml")
        self.aura("provision-client", name, "--format", fmt, "-o", str(out), *args)
        if fmt == "aura":  # a private control socket: other tests may run a client of that name
            document = yaml.safe_load(out.read_text())
            document["runtime_dir"] = str(self.folder / "client-run")
            out.write_text(yaml.safe_dump(document, sort_keys=False))
        return out

    def add_client_namespace(self) -> str:
        """A new client host with its own link to the server (198.51.10N.0/24).

        It has a route to the server's public address only: the tunnel addresses and the
        internet host are reachable through the tunnel or not at all.
        """
        self.clients += 1
        n = self.clients - 1
        ns = self.lab.namespace(f"c{n}")
        self.lab.link(ns, f"198.51.{100 + n}.2/24", self.ns, f"198.51.{100 + n}.1/24")
        if n:
            self.lab.run(ns, f"ip route add {PUBLIC_HOST}/32 via 198.51.{100 + n}.1")
        return ns

    def server_address_for(self, client_ns_index: int) -> str:
        return f"198.51.{100 + client_ns_index}.1"

    def service_pid(self, name: str) -> int:
        """The PID of aura-NAME under the `aura server run` we started (one of its children)."""
        assert self.process is not None
        pid = self.process.pid
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            if f"services.{name}" in Path(f"/proc/{child}/cmdline").read_bytes().decode():
                return int(child)
        raise AssertionError(f"aura-{name} is not running")


def build(lab: Lab, folder: Path) -> AuraServer:
    server_ns = lab.namespace("srv")
    internet_ns = lab.namespace("net")
    uplink, _ = lab.link(server_ns, "203.0.113.1/24", internet_ns, "203.0.113.2/24")
    return AuraServer(lab, server_ns, folder, internet_ns, uplink)


@contextlib.contextmanager
def running_server(transports: tuple[str, ...] = ("udp",)) -> Iterator[AuraServer]:
    """An Aura server started in a lab of its own (`server.lab`) with a scratch folder
    (`server.folder`), all torn down on leaving: for benches, which make no pytest lab."""
    lab = Lab()
    try:
        with tempfile.TemporaryDirectory(prefix="aura-bench-") as scratch:
            server = build(lab, Path(scratch))
            server.init(transports=transports)
            server.start()
            yield server
    finally:
        lab.close()


def stock_wireguard_up(lab: Lab, ns: str, conf: Path) -> str:
    """Bring up Debian's wireguard-go from a wg-quick file, as `wg-quick up` would.

    Returns the interface name: unique per lab and client, because wireguard-go's control
    socket lives in /var/run/wireguard, which network namespaces do not separate.
    """
    ifname = f"wg{lab.prefix[2:8]}{conf.stem[:7]}"
    text = conf.read_text()
    interface: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = (part.strip() for part in line.split("=", 1))
            interface.setdefault(key, value)
    stripped = lab.run(ns, ["wg-quick", "strip", str(conf)], check=False)
    if stripped.returncode != 0:  # wg-quick wants the file named after the interface
        copy = conf.parent / f"{ifname}.conf"
        copy.write_text(text)
        stripped = lab.run(ns, ["wg-quick", "strip", str(copy)])
    plain = conf.parent / f"{conf.stem}.wg"
    plain.write_text(stripped.stdout)
    lab.spawn(ns, ["wireguard-go", "-f", ifname], env={"WG_PROCESS_FOREGROUND": "1"},
              log=conf.parent / f"wireguard-go-{conf.stem}.log")
    lab.wait_for(lambda: lab.run(ns, f"ip link show {ifname}", check=False).returncode == 0,
                 what=f"{ifname} created by wireguard-go")
    lab.run(ns, ["wg", "setconf", ifname, str(plain)])
    for address in interface["Address"].split(","):
        lab.run(ns, ["ip", "address", "add", address.strip(), "dev", ifname])
    lab.run(ns, ["ip", "link", "set", ifname, "mtu", interface.get("MTU", "1420"), "up"])
    for cidr in interface["AllowedIPs"].split(","):
        cidr = cidr.strip()
        if cidr in ("0.0.0.0/0", "::/0"):  # keep the underlay route: split it like wg-quick does
            halves = ("0.0.0.0/1", "128.0.0.0/1") if ":" not in cidr else ("::/1", "8000::/1")
            for half in halves:
                lab.run(ns, ["ip", "route", "add", half, "dev", ifname])
        else:
            lab.run(ns, ["ip", "route", "add", cidr, "dev", ifname])
    return ifname


def client_config(server: AuraServer, tmp_path: Path, name: str = "alice", **edits: Any) -> Path:
    """Provision an Aura client config for `name`, with its own runtime folder and `edits`."""
    path = server.provision(name, "aura")
    document = yaml.safe_load(path.read_text())
    document["runtime_dir"] = str(tmp_path / f"{name}-run")
    document.update(edits)
    path.write_text(yaml.safe_dump(document))
    return path


def block(lab: Lab, ns: str, folder: Path, rule: str) -> None:
    """Drop outgoing packets matching the nftables `rule` in `ns` (the censor)."""
    rules = folder / f"censor-{ns}.nft"
    rules.write_text("table inet censor {\n  chain out {\n"
                     "    type filter hook output priority 0; policy accept;\n"
                     f"    {rule} drop\n  }}\n}}\n")
    lab.run(ns, ["nft", "-f", str(rules)])


def wait_transport(lab: Lab, ns: str, config: Path, transport: str, timeout: float = 60) -> None:
    lab.wait_for(lambda: client_is_up(lab, ns, config)
                 and client_status(lab, ns, config)["transport"] == transport,
                 timeout=timeout, what=f"client up over {transport}")


def assert_traffic(lab: Lab, ns: str, server: AuraServer) -> tuple[float, float]:
    """Pings to the server and the internet host, and iperf3 both ways over the tunnel."""
    assert lab.ping(ns, SERVER_TUNNEL_V4)
    assert lab.ping(ns, INTERNET_HOST)
    up = iperf3(lab, ns, server.internet_ns, INTERNET_HOST)
    down = iperf3(lab, ns, server.internet_ns, INTERNET_HOST, reverse=True)
    assert up > 1e6 and down > 1e6, (up, down)
    return up, down


def client_with_scratch_resolv_conf(lab: Lab, ns: str, config: Path, resolv_conf: Path,
                                    log: Path) -> subprocess.Popen[bytes]:
    """`aura client up --foreground` as root, /etc/resolv.conf a scratch file in its own
    mount namespace (the host's resolver is never at stake)."""
    script = " && ".join([
        "mount --make-rprivate /",
        "{ [ ! -d /run/systemd/resolve ] || mount -t tmpfs tmpfs /run/systemd/resolve; }",
        f"mount --bind {shlex.quote(str(resolv_conf))} /etc/resolv.conf",
        f"exec env PATH={shlex.quote(os.path.dirname(sys.executable))}:/usr/bin:/bin "
        + shlex.join([*AURA, "client", "up", "--foreground", str(config)]),
    ])  # fmt: skip
    return lab.spawn(ns, ["unshare", "-m", "sh", "-c", script], log=log)


def client_status(lab: Lab, ns: str, config: Path) -> dict[str, Any]:
    """`aura client status --json` of the Aura client running from `config`."""
    result = lab.run(ns, [*AURA, "client", "status", str(config), "--json"])
    return json.loads(result.stdout)


def client_is_up(lab: Lab, ns: str, config: Path) -> bool:
    result = lab.run(ns, [*AURA, "client", "status", str(config), "--json"], check=False)
    return result.returncode == 0 and json.loads(result.stdout)["state"] == "up"


def aura_client_up(lab: Lab, server: AuraServer, name: str, log: Path, timeout: float
                   ) -> tuple[str, Path]:
    """A new peer `name` and the Aura client with its config (logging to `log`) in a new
    namespace, once it is up: the namespace and the config."""
    ns = server.add_client_namespace()
    config = server.provision(name, "aura")
    lab.spawn(ns, [*AURA, "client", "up", "--foreground", str(config)], log=log)
    lab.wait_for(lambda: client_is_up(lab, ns, config), timeout=timeout,
                 what=f"{name}'s client up")
    return ns, config


def iperf3(lab: Lab, client_ns: str, server_ns: str, server_ip: str, *, reverse: bool = False,
           seconds: int = 3) -> float:
    """Run a bounded iperf3 TCP test and return the received throughput in bits/s."""
    port = 5201 + int(time.monotonic_ns() % 1000)
    server = lab.spawn(server_ns, ["iperf3", "-s", "-1", "-p", str(port)])
    try:
        time.sleep(0.3)
        args = ["iperf3", "-c", server_ip, "-p", str(port), "-t", str(seconds), "--json",
                "--connect-timeout", "5000"]
        if reverse:
            args.append("-R")
        result = lab.run(client_ns, args, timeout=seconds + 30)
        report = json.loads(result.stdout)
        if "error" in report:
            raise AssertionError(f"iperf3 to {server_ip}: {report['error']}")
        return float(report["end"]["sum_received"]["bits_per_second"])
    finally:
        lab.stop(server)
