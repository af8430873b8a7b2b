"""`PublisherStats`: a snapshot of a publisher's counters, and the tally that keeps the counters of
publisher threads that ended (after a crash) so a snapshot covers the publisher's whole life."""

from __future__ import annotations

import collections
import enum
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from ._engine._worker import Worker

__all__ = ["PublisherState", "PublisherStats"]

#: Ids of failed events a publisher keeps for its closing log (the most recent ones).
FAILED_IDS_KEPT = 10_000


class PublisherState(str, enum.Enum):
    """Where a publisher is in its life: `NatsPublisher.state` and `PublisherStats.state`.

    A ``str`` enum: a member equals its value (``PublisherState.RUNNING == "running"``), and
    ``str()`` and f-strings show the value on every Python version.
    """

    NEW = "new"  #: no publisher thread yet: it starts on start() or the first publish()
    RUNNING = "running"  #: a publisher thread is delivering
    CRASHED = "crashed"  #: the thread died on an unexpected error; the next publish() restarts it
    CLOSED = "closed"  #: close() was called: nothing more is accepted

    def __str__(self) -> str:
        return str(self.value)


@attrs.frozen
class PublisherStats:
    """Counters since the publisher was created (or since fork, in a child process)."""

    #: Events publish() accepted, and how they resolved so far.
    accepted: int
    acknowledged: int
    failed: int
    #: Events queued, not taken by the publisher thread yet.
    queued: int
    #: publish() calls that had to wait for room (back-pressure).
    blocked_publishes: int
    #: The most events outstanding (taken from the queue, not resolved) at once, per thread.
    peak_in_flight: int
    batches: int
    #: Publisher threads that crashed, and how many were started again after a crash.
    crashes: int = 0
    restarts: int = 0
    #: How events are written to nats-py: "fast", "public", or None before the first connection.
    nats_path: str | None = None
    #: Where the publisher is in its life (a ``str`` enum: compares equal to ``"running"`` too).
    state: PublisherState = PublisherState.NEW
    #: Events taken from the queue and not resolved yet (in flight, waiting for a retry...).
    in_flight: int = 0
    #: Attempts retried after a transient failure, and acks that were JetStream duplicates.
    retried: int = 0
    duplicates: int = 0
    #: Failed events by their error's type (e.g. ``{"PublishTimeout": 3}``); sums to ``failed``.
    failures: Mapping[str, int] = attrs.field(factory=dict)
    #: With a spool: events resolved as spooled (``PublishAck.spooled``: on disk, not delivered
    #: yet), spooled events delivered by this publisher (its own and adopted ones), events on disk now.
    spooled: int = 0
    replayed: int = 0
    spool_events: int = 0
    #: Replays of events older than JetStream's default duplicate window (2 min): these may be
    #: stored twice if an earlier attempt reached the stream (each batch is logged as a warning).
    replayed_late: int = 0


class Tally:
    """What publisher threads that ended contributed: added to the running thread's counters."""

    def __init__(self) -> None:
        self.batches = 0
        self.peak = 0
        self.retried = 0
        self.duplicates = 0
        self.failures: dict[str, int] = {}
        #: Ids of the events these threads failed, the most recent `FAILED_IDS_KEPT` (for the closing log).
        self.failed_ids: collections.deque[str] = collections.deque(maxlen=FAILED_IDS_KEPT)

    def absorb(self, worker: Worker) -> None:
        """Keep the counters of ``worker`` (read while its thread may still be counting)."""
        out = worker.outstanding
        self.batches += worker.batches
        self.peak = max(self.peak, out.peak)
        self.retried += out.retried
        self.duplicates += out.duplicates
        add(self.failures, dict(out.failures))  # a copy: the publisher thread may be adding keys
        self.failed_ids.extend(list(out.failed_ids))  # one C call: no list mutated mid-copy

    def failed_before(self, own: Iterable[str], worker: Worker | None) -> list[str]:
        """Ids of failed events: ``own`` (the publisher's), these threads', the running one's."""
        ids = [*own, *self.failed_ids]
        if worker is not None:
            ids += list(worker.outstanding.failed_ids)  # one C call: not mutated mid-copy
        return ids

    def with_thread(self, worker: Worker | None) -> Tally:
        """These counters plus those of the running thread ``worker`` (a new `Tally`, without ids)."""
        total = Tally()
        total.batches, total.peak = self.batches, self.peak
        total.retried, total.duplicates = self.retried, self.duplicates
        add(total.failures, self.failures)
        if worker is not None:
            total.absorb(worker)
        return total


def add(into: dict[str, int], counts: Mapping[str, int]) -> None:
    """Add ``counts`` into ``into``, key by key."""
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n
