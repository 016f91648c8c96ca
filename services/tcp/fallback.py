"""The fallback chain: what happens to a TCP connection that is not Aura.

An ordered list of handlers; the first that claims a flow wins, and a flow nobody claims is
closed. A flow arrives with the bytes already read from it (the ClientHello or whatever the
client sent), so a `proxy` handler forwards them untouched and the upstream — a decoy web
server, say — sees exactly what the client sent. Flows are bounded in number and idle time, so
probes and slow clients cost a bounded amount and never hold up anyone else.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aura_common.config import FallbackHandler, TcpConfig, format_host_port
from aura_common.service.log import RateLimitedLog, fields

log = logging.getLogger(__name__)

READ_SIZE = 65536
UPSTREAM_CONNECT_TIMEOUT = 5.0


@dataclass(slots=True)
class Flow:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    initial: bytes  # already read from the client; must reach whoever claims the flow
    endpoint: str
    reason: str  # why it is not Aura, for the log


class Handler(Protocol):
    name: str

    async def claim(self, flow: Flow) -> bool:
        """Serve the flow to its end and return True, or return False to pass it on."""
        ...


class RejectHandler:
    """Claims every flow and closes it cleanly (FIN, not RST)."""

    name = "reject"

    async def claim(self, flow: Flow) -> bool:
        flow.writer.close()
        return True


class ProxyHandler:
    """Splices the flow to an upstream, both ways, starting with the bytes already read.

    Passes the flow on when the upstream cannot be reached."""

    def __init__(self, upstream: tuple[str, int], idle_timeout: float) -> None:
        self.upstream, self.idle_timeout = upstream, idle_timeout
        self.name = f"proxy to {format_host_port(*upstream)}"

    async def claim(self, flow: Flow) -> bool:
        try:
            async with asyncio.timeout(UPSTREAM_CONNECT_TIMEOUT):
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except (OSError, TimeoutError) as error:
            log.warning("fallback upstream %s unreachable: %s",
                        format_host_port(*self.upstream), error or "timeout",
                        extra=fields(transport="tcp", endpoint=flow.endpoint))
            return False
        up_writer.write(flow.initial)
        await splice(flow.reader, flow.writer, up_reader, up_writer, self.idle_timeout)
        return True


class _Activity:
    __slots__ = ("last",)

    def __init__(self, now: float) -> None:
        self.last = now


async def splice(
    a_reader: asyncio.StreamReader, a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader, b_writer: asyncio.StreamWriter, idle_timeout: float,
) -> None:
    """Copy both ways until both sides finish; abort both after `idle_timeout` of silence.

    An end of stream on one side is passed on as a half-close, as TCP would."""
    loop = asyncio.get_running_loop()
    activity = _Activity(loop.time())

    async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while True:
            try:
                async with asyncio.timeout(idle_timeout):
                    data = await source.read(READ_SIZE)
                    if data:
                        activity.last = loop.time()
                        sink.write(data)
                        await sink.drain()  # backpressure: one read buffered per direction
            except TimeoutError:
                if loop.time() - activity.last < idle_timeout:
                    continue  # the other direction is busy
                raise
            if not data:
                if sink.can_write_eof() and not sink.is_closing():
                    sink.write_eof()
                return

    pumps = [asyncio.ensure_future(pump(a_reader, b_writer)),
             asyncio.ensure_future(pump(b_reader, a_writer))]
    try:
        await asyncio.gather(*pumps)
    except (OSError, TimeoutError):
        for writer in (a_writer, b_writer):
            writer.transport.abort()
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for writer in (a_writer, b_writer):
            writer.close()


class FallbackChain:
    def __init__(self, handlers: Sequence[Handler], *, max_flows: int) -> None:
        self.handlers = list(handlers)
        self.max_flows = max_flows
        self.active = 0
        # Flows by outcome (a metric): the claiming handler's type, unclaimed, overflow, failed.
        self.outcomes: Counter[str] = Counter()
        self._log = RateLimitedLog(log)

    @classmethod
    def from_config(cls, settings: TcpConfig) -> FallbackChain:
        """Handlers in config order; in-flight flows bounded like pending connections."""
        return cls([_handler(h, settings.idle_timeout) for h in settings.fallback],
                   max_flows=settings.max_pending)

    async def handle(self, flow: Flow) -> None:
        """Offer the flow to each handler in turn; close it if none claims it."""
        extra = fields(transport="tcp", endpoint=flow.endpoint)
        host = flow.endpoint.rpartition(":")[0]
        if self.active >= self.max_flows:
            self._log.log(host, logging.INFO, "fallback: %d flows in flight; dropping %s (%s)",
                          self.active, flow.endpoint, flow.reason, extra=extra)
            self.outcomes["overflow"] += 1
            flow.writer.transport.abort()
            return
        self.active += 1
        try:
            for handler in self.handlers:
                if await handler.claim(flow):
                    self.outcomes[handler.name.split()[0]] += 1
                    self._log.log(host, logging.INFO, "fallback: %s (%s) handled by %s",
                                  flow.endpoint, flow.reason, handler.name, extra=extra)
                    return
                log.debug("fallback: %s passed %s on", handler.name, flow.endpoint, extra=extra)
            self._log.log(host, logging.INFO, "fallback: %s (%s) unclaimed; closed",
                          flow.endpoint, flow.reason, extra=extra)
            self.outcomes["unclaimed"] += 1
            flow.writer.close()
        except OSError as error:
            self.outcomes["failed"] += 1
            log.debug("fallback: %s failed: %s", flow.endpoint, error, extra=extra)
            flow.writer.transport.abort()
        finally:
            self.active -= 1


def _handler(config: FallbackHandler, idle_timeout: float) -> Handler:
    if config.type == "proxy":
        assert config.upstream is not None  # the config loader requires it
        return ProxyHandler(config.upstream, idle_timeout)
    return RejectHandler()
