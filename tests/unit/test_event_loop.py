"""The processes' event loop (aura_common/service/loop.py): readers run straight from epoll's
answer, and everything else still works as on asyncio's own loop."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aura_common.service import loop as event_loop


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def test_a_ready_reader_runs_before_callbacks_queued_before_the_wakeup() -> None:
    """asyncio's own loop would queue the reader behind the callback: one more pass over its
    queues on every packet's path."""
    order: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        a, b = _pair()
        done = loop.create_future()
        b.send(b"x")

        def readable() -> None:
            a.recv(16)
            order.append("reader")
            loop.remove_reader(a.fileno())
            if len(order) == 2:
                done.set_result(None)

        def queued() -> None:
            order.append("queued")
            if len(order) == 2:
                done.set_result(None)

        loop.add_reader(a.fileno(), readable)
        loop.call_soon(queued)
        await done
        a.close()
        b.close()

    assert event_loop.run(scenario()) is None
    assert order == ["reader", "queued"]


def test_writers_timers_and_results_work_as_on_asyncio() -> None:
    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        a, b = _pair()
        seen: list[str] = []
        writable: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not writable.done():
                writable.set_result(None)

        loop.add_writer(b.fileno(), ready)
        await writable
        loop.remove_writer(b.fileno())
        seen.append("writable")
        b.send(b"ping")
        seen.append((await loop.sock_recv(a, 16)).decode())
        await asyncio.sleep(0.01)
        seen.append(await asyncio.to_thread(lambda: "thread"))
        a.close()
        b.close()
        return seen

    assert event_loop.run(scenario()) == ["writable", "ping", "thread"]


def test_a_reader_that_closes_another_ready_one_keeps_it_from_running() -> None:
    calls: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        first, first_peer = _pair()
        second, second_peer = _pair()
        first_peer.send(b"x")
        second_peer.send(b"x")

        def on(name: str, mine: socket.socket, other: socket.socket) -> None:
            calls.append(name)
            mine.recv(16)
            loop.remove_reader(mine.fileno())
            loop.remove_reader(other.fileno())

        loop.add_reader(first.fileno(), on, "first", first, second)
        loop.add_reader(second.fileno(), on, "second", second, first)
        await asyncio.sleep(0.05)
        for sock in (first, first_peer, second, second_peer):
            sock.close()

    event_loop.run(scenario())
    assert len(calls) == 1


def test_a_failing_reader_goes_to_the_exception_handler_and_the_loop_goes_on() -> None:
    errors: list[dict[str, Any]] = []

    async def scenario() -> str:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        a, b = _pair()
        b.send(b"x")

        def broken() -> None:
            loop.remove_reader(a.fileno())
            raise RuntimeError("reader bug")

        loop.add_reader(a.fileno(), broken)
        await asyncio.sleep(0.02)
        a.close()
        b.close()
        return "went on"

    assert event_loop.run(scenario()) == "went on"
    assert [str(context["exception"]) for context in errors] == ["reader bug"]
