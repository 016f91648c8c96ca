"""A first-in first-out queue counted in bytes, not items.

Whatever waits between a socket and its consumer is bounded by what it holds: a count of
items would let a peer that sends large items hold far more memory than one that sends small
ones. The owner decides what happens at the limit: `offer` refuses an item that does not fit
(drop, as a full NIC queue would), while `push` always takes it and `full` tells a reader to
stop reading until the consumer has caught up (backpressure).
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class ByteQueue(Generic[T]):
    """Items in arrival order, each with the size it counts for; `size` is their sum."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._items: deque[tuple[T, int]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return self.size >= self.limit

    def push(self, item: T, size: int) -> None:
        """Queue `item` even past the limit (the caller stops reading once `full`)."""
        self._items.append((item, size))
        self.size += size

    def offer(self, item: T, size: int) -> bool:
        """Queue `item` if its `size` fits in the room left; False (not queued) otherwise."""
        if self.size + size > self.limit:
            return False
        self.push(item, size)
        return True

    def pop(self) -> T:
        """The oldest item; IndexError when empty."""
        item, size = self._items.popleft()
        self.size -= size
        return item

    def take(self, count: int) -> list[T]:
        """Up to `count` of the oldest items, in order."""
        return [self.pop() for _ in range(min(count, len(self._items)))]
