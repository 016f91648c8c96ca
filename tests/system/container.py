"""A booted Debian bookworm with a real systemd, for package and unit tests.

The root filesystem is built once with debootstrap and cached under
/var/cache/aura-test/rootfs-bookworm-<hash of the package list>. Each test run boots a
copy-on-write overlay of it with `systemd-nspawn --boot` inside a network namespace the test
made, so the test's veth links reach the container. The host's PID 1 need not be systemd:
nspawn runs unregistered (`--register=no --keep-unit`) and commands enter the container
with `nsenter` on its PID 1.

A run killed before it could stop its container leaves it booted and its overlay mounted:
each run folder names the test process that owns it, nspawn and the container's PID 1
(`aura_lab.leftovers`), and the next container started reclaims those of processes that are
gone (kills what still runs, unmounts, removes the folder).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from aura_lab import leftovers

SUITE = "bookworm"
MIRROR = os.environ.get("AURA_TEST_MIRROR", "http://deb.debian.org/debian")
CACHE_DIR = Path("/var/cache/aura-test")
RUNS_DIR = Path("/var/tmp/aura-test")

# Everything the tests and the package's dependencies need, so that installing the .deb
# later works offline.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "nftables",
    "python3",
    "python3-venv",
    "iputils-ping",
    "procps",
)

CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Markers in a run folder besides its owner's: the nspawn process and the container's PID 1.
NSPAWN, LEADER = ".nspawn", ".leader"


class ContainerError(RuntimeError):
    pass


def _rootfs_key() -> str:
    material = "\n".join([SUITE, "minbase", *sorted(PACKAGES)]).encode()
    return hashlib.sha256(material).hexdigest()[:12]


def unavailable() -> str | None:
    """Why containers cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("systemd-nspawn", "debootstrap", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


def rootfs(timeout: float = 900) -> Path:
    """The cached bookworm root filesystem, built on first use (a lock serialises builders)."""
    target = CACHE_DIR / f"rootfs-{SUITE}-{_rootfs_key()}"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "etc" / "os-release").exists():
            return target
        building = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=CACHE_DIR))
        try:
            subprocess.run(
                [
                    "debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                    SUITE, str(building), MIRROR,
                ],
                check=True, capture_output=True, timeout=timeout,
            )
            _prepare(building)
        except subprocess.CalledProcessError as error:
            shutil.rmtree(building, ignore_errors=True)
            raise ContainerError(
                f"debootstrap failed ({error.returncode}):\n{error.stdout.decode()[-3000:]}"
                f"\n{error.stderr.decode()[-3000:]}"
            ) from error
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        building.rename(target)
        return target


def _prepare(root: Path) -> None:
    """Make the image boot quickly and quietly in a container."""
    (root / "etc" / "hostname").write_text("aura-test\n")
    # apt must not try the network when installing a local .deb whose dependencies are here.
    (root / "etc" / "apt" / "apt.conf.d" / "99offline").write_text(
        'Acquire::Languages "none";\nAPT::Install-Recommends "false";\n'
    )
    # Units that only slow down or fail in a container without hardware.
    for unit in (
        "systemd-timesyncd.service", "apt-daily.timer", "apt-daily-upgrade.timer",
        "dpkg-db-backup.timer", "e2scrub_all.timer", "fstrim.timer",
        "systemd-networkd-wait-online.service", "getty@tty1.service",
    ):
        (root / "etc" / "systemd" / "system" / unit).unlink(missing_ok=True)
        os.symlink("/dev/null", root / "etc" / "systemd" / "system" / unit)
    machine_id = root / "etc" / "machine-id"
    machine_id.write_text(uuid.uuid4().hex + "\n")


class Container:
    """One booted container; use `boot()` as a context manager so it is always torn down."""

    def __init__(self, netns: str, *, name: str | None = None,
                 read_only_binds: Sequence[str] = ()) -> None:
        self.netns = netns
        self.read_only_binds = tuple(read_only_binds)
        self.name = name or f"aura-{uuid.uuid4().hex[:8]}"
        self.run_dir = RUNS_DIR / self.name
        self.root = self.run_dir / "root"
        self.log_path = self.run_dir / "console.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None

    # -- life cycle -----------------------------------------------------------------------
    def start(self, boot_timeout: float = 90) -> None:
        lower = rootfs()
        reclaim_abandoned()
        self.run_dir.mkdir(parents=True)
        leftovers.mark(self.run_dir)
        for sub in ("upper", "work", "root"):
            (self.run_dir / sub).mkdir()
        subprocess.run(
            [
                "mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir={lower},upperdir={self.run_dir / 'upper'},"
                f"workdir={self.run_dir / 'work'}",
                str(self.root),
            ],
            check=True, capture_output=True, timeout=30,
        )
        log = open(self.log_path, "wb")  # noqa: SIM115 - kept for the life of the process
        self.process = subprocess.Popen(
            [
                "systemd-nspawn", "--quiet", "--boot", f"--machine={self.name}",
                f"--directory={self.root}", "--register=no", "--keep-unit",
                "--link-journal=no", "--console=pipe", "--resolv-conf=off", "--timezone=off",
                f"--network-namespace-path=/run/netns/{self.netns}",
                "--capability=CAP_NET_ADMIN",
                *(f"--bind-ro={path}" for path in self.read_only_binds),
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
            # /proc/sys/net writable: the namespace is the test's own, and the router (or the
            # demo run inside) enables forwarding there.
            env={"PATH": os.environ.get("PATH", CONTAINER_PATH),
                 "SYSTEMD_NSPAWN_TMPFS_TMP": "1", "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"},
        )
        log.close()
        leftovers.mark(self.run_dir, NSPAWN, self.process.pid)
        self.leader = self._wait_for_leader(timeout=30)
        leftovers.mark(self.run_dir, LEADER, self.leader)
        state = self._wait_until_running(boot_timeout)
        if state not in ("running", "degraded"):
            raise ContainerError(f"container did not boot (state {state!r}):\n{self.console()}")
        # The container's own TUN node, mode 0666 as udev makes it on Debian, whatever the
        # host's node allows (binding the host's would also share a chmod with the host).
        self.run("mountpoint -q /dev/net/tun && umount /dev/net/tun; mkdir -p /dev/net && "
                 "rm -f /dev/net/tun && mknod -m 0666 /dev/net/tun c 10 200")

    def _wait_for_leader(self, timeout: float) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        children_file = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited early:\n{self.console()}")
            try:
                children = children_file.read_text().split()
            except FileNotFoundError:
                children = []
            for child in children:
                # The container's PID 1 runs in its own PID namespace.
                if os.readlink(f"/proc/{child}/ns/pid") != os.readlink("/proc/self/ns/pid"):
                    return int(child)
            time.sleep(0.1)
        raise ContainerError(f"no container init after {timeout}s:\n{self.console()}")

    def _wait_until_running(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            result = self.run(
                ["systemctl", "is-system-running", "--wait"], check=False,
                timeout=max(1.0, deadline - time.monotonic()),
            )
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.5)
        return state

    def stop(self, timeout: float = 30) -> None:
        if self.process is not None and self.process.poll() is None:
            if self.leader is not None:
                # SIGRTMIN+4 asks systemd for a clean poweroff.
                with suppress(ProcessLookupError):
                    os.kill(self.leader, signal.SIGRTMIN + 4)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None
        self.leader = None
        if self.root.is_mount():
            subprocess.run(["umount", "--lazy", str(self.root)], capture_output=True, timeout=30)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def console(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    # -- using it -------------------------------------------------------------------------
    def run(
        self, command: Sequence[str] | str, *, check: bool = True, timeout: float = 60,
        input: str | None = None, env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (all its namespaces, a clean environment plus
        `env`)."""
        if self.leader is None:
            raise ContainerError("container is not running")
        argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
        result = subprocess.run(
            [
                "nsenter", f"--target={self.leader}", "--all", "--root", "--wd",
                "env", "-i", f"PATH={CONTAINER_PATH}", "LANG=C.UTF-8", "HOME=/root",
                "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0",
                *(f"{key}={value}" for key, value in (env or {}).items()), *argv,
            ],
            capture_output=True, text=True, timeout=timeout, input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"`{' '.join(argv)}` in the container exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def copy_in(self, source: Path, destination: str) -> None:
        target = self.root / destination.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)

    def read(self, path: str) -> str:
        return (self.root / path.lstrip("/")).read_text()


def reclaim_abandoned(runs_dir: Path = RUNS_DIR) -> list[Path]:
    """Tear down the containers whose run was killed (their owner process is gone): kill the
    container's PID 1 (which ends its PID namespace) and nspawn if they still run, unmount
    the overlay, remove the folder. Returns the folders."""
    reclaimed = []
    for run_dir in leftovers.abandoned(runs_dir, ""):
        leftovers.kill_if_alive(run_dir, LEADER)
        leftovers.kill_if_alive(run_dir, NSPAWN, group=True)
        root = run_dir / "root"
        if root.is_mount():
            subprocess.run(["umount", "--lazy", str(root)], capture_output=True, timeout=30)
        shutil.rmtree(run_dir, ignore_errors=True)
        reclaimed.append(run_dir)
    return reclaimed


@contextmanager
def booted(netns: str, boot_timeout: float = 90) -> Iterator[Container]:
    container = Container(netns)
    try:
        container.start(boot_timeout)
        yield container
    finally:
        container.stop()
