"""The DNS servers the server pushes, applied to the system resolver and put back on `down`.

Three strategies, picked by what the system runs (`detect`):

* `resolvectl`: systemd-resolved runs. The servers go on the tunnel link, with the routing
  domain `~.` so every query uses them; `resolvectl revert` (or the link vanishing) undoes it.
* `resolvconf`: a resolvconf program exists (Debian's or openresolv). The servers are added
  as the tunnel's interface record and deleted again.
* `file`: neither. `/etc/resolv.conf` is rewritten; the previous content (or symlink) is kept
  in the record and written back, unless someone changed the file in the meantime.

Before changing anything, `SystemDns` writes a record of what it is about to change into the
client's state (`ClientConfig.dns_state_file`). `down` replays it and removes it; after a crash
the next start finds it and replays it first, so no change outlives the client.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from aura_common.addresses import IPAddress
from aura_common.errors import AuraError
from aura_common.state.atomic import open_beneath, write_atomic

log = logging.getLogger("aura-client")

Record = dict[str, Any]
Runner = Callable[[Sequence[str], str | None], None]
RESOLV_CONF = "/etc/resolv.conf"
RESOLVED_RUNTIME = "/run/systemd/resolve"
RECORD_VERSION = 1
RECORD_LIMIT = 1 << 20  # a record holds one resolv.conf; anything larger is not ours


class Strategy(Protocol):
    name: str

    def prepare(self, interface: str, servers: Sequence[IPAddress]) -> Record:
        """What `apply` will change and what `restore` needs to undo it; changes nothing."""

    def apply(self, record: Record) -> None:
        """Make the record's servers the system's resolvers."""

    def restore(self, record: Record) -> None:
        """Undo `apply` from its record (also in a later process, after a crash)."""


def run_command(argv: Sequence[str], stdin: str | None = None) -> None:
    """Run a resolver tool; AuraError with its own message when it fails."""
    try:
        result = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                                timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise AuraError(f"`{' '.join(argv)}` could not run: {error}") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise AuraError(f"`{' '.join(argv)}` failed: {detail[-1] if detail else result.returncode}")


class Resolvectl:
    name = "resolvectl"

    def __init__(self, run: Runner = run_command) -> None:
        self.run = run

    def prepare(self, interface: str, servers: Sequence[IPAddress]) -> Record:
        return {"interface": interface, "servers": [str(s) for s in servers]}

    def apply(self, record: Record) -> None:
        interface = str(record["interface"])
        self.run(["resolvectl", "dns", interface, *record["servers"]], None)
        self.run(["resolvectl", "domain", interface, "~."], None)

    def restore(self, record: Record) -> None:
        self.run(["resolvectl", "revert", str(record["interface"])], None)


class Resolvconf:
    name = "resolvconf"

    def __init__(self, run: Runner = run_command) -> None:
        self.run = run

    def prepare(self, interface: str, servers: Sequence[IPAddress]) -> Record:
        return {"interface": interface, "servers": [str(s) for s in servers]}

    def apply(self, record: Record) -> None:
        text = "".join(f"nameserver {s}\n" for s in record["servers"])
        self.run(["resolvconf", "-a", str(record["interface"])], text)

    def restore(self, record: Record) -> None:
        self.run(["resolvconf", "-d", str(record["interface"])], None)


class ResolvConfFile:
    name = "file"

    def __init__(self, path: str = RESOLV_CONF) -> None:
        self.path = path

    def prepare(self, interface: str, servers: Sequence[IPAddress]) -> Record:
        record: Record = {}
        try:
            if os.path.islink(self.path):
                record["symlink"] = os.readlink(self.path)
            else:
                with open(self.path, encoding="utf-8", errors="surrogateescape") as file:
                    record["content"] = file.read()
        except FileNotFoundError:
            record["absent"] = True
        written = (f"# DNS of the Aura tunnel {interface}; the previous file comes back on "
                   "`aura client down`\n" + "".join(f"nameserver {s}\n" for s in servers))
        record["written"] = written
        return record

    def apply(self, record: Record) -> None:
        _replace(self.path, str(record["written"]))

    def restore(self, record: Record) -> None:
        path = self.path  # never a path from the record: only resolv.conf is put back
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as file:
                current: str | None = file.read()
        except FileNotFoundError:
            current = None
        if current != record["written"]:
            log.warning("%s changed since the tunnel set its DNS; leaving it as it is", path)
            return
        if "symlink" in record:
            temp = f"{path}.aura-restore"
            if os.path.lexists(temp):
                os.unlink(temp)
            os.symlink(str(record["symlink"]), temp)
            os.replace(temp, path)
        elif record.get("absent"):
            os.unlink(path)
        else:
            _replace(path, str(record["content"]))


def _replace(path: str, text: str) -> None:
    try:
        write_atomic(path, text.encode("utf-8", "surrogateescape"), mode=0o644)
    except OSError as error:
        if error.errno not in (errno.EBUSY, errno.EROFS):
            raise
        # The file is a mount point (a container's, or the writable one in a read-only /etc
        # that aura-client@.service's ReadWritePaths= makes): it cannot be replaced, only
        # rewritten in place. O_NOFOLLOW: never write through a planted symlink.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as file:
            file.write(text)


def strategies(run: Runner = run_command, resolv_conf: str = RESOLV_CONF) -> dict[str, Strategy]:
    return {"resolvectl": Resolvectl(run), "resolvconf": Resolvconf(run),
            "file": ResolvConfFile(resolv_conf)}


def detect(resolved_runtime: str = RESOLVED_RUNTIME,
           which: Callable[[str], str | None] = shutil.which) -> str:
    """The strategy for this system: resolved if it runs, else resolvconf, else the file."""
    if os.path.isdir(resolved_runtime) and which("resolvectl"):
        return "resolvectl"
    if which("resolvconf"):
        return "resolvconf"
    return "file"


class SystemDns:
    """Apply and undo pushed DNS servers through one strategy, keeping an undo record."""

    def __init__(self, record_path: str, chosen: str,
                 available: Mapping[str, Strategy] | None = None) -> None:
        self.record_path = record_path
        self.strategies = dict(available) if available is not None else strategies()
        self.strategy = self.strategies[chosen]
        self.applied: tuple[IPAddress, ...] = ()

    def recover(self) -> None:
        """Undo what a client that did not stop cleanly left behind."""
        record = self._read_record()
        if record is not None:
            log.warning("restoring the DNS settings a previous run left (%s)",
                        record.get("strategy"))
            self._replay(record)

    def apply(self, interface: str, servers: Sequence[IPAddress]) -> None:
        servers = tuple(servers)
        if servers == self.applied:
            return
        self.restore()
        if not servers:
            return
        record = self.strategy.prepare(interface, servers)
        record.update(version=RECORD_VERSION, strategy=self.strategy.name)
        # Stored before the change it undoes, so a crash in between cannot lose it.
        # Root's own, also in a folder another account owns: only such a record is replayed.
        write_atomic(self.record_path, json.dumps(record).encode(), mode=0o600,
                     owner=(os.geteuid(), os.getegid()))
        self.strategy.apply(record)
        self.applied = servers
        log.info("DNS servers %s applied through %s", ", ".join(map(str, servers)),
                 self.strategy.name)

    def restore(self) -> None:
        record = self._read_record()
        if record is not None:
            self._replay(record)
            log.info("DNS settings restored (%s)", record.get("strategy"))
        self.applied = ()

    def _replay(self, record: Record) -> None:
        strategy = self.strategies.get(str(record.get("strategy")))
        try:
            if strategy is None:
                raise AuraError(f"unknown DNS strategy {record.get('strategy')!r}")
            strategy.restore(record)
        except (AuraError, OSError, KeyError) as error:
            log.error("could not restore the DNS settings from %s: %s", self.record_path, error)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.record_path)

    def _read_record(self) -> Record | None:
        """The record this account wrote, if there is one. It says what to write where as
        root, and it lives beside the client's state, in a folder the config's owner may own:
        a file that account could have written or swapped in is refused."""
        try:
            fd = open_beneath(self.record_path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except (OSError, AuraError) as error:
            log.error("ignoring the unreadable DNS record %s: %s", self.record_path, error)
            return None
        with os.fdopen(fd, "rb") as file:
            status = os.fstat(fd)
            if not (stat.S_ISREG(status.st_mode) and status.st_uid == os.geteuid()
                    and status.st_nlink == 1 and not status.st_mode & 0o022):
                log.error("ignoring the DNS record %s: not a file only this account (uid %d) "
                          "wrote (owner uid %d, mode %o, %d links); remove it", self.record_path,
                          os.geteuid(), status.st_uid, status.st_mode & 0o7777,
                          status.st_nlink)
                return None
            try:
                record = json.loads(file.read(RECORD_LIMIT + 1))
            except (OSError, ValueError) as error:
                log.error("ignoring the unreadable DNS record %s: %s", self.record_path, error)
                return None
        if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
            log.error("ignoring the DNS record %s: expected version %d", self.record_path,
                      RECORD_VERSION)
            return None
        return record
