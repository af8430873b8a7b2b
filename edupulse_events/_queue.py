"""The hand-off between caller threads and the publisher thread: a bounded `queue.Queue`.

`BatchQueue` bounds both the number of queued events and their encoded bytes, and lets the
consumer take a whole batch under one lock acquisition (one wake-up per batch, not per
event). A lone event larger than the byte bound is still accepted into an empty queue, so
the byte bound can never block forever. Items must have a ``size`` attribute (bytes).
"""

from __future__ import annotations

import queue
import time
from typing import Any, List


class BatchQueue(queue.Queue):
    """A `queue.Queue` bounded in items (``maxsize``) and in bytes (``maxbytes``)."""

    def __init__(self, maxsize: int, maxbytes: int) -> None:
        super().__init__(maxsize)
        self.maxbytes = maxbytes
        self.nbytes = 0
        #: How many put() calls had to wait for room (back-pressure was applied).
        self.blocked_puts = 0

    def _has_room(self, size: int) -> bool:
        n = len(self.queue)
        return n == 0 or (n < self.maxsize and self.nbytes + size <= self.maxbytes)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``; wait up to ``timeout`` for room, then raise `queue.Full`."""
        size = item.size
        with self.not_full:
            if not self._has_room(size):
                if not block or (timeout is not None and timeout <= 0):
                    raise queue.Full
                self.blocked_puts += 1
                if timeout is None:
                    while not self._has_room(size):
                        self.not_full.wait()
                else:
                    end = time.monotonic() + timeout
                    while not self._has_room(size):
                        remaining = end - time.monotonic()
                        if remaining <= 0.0:
                            raise queue.Full
                        self.not_full.wait(remaining)
            self.queue.append(item)
            self.nbytes += size
            self.unfinished_tasks += 1
            self.not_empty.notify()

    def _get(self) -> Any:
        item = self.queue.popleft()
        self.nbytes -= item.size
        return item

    def get_batch(self, limit: int) -> List[Any]:
        """Take up to ``limit`` items without waiting (possibly none)."""
        with self.mutex:
            q = self.queue
            if not q:
                return []
            n = min(limit, len(q))
            if n == len(q):
                batch = list(q)
                q.clear()
                self.nbytes = 0
            else:
                popleft = q.popleft
                batch = [popleft() for _ in range(n)]
                self.nbytes -= sum(item.size for item in batch)
            self.not_full.notify_all()
            return batch

    def take_expired(self, now: float) -> List[Any]:
        """Remove and return the items at the head whose ``deadline`` is before ``now``."""
        out = []
        with self.mutex:
            q = self.queue
            while q and q[0].deadline <= now:
                item = q.popleft()
                self.nbytes -= item.size
                out.append(item)
            if out:
                self.not_full.notify_all()
        return out
