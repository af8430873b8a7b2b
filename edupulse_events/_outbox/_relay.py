"""The relay's delivery: committed outbox rows to the broker, claim after claim, one batch in flight.

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
after the previous is acknowledged, so the stream's order is the claim's order. While a batch is
in flight the relay's thread does the rest: it hands the claims acknowledged before to the
store's thread to settle, reads the next claim (during a claim's last batch), and has the
publisher check the next batch (`CheckingPublisher`), so that little stands between an ack and
the next send.

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

import collections
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from .._pipeline._encoded import EncodedEvent
from ..errors import (
    BrokerError,
    DecodeError,
    EventRejected,
    InvalidBatch,
    InvalidEvent,
    OutboxDatabaseError,
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
    from ._stores import Claim, Store

__all__ = ["ATOMIC_DISABLED", "CheckingPublisher", "Delivery", "EncodedPublisher", "Outage", "Pass", "groups", "pack"]

log = logging.getLogger("edupulse_events.outbox")

#: Dead-lettered rows: (id, why).
Dead = list[tuple[int, str]]

#: JSAtomicPublishDisabledErr: the stream was not created with allow_atomic.
ATOMIC_DISABLED = 10174


@runtime_checkable
class EncodedPublisher(Protocol):
    """A publisher that sends events as they were stored (`NatsPublisher`, `InMemoryPublisher`)."""

    def publish_encoded(
        self,
        events: Iterable[EncodedEvent],
        *,
        timeout: float | None = None,
        atomic: bool = False,
        resend: bool = False,
    ) -> list[concurrent.futures.Future[Any]]: ...


@runtime_checkable
class CheckingPublisher(Protocol):
    """A publisher that checks encoded events apart from queueing them (`NatsPublisher`), so that
    the relay checks its next batch while the one before is in flight."""

    def _check_encoded(self, events: Iterable[EncodedEvent]) -> list[Any]: ...

    def _queue_checked(
        self, items: list[Any], *, timeout: float | None, atomic: bool, resend: bool = False
    ) -> list[concurrent.futures.Future[Any]]: ...


class Pass(NamedTuple):
    """One pass: rows claimed, delivered, dead-lettered; ``more``: its last claim was full (more
    may be pending)."""

    claimed: int
    delivered: int
    dead: int
    more: bool


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


def _unique(rows: list[StoredRow]) -> tuple[list[StoredRow], list[int]]:
    """The same event added twice (one id) is sent once: the rows to send, and the ids of the
    later rows, delivered with the first."""
    if len({row.event_id for row in rows}) == len(rows):
        return rows, []
    seen: set[str] = set()
    kept: list[StoredRow] = []
    twins: list[int] = []
    for row in rows:
        if row.event_id in seen:
            twins.append(row.id)
            continue
        seen.add(row.event_id)
        kept.append(row)
    return kept, twins


class _Open:
    """A claim on its way: its rows packed in batches, what became of them so far, its span."""

    __slots__ = ("batches", "claim", "dead", "delivered", "outage", "span")

    def __init__(self, claim: Claim, span: Any, max_batch: int) -> None:
        self.claim = claim
        self.span = span
        self.batches = collections.deque(pack(groups(claim.rows), max_batch))
        self.delivered: list[int] = []
        self.dead: Dead = []
        self.outage: Outage | None = None


class _Once:
    """``work()`` called the first time this is (a batch's "meanwhile"), then nothing."""

    __slots__ = ("_work",)

    def __init__(self, work: Callable[[], None]) -> None:
        self._work: Callable[[], None] | None = work

    def __call__(self) -> None:
        work, self._work = self._work, None
        if work is not None:
            work()


class _Staged:
    """A batch ready to queue: its rows (each event once), the ids of their twins, the events as
    stored, and (a publisher that checks ahead) the publisher's checked items, or why it refused them."""

    __slots__ = ("batch", "error", "events", "items", "rows", "twins")

    def __init__(self, batch: list[list[StoredRow]], rows: list[StoredRow], twins: list[int]) -> None:
        self.batch = batch
        self.rows = rows
        self.twins = twins
        self.events = [EncodedEvent(row.event_id, row.subject, row.headers, row.body) for row in rows]
        self.items: list[Any] | None = None
        self.error: InvalidEvent | None = None


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
        self.checking = publisher if isinstance(publisher, CheckingPublisher) else None
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
    def run_pass(self, until: float | None = None) -> Pass:
        """Claim, send, settle: claim after claim while each comes back full, until ``until``
        (`time.monotonic`) if given. One batch is in flight at a time, in claim order; while it
        is, the claims acknowledged before it are settled, the next claim is read (during the last
        batch of a claim) and the next batch is checked by the publisher. Raises `Outage` (after
        settling what was acknowledged) when the broker could not take a batch,
        `OutboxDatabaseError` when the database failed (every open claim given back: what was sent
        is sent again, and stored once)."""
        parent = self.telemetry.context() if self.telemetry is not None else None
        current = self._open(parent)
        if not current.claim.rows:
            self.store.release(current.claim)
            return Pass(0, 0, 0, False)
        acknowledged: list[_Open] = []  # claims all of whose batches resolved, to settle
        settling: list[tuple[_Open, concurrent.futures.Future[None]]] = []  # handed to the store's thread
        upcoming: list[_Open] = []  # the next claim, once read
        staged: list[_Staged] = []  # the next batch, once checked
        totals = [0, 0, 0]

        def meanwhile() -> None:
            self._settle(acknowledged, settling)
            self._settled(settling, totals, wait=False)
            if not current.batches and current.claim.full and (until is None or time.monotonic() < until):
                upcoming.append(self._open(parent))
            following = current.batches or (upcoming[0].batches if upcoming else None)
            if following and self.atomic and self.encoded is not None:
                staged[:] = [self._stage(following[0])]

        try:
            while True:
                while current.batches:
                    batch = current.batches.popleft()
                    ready = staged.pop() if staged and staged[0].batch is batch else None
                    with self._current(current):
                        self._send(batch, current.delivered, current.dead, _Once(meanwhile), ready)
                acknowledged.append(current)
                if not upcoming or not upcoming[0].claim.rows:
                    break
                current = upcoming.pop()
            more = current.claim.full and not upcoming
            for empty in upcoming:
                self.store.release(empty.claim)
            self._settle(acknowledged, settling)
            self._settled(settling, totals, wait=True)
        except Outage as outage:
            current.outage = outage
            if current not in acknowledged:
                acknowledged.append(current)  # what it delivered and dead-lettered; the rest waits
            for claimed in upcoming:
                self._end(claimed, None)
                self.store.release(claimed.claim)
            self._settle(acknowledged, settling)
            self._settled(settling, totals, wait=True)
            raise
        except BaseException as exc:
            self._abandon(settling, totals, exc)
            self.store.release()
            for claimed in {id(c): c for c in [*acknowledged, current, *upcoming]}.values():
                self._end(claimed, exc)
            raise
        return Pass(totals[0], totals[1], totals[2], more)

    def _open(self, parent: Any) -> _Open:
        claim = self.store.claim(self.claim)
        span = self.telemetry.start(claim.rows, parent) if self.telemetry is not None and claim.rows else None
        return _Open(claim, span, self.max_batch)

    def _current(self, claimed: _Open) -> contextlib.AbstractContextManager[Any]:
        """``claimed``'s span as the current one (the publisher's spans its children)."""
        if self.telemetry is None or claimed.span is None:
            return contextlib.nullcontext()
        return self.telemetry.current(claimed.span)

    def _settle(self, acknowledged: list[_Open], settling: list[tuple[_Open, concurrent.futures.Future[None]]]) -> None:
        """Hand the claims in ``acknowledged`` (emptied) to the store's thread to settle (``settling``)."""
        now = time.time()
        while acknowledged:
            claimed = acknowledged.pop(0)
            settling.append(
                (claimed, self.store.settle(claimed.claim, claimed.delivered, claimed.dead, now, self.keep))
            )

    def _settled(
        self, settling: list[tuple[_Open, concurrent.futures.Future[None]]], totals: list[int], *, wait: bool
    ) -> None:
        """Count the claims of ``settling`` settled (in order; with ``wait``, all of them, each within
        ``wait_timeout``): raises the `OutboxDatabaseError` of one that failed."""
        while settling:
            claimed, future = settling[0]
            if not wait and not future.done():
                return
            try:
                future.result(timeout=self.wait_timeout)
            except concurrent.futures.TimeoutError:
                raise OutboxDatabaseError(
                    f"outbox settle: {len(claimed.claim.rows)} rows not settled within {self.wait_timeout} s"
                ) from None
            settling.pop(0)
            self._count(claimed, totals)

    def _abandon(
        self, settling: list[tuple[_Open, concurrent.futures.Future[None]]], totals: list[int], error: BaseException
    ) -> None:
        """A pass failing: wait (each within ``wait_timeout``) for the settles under way, counting
        those that committed."""
        for claimed, future in settling:
            done, _ = concurrent.futures.wait([future], timeout=self.wait_timeout)
            if done and future.exception() is None:
                self._count(claimed, totals)
            else:
                self._end(claimed, error)
        settling.clear()

    def _count(self, claimed: _Open, totals: list[int]) -> None:
        """``claimed`` is settled: its span ends; the counters and the pass's ``totals`` count it."""
        self._end(claimed, claimed.outage)
        self.delivered += len(claimed.delivered)
        self.dead += len(claimed.dead)
        totals[0] += len(claimed.claim.rows)
        totals[1] += len(claimed.delivered)
        totals[2] += len(claimed.dead)

    def _end(self, claimed: _Open, error: BaseException | None) -> None:
        if self.telemetry is not None and claimed.span is not None:
            self.telemetry.finish(claimed.span, len(claimed.delivered), len(claimed.dead), error)
            claimed.span = None

    # ------------------------------------------------------------------ sending
    def _send(
        self,
        batch: list[list[StoredRow]],
        delivered: list[int],
        dead: Dead,
        meanwhile: Callable[[], None] = lambda: None,
        staged: _Staged | None = None,
    ) -> None:
        """Send ``batch`` and record its outcome; ``meanwhile`` runs once, while it is in flight
        (or after it, when it was settled without waiting for the broker); ``staged``: ``batch``
        checked ahead (`_stage`)."""
        if not (
            self.atomic and self.encoded is not None and self._send_encoded(batch, delivered, dead, meanwhile, staged)
        ):
            self._send_decoded(batch, delivered, dead, meanwhile)
        meanwhile()

    def _stage(self, batch: list[list[StoredRow]]) -> _Staged:
        """``batch`` ready to queue as stored: each event once, checked by the publisher if it can
        check apart from queueing."""
        staged = _Staged(batch, *_unique([row for transaction in batch for row in transaction]))
        if self.checking is not None:
            try:
                staged.items = self.checking._check_encoded(staged.events)  # noqa: SLF001 - CheckingPublisher
            except InvalidEvent as exc:
                staged.error = exc
        return staged

    def _send_encoded(
        self,
        batch: list[list[StoredRow]],
        delivered: list[int],
        dead: Dead,
        meanwhile: Callable[[], None],
        staged: _Staged | None,
    ) -> bool:
        """Send ``batch`` as stored (``publish_encoded``, atomic); False when the publisher took
        none of it (a row it could not have written, no atomic batches): `_send` decodes it then."""
        assert self.encoded is not None
        if staged is None:
            staged = self._stage(batch)
        log.debug("outbox relay: sending %d events of %d transactions", len(staged.rows), len(batch))
        try:
            if staged.error is not None:
                raise staged.error
            resend = _resend(batch)
            if staged.items is not None and self.checking is not None:
                futures = self.checking._queue_checked(  # noqa: SLF001 - the CheckingPublisher protocol
                    staged.items, timeout=self.wait_timeout, atomic=True, resend=resend
                )
            else:
                futures = self.encoded.publish_encoded(
                    staged.events, atomic=True, timeout=self.wait_timeout, resend=resend
                )
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
        meanwhile()
        return self._outcome(futures, batch, staged.rows, staged.twins, delivered, dead)

    def _send_decoded(
        self,
        batch: list[list[StoredRow]],
        delivered: list[int],
        dead: list[tuple[int, str]],
        meanwhile: Callable[[], None],
    ) -> None:
        """Send ``batch`` decoded (``publish_many``, atomic, or event by event once atomic batches are off)."""
        batch, envelopes = self._envelopes(batch, dead)
        if not envelopes:
            return
        every = [row for transaction in batch for row in transaction]
        rows, twins = _unique(every)
        if len(rows) < len(every):
            index = {id(row): n for n, row in enumerate(every)}
            envelopes = [envelopes[index[id(row)]] for row in rows]
        log.debug("outbox relay: sending %d events of %d transactions, decoded", len(rows), len(batch))
        if self.atomic:
            try:
                futures = self.publisher.publish_many(
                    envelopes, atomic=True, timeout=self.wait_timeout, resend=_resend(batch)
                )
            except InvalidBatch as exc:  # a publisher that cannot (core NATS): nothing was queued
                self._atomic_off(f"the publisher sends no atomic batches ({' '.join(str(exc).split())})")
            except InvalidEvent as exc:  # an event the publisher refuses (nothing was queued)
                self._refused(batch, exc, delivered, dead)
                return
            except (QueueFull, PublisherClosed, BrokerError) as exc:
                raise Outage(exc) from exc
            else:
                meanwhile()
                if self._outcome(futures, batch, rows, twins, delivered, dead):
                    return
        delivered += twins
        self._send_each(rows, envelopes, delivered, dead)

    def _outcome(
        self,
        futures: list[concurrent.futures.Future[Any]],
        batch: list[list[StoredRow]],
        rows: list[StoredRow],
        twins: list[int],
        delivered: list[int],
        dead: list[tuple[int, str]],
    ) -> bool:
        """Wait for an atomic batch and record what became of it; False when the stream said it
        takes no atomic batches (then it is to be sent event by event)."""
        error = self._wait(futures)
        if error is None:
            delivered += twins
            delivered += [row.id for row in rows]
        elif isinstance(error, EventRejected) and error.err_code == ATOMIC_DISABLED:
            self._atomic_off("the stream does not allow atomic batches (allow_atomic); err_code 10174")
            return False
        elif isinstance(error, EventRejected):  # (its twins go with it: sent again, or dead-lettered)
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
        """The first error among ``futures`` once all resolved (`WaitTimeout` if they did not in time).
        One future after the other: an atomic batch's resolve together, so only the first waits."""
        end = time.monotonic() + self.wait_timeout
        first: BaseException | None = None
        for n, future in enumerate(futures):
            try:
                error = future.exception(timeout=max(0.0, end - time.monotonic()))
            except (WaitTimeout, concurrent.futures.TimeoutError):
                return WaitTimeout(
                    f"{len(futures) - n} of {len(futures)} events not acknowledged within {self.wait_timeout} s"
                )
            if first is None:
                first = error
        return first

    def _atomic_off(self, why: str) -> None:
        if self.atomic:
            self.atomic = False
            log.warning(
                "outbox relay: %s; sending event by event from now on (in order, each acknowledged before the "
                "next; a transaction is then no longer all-or-nothing in the stream)",
                why,
            )


def _resend(batch: list[list[StoredRow]]) -> bool:
    """Whether the publisher may take a refusal for stored ids (10201) as "stored": for a batch of
    one transaction, which is only ever sent whole in one atomic batch, so a relay that died after
    sending it and before deleting its rows stored all of it. A batch of several is not: the one
    before it may have packed fewer transactions (it is refused, and its transactions are sent
    again one by one)."""
    return len(batch) == 1
