"""The hand-off between caller threads and the publisher thread: a bounded batch queue.

`BatchQueue` bounds both the number of queued events and their encoded bytes, stamps each
event's delivery deadline when it is accepted (after any wait for room, so the deadline
never starts before the event is in), and lets the publisher thread take a whole batch
under one lock acquisition (one wake-up per batch, not per event). A lone event larger than
the byte bound is still accepted into an empty queue, so the byte bound can never block
forever. Items need ``size``, ``mark`` and ``deadline`` attributes (`_routing.Item`).
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

__all__ = ["BatchQueue", "Queued"]


class Queued(Protocol):
    """What the queue needs of an item."""

    size: int
    mark: int
    deadline: float


Q = TypeVar("Q", bound=Queued)


class BatchQueue(Generic[Q]):
    """A FIFO bounded in items (``maxsize``) and in bytes (``maxbytes``), for one consumer.

    Producers `put`; the consumer takes with `take` (a batch, never waiting: it is woken
    explicitly), `take_expired` (the head past its deadline) and `take_all`. Deadlines are
    ``ttl`` seconds after acceptance, stamped under the lock, so they never decrease from
    head to tail and the head alone tells what has expired.

    Bytes are tracked as two running totals: each item is stamped with the total put so far
    (``item.mark``), so taking any number of items from the head updates the byte count in
    O(1). It also counts accepted items and puts that had to wait.
    """

    def __init__(self, maxsize: int, maxbytes: int, ttl: float) -> None:
        self.maxsize = maxsize
        self.maxbytes = maxbytes
        self.ttl = ttl
        self._items: collections.deque[Q] = collections.deque()
        self._mutex = threading.Lock()
        self._not_full = threading.Condition(self._mutex)
        self._bytes_in = 0
        self._bytes_out = 0
        #: Items ever put (the publisher's "accepted" count, kept under the same lock).
        self.accepted = 0
        #: How many put() calls had to wait for room (back-pressure was applied).
        self.blocked_puts = 0
        #: How many put() calls wait for room now (takers wake them only if any).
        self._waiting_puts = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Encoded bytes currently queued."""
        return self._bytes_in - self._bytes_out

    def put(self, item: Q, timeout: float) -> None:
        """Add ``item`` and stamp its deadline; wait up to ``timeout`` s for room (0: do not
        wait), then raise `queue.Full`."""
        size = item.size
        mutex = self._mutex
        if not mutex.acquire(False):
            _acquire(mutex)
        try:
            n = len(self._items)  # not _has_room(): inlined, this runs for every event
            if n and (n >= self.maxsize or self._bytes_in - self._bytes_out + size > self.maxbytes):
                self._wait_for_room(size, timeout)
            self._bytes_in += size
            item.mark = self._bytes_in
            item.deadline = time.monotonic() + self.ttl
            self.accepted += 1
            self._items.append(item)
        finally:
            mutex.release()

    def put_many(self, items: Sequence[Q], timeout: float, wake: Callable[[], None]) -> int:
        """Add ``items`` in order under as few lock acquisitions as room allows (one, when they
        fit), waiting for room up to ``timeout`` s in all; returns how many were added (all of
        them, or the ones before the wait ran out: the rest were not). ``wake`` (the taker's
        wake-up) is called before each wait, so that what was added already is taken."""
        mutex = self._mutex
        if not mutex.acquire(False):
            _acquire(mutex)
        try:
            q, n, done = self._items, len(items), 0
            if n and len(q) + n <= self.maxsize:  # room for all by count: one pass, then the bytes
                total, deadline = self._bytes_in, time.monotonic() + self.ttl
                for item in items:
                    total += item.size
                    item.mark = total  # stamps of an item not taken in the end are stamped again
                    item.deadline = deadline
                if total - self._bytes_out <= self.maxbytes or (not q and n == 1):
                    self._bytes_in = total
                    self.accepted += n
                    q.extend(items)
                    return n
            end = time.monotonic() + timeout
            while done < n:
                room = self.maxsize - len(q)
                bytes_room = self.maxbytes - (self._bytes_in - self._bytes_out)
                batch_end = done
                # (the first into an empty queue goes whatever its size, as in put())
                while (
                    batch_end < n and room > 0 and (items[batch_end].size <= bytes_room or not (q or batch_end > done))
                ):
                    bytes_room -= items[batch_end].size
                    room -= 1
                    batch_end += 1
                if batch_end == done:  # no room: wait for the taker, within what is left of timeout
                    wake()
                    try:
                        self._wait_for_room(items[done].size, end - time.monotonic())
                    except queue.Full:
                        return done
                    continue
                deadline = time.monotonic() + self.ttl
                total = self._bytes_in
                for item in items[done:batch_end]:
                    total += item.size
                    item.mark = total
                    item.deadline = deadline
                self._bytes_in = total
                self.accepted += batch_end - done
                q.extend(items[done:batch_end])
                done = batch_end
            return n
        finally:
            mutex.release()

    def put_whole(self, items: Sequence[Q], timeout: float, wake: Callable[[], None]) -> bool:
        """Add all of ``items`` (contiguous, one deadline) or none: wait up to ``timeout`` s for
        room for all of them; False if it did not come (nothing added). An empty queue takes them
        whatever their size (as `put` takes a lone large event)."""
        n, size = len(items), sum(item.size for item in items)
        mutex = self._mutex
        if not mutex.acquire(False):
            _acquire(mutex)
        try:
            q = self._items
            if q and (len(q) + n > self.maxsize or self.nbytes + size > self.maxbytes):
                wake()
                end = time.monotonic() + timeout
                self.blocked_puts += 1
                self._waiting_puts += 1
                try:
                    while q and (len(q) + n > self.maxsize or self.nbytes + size > self.maxbytes):
                        remaining = end - time.monotonic()
                        if remaining <= 0.0:
                            return False
                        self._not_full.wait(remaining)
                finally:
                    self._waiting_puts -= 1
            deadline = time.monotonic() + self.ttl
            total = self._bytes_in
            for item in items:
                total += item.size
                item.mark = total
                item.deadline = deadline
            self._bytes_in = total
            self.accepted += n
            q.extend(items)
            return True
        finally:
            mutex.release()

    def _has_room(self, size: int) -> bool:
        n = len(self._items)
        return n == 0 or (n < self.maxsize and self._bytes_in - self._bytes_out + size <= self.maxbytes)

    def _wait_for_room(self, size: int, timeout: float) -> None:
        """Called with the mutex held and no room: wait on ``not_full`` or raise `queue.Full`."""
        if timeout <= 0:
            raise queue.Full
        self.blocked_puts += 1
        self._waiting_puts += 1
        try:
            end = time.monotonic() + timeout
            while not self._has_room(size):
                remaining = end - time.monotonic()
                if remaining <= 0.0:
                    raise queue.Full
                self._not_full.wait(remaining)
        finally:
            self._waiting_puts -= 1

    def take(self, limit: int, max_bytes: int, first_always: bool = False) -> list[Q]:
        """Take up to ``limit`` items and ``max_bytes`` bytes from the head, without waiting
        (possibly none). With ``first_always`` the first item is taken even if it alone
        exceeds ``max_bytes`` (so a lone big event can always go)."""
        mutex = self._mutex
        if not mutex.acquire(False):
            _acquire(mutex)
        try:
            q = self._items
            if not q or limit <= 0:
                return []
            end = self._bytes_out + max_bytes
            if limit >= len(q) and q[-1].mark <= end:
                batch = list(q)
                q.clear()
            else:
                popleft = q.popleft
                if q[0].mark > end and not first_always:
                    return []
                batch = [popleft()]
                while q and len(batch) < limit and q[0].mark <= end:
                    batch.append(popleft())
            self._taken(batch[-1])
            return batch
        finally:
            mutex.release()

    def take_expired(self, now: float) -> list[Q]:
        """Remove and return the items whose deadline is at or before ``now`` (all at the head)."""
        out: list[Q] = []
        with self._mutex:
            q = self._items
            while q and q[0].deadline <= now:
                out.append(q.popleft())
            if out:
                self._taken(out[-1])
        return out

    def take_all(self) -> list[Q]:
        """Remove and return everything queued."""
        with self._mutex:
            batch = list(self._items)
            self._items.clear()
            if batch:
                self._taken(batch[-1])
            return batch

    def _taken(self, last: Q) -> None:
        """With the mutex held: items up to ``last`` left the queue."""
        self._bytes_out = last.mark
        if self._waiting_puts:
            self._not_full.notify_all()


def _acquire(mutex: threading.Lock) -> None:
    """Take a mutex that another thread holds, without forming a lock convoy.

    A blocking ``acquire()`` takes the lock while this thread does not hold the GIL, then
    waits for the GIL with the lock held; every other caller thread then blocks on the lock
    at its next put, and from there on each put is a hand-off between threads (measured: 4
    caller threads spent half their CPU time switching). Taking the lock only with
    non-blocking attempts, made while holding the GIL, and sleeping a little between them
    (which lets the holder run) keeps it from ever being held by a waiting thread.
    """
    delay = 0.00005
    while not mutex.acquire(False):
        time.sleep(delay)
        delay = min(delay * 2, 0.001)
