"""The event loop every Aura process runs: asyncio's, with a ready reader run as soon as epoll
names its file descriptor.

An idle packet crosses five processes in turn (client, transport, router, transport, client),
and each wakes from `epoll_wait` with its caches cold (other processes ran meanwhile). Between
epoll's answer and the reader callback that moves the packet on, asyncio builds its ready
list, queues a handle per reader, moves due timers and walks its ready queue: about 15 µs of
cold Python per wakeup, on the packet's path in every process it crosses. Here the selector
runs each ready reader's handle itself, right after the `epoll_wait`; writers, timers and
callbacks go the usual way. A reader thus runs ahead of callbacks that were queued before the
wakeup, an order asyncio never promised (an I/O callback and a `call_soon` in the same turn run
in whatever order the loop reaches them). A reader must bear being called when its descriptor
has nothing to read (as with any level-triggered loop): a reader run earlier in the same
wakeup may have read or closed it.
"""

from __future__ import annotations

import asyncio
import math
import select
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_NOT_OUT, _NOT_IN = ~select.EPOLLOUT, ~select.EPOLLIN


class _ReadersAtOnce(selectors.EpollSelector):
    """epoll whose `select` runs every ready reader (asyncio keeps a key's reader handle in
    `key.data[0]`) and returns only what is left for the loop: writers, and readers it
    cancelled."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # Rounded as EpollSelector.select does: epoll counts milliseconds.
        if timeout is None:
            timeout = -1
        elif timeout <= 0:
            timeout = 0
        else:
            timeout = math.ceil(timeout * 1e3) * 1e-3
        keys: dict[int, selectors.SelectorKey] = self._fd_to_key  # type: ignore[attr-defined]
        try:
            answer = self._selector.poll(timeout, max(len(keys), 1))  # type: ignore[attr-defined]
        except InterruptedError:
            return []
        left = []
        for fd, event in answer:
            key = keys.get(fd)
            if key is None:
                continue
            events = ((_WRITE if event & _NOT_IN else 0)
                      | (_READ if event & _NOT_OUT else 0)) & key.events
            if events & _READ:
                reader = key.data[0]
                if reader is not None and not reader._cancelled:
                    reader._run()
                    events &= ~_READ
                    # The reader may have removed or replaced what this descriptor wants.
                    key = keys.get(fd)
                    if key is None:
                        continue
                    events &= key.events
            if events:
                left.append((key, events))
        return left


class EventLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop on `_ReadersAtOnce`."""

    def __init__(self) -> None:
        super().__init__(_ReadersAtOnce())


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on an `EventLoop`."""
    with asyncio.Runner(loop_factory=EventLoop) as runner:
        return runner.run(main)
