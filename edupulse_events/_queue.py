"""The hand-off between caller threads and the publisher thread: a bounded `queue.Queue`.

`BatchQueue` bounds both the number of queued events and their encoded bytes, and lets the
consumer take a whole batch under one lock acquisition (one wake-up per batch, not per
event). A lone event larger than the byte bound is still accepted into an empty queue, so
the byte bound can never block forever. Items must have a ``size`` attribute (bytes).
"""

from __future__ import annotations

import queue
import time
from typing import Any


class BatchQueue(queue.Queue):
    """A `queue.Queue` bounded in items (``maxsize``) and in bytes (``maxbytes``).

    Bytes are tracked as two running totals: each item is stamped with the total put so far
    (``item.mark``), so taking any number of items from the head updates the byte count in
    O(1) under the lock. It also counts accepted items and puts that had to wait.
    """

    def __init__(self, maxsize: int, maxbytes: int) -> None:
        super().__init__(maxsize)
        self.maxbytes = maxbytes
        self.bytes_in = 0
        self.bytes_out = 0
        #: Items ever put (the publisher's "accepted" count, kept under the same lock).
        self.accepted = 0
        #: How many put() calls had to wait for room (back-pressure was applied).
        self.blocked_puts = 0
        #: How many put() calls wait for room now (get_batch wakes them only if any).
        self.waiting_puts = 0

    @property
    def nbytes(self) -> int:
        """Encoded bytes currently queued."""
        return self.bytes_in - self.bytes_out

    def _has_room(self, size: int) -> bool:
        n = len(self.queue)
        return n == 0 or (n < self.maxsize and self.bytes_in - self.bytes_out + size <= self.maxbytes)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``; wait up to ``timeout`` for room, then raise `queue.Full`."""
        size = item.size
        mutex = self.mutex
        if not mutex.acquire(False):
            self._acquire(mutex)
        try:
            n = len(self.queue)  # not self._has_room(size): inlined, this runs for every event
            if n and (n >= self.maxsize or self.bytes_in - self.bytes_out + size > self.maxbytes):
                self._wait_for_room(size, block, timeout)
            self.bytes_in += size
            item.mark = self.bytes_in
            self.accepted += 1
            self.queue.append(item)
            # no not_empty.notify(): the publisher thread polls with get_batch() when woken
        finally:
            mutex.release()

    @staticmethod
    def _acquire(mutex: Any) -> None:
        """Take a mutex that another thread holds, without forming a lock convoy.

        A blocking ``acquire()`` takes the lock while this thread does not hold the GIL, then
        waits for the GIL with the lock held; every other caller thread then blocks on the
        lock at its next put, and from there on each put is a hand-off between threads
        (measured: 4 caller threads spent half their CPU time switching). Taking the lock only
        with non-blocking attempts, made while holding the GIL, and sleeping a little between
        them (which lets the holder run) keeps it from ever being held by a waiting thread.
        """
        delay = 0.00005
        while not mutex.acquire(False):
            time.sleep(delay)
            delay = min(delay * 2, 0.001)

    def _wait_for_room(self, size: int, block: bool, timeout: float | None) -> None:
        """Called with the mutex held and no room: wait on ``not_full`` or raise `queue.Full`."""
        if not block or (timeout is not None and timeout <= 0):
            raise queue.Full
        self.blocked_puts += 1
        self.waiting_puts += 1
        try:
            end = None if timeout is None else time.monotonic() + timeout
            while not self._has_room(size):
                if end is None:
                    self.not_full.wait()
                    continue
                remaining = end - time.monotonic()
                if remaining <= 0.0:
                    raise queue.Full
                self.not_full.wait(remaining)
        finally:
            self.waiting_puts -= 1

    def get(self, block: bool = False, timeout: float | None = None) -> Any:
        """The oldest item, without waiting (`queue.Empty` if none): the consumer is woken
        explicitly and takes batches, so put() does not notify ``not_empty``."""
        batch = self.get_batch(1)
        if not batch:
            raise queue.Empty
        return batch[0]

    def get_batch(self, limit: int) -> list[Any]:
        """Take up to ``limit`` items without waiting (possibly none)."""
        mutex = self.mutex
        if not mutex.acquire(False):
            self._acquire(mutex)
        try:
            q = self.queue
            if not q:
                return []
            if limit >= len(q):
                batch = list(q)
                q.clear()
            else:
                popleft = q.popleft
                batch = [popleft() for _ in range(limit)]
            self.bytes_out = batch[-1].mark
            if self.waiting_puts:
                self.not_full.notify_all()
            return batch
        finally:
            mutex.release()

    def take_expired(self, now: float) -> list[Any]:
        """Remove and return the items at the head whose ``deadline`` is before ``now``."""
        out = []
        with self.mutex:
            q = self.queue
            while q and q[0].deadline <= now:
                out.append(q.popleft())
            if out:
                self.bytes_out = out[-1].mark
                if self.waiting_puts:
                    self.not_full.notify_all()
        return out
