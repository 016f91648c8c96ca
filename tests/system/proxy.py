"""An HTTP proxy that lets a container in a private network namespace reach package hosts.

    python -m tests.system.proxy NETNS PORT HOST [HOST ...]

It listens on 127.0.0.1:PORT *inside* NETNS (the socket is made there, then the process
returns to its own namespace), and connects out from the host's namespace, to the named hosts
only: `CONNECT host:443` for HTTPS (pip), absolute `GET http://host/...` for apt. The container
keeps its own namespace (its booted systemd and its tests never touch the host's links, and it
may write /proc/sys/net) while `apt-get` and `pip` inside work through `http_proxy` and
`https_proxy` as on a machine behind a proxy. Prints `ready` once listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import sys
from urllib.parse import urlsplit

CLONE_NEWNET = 0x40000000
MAX_HEAD = 16 * 1024
MAX_CLIENTS = 32
IDLE_TIMEOUT = 120.0
CHUNK = 64 * 1024


def listen_in(netns: str, port: int) -> socket.socket:
    """A listening socket in another network namespace; the process stays in its own."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
        try:
            server = socket.create_server(("127.0.0.1", port))
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)
    return server


class Proxy:
    def __init__(self, hosts: set[str]) -> None:
        self.hosts = hosts
        self.slots = asyncio.Semaphore(MAX_CLIENTS)

    async def serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        async with self.slots:
            try:
                await self._serve(client_r, client_w)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    TimeoutError, ValueError):
                pass
            finally:
                client_w.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(client_r.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
        method, target, version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            if host not in self.hosts or port != "443":
                client_w.write(f"{version} 403 Forbidden\r\n\r\n".encode())
                return
            up_r, up_w = await asyncio.open_connection(host, 443)
            client_w.write(f"{version} 200 Connection established\r\n\r\n".encode())
            await asyncio.gather(self._pipe(client_r, up_w), self._pipe(up_r, client_w))
            return
        url = urlsplit(target)
        if url.scheme != "http" or url.hostname not in self.hosts or url.port not in (None, 80):
            client_w.write(f"{version} 403 Forbidden\r\n\r\n".encode())
            return
        up_r, up_w = await asyncio.open_connection(url.hostname, 80)
        # apt keeps the connection and pipelines GETs (no bodies): rewrite each request line
        # to the origin form while the responses flow back untouched.
        await asyncio.gather(self._requests(head, url.hostname, client_r, up_w),
                             self._pipe(up_r, client_w))

    async def _requests(self, head: bytes, host: str, client_r: asyncio.StreamReader,
                        up_w: asyncio.StreamWriter) -> None:
        try:
            while True:
                line, rest = head.split(b"\r\n", 1)
                method, target, version = line.decode("latin-1").split(" ")
                url = urlsplit(target)
                if url.hostname != host or method not in ("GET", "HEAD"):
                    return
                path = (url.path or "/") + (f"?{url.query}" if url.query else "")
                up_w.write(f"{method} {path} {version}\r\n".encode() + rest)
                await up_w.drain()
                head = await asyncio.wait_for(client_r.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ValueError):
            pass
        finally:
            up_w.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await asyncio.wait_for(reader.read(CHUNK), IDLE_TIMEOUT):
                writer.write(data)
                await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.write_eof() if writer.can_write_eof() else writer.close()


async def serve(listener: socket.socket, hosts: set[str]) -> None:
    proxy = Proxy(hosts)
    server = await asyncio.start_server(proxy.serve, sock=listener, limit=MAX_HEAD)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    netns, port, *hosts = sys.argv[1:]
    listener = listen_in(netns, int(port))
    asyncio.run(serve(listener, set(hosts)))


if __name__ == "__main__":
    main()
