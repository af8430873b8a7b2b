"""The relay's delivery: committed outbox rows to the broker, one claim at a time.

A pass claims pending rows of whole transactions (`Store.claim`), oldest first, and hands them
to the publisher as atomic batches, as they were stored (``publish_encoded(atomic=True)``: the
subject, header block and body the writer made, checked by the publisher, neither decoded nor
encoded again): whole transactions packed into one batch up to ``max_batch`` events, so a stream
holds all of a transaction's events or none, in the order they were added, and several small
transactions cost one batch. A batch the publisher does not take as it is (a row it could not
have written: another subject template, a CloudEvents publisher; a publisher without
``publish_encoded``), and every batch once atomic batches are off, is decoded with the codec and
published with ``publish_many``/``publish``, which route and encode it again, as the publisher
would any envelope. A transaction longer than ``max_batch`` goes in chunks of ``max_batch``: each
chunk is atomic, the transaction is not. One batch is in flight at a time: the next is sent
after the previous is acknowledged, so the stream's order is the claim's order.

Outcomes, per batch:

- acknowledged: its rows are delivered (deleted, or kept with ``delivered_at``).
- ``EventRejected`` (refused for good) or ``InvalidEvent`` (the publisher refused it): a batch of
  several transactions is sent again one transaction at a time, and only the transaction refused
  goes to the dead-letter table, with the reason; the others go on. A row whose body does not
  decode (when it must be decoded) takes its transaction to the dead letters too (never half of
  it to the stream).
- ``err_code`` 10174 (the stream does not allow atomic batches), or `InvalidBatch` (a publisher
  that has none: core NATS): from then on this relay sends event by event, in order, each waiting
  for its ack before the next (logged once).
- a batch resent after a relay died between the ack and deleting its rows: `NatsPublisher`
  resolves it as stored (the stream refuses it for holding stored ids, 10201): delivered once.
- anything else (no connection, no ack in time, the publisher closed): the pass stops there;
  what was acknowledged before is settled, the rest stays pending for the next pass.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from .._pipeline._encoded import EncodedEvent
from ..errors import (
    BrokerError,
    DecodeError,
    EventRejected,
    InvalidBatch,
    InvalidEvent,
    PublisherClosed,
    QueueFull,
    WaitTimeout,
)
from ._schema import StoredRow

if TYPE_CHECKING:
    from ..config import EnvelopeCodec
    from ..envelope import EventEnvelope
    from ..publisher import EventPublisher
    from ._otel import RelayTelemetry
    from ._stores import Store

__all__ = ["ATOMIC_DISABLED", "Delivery", "EncodedPublisher", "Outage", "Pass", "groups", "pack"]

log = logging.getLogger("edupulse_events.outbox")

#: JSAtomicPublishDisabledErr: the stream was not created with allow_atomic.
ATOMIC_DISABLED = 10174


@runtime_checkable
class EncodedPublisher(Protocol):
    """A publisher that sends events as they were stored (`NatsPublisher`, `InMemoryPublisher`)."""

    def publish_encoded(
        self, events: Iterable[EncodedEvent], *, timeout: float | None = None, atomic: bool = False
    ) -> list[concurrent.futures.Future[Any]]: ...


class Pass(NamedTuple):
    """One pass: rows claimed, delivered, dead-lettered."""

    claimed: int
    delivered: int
    dead: int


class Outage(Exception):
    """The broker could not take a batch now (the pass stops; rows stay pending). ``error`` says why."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def groups(rows: Sequence[StoredRow]) -> list[list[StoredRow]]:
    """``rows`` by transaction: each transaction's rows in id order, transactions by their first id."""
    by_txid: dict[int, list[StoredRow]] = {}
    for row in rows:
        by_txid.setdefault(row.txid, []).append(row)
    return sorted(by_txid.values(), key=lambda group: group[0].id)


def pack(transactions: Sequence[list[StoredRow]], max_batch: int) -> Iterator[list[list[StoredRow]]]:
    """Whole transactions packed into batches of at most ``max_batch`` rows, in order; a longer
    transaction alone, in chunks of ``max_batch``."""
    batch: list[list[StoredRow]] = []
    size = 0
    for transaction in transactions:
        if size + len(transaction) > max_batch and batch:
            yield batch
            batch, size = [], 0
        if len(transaction) > max_batch:
            for start in range(0, len(transaction), max_batch):
                yield [transaction[start : start + max_batch]]
            continue
        batch.append(transaction)
        size += len(transaction)
    if batch:
        yield batch


def _once(rows: list[StoredRow]) -> tuple[list[int], list[int]]:
    """The same event added twice (one id) is sent once: the indexes of ``rows`` to send, and the
    ids of the later rows, delivered with the first."""
    seen: set[str] = set()
    kept: list[int] = []
    twins: list[int] = []
    for index, row in enumerate(rows):
        if row.event_id in seen:
            twins.append(row.id)
            continue
        seen.add(row.event_id)
        kept.append(index)
    return kept, twins


class Delivery:
    """Delivers claims from ``store`` with ``publisher`` (one relay's state: whether atomic batches
    work, counters)."""

    def __init__(
        self,
        store: Store,
        publisher: EventPublisher,
        codec: EnvelopeCodec | None,
        *,
        max_batch: int,
        claim: int,
        wait_timeout: float,
        keep: bool,
        telemetry: RelayTelemetry | None,
    ) -> None:
        from ..codec import decode

        self.store = store
        self.publisher = publisher
        #: The publisher's ``publish_encoded`` (stored rows sent as they are), if it has one.
        self.encoded = publisher if isinstance(publisher, EncodedPublisher) else None
        self._unfit_said = False  # logged once: a row the publisher did not take as it is
        self._decode = decode if codec is None else codec.decode
        self.max_batch = max_batch
        self.claim = claim
        self.wait_timeout = wait_timeout
        self.keep = keep
        self.telemetry = telemetry
        #: False once the stream said it takes no atomic batches (or the publisher has none).
        self.atomic = True
        self.delivered = 0
        self.dead = 0

    # ------------------------------------------------------------------ one pass
    def run_pass(self) -> Pass:
        """Claim, send, settle. Raises `Outage` (after settling what was acknowledged) when the
        broker could not take a batch, `OutboxDatabaseError` when the database failed."""
        rows = self.store.claim(self.claim)
        if not rows:
            return Pass(0, 0, 0)
        delivered: list[int] = []
        dead: list[tuple[int, str]] = []
        outage: Outage | None = None
        with self.telemetry.span(rows) if self.telemetry is not None else contextlib.nullcontext() as span:
            try:
                for batch in pack(groups(rows), self.max_batch):
                    self._send(batch, delivered, dead)
            except Outage as exc:
                outage = exc
            except BaseException:
                self.store.release()
                raise
            self.store.settle(delivered, dead, time.time(), self.keep)
            if self.telemetry is not None:
                self.telemetry.outcome(span, len(delivered), len(dead), outage)
        self.delivered += len(delivered)
        self.dead += len(dead)
        if outage is not None:
            raise outage
        return Pass(len(rows), len(delivered), len(dead))

    # ------------------------------------------------------------------ sending
    def _send(self, batch: list[list[StoredRow]], delivered: list[int], dead: list[tuple[int, str]]) -> None:
        if self.atomic and self.encoded is not None and self._send_encoded(batch, delivered, dead):
            return
        batch, envelopes = self._envelopes(batch, dead)
        if not envelopes:
            return
        rows = [row for transaction in batch for row in transaction]
        twins: list[int] = []
        if len({row.event_id for row in rows}) < len(rows):
            kept, twins = _once(rows)
            rows, envelopes = [rows[i] for i in kept], [envelopes[i] for i in kept]
        log.debug("outbox relay: sending %d events of %d transactions, decoded", len(rows), len(batch))
        if not self.atomic:
            delivered += twins
            self._send_each(rows, envelopes, delivered, dead)
            return
        try:
            futures = self.publisher.publish_many(envelopes, atomic=True, timeout=self.wait_timeout)
        except InvalidBatch as exc:  # a publisher that cannot (core NATS): nothing was queued
            self._atomic_off(f"the publisher sends no atomic batches ({' '.join(str(exc).split())})")
            delivered += twins
            self._send_each(rows, envelopes, delivered, dead)
            return
        except InvalidEvent as exc:  # an event the publisher refuses (nothing was queued)
            self._refused(batch, exc, delivered, dead)
            return
        except (QueueFull, PublisherClosed, BrokerError) as exc:
            raise Outage(exc) from exc
        error = self._wait(futures)
        if error is None:
            delivered += twins
            delivered += [row.id for row in rows]
        elif isinstance(error, EventRejected) and error.err_code == ATOMIC_DISABLED:
            self._atomic_off("the stream does not allow atomic batches (allow_atomic); err_code 10174")
            delivered += twins
            self._send_each(rows, envelopes, delivered, dead)
        elif isinstance(error, EventRejected):
            self._refused(batch, error, delivered, dead)
        else:
            raise Outage(error)

    def _send_encoded(self, batch: list[list[StoredRow]], delivered: list[int], dead: list[tuple[int, str]]) -> bool:
        """Send ``batch`` as stored (``publish_encoded``, atomic); False when the publisher took
        none of it (a row it could not have written, no atomic batches): `_send` decodes it then."""
        assert self.encoded is not None
        rows = [row for transaction in batch for row in transaction]
        twins: list[int] = []
        if len({row.event_id for row in rows}) < len(rows):
            kept, twins = _once(rows)
            rows = [rows[i] for i in kept]
        events = [EncodedEvent(row.event_id, row.subject, row.headers, row.body) for row in rows]
        log.debug("outbox relay: sending %d events of %d transactions", len(rows), len(batch))
        try:
            futures = self.encoded.publish_encoded(events, atomic=True, timeout=self.wait_timeout)
        except InvalidEvent as exc:  # nothing was queued: decoded, routed and encoded by the publisher
            if not self._unfit_said:
                self._unfit_said = True
                log.warning(
                    "outbox relay: the publisher does not send a stored row as it is (%s); such batches are "
                    "decoded and encoded again by the publisher (slower; a row whose body does not decode goes "
                    "to the dead letters with its transaction)",
                    " ".join(str(exc).split()),
                )
            return False
        except InvalidBatch as exc:  # a publisher that cannot (core NATS): nothing was queued
            self._atomic_off(f"the publisher sends no atomic batches ({' '.join(str(exc).split())})")
            return False
        except (QueueFull, PublisherClosed, BrokerError) as exc:
            raise Outage(exc) from exc
        error = self._wait(futures)
        if error is None:
            delivered += twins
            delivered += [row.id for row in rows]
        elif isinstance(error, EventRejected) and error.err_code == ATOMIC_DISABLED:
            self._atomic_off("the stream does not allow atomic batches (allow_atomic); err_code 10174")
            return False
        elif isinstance(error, EventRejected):  # (its twins go with it: resent, or dead-lettered)
            self._refused(batch, error, delivered, dead)
        else:
            raise Outage(error)
        return True

    def _envelopes(
        self, batch: list[list[StoredRow]], dead: list[tuple[int, str]]
    ) -> tuple[list[list[StoredRow]], list[EventEnvelope]]:
        """Decode every row; a transaction with a row that does not decode goes to ``dead`` whole."""
        kept: list[list[StoredRow]] = []
        envelopes: list[EventEnvelope] = []
        for transaction in batch:
            try:
                decoded = [self._decode(row.body) for row in transaction]
            except DecodeError as exc:
                reason = f"the stored body does not decode: {' '.join(str(exc).split())}"
                dead += [(row.id, reason) for row in transaction]
                log.error(
                    "outbox: %d events of one transaction moved to the dead letters: %s", len(transaction), reason
                )
                continue
            kept.append(transaction)
            envelopes += decoded
        return kept, envelopes

    def _refused(
        self, batch: list[list[StoredRow]], error: Exception, delivered: list[int], dead: list[tuple[int, str]]
    ) -> None:
        """A batch refused for good: one transaction alone goes to the dead letters; several are
        sent again one by one, so only the one refused does."""
        if len(batch) > 1:
            for transaction in batch:
                self._send([transaction], delivered, dead)
            return
        reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
        dead += [(row.id, reason) for row in batch[0]]
        log.error("outbox: %d events of one transaction moved to the dead letters: %s", len(batch[0]), reason)

    def _send_each(
        self, rows: list[StoredRow], envelopes: list[EventEnvelope], delivered: list[int], dead: list[tuple[int, str]]
    ) -> None:
        """Event by event, in order, each acknowledged before the next is sent."""
        for row, envelope in zip(rows, envelopes, strict=True):
            try:
                future = self.publisher.publish(envelope, timeout=self.wait_timeout)
            except InvalidEvent as exc:
                error: BaseException | None = exc
            except (QueueFull, PublisherClosed, BrokerError) as exc:
                raise Outage(exc) from exc
            else:
                error = self._wait([future])
            if error is None:
                delivered.append(row.id)
            elif isinstance(error, (EventRejected, InvalidEvent)):
                reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
                dead.append((row.id, reason))
                log.error("outbox: event %s moved to the dead letters: %s", row.event_id, reason)
            else:
                raise Outage(error)

    def _wait(self, futures: list[concurrent.futures.Future[Any]]) -> BaseException | None:
        """The first error among ``futures`` once all resolved (`WaitTimeout` if they did not in time)."""
        _done, pending = concurrent.futures.wait(futures, timeout=self.wait_timeout)
        if pending:
            return WaitTimeout(f"{len(pending)} of {len(futures)} events not acknowledged within {self.wait_timeout} s")
        for future in futures:
            error = future.exception(timeout=0)
            if error is not None:
                return error
        return None

    def _atomic_off(self, why: str) -> None:
        if self.atomic:
            self.atomic = False
            log.warning(
                "outbox relay: %s; sending event by event from now on (in order, each acknowledged before the "
                "next; a transaction is then no longer all-or-nothing in the stream)",
                why,
            )
