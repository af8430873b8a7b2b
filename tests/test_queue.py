"""The bounded hand-off queue (`BatchQueue`): bounds, batches, deadlines, expiry, many threads at once."""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from edupulse_events._pipeline._queue import BatchQueue

BIG = 1 << 40


class Thing:
    """An item as the queue sees it: a size in bytes, a byte mark and a deadline (both stamped by put)."""

    def __init__(self, name: Any, size: int = 10) -> None:
        self.name = name
        self.size = size
        self.mark = 0
        self.deadline = 0.0

    def __repr__(self) -> str:
        return f"Thing({self.name!r})"


def names(items: list[Thing]) -> list[Any]:
    return [item.name for item in items]


def take(q: BatchQueue[Thing], limit: int = 1000, max_bytes: int = BIG) -> list[Thing]:
    return q.take(limit, max_bytes)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Spin (no sleep) until ``predicate()`` holds; the queue offers no event to wait on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
    return False


def test_full_in_items_refuses_without_waiting_or_after_timeout() -> None:
    """At maxsize items, put(timeout=0) and put(timeout=...) raise queue.Full; the queue is unchanged."""
    q: BatchQueue[Thing] = BatchQueue(2, 1_000, 30.0)
    q.put(Thing(1), 0)
    q.put(Thing(2), 0)
    with pytest.raises(queue.Full):
        q.put(Thing(3), 0)
    with pytest.raises(queue.Full):
        q.put(Thing(3), 0.05)
    assert names(take(q)) == [1, 2]
    assert q.accepted == 2
    assert q.blocked_puts == 1


def test_bounded_in_bytes_but_a_lone_big_item_is_accepted() -> None:
    """The byte bound refuses what would overflow it, yet an empty queue takes any one item."""
    q: BatchQueue[Thing] = BatchQueue(100, 25, 30.0)
    q.put(Thing("a", 10), 0)
    q.put(Thing("b", 10), 0)
    with pytest.raises(queue.Full):
        q.put(Thing("c", 10), 0)
    assert q.nbytes == 20
    assert names(take(q)) == ["a", "b"]
    assert q.nbytes == 0
    q.put(Thing("huge", 1_000), 0)
    assert q.nbytes == 1_000
    assert names(take(q, 1)) == ["huge"]


def test_take_stops_at_the_item_and_byte_limits_and_frees_bytes() -> None:
    """take() takes the oldest items, at most ``limit`` and ``max_bytes``; the byte count follows."""
    q: BatchQueue[Thing] = BatchQueue(100, 10_000, 30.0)
    for i in range(7):
        q.put(Thing(i, size=i + 1), 0)
    assert names(take(q, 3)) == [0, 1, 2]
    assert q.nbytes == 4 + 5 + 6 + 7
    assert names(take(q, 10, max_bytes=9)) == [3, 4]
    assert names(take(q, 10, max_bytes=5)) == []  # 6 bytes do not fit in 5
    assert names(q.take(10, 5, first_always=True)) == [5]
    assert names(take(q)) == [6]
    assert q.nbytes == 0
    assert take(q) == []
    assert len(q) == 0


def test_deadline_is_stamped_at_acceptance_after_any_wait() -> None:
    """An item's deadline is ttl after put() accepted it, so waiting for room never eats into it."""
    q: BatchQueue[Thing] = BatchQueue(1, 1_000, 5.0)
    q.put(Thing("first"), 0)
    second = Thing("second")
    accepted = threading.Event()

    def producer() -> None:
        q.put(second, 30)
        accepted.set()

    thread = threading.Thread(target=producer)
    thread.start()
    assert wait_until(lambda: q._waiting_puts == 1)  # noqa: SLF001  # until it waits for room
    waited_from = time.monotonic()
    assert accepted.wait(0.3) is False  # still full: it keeps waiting
    assert names(take(q)) == ["first"]
    assert accepted.wait(10)
    thread.join(10)
    assert second.deadline >= waited_from + 0.3 + 5.0


def test_deadlines_never_decrease_from_head_to_tail_and_expire_from_the_head() -> None:
    """Deadlines are stamped under the lock, so take_expired() finds every expired item at the head."""
    q: BatchQueue[Thing] = BatchQueue(100, 10_000, 1.0)
    items = [Thing(i) for i in range(20)]
    for item in items:
        q.put(item, 0)
    deadlines = [item.deadline for item in items]
    assert deadlines == sorted(deadlines)
    assert q.take_expired(items[0].deadline - 0.001) == []
    assert names(q.take_expired(items[9].deadline)) == list(range(10))
    assert q.nbytes == 100
    assert names(q.take_all()) == list(range(10, 20))
    assert q.nbytes == 0


def test_blocked_put_goes_in_when_a_batch_makes_room() -> None:
    """A put waiting on a full queue completes as soon as the consumer takes a batch."""
    q: BatchQueue[Thing] = BatchQueue(1, 1_000, 30.0)
    q.put(Thing("first"), 0)
    done = threading.Event()

    def producer() -> None:
        q.put(Thing("second"), 30)
        done.set()

    thread = threading.Thread(target=producer)
    thread.start()
    assert wait_until(lambda: q._waiting_puts == 1)  # noqa: SLF001  # until it waits for room
    assert not done.is_set()
    assert names(take(q, 1)) == ["first"]
    assert done.wait(10)
    thread.join(10)
    assert names(take(q, 1)) == ["second"]
    assert q._waiting_puts == 0  # noqa: SLF001  # no waiter is left counted


def test_put_waits_for_a_mutex_held_elsewhere_then_goes_in() -> None:
    """A put that finds the mutex held (its holder lost the CPU mid-put) waits for it, then adds its item."""
    q: BatchQueue[Thing] = BatchQueue(10, 1_000, 30.0)
    mutex = q._mutex  # noqa: SLF001  # hold it as a preempted producer would
    mutex.acquire()
    thread = threading.Thread(target=q.put, args=(Thing("x"), 30))
    try:
        thread.start()

        def in_waiting_path() -> bool:
            frame = sys._current_frames().get(thread.ident or 0)  # noqa: SLF001  # stdlib introspection
            return frame is not None and frame.f_code.co_name in ("_acquire", "sleep")

        assert wait_until(in_waiting_path)
        assert thread.is_alive()
        assert len(q) == 0
    finally:
        mutex.release()
    thread.join(10)
    assert not thread.is_alive()
    assert names(take(q)) == ["x"]
    assert q.accepted == 1


def test_many_producers_and_a_consumer_lose_and_duplicate_nothing() -> None:
    """8 threads x 500 puts through a 16-item queue: each item taken once, each producer's order kept."""
    q: BatchQueue[Thing] = BatchQueue(16, 1_000_000, 30.0)
    producers, per = 8, 500
    taken: list[Thing] = []
    finished = threading.Event()

    def produce(p: int) -> None:
        for i in range(per):
            q.put(Thing((p, i), size=p + 1), 30)

    def consume() -> None:
        while not finished.is_set() or len(q):
            taken.extend(take(q, 5))

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    consumer = threading.Thread(target=consume)
    consumer.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    finished.set()
    consumer.join(60)
    assert len(taken) == producers * per
    assert q.accepted == producers * per
    for p in range(producers):
        assert [i for (who, i) in names(taken) if who == p] == list(range(per))
    assert q.nbytes == 0
    assert q._waiting_puts == 0  # noqa: SLF001  # no waiter is left counted
    assert q.blocked_puts > 0


def test_put_many_takes_what_fits_in_one_go_and_stamps_marks_and_deadlines() -> None:
    """put_many of items that fit adds them all, in order, with running byte marks and one deadline."""
    q: BatchQueue[Thing] = BatchQueue(10, 1000, 30.0)
    q.put(Thing("a", 5), 0)
    items = [Thing(i, 10) for i in range(4)]
    assert q.put_many(items, 0, lambda: None) == 4
    assert [i.mark for i in items] == [15, 25, 35, 45]
    assert len({i.deadline for i in items}) == 1
    assert items[0].deadline >= time.monotonic() + 29
    assert (len(q), q.nbytes, q.accepted) == (5, 45, 5)
    assert names(take(q)) == ["a", 0, 1, 2, 3]


def test_put_many_stops_at_the_bounds_and_returns_how_many_went_in() -> None:
    """Without waiting, put_many stops at the first item over the item or byte bound; a lone big item
    still goes into an empty queue, as with put()."""
    woken: list[int] = []
    q: BatchQueue[Thing] = BatchQueue(3, 100, 30.0)
    assert q.put_many([Thing(i) for i in range(5)], 0, lambda: woken.append(1)) == 3
    assert woken == [1]  # the taker is woken before the (here: zero) wait for room
    take(q)
    assert q.put_many([Thing("x", 60), Thing("y", 60)], 0, lambda: None) == 1
    take(q)
    assert q.put_many([Thing("huge", 500), Thing("z", 1)], 0, lambda: None) == 1
    assert names(take(q)) == ["huge"]


def test_put_many_over_the_byte_bound_counts_only_what_went_in() -> None:
    """A batch with room by count but not by bytes goes in as far as the bytes allow, with the marks and
    byte count of only those; a lone item over the byte bound goes into an empty queue whole."""
    q: BatchQueue[Thing] = BatchQueue(10, 100, 30.0)
    q.put(Thing("a", 30), 0)
    items = [Thing("x", 50), Thing("y", 50)]
    assert q.put_many(items, 0, lambda: None) == 1
    assert (items[0].mark, q.nbytes, q.accepted, len(q)) == (80, 80, 2, 2)
    assert names(take(q)) == ["a", "x"]
    assert q.nbytes == 0
    assert q.put_many([Thing("huge", 500)], 0, lambda: None) == 1
    assert (q.nbytes, q.accepted) == (500, 3)


def test_put_many_waits_for_room_as_the_taker_drains() -> None:
    """put_many of 50 items into a queue of 5 completes while another thread takes batches."""
    q: BatchQueue[Thing] = BatchQueue(5, BIG, 30.0)
    taken: list[Thing] = []
    done = threading.Event()

    def taker() -> None:
        while not done.is_set() or len(q):
            taken.extend(q.take(2, BIG))

    thread = threading.Thread(target=taker)
    thread.start()
    try:
        assert q.put_many([Thing(i) for i in range(50)], 10.0, lambda: None) == 50
    finally:
        done.set()
        thread.join(10)
    assert names(taken) == list(range(50))
