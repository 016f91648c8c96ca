"""Throw-away network namespaces for end-to-end tests.

A `Lab` names every namespace and link it makes with a unique prefix, records them, and
removes them all (and every process it started, by PID) on `close()`, even after a failure.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path


class Lab:
    def __init__(self) -> None:
        self.prefix = "au" + uuid.uuid4().hex[:6]
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.links = 0

    # -- building -------------------------------------------------------------------------
    def namespace(self, role: str) -> str:
        name = f"{self.prefix}-{role}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.namespaces.append(name)
        self.run(name, "ip link set lo up")
        self.run(name, "sysctl -qw net.ipv6.conf.all.disable_ipv6=0")
        return name

    def link(
        self, ns_a: str, addr_a: str, ns_b: str, addr_b: str, *, v6: tuple[str, str] | None = None
    ) -> tuple[str, str]:
        """A veth pair between two namespaces; addresses in CIDR form. Returns the link names."""
        self.links += 1
        a, b = f"{self.prefix}a{self.links}", f"{self.prefix}b{self.links}"
        subprocess.run(
            ["ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", b, "netns", ns_b],
            check=True,
        )
        sides = ((ns_a, a, addr_a, v6 and v6[0]), (ns_b, b, addr_b, v6 and v6[1]))
        for ns, dev, addr, addr6 in sides:
            self.run(ns, f"ip addr add {addr} dev {dev}")
            if addr6:
                self.run(ns, f"ip -6 addr add {addr6} dev {dev} nodad")
            self.run(ns, f"ip link set {dev} up")
        return a, b

    # -- running --------------------------------------------------------------------------
    def run(
        self, ns: str, command: str | Sequence[str], *, check: bool = True, timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        result = subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout,
            env=env,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"`{' '.join(argv)}` in {ns} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def spawn(
        self, ns: str, command: str | Sequence[str], *, log: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )
        self.processes.append(proc)
        return proc

    def stop(
        self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait: float = 10
    ) -> None:
        """Stop `proc` and what it started (its process group), and wait until all are gone:
        a child still exiting holds its ports, which the next start would find busy."""
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if not _group_gone(proc.pid, wait):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            if not _group_gone(proc.pid, 5):
                raise AssertionError(f"process group {proc.pid} outlived SIGKILL")

    def wait_for(
        self, predicate: Callable[[], object], timeout: float = 15, interval: float = 0.1,
        what: str = "",
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")

    def ping(self, ns: str, address: str, count: int = 3, timeout: float = 2) -> bool:
        """True if `count` pings, each waiting up to `timeout` seconds, were all answered."""
        argv = ["ping", "-c", str(count), "-i", "0.2", "-W", str(timeout), address]
        try:
            result = self.run(ns, argv, check=False, timeout=count * (timeout + 0.2) + 5)
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    # -- tearing down ---------------------------------------------------------------------
    def close(self) -> None:
        for proc in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError, PermissionError, AssertionError):
                self.stop(proc)
        for ns in reversed(self.namespaces):
            # What our processes left behind in our namespaces (a daemon that detached itself
            # from a command the test ran) goes too, or it would outlive a failed test.
            listed = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in map(int, listed.stdout.split()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.namespaces.clear()


def _group_gone(pgid: int, timeout: float) -> bool:
    """Whether every process of group `pgid` has exited within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
