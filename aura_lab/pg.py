"""A throw-away PostgreSQL server for tests: Debian's initdb and pg_ctl in a temporary folder.

It runs as the `postgres` account when we are root (PostgreSQL refuses root), listens on a
Unix socket in its folder and, when asked, on a TCP address (for instance one inside a test's
network namespace, with `netns=`). It never touches a system-wide cluster. The role `aura`
logs in with a password (scram-sha-256) written to `password_file`, so tests exercise the
real password path; the superuser `postgres` is trusted on the socket only.

A run killed before it could stop its servers leaves them running: each folder names the
process that made it (`aura_lab.leftovers`), and the next server made reclaims (stops and
removes) those of processes that are gone.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import psycopg

from aura_lab import leftovers

ROLE, PASSWORD = "aura", "test-password-not-secret"
PREFIX = "aura-pg-"


def postgres_bin() -> Path | None:
    """The newest installed server's bin folder (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


def unavailable() -> str | None:
    """Why a test server cannot run here, or None."""
    if postgres_bin() is None:
        return "needs Debian's postgresql package (/usr/lib/postgresql/*/bin)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "needs the postgres account to run the server as (root is refused)"
    return None


def as_postgres(argv: list[str]) -> list[str]:
    """`argv` run as the server's account when we are root (PostgreSQL refuses root)."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def reclaim_abandoned(parent: Path | None = None) -> list[Path]:
    """Stop and remove the servers whose run was killed (their owner process is gone);
    returns their folders."""
    bin_dir = postgres_bin()
    reclaimed = []
    for folder in leftovers.abandoned(parent or Path(tempfile.gettempdir()), PREFIX):
        data = folder / "data"
        if bin_dir is not None and (data / "postmaster.pid").exists():
            subprocess.run(as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m",
                                        "immediate", "-w", "-t", "30", "stop"]),
                           capture_output=True, timeout=60, cwd=folder)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)
        reclaimed.append(folder)
    return reclaimed


class PostgresServer:
    def __init__(self, listen: str | None = None, port: int = 5432,
                 netns: str | None = None) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise RuntimeError(unavailable())
        self.bin = bin_dir
        self.listen, self.port, self.netns = listen, port, netns
        reclaim_abandoned()
        # Short (Unix socket paths are limited to 107 bytes) and reachable by postgres.
        self.directory = Path(tempfile.mkdtemp(prefix=PREFIX))
        leftovers.mark(self.directory)
        self.data = self.directory / "data"
        self.socket_dir = self.directory / "sock"
        self.password_file = str(self.directory / "password")
        Path(self.password_file).write_text(PASSWORD + "\n")
        os.chmod(self.password_file, 0o600)
        self._databases = 0
        self.running = False
        self._init()

    # -- as the server's account -----------------------------------------------------------
    def _as_server(self, argv: list[str]) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*prefix, *as_postgres(argv)]

    def _run(self, argv: list[str], timeout: float = 60) -> None:
        result = subprocess.run(self._as_server(argv), capture_output=True, text=True,
                                timeout=timeout, cwd=self.directory)
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {result.stdout}{result.stderr}")

    def _init(self) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            for path in (self.directory, Path(self.password_file)):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.socket_dir.mkdir(mode=0o755)
        if os.geteuid() == 0:
            os.chown(self.socket_dir, pwd.getpwnam("postgres").pw_uid, -1)
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                   "--auth-local=trust", "--auth-host=reject", "-E", "UTF8", "--no-sync"])
        listen = self.listen or ""
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '{listen}'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.socket_dir}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                       "shared_buffers = 16MB\nmax_connections = 50\n")
        (self.data / "pg_hba.conf").write_text(
            "local all postgres trust\n"
            f"local all {ROLE} scram-sha-256\n"
            f"host all {ROLE} 0.0.0.0/0 scram-sha-256\n"
            f"host all {ROLE} ::/0 scram-sha-256\n"
        )
        self.start()
        with self.superuser() as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
            conn.execute(f"CREATE DATABASE aura OWNER {ROLE}")

    # -- control -----------------------------------------------------------------------------
    def start(self) -> None:
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                   str(self.directory / "log"), "-w", "-t", "60", "start"], timeout=90)
        self.running = True

    def stop(self) -> None:
        if self.running:
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                       "-t", "60", "stop"], timeout=90)
            self.running = False

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    # -- connecting ----------------------------------------------------------------------------
    def conninfo(self, dbname: str = "aura", tcp: bool = False) -> str:
        """The `registry.database` value for the role `aura` (no password in it)."""
        host = self.listen if tcp and self.listen else str(self.socket_dir)
        return f"host={host} port={self.port} dbname={dbname} user={ROLE}"

    def superuser(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(f"host={self.socket_dir} port={self.port} dbname={dbname} "
                               "user=postgres", autocommit=True)

    def new_database(self) -> str:
        """A fresh empty database owned by `aura`; its connection string."""
        self._databases += 1
        name = f"test{self._databases}"
        with self.superuser() as conn:
            conn.execute(f"CREATE DATABASE {name} OWNER {ROLE}")
        return self.conninfo(name)
