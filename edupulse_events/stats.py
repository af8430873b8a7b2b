"""`PublisherStats` and `ConsumerStats`: snapshots of a publisher's and a consumer's counters, and
`PublisherState` (data only: the engine's `_outstanding.Tally` sums the counters of publisher
threads that ended into it)."""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

__all__ = ["ConsumerStats", "PublisherState", "PublisherStats"]

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
    #: Events acknowledged as part of an atomic batch (``publish_many(atomic=True)``), and
    #: through fast-ingest batches (one ack for many events): both are also in ``acknowledged``.
    acknowledged_atomic: int = 0
    acknowledged_fast: int = 0
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


def add(into: dict[str, int], counts: Mapping[str, int]) -> None:
    """Add ``counts`` into ``into``, key by key."""
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n


@attrs.frozen
class ConsumerStats:
    """Counters of a `NatsConsumer` since it was created (or since fork, in a child process)."""

    #: Messages fetched (decodable or not), and how many of them were redeliveries.
    received: int = 0
    redelivered: int = 0
    #: Outcomes: acked, nak'ed (to come again), terminated (dead letters included), dead-lettered.
    acknowledged: int = 0
    nacked: int = 0
    terminated: int = 0
    dead_lettered: int = 0
    #: Dead letters the broker did not store (those messages were nak'ed instead).
    dead_letter_failures: int = 0
    #: Messages that did not decode (dead-lettered), and handler calls that raised.
    undecodable: int = 0
    handler_errors: int = 0
    #: Messages the server gave up on after max_deliver (from its advisories; dead-lettered).
    expired: int = 0
    in_progress: int = 0
    #: Messages delivered to this process and not settled yet, and their bodies' bytes (counted
    #: with ``max_buffered_bytes`` only; 0 otherwise).
    held: int = 0
    held_bytes: int = 0
    #: "new" (not connected yet), "running", "broken" (nats-py gave up on the connection: the
    #: next ``fetch()`` or ``run()`` connects anew), or "closed".
    state: str = "new"
