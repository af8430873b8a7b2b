"""The publisher thread's bookkeeping of events taken from the queue and not resolved yet.

An event leaves the `BatchQueue` into exactly one of these places and moves between them
until its future resolves: in flight (a JetStream publish awaiting its ack, by publish
sequence), in a core batch awaiting its PONG, waiting out a retry backoff (a timer), ready
to be resent, or parked while the one stream check for its subject runs. `Outstanding`
holds them all, counts them and their bytes (the window's two bounds), resolves futures
(counting each transition once, reported to the publisher once per loop iteration), and
gives everything back at once — `abandon_all` — when the thread stops or crashes.
Everything here runs on the publisher thread.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._pipeline._routing import Item
from .._spool._spooling import DELETE_DELAY
from ..errors import PublisherClosed, PublisherCrashed
from ..futures import settle
from ..stats import FAILED_IDS_KEPT

if TYPE_CHECKING:
    from .._spool._spooling import Spooling
    from ._otel import Telemetry

__all__ = ["Outstanding", "undelivered"]


class Outstanding:
    """Events between the queue and their outcome; ``count`` and ``nbytes`` hold window slots."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_resolved: Callable[[int, int, int], None]) -> None:
        self._loop = loop
        self._on_resolved = on_resolved
        #: JetStream publishes awaiting their ack, by publish sequence.
        self.inflight: dict[int, Item] = {}
        #: Core batches awaiting their PONG: key -> (events, timer that ends the attempt).
        self.core: dict[int, tuple[list[Item], asyncio.TimerHandle]] = {}
        #: Events waiting out a retry backoff, with the timer that requeues them.
        self.delayed: dict[Item, asyncio.TimerHandle] = {}
        #: Events ready to be sent again (they keep their window slots).
        self.retries: list[Item] = []
        #: Events that got "no responders", by subject, waiting for that subject's stream check.
        self.parked: dict[bytes, list[Item]] = {}
        #: Events a step took out of the places above and has not placed or resolved yet (a
        #: step that crashes midway leaves them here, and `abandon_all` still finds them).
        self.hand: list[Item] = []
        #: Events taken from the queue and not resolved, and their bytes (headers + body).
        self.count = 0
        self.nbytes = 0
        #: The most events outstanding at once.
        self.peak = 0
        #: Attempts retried after a transient failure, acks that were JetStream duplicates, and
        #: events failed by their error's type (what stats() and the metrics report).
        self.retried = 0
        self.duplicates = 0
        self.failures: dict[str, int] = {}
        #: Ids of the events failed most recently (for the publisher's closing log).
        self.failed_ids: collections.deque[str] = collections.deque(maxlen=FAILED_IDS_KEPT)
        #: Records acceptance-to-outcome durations while a metrics SDK is configured (`_otel`).
        self.telemetry: Telemetry | None = None
        #: The spool (`PublisherConfig.spool_dir`): events failing for a transient reason go there.
        self.spooling: Spooling | None = None
        self._keep: list[tuple[Item, BaseException]] = []
        self._delete_timer: asyncio.TimerHandle | None = None
        #: Schedules a timer (the worker gives its supervisor's, so what a timer raises is a crash).
        self.call_at: Callable[..., asyncio.TimerHandle] = loop.call_at
        self._acked = 0
        self._failed = 0
        self._kept = 0
        self._report_scheduled = False

    def take(self, batch: Sequence[Item]) -> None:
        """``batch`` left the queue: it holds window slots until each event resolves."""
        self.count += len(batch)
        self.nbytes += sum(item.size for item in batch)
        if self.count > self.peak:
            self.peak = self.count

    def succeed(self, items: Sequence[Item], results: Sequence[Any]) -> None:
        """Resolve ``items`` (all pending) with ``results`` (acks; see `futures.settle`)."""
        resolved = settle([item.future for item in items], results)
        self.count -= resolved
        self.nbytes -= sum(item.size for item in items)
        spooling = self.spooling
        self._acked += resolved if spooling is None else resolved - spooling.acked(items)
        self._schedule_report()
        telemetry = self.telemetry
        if telemetry is not None and telemetry.metering:
            telemetry.record(items, time.monotonic())

    def fail(self, item: Item, exc: BaseException) -> bool:
        """Fail ``item``'s future with ``exc``; False if it had already resolved, or if the spool
        takes it instead (a transient error, resolved as spooled once written: see `report`)."""
        if self.spooling is not None and (item.replay or self.spooling.keeps(item, exc)):
            if item.future.resolved():
                return False
            self.count -= 1
            self.nbytes -= item.size
            self._keep.append((item, exc))
            self._schedule_report()
            return False
        if not _set_exception(item, exc):
            return False
        self.count -= 1
        self.nbytes -= item.size
        self._failed += 1
        kind = type(exc).__name__
        self.failures[kind] = self.failures.get(kind, 0) + 1
        self.failed_ids.append(item.event_id)
        self._schedule_report()
        telemetry = self.telemetry
        if telemetry is not None and telemetry.metering:
            telemetry.record((item,), time.monotonic(), exc)
        return True

    def expired(self, now: float) -> list[Item]:
        """Move to `hand` and return the events past their deadline that wait for something
        other than an ack or a PONG (a retry, a backoff, a stream check). In-flight events are
        the sweep's; core batches keep theirs until the batch settles (their futures are failed)."""
        out = self.hand
        out += [item for item in self.retries if item.deadline <= now]
        if out:
            self.retries = [item for item in self.retries if item.deadline > now]
        for item in [item for item in self.delayed if item.deadline <= now]:
            self.delayed.pop(item).cancel()
            out.append(item)
        for subject, waiting in list(self.parked.items()):
            late = [item for item in waiting if item.deadline <= now]
            if late:
                out += late
                self.parked[subject] = [item for item in waiting if item.deadline > now]
        return out

    def abandon_all(self) -> list[Item]:
        """Remove and return every outstanding event, cancelling their timers (the caller
        fails them: the thread is stopping or crashed)."""
        items = list(self.inflight.values()) + self.retries + list(self.delayed) + self.hand
        for batch, timer in self.core.values():
            timer.cancel()
            items += batch
        for handle in self.delayed.values():
            handle.cancel()
        for waiting in self.parked.values():
            items += waiting
        self.inflight.clear()
        self.core.clear()
        self.delayed.clear()
        self.retries = []
        self.parked.clear()
        self.hand = []
        return items

    def _schedule_report(self) -> None:
        if not self._report_scheduled:
            self._report_scheduled = True
            if self._loop.is_closed():  # the thread's last act (see Worker._ended)
                self.report()
            else:
                self._loop.call_soon(self.report)

    def report(self) -> None:
        """Tell the publisher how many events resolved since the last report."""
        self._report_scheduled = False
        spooling = self.spooling
        if spooling is not None:
            self._to_spool(spooling)
        acked, failed, kept = self._acked, self._failed, self._kept
        self._acked = self._failed = self._kept = 0
        if acked or failed or kept:
            self._on_resolved(acked, failed, kept)

    def _delete_late(self, spooling: Spooling) -> None:
        self._delete_timer = None
        spooling.flush()

    def _to_spool(self, spooling: Spooling) -> None:
        """Write the events `fail` handed to the spool; fail those it could not keep. Rows of
        acknowledged events are deleted in batches (a timer deletes the last ones)."""
        closing = self._loop.is_closed()
        if spooling.flush(force=closing) and self._delete_timer is None and not closing:
            self._delete_timer = self.call_at(self._loop.time() + DELETE_DELAY, self._delete_late, spooling)
        if not self._keep:
            return
        pairs, self._keep = self._keep, []
        rest, kept = spooling.keep(pairs)
        self._kept += kept
        for item, exc in rest:
            if _set_exception(item, exc):
                self._failed += 1
                kind = type(exc).__name__
                self.failures[kind] = self.failures.get(kind, 0) + 1
                self.failed_ids.append(item.event_id)


def undelivered(item: Item, crash: PublisherCrashed | None, before: str) -> PublisherCrashed | PublisherClosed:
    """The error of an event given up on ``before`` ("sent", "acknowledged"): the thread's crash, or close()."""
    if crash is None:
        return PublisherClosed(f"publisher closed before event {item.event_id} was {before}")
    error = PublisherCrashed(f"{crash} before event {item.event_id} was {before}")
    error.__cause__ = crash.__cause__
    return error


def _set_exception(item: Item, exc: BaseException) -> bool:
    future = item.future
    if future.resolved():
        return False
    future.set_exception(exc)  # runs the done-callbacks (each isolated: see PublishFuture)
    return True
