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
# Reads of all fallback flows together, both directions (a read is a wakeup, a write and a
# few hundred bytecodes): about 5% of a core at most, and at 64 KiB a read, still tens of
# MB/s for a decoy site's visitors.
READS_PER_SECOND = 1000
READ_BURST = 100


class ReadPacer:
    """A token bucket of reads shared by every flow (GCRA: one `_due` time, no timer)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.interval, self.slack = 1 / rate, burst / rate
        self._due = float("-inf")

    def delay(self, now: float) -> float:
        """Seconds to wait before the next read; that read is counted now."""
        due = max(self._due, now)
        self._due = due + self.interval
        return max(0.0, due - now - self.slack)


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

    def __init__(self, upstream: tuple[str, int], idle_timeout: float, pacer: ReadPacer
                 ) -> None:
        self.upstream, self.idle_timeout, self.pacer = upstream, idle_timeout, pacer
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
        await splice(flow.reader, flow.writer, up_reader, up_writer, self.idle_timeout,
                     self.pacer)
        return True


class _Activity:
    __slots__ = ("last",)

    def __init__(self, now: float) -> None:
        self.last = now


async def splice(
    a_reader: asyncio.StreamReader, a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader, b_writer: asyncio.StreamWriter, idle_timeout: float,
    pacer: ReadPacer,
) -> None:
    """Copy both ways until both sides finish; abort both after `idle_timeout` of silence.

    An end of stream on one side is passed on as a half-close, as TCP would. Between reads
    the pacer asks to wait, a side's socket is not read at all (its bytes gather in the
    kernel, for one read later), so it cannot wake the event loop either."""
    loop = asyncio.get_running_loop()
    activity = _Activity(loop.time())

    async def pump(source: asyncio.StreamReader, source_writer: asyncio.StreamWriter,
                   sink: asyncio.StreamWriter) -> None:
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
            wait = pacer.delay(loop.time())
            if wait:
                transport = source_writer.transport
                assert isinstance(transport, asyncio.ReadTransport)  # a socket's: both ways
                transport.pause_reading()
                await asyncio.sleep(wait)
                if not transport.is_closing():
                    transport.resume_reading()

    pumps = [asyncio.ensure_future(pump(a_reader, a_writer, b_writer)),
             asyncio.ensure_future(pump(b_reader, b_writer, a_writer))]
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
    def __init__(self, handlers: Sequence[Handler], *, max_flows: int,
                 max_flows_per_source: int) -> None:
        self.handlers = list(handlers)
        self.max_flows, self.max_flows_per_source = max_flows, max_flows_per_source
        self.active = 0
        self._by_host: Counter[str] = Counter()
        # Flows by outcome (a metric): the claiming handler's type, unclaimed, overflow, failed.
        self.outcomes: Counter[str] = Counter()
        self._log = RateLimitedLog(log)

    @classmethod
    def from_config(cls, settings: TcpConfig) -> FallbackChain:
        """Handlers in config order; in-flight flows bounded like pending connections, in all
        and per source address; one read pacer for all of them."""
        pacer = ReadPacer(READS_PER_SECOND, READ_BURST)
        return cls([_handler(h, settings.idle_timeout, pacer) for h in settings.fallback],
                   max_flows=settings.max_pending,
                   max_flows_per_source=settings.max_pending_per_source)

    async def handle(self, flow: Flow) -> None:
        """Offer the flow to each handler in turn; close it if none claims it."""
        extra = fields(transport="tcp", endpoint=flow.endpoint)
        host = flow.endpoint.rpartition(":")[0]
        if self.active >= self.max_flows or self._by_host[host] >= self.max_flows_per_source:
            self._log.log(host, logging.INFO, "fallback: %d flows in flight, %d from this "
                          "address; dropping %s (%s)", self.active, self._by_host[host],
                          flow.endpoint, flow.reason, extra=extra)
            self.outcomes["overflow"] += 1
            flow.writer.transport.abort()
            return
        self.active += 1
        self._by_host[host] += 1
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
            self._by_host[host] -= 1
            if not self._by_host[host]:
                del self._by_host[host]


def _handler(config: FallbackHandler, idle_timeout: float, pacer: ReadPacer) -> Handler:
    if config.type == "proxy":
        assert config.upstream is not None  # the config loader requires it
        return ProxyHandler(config.upstream, idle_timeout, pacer)
    return RejectHandler()
