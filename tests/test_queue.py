"""The bounded hand-off queue (`BatchQueue`): bounds, batches, expiry, and many threads at once."""

from __future__ import annotations

import queue
import sys
import threading
import time

import pytest

from edupulse_events._queue import BatchQueue


class Thing:
    """An item as the queue sees it: a size in bytes and a deadline."""

    def __init__(self, name: object, size: int = 10, deadline: float = float("inf")) -> None:
        self.name = name
        self.size = size
        self.deadline = deadline

    def __repr__(self) -> str:
        return f"Thing({self.name!r})"


def names(items: list[Thing]) -> list[object]:
    return [item.name for item in items]


def test_full_in_items_refuses_without_waiting_or_after_timeout() -> None:
    """At maxsize items, put(block=False) and put(timeout=...) raise queue.Full; the queue is unchanged."""
    q = BatchQueue(2, 1_000)
    q.put(Thing(1))
    q.put(Thing(2))
    with pytest.raises(queue.Full):
        q.put(Thing(3), block=False)
    with pytest.raises(queue.Full):
        q.put(Thing(3), timeout=0.05)
    assert names(q.get_batch(10)) == [1, 2] and q.accepted == 2 and q.blocked_puts == 1


def test_bounded_in_bytes_but_a_lone_big_item_is_accepted() -> None:
    """The byte bound refuses what would overflow it, yet an empty queue takes any one item."""
    q = BatchQueue(100, 25)
    q.put(Thing("a", 10))
    q.put(Thing("b", 10))
    with pytest.raises(queue.Full):
        q.put(Thing("c", 10), block=False)
    assert q.nbytes == 20
    assert names(q.get_batch(10)) == ["a", "b"] and q.nbytes == 0
    q.put(Thing("huge", 1_000))
    assert q.nbytes == 1_000 and names(q.get_batch(1)) == ["huge"]


def test_get_batch_takes_up_to_limit_in_order_and_frees_bytes() -> None:
    """get_batch takes the oldest items, at most ``limit``, and the byte count follows."""
    q = BatchQueue(100, 10_000)
    for i in range(7):
        q.put(Thing(i, size=i + 1))
    assert names(q.get_batch(3)) == [0, 1, 2] and q.nbytes == 4 + 5 + 6 + 7
    assert names(q.get_batch(10)) == [3, 4, 5, 6] and q.nbytes == 0
    assert q.get_batch(10) == []
    with pytest.raises(queue.Empty):
        q.get()


def test_take_expired_removes_only_expired_items_at_the_head() -> None:
    """Items past their deadline leave from the head; a live item stops the sweep."""
    q = BatchQueue(100, 10_000)
    for name, deadline in [("old1", 1.0), ("old2", 2.0), ("live", 10.0), ("old3", 1.0)]:
        q.put(Thing(name, deadline=deadline))
    assert names(q.take_expired(5.0)) == ["old1", "old2"]
    assert names(q.get_batch(10)) == ["live", "old3"] and q.nbytes == 0


def test_blocked_put_goes_in_when_a_batch_makes_room() -> None:
    """A put waiting on a full queue completes as soon as the consumer takes a batch."""
    q = BatchQueue(1, 1_000)
    q.put(Thing("first"))
    done = threading.Event()

    def producer() -> None:
        q.put(Thing("second"), timeout=30)
        done.set()

    thread = threading.Thread(target=producer)
    thread.start()
    deadline = time.monotonic() + 10
    while q.waiting_puts == 0 and time.monotonic() < deadline:  # until it waits for room
        pass
    assert not done.is_set() and q.waiting_puts == 1
    assert names(q.get_batch(1)) == ["first"]
    assert done.wait(10)
    thread.join(10)
    assert names(q.get_batch(1)) == ["second"] and q.waiting_puts == 0


def test_put_waits_for_a_mutex_held_elsewhere_then_goes_in() -> None:
    """A put that finds the mutex held (its holder lost the CPU mid-put) waits for it, then adds its item."""
    q = BatchQueue(10, 1_000)
    q.mutex.acquire()
    thread = threading.Thread(target=q.put, args=(Thing("x"),))
    try:
        thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the producer is in the waiting path
            frame = sys._current_frames().get(thread.ident or 0)
            if frame is not None and frame.f_code.co_name in ("_acquire", "sleep"):
                break
        assert thread.is_alive() and len(q.queue) == 0
    finally:
        q.mutex.release()
    thread.join(10)
    assert not thread.is_alive() and names(q.get_batch(10)) == ["x"] and q.accepted == 1


def test_many_producers_and_a_consumer_lose_and_duplicate_nothing() -> None:
    """8 threads x 500 puts through a 16-item queue: each item taken once, each producer's order kept."""
    q = BatchQueue(16, 1_000_000)
    producers, per = 8, 500
    taken: list[Thing] = []
    finished = threading.Event()

    def produce(p: int) -> None:
        for i in range(per):
            q.put(Thing((p, i), size=p + 1), timeout=30)

    def consume() -> None:
        while not finished.is_set() or q.queue:
            taken.extend(q.get_batch(5))

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    consumer = threading.Thread(target=consume)
    consumer.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    finished.set()
    consumer.join(60)
    assert len(taken) == producers * per and q.accepted == producers * per
    for p in range(producers):
        assert [i for (who, i) in names(taken) if who == p] == list(range(per))  # type: ignore[misc]
    assert q.nbytes == 0 and q.waiting_puts == 0 and q.blocked_puts > 0
