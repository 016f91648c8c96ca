"""The byte-counted queue shared by the IPC channel and the QUIC link."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aura_common.ipc.bounded import ByteQueue


def test_offer_refuses_what_does_not_fit_and_push_does_not() -> None:
    queue: ByteQueue[str] = ByteQueue(limit=100)
    assert queue.offer("a", 60) and not queue.offer("b", 41)
    assert queue.size == 60 and len(queue) == 1 and not queue.full
    assert queue.offer("c", 40) and queue.full
    queue.push("d", 500)
    assert queue.size == 600 and len(queue) == 3
    assert queue.pop() == "a" and queue.size == 540


@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=300)),
                max_size=50),
       st.integers(min_value=0, max_value=60))
def test_order_and_size_follow_what_was_queued(ops: list[tuple[bool, int]],
                                               count: int) -> None:
    queue: ByteQueue[int] = ByteQueue(limit=1000)
    kept: list[tuple[int, int]] = []
    for number, (forced, size) in enumerate(ops):
        if forced:
            queue.push(number, size)
            kept.append((number, size))
        elif queue.offer(number, size):
            kept.append((number, size))
        else:
            assert sum(s for _, s in kept) + size > 1000
    assert queue.size == sum(s for _, s in kept) and len(queue) == len(kept)
    taken = queue.take(count)
    assert taken == [n for n, _ in kept[:count]]
    assert queue.size == sum(s for _, s in kept[count:])
