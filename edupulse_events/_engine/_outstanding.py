"""The publisher thread's bookkeeping of events taken from the queue and not resolved yet.

An event leaves the `BatchQueue` into exactly one of these places and moves between them
until its future resolves: in flight (a JetStream publish awaiting its ack, by publish
sequence), in a core batch awaiting its PONG, waiting out a retry backoff (a timer), ready
to be resent, or parked while the one stream check for its subject runs. `Outstanding`
holds them all, counts them and their bytes (the window's two bounds), resolves futures
(counting each transition once, reported to the publisher once per loop iteration), and
gives everything back at once — `abandon_all` — when the thread stops or crashes. An atomic
batch (a `Group`) waits in these places as its last event and resolves whole (`send_group`,
`succeed_group`, `fail`); fast-ingest events wait in flight like any other and are settled
by the hundred (`settle_fast`).

The senders and `Attempts` move events only through its methods (`send_js`, `settle_acks`,
`add_core`, `pop_core`, `park`, `unpark`, `delay`, `requeue`, `overdue`, ...): the places
are read-only outside this module. An event a step takes out of a place waits in `hand`
until the step has placed or resolved it, and `placed` empties `hand`.
`Tally` sums the counters kept here over the publisher threads that ended, beside them.
Everything here runs on the publisher thread (its timers and reports through the `Supervisor`).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any, Protocol

from .._nats._acks import Ack
from .._pipeline._routing import Group, Item
from .._spool._spooling import DELETE_DELAY
from ..errors import PublisherClosed, PublisherCrashed
from ..futures import new_ack, settle
from ..stats import FAILED_IDS_KEPT, add

if TYPE_CHECKING:
    from .._spool._spooling import Spooling
    from ._otel import Telemetry
    from ._supervisor import Supervisor

__all__ = ["Counted", "Outstanding", "Tally", "undelivered"]


class Outstanding:
    """Events between the queue and their outcome; ``count`` and ``nbytes`` hold window slots."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        supervisor: Supervisor,
        on_resolved: Callable[[int, int, int], None],
    ) -> None:
        self._loop = loop
        self._supervisor = supervisor
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
        #: Events acknowledged in atomic batches and through fast ingest.
        self.atomic = 0
        self.fast = 0
        self.failures: dict[str, int] = {}
        #: Ids of the events failed most recently (for the publisher's closing log).
        self.failed_ids: collections.deque[str] = collections.deque(maxlen=FAILED_IDS_KEPT)
        #: Records acceptance-to-outcome durations while a metrics SDK is configured (`_otel`).
        self.telemetry: Telemetry | None = None
        #: The spool (`PublisherConfig.spool_dir`): events failing for a transient reason go there.
        self.spooling: Spooling | None = None
        self._keep: list[tuple[Item, BaseException]] = []
        self._keeping: set[Item] = set()  # the events in _keep
        self._delete_timer: asyncio.TimerHandle | None = None
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
        """Fail ``item``'s future with ``exc`` (every event of its atomic batch, if it is in one);
        False if it had already resolved, or if the spool takes it instead (a transient error,
        resolved as spooled once written: see `report`)."""
        group = item.group
        if group is None:
            return self._fail(item, exc)
        failed = False
        for member in group.items:
            failed = self._fail(member, exc) or failed
        return failed

    def _fail(self, item: Item, exc: BaseException) -> bool:
        spooling = self.spooling
        if spooling is not None and (item.replay or spooling.keeps(item, exc)):
            if item.future.resolved() or item in self._keeping:  # (an atomic batch is failed once per event)
                return False
            self._keeping.add(item)
            self.count -= 1
            self.nbytes -= item.size
            self._keep.append((item, exc))
            self._schedule_report()
            return False
        if not _set_exception(item, exc):
            return False
        if spooling is not None and item.spool_id:  # refused for good: its write-ahead row goes
            spooling.discard(item)
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

    # ------------------------------------------------------------ moves between the places
    def send_js(self, batch: Sequence[Item], first: int, now: float) -> None:
        """``batch`` is written to JetStream as publish sequences ``first``, ``first + 1``, ...:
        in flight from ``now`` (one more attempt each)."""
        inflight = self.inflight
        seq = first
        for item in batch:
            item.attempts += 1
            item.sent_at = now
            inflight[seq] = item
            seq += 1

    def send_group(self, group: Group, seq: int, now: float) -> None:
        """``group`` is written as one atomic batch whose commit answers on publish sequence
        ``seq``: in flight from ``now`` as its last event (one more attempt each)."""
        for item in group.items:
            item.attempts += 1
            item.sent_at = now
        self.inflight[seq] = group.last

    def succeed_group(self, group: Group, stream: str | None, last: int | None) -> None:
        """``group`` was stored, its last event at stream sequence ``last`` (the others just
        before it, in order: the server stores a batch contiguously); ``last`` None: the stream
        refused a resent batch for holding its event ids already (duplicates: stored before)."""
        n = len(group.items)
        results: list[Any]
        if last is None:
            results = [new_ack(None, stream, True)] * n
            self.duplicates += n
        else:  # ack tuples: each future makes its PublishAck when asked (`futures.settle`)
            results = [(0, stream, seq, False, None) for seq in range(last - n + 1, last + 1)]
        self.atomic += n
        self.succeed(group.items, results)

    def settle_fast(self, keys: range, stream: str | None) -> None:
        """The in-flight events sent as publish sequences ``keys`` through fast ingest were
        stored (the server does not say at which stream sequences)."""
        pop = self.inflight.pop
        items = [item for item in map(pop, keys, repeat(None)) if item is not None]
        if items:
            self.fast += len(items)
            self.succeed(items, [new_ack(None, stream, False)] * len(items))

    def take_inflight(self, keys: range) -> list[Item]:
        """The in-flight events of ``keys`` (into `hand`): their attempt ended without an ack."""
        pop = self.inflight.pop
        items = [item for item in map(pop, keys, repeat(None)) if item is not None]
        self.hand += items
        return items

    def settle_acks(self, acks: Iterable[Ack]) -> list[tuple[Item, dict[str, Any]]]:
        """Resolve the in-flight events these acks answer, together (a late ack for an attempt
        already retried is ignored: the retry gets its own). Acks that are errors come back with
        their events, which wait in `hand` until placed."""
        pop = self.inflight.pop
        hand = self.hand
        items: list[Item] = []
        results: list[Any] = []
        refused: list[tuple[Item, dict[str, Any]]] = []
        for ack in acks:
            item = pop(ack[0], None)
            if item is None:
                continue
            hand.append(item)
            error = ack[4]
            if error is not None:
                refused.append((item, error))
            elif item.group is not None:  # an atomic batch's commit: all of it was stored
                self.succeed_group(item.group, ack[1], ack[2])
            elif ack[3]:  # a duplicate: rare, so a PublishAck now
                self.duplicates += 1
                items.append(item)
                results.append(new_ack(ack[2], ack[1], True))
            else:
                items.append(item)
                results.append(ack)  # settle() keeps the sequence; result() makes the PublishAck
        if items:
            self.succeed(items, results)
        return refused

    def add_core(self, key: int, batch: Sequence[Item], timer: asyncio.TimerHandle) -> None:
        """A core batch awaits its PONG under ``key``; ``timer`` ends the attempt."""
        self.core[key] = (list(batch), timer)

    def pop_core(self, key: int) -> list[Item] | None:
        """The core batch ``key`` (into `hand`, its timer cancelled), or None if it settled already."""
        entry = self.core.pop(key, None)
        if entry is None:
            return None
        batch, timer = entry
        timer.cancel()
        self.hand += batch
        return batch

    def core_keys(self) -> list[int]:
        """The keys of the core batches awaiting their PONG."""
        return list(self.core)

    def park(self, subject: bytes, item: Item) -> bool:
        """``item`` got "no responders": it waits for ``subject``'s stream check. True if it is
        the first to wait on ``subject`` (the caller starts the check)."""
        waiting = self.parked.get(subject)
        if waiting is not None:
            waiting.append(item)
            return False
        self.parked[subject] = [item]
        return True

    def unpark(self, subject: bytes) -> list[Item]:
        """The events waiting for ``subject``'s stream check (into `hand`): it has answered."""
        waiting = self.parked.pop(subject, [])
        self.hand += waiting
        return waiting

    def delay(self, item: Item, timer: asyncio.TimerHandle) -> None:
        """``item`` waits out a retry backoff; ``timer`` calls `requeue` (counted as a retry)."""
        self.retried += 1
        self.delayed[item] = timer

    def requeue(self, item: Item) -> None:
        """``item``'s backoff is over: ready to be resent (it keeps its window slots)."""
        self.delayed.pop(item, None)
        self.retries.append(item)

    def undelay(self, item: Item) -> None:
        """``item``'s backoff timer fired and it is resolved elsewhere: forget the timer."""
        self.delayed.pop(item, None)

    def take_retries(self) -> list[Item]:
        """The events ready to be resent (the drain loop sends them first)."""
        retries, self.retries = self.retries, []
        return retries

    def resend_inflight(self) -> int:
        """The connection was replaced: what awaited an ack is to be sent again; how many."""
        n = len(self.inflight)
        self.retries.extend(self.inflight.values())
        self.inflight.clear()
        return n

    def overdue(self, now: float, attempt_timeout: float, budget: int) -> tuple[list[Item], list[Item]]:
        """In-flight events past their deadline, and (while ``budget`` bytes allow) those that got
        no ack within ``attempt_timeout``: both out of flight, into `hand`."""
        expired: list[Item] = []
        unanswered: list[Item] = []
        inflight = self.inflight
        late = [
            seq
            for seq, item in inflight.items()
            if item.deadline <= now or (budget > 0 and item.sent_at + attempt_timeout <= now)
        ]
        for seq in late:
            item = inflight[seq]
            if item.deadline <= now:
                expired.append(item)
            elif budget > 0:
                budget -= item.size
                unanswered.append(item)
            else:
                continue
            del inflight[seq]
            self.hand.append(item)
        return expired, unanswered

    def core_expired(self, now: float) -> list[Item]:
        """Unresolved events of core batches past their deadline (they stay in their batch)."""
        return [
            item
            for batch, _timer in self.core.values()
            for item in batch
            if item.deadline <= now and not item.future.resolved()
        ]

    def placed(self) -> None:
        """The step that took events into `hand` has placed or resolved every one."""
        self.hand.clear()

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
                self._supervisor.call_soon(self.report)

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
        acknowledged events (and of those refused for good) are deleted in batches (a timer
        deletes the last ones): after `Spooling.keep`, which adds the refused replays' rows."""
        if self._keep:
            pairs, self._keep = self._keep, []
            self._keeping.clear()
            rest, kept = spooling.keep(pairs)
            self._kept += kept
            for item, exc in rest:
                if _set_exception(item, exc):
                    self._failed += 1
                    kind = type(exc).__name__
                    self.failures[kind] = self.failures.get(kind, 0) + 1
                    self.failed_ids.append(item.event_id)
        closing = self._loop.is_closed()
        if spooling.flush(force=closing) and self._delete_timer is None and not closing:
            self._delete_timer = self._supervisor.call_at(self._loop.time() + DELETE_DELAY, self._delete_late, spooling)


class Counted(Protocol):
    """What a publisher thread offers its `Tally`: its bookkeeping and how many batches it wrote."""

    @property
    def outstanding(self) -> Outstanding: ...

    @property
    def batches(self) -> int: ...


class Tally:
    """What publisher threads that ended contributed: added to the running thread's counters."""

    def __init__(self) -> None:
        self.batches = 0
        self.peak = 0
        self.retried = 0
        self.duplicates = 0
        #: Events acknowledged in atomic batches and through fast ingest.
        self.atomic = 0
        self.fast = 0
        self.failures: dict[str, int] = {}
        #: Ids of the events these threads failed, the most recent `FAILED_IDS_KEPT` (for the closing log).
        self.failed_ids: collections.deque[str] = collections.deque(maxlen=FAILED_IDS_KEPT)

    def absorb(self, thread: Counted) -> None:
        """Keep the counters of ``thread`` (read while it may still be counting)."""
        out = thread.outstanding
        self.batches += thread.batches
        self.peak = max(self.peak, out.peak)
        self.retried += out.retried
        self.duplicates += out.duplicates
        self.atomic += out.atomic
        self.fast += out.fast
        add(self.failures, dict(out.failures))  # a copy: the publisher thread may be adding keys
        self.failed_ids.extend(list(out.failed_ids))  # one C call: no list mutated mid-copy

    def failed_before(self, own: Iterable[str], thread: Counted | None) -> list[str]:
        """Ids of failed events: ``own`` (the publisher's), these threads', the running one's."""
        ids = [*own, *self.failed_ids]
        if thread is not None:
            ids += list(thread.outstanding.failed_ids)  # one C call: not mutated mid-copy
        return ids

    def with_thread(self, thread: Counted | None) -> Tally:
        """These counters plus those of the running ``thread`` (a new `Tally`, without ids)."""
        total = Tally()
        total.batches, total.peak = self.batches, self.peak
        total.retried, total.duplicates = self.retried, self.duplicates
        total.atomic, total.fast = self.atomic, self.fast
        add(total.failures, self.failures)
        if thread is not None:
            total.absorb(thread)
        return total


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
