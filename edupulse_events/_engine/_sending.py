"""How a batch goes out and how its outcome comes back, for JetStream and for core NATS.

The publisher thread's drain loop hands each batch to one of two small strategies:

- `JetStreamSender` numbers every event (its ack arrives on ``reply prefix + number``),
  registers it in flight and writes the batch; an atomic batch (`Group`) goes as one, numbered
  once (only its commit is answered), under a new batch id each attempt; ``publish_many()``'s
  events go as fast-ingest batches where the stream allows them (`on_fast` settles them by the
  hundred from the server's flow acks); `on_acks` settles a run of acks at once: a
  stream sequence, a duplicate, an error (`_retry.refusal` says transient or permanent), or
  "no responders" (then the events are parked and one stream check per subject decides:
  no stream captures it, a permanent `EventRejected`; one does, a leader election, retried).
- `CoreSender` writes the batch and a PING; the PONG settles the whole batch (the server has
  read it), and a timer ends the attempt at ``attempt_timeout`` or at the batch's earliest
  deadline, whichever comes first.

Both see the loop that runs them only as a `DrainLoop` (the current transport, two wake-ups),
move events only through `Outstanding`'s methods, set timers and start tasks through the
`Supervisor`, and hand failures to `Attempts`. Everything here runs on the publisher thread.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from .._nats import BATCH_HEADERS
from .._nats._acks import Ack
from .._nats._batches import FastReply
from .._pipeline._routing import Group, Item
from ..config import PublisherConfig
from ..errors import BrokerError, BrokerUnavailable, EventRejected, InvalidEvent
from ..futures import PublishAck
from ._attempts import Attempts, DrainLoop
from ._outstanding import Outstanding
from ._retry import batch_refusal, refusal
from ._supervisor import Supervisor

__all__ = ["CoreSender", "JetStreamSender"]

log = logging.getLogger("edupulse_events")
_CORE_ACK = PublishAck(None, None, False)
_FAST_DISABLED = 10205  # JSBatchPublishDisabledErr
_NO_LIMIT = 1 << 62


def _batch_id() -> bytes:
    """A new atomic batch id: 16 random characters (the server takes up to 64)."""
    return base64.urlsafe_b64encode(os.urandom(12))


class _Sender:
    """What both senders hold: the loop's view, the bookkeeping, the doors, the retry path."""

    def __init__(
        self,
        config: PublisherConfig,
        loop: DrainLoop,
        outstanding: Outstanding,
        supervisor: Supervisor,
        attempts: Attempts,
    ) -> None:
        self._config = config
        self._loop = loop
        self._out = outstanding
        self._supervisor = supervisor
        self._attempts = attempts

    def _fitting(self, batch: Sequence[Item]) -> Sequence[Item]:
        """``batch`` without the events larger than the server's max_payload (learnt after they
        were queued), which fail with `InvalidEvent` (with their atomic batch, if in one: counted
        with the batch headers it adds)."""
        limit = self._loop.max_payload or _NO_LIMIT
        bound = limit - BATCH_HEADERS if self._loop.atomic else limit  # (whether this batch holds one or not)
        if all(item.size <= bound for item in batch):
            return batch
        fitting = []
        for item in batch:
            extra = BATCH_HEADERS if item.group is not None else 0
            if item.size + extra <= limit:
                fitting.append(item)
                continue
            more = f" (up to {extra} more in an atomic batch)" if extra else ""
            why = (
                f"event {item.event_id} is {item.size} bytes with headers{more}, "
                f"more than the server's max_payload of {limit} bytes"
            )
            self._out.fail(item, InvalidEvent(why))
        return fitting


class JetStreamSender(_Sender):
    """Pipelined JetStream publishes, each awaiting its own ack (within the window)."""

    def __init__(
        self,
        config: PublisherConfig,
        loop: DrainLoop,
        outstanding: Outstanding,
        supervisor: Supervisor,
        attempts: Attempts,
    ) -> None:
        super().__init__(config, loop, outstanding, supervisor, attempts)
        self._seq = 0
        self._stream_seen: set[bytes] = set()
        #: Open fast-ingest batches: id -> [first publish sequence, events, events stored so far].
        self._fast: dict[bytes, list[int]] = {}
        #: Events of verbose atomic batches awaiting their own answer, by publish sequence.
        self._parts: dict[int, tuple[Group, Item]] = {}
        self._fast_off = False

    async def send(self, batch: Sequence[Item]) -> None:
        batch = self._fitting(batch)
        if self._loop.atomic and any(item.group is not None for item in batch):
            await self._send_with_groups(batch)
            return
        fast = len(batch) > 1 and not self._fast_off and self._loop.transport.fast_ready
        if fast and any(item.bulk for item in batch):
            await self._send_with_bulk(batch)
            return
        await self._send_each(batch)

    async def _send_each(self, batch: Sequence[Item]) -> None:
        """Each event with an ack of its own."""
        first = self._seq + 1
        self._out.send_js(batch, first, time.monotonic())
        self._seq += len(batch)
        # Not sent on a failure here: the events stay in flight and are resent at attempt_timeout.
        await self._loop.transport.publish_js(batch, first)

    async def _send_with_bulk(self, batch: Sequence[Item]) -> None:
        """``publish_many()``'s events (runs of two or more) as fast-ingest batches, the others
        each with an ack of its own, in the order they came."""
        if batch[0].bulk and all(item.bulk for item in batch):  # publish_many() alone: one batch
            await self._send_fast(list(batch))
            return
        run: list[Item] = []
        bulk = False
        for item in batch:
            if item.bulk != bulk and run:
                await (self._send_fast(run) if bulk and len(run) > 1 else self._send_each(run))
                run = []
            bulk = item.bulk
            run.append(item)
        if run:
            await (self._send_fast(run) if bulk and len(run) > 1 else self._send_each(run))

    async def _send_fast(self, run: list[Item]) -> None:
        """One fast-ingest batch: in flight as publish sequences (never answered one by one),
        settled by the server's flow acks and its end (`on_fast`)."""
        first = self._seq + 1
        self._out.send_js(run, first, time.monotonic())
        self._seq += len(run)
        batch_id = await self._loop.transport.publish_fast(run)
        self._fast[batch_id] = [first, len(run), 0]

    def on_fast(self, batch_id: bytes, reply: FastReply) -> None:
        """What the server said of a fast-ingest batch: events up to a sequence stored (a flow
        ack); an event refused (it alone fails, or is retried if the refusal is transient); the
        batch's end (the events after its count are sent again: a gap, a refusal or an error
        ended it)."""
        entry = self._fast.get(batch_id)
        if entry is None or reply.kind == "gap":  # a gap: the end follows
            return
        first, count, done = entry
        out = self._out
        if reply.kind == "ack":
            upto = min(reply.seq, count)
            if upto > done:
                out.settle_fast(range(first + done, first + upto), self._config.stream)
                entry[2] = upto
        elif reply.kind == "err":  # event `seq` refused; the end follows
            self._refused_fast(first + reply.seq - 1, reply.error)
        else:
            del self._fast[batch_id]
            upto = done
            if reply.kind == "end":
                upto = max(done, min(reply.stored, count))
                if upto > done:
                    out.settle_fast(range(first + done, first + upto), self._config.stream)
            elif done < reply.event <= count:  # the batch ended at this event, refused
                self._refused_fast(first + reply.event - 1, reply.error)
            rest = out.take_inflight(range(first + upto, first + count))
            ended = BrokerUnavailable(f"a fast-ingest batch ended after its event {upto}: sending the rest again")
            for item in rest:
                self._attempts.failed(item, ended)
            out.placed()
        self._loop.room_opened()

    def _refused_fast(self, key: int, error: dict[str, Any] | None) -> None:
        """The event sent as publish sequence ``key`` in a fast-ingest batch was refused with ``error``."""
        items = self._out.take_inflight(range(key, key + 1))
        if not items or error is None:
            self._out.placed()
            return
        [item] = items
        if error.get("err_code") == _FAST_DISABLED:
            if not self._fast_off:
                self._fast_off = True
                log.warning("the stream does not allow fast-ingest batches: publish_many() gets an ack per event")
            self._attempts.failed(item, BrokerUnavailable("the stream refused a fast-ingest batch (disabled)"))
        else:
            self._attempts.failed(item, refusal(f"event {item.event_id}", error))
        self._out.placed()

    def connection_replaced(self) -> None:
        """A new connection: the fast-ingest batches of the old one are over (their events,
        resent by the worker, go in new ones)."""
        self._fast.clear()
        self._parts.clear()

    async def _send_with_groups(self, batch: Sequence[Item]) -> None:
        """A batch that holds atomic batches (whole, or as their last event when resent): each
        goes as one, in its place among the other events."""
        run: list[Item] = []
        for item in batch:
            group = item.group
            if group is None:
                run.append(item)
            elif item is group.last and not item.future.resolved():  # (resolved: one event was too large)
                if run:
                    await self.send(run)
                    run = []
                await self._send_group(group)
        if run:
            await self.send(run)

    async def _send_group(self, group: Group) -> None:
        """One atomic batch: a new batch id each attempt (the server may still hold an attempt
        it abandoned), the same ``Nats-Msg-Id``s; the commit asks for an answer, and after the
        server dropped an attempt every event does (`on_part`: the one it refuses says why)."""
        parts = 0
        if group.verbose:
            parts = self._seq + 1
            for n, item in enumerate(group.items[:-1]):
                self._parts[parts + n] = (group, item)
            self._seq += len(group.items) - 1
        self._seq += 1
        self._out.send_group(group, self._seq, time.monotonic())
        await self._loop.transport.publish_atomic(group.items, _batch_id(), self._seq, parts)

    def on_part(self, seq: int, error: dict[str, Any] | None) -> None:
        """The answer to an event of a verbose atomic batch: staged (None), or refused."""
        entry = self._parts.pop(seq, None)
        if entry is not None and error is not None and entry[0].refused is None:
            entry[0].refused = (entry[1], error)

    def on_acks(self, acks: list[Ack]) -> None:
        """Acks as they arrived (`_acks.Ack` tuples): settle the events they answer, together."""
        out = self._out
        for item, error in out.settle_acks(acks):  # what is settled stays in `hand` until placed
            self._refused(item, error)
        out.placed()
        self._loop.room_opened()

    def _refused(self, item: Item, error: dict[str, Any]) -> None:
        """An ack that is an error: a status without a body (503: "no responders"), or
        JetStream's error object (which may come with a status, e.g. 429)."""
        status = error.get("status")
        if status is not None and "code" not in error:
            if status == "503":
                self._no_responders(item)
            else:
                self._attempts.failed(
                    item, BrokerUnavailable(f"JetStream answered event {item.event_id} with status {status}")
                )
            return
        group = item.group
        if group is None:
            self._attempts.failed(item, refusal(f"event {item.event_id}", error))
            return
        resent = item.attempts > 1 or item.replay or group.resend
        exc = batch_refusal(group, error, resent)
        if exc is None:
            self._out.succeed_group(group, self._config.stream, None)
        else:
            self._attempts.failed(item, exc)

    def _no_responders(self, item: Item) -> None:
        """No stream answered: ask once per subject whether any captures it; park the events
        meanwhile (the sweep fails those that reach their deadline while parked)."""
        if item.subject in self._stream_seen:
            self._attempts.failed(item, BrokerUnavailable(f"no JetStream responder for {item.subject.decode()}"))
            return
        if self._out.park(item.subject, item):  # one check per subject answers for every event waiting on it
            self._supervisor.spawn(self._check_stream(item.subject))

    async def _check_stream(self, subject: bytes) -> None:
        name = subject.decode()
        timeout = min(self._config.retry.attempt_timeout, 2.0)
        captured = await self._loop.transport.stream_captures(name, timeout)
        if captured:
            self._stream_seen.add(subject)
        out = self._out
        for item in out.unpark(subject):
            if captured is False:
                why = (
                    f"no JetStream stream captures subject {name!r}: "
                    "create one, or pass create_stream=True with stream=<name>"
                )
                out.fail(item, EventRejected(why))
            else:
                self._attempts.failed(item, BrokerUnavailable(f"no JetStream responder for {name} (leader election?)"))
        out.placed()
        self._loop.room_opened()


class CoreSender(_Sender):
    """Core NATS: a batch is delivered when the PONG after it arrives."""

    def __init__(
        self,
        config: PublisherConfig,
        loop: DrainLoop,
        outstanding: Outstanding,
        supervisor: Supervisor,
        attempts: Attempts,
    ) -> None:
        super().__init__(config, loop, outstanding, supervisor, attempts)
        self._key = 0

    async def send(self, batch: Sequence[Item]) -> None:
        batch = self._fitting(batch)
        if not batch:
            return
        for item in batch:
            item.attempts += 1
        try:
            pong = await self._loop.transport.publish_core(batch)
        except BrokerError as exc:
            for item in batch:
                self._attempts.failed(item, exc)
            return
        self._key += 1
        key = self._key
        supervisor = self._supervisor
        end = min(time.monotonic() + self._config.retry.attempt_timeout, min(item.deadline for item in batch))
        self._out.add_core(key, batch, supervisor.call_at(end, self.timed_out, key))
        guard = supervisor.guard
        pong.add_done_callback(lambda f: guard(self.settled, key, not f.cancelled() and not f.exception()))

    def settled(self, key: int, ok: bool) -> None:
        """The batch's PONG came (every event in it reached the server), or the connection went."""
        out = self._out
        batch = out.pop_core(key)  # into `hand` until placed
        if batch is None:
            return
        pending = [item for item in batch if not item.future.resolved()]
        if ok:
            out.succeed(pending, [_CORE_ACK] * len(pending))
        else:
            exc = BrokerUnavailable("the connection to the broker was lost before the server confirmed the batch")
            for item in pending:
                self._attempts.failed(item, exc)
        out.placed()
        self._loop.room_opened()

    def timed_out(self, key: int) -> None:
        """No PONG by the attempt's end: events past their deadline fail, the rest are retried."""
        out = self._out
        batch = out.pop_core(key)
        if batch is None:
            return
        exc = BrokerUnavailable(f"no answer from the broker within {self._config.retry.attempt_timeout} s")
        for item in batch:
            if not item.future.resolved():
                self._attempts.failed(item, exc)
        out.placed()
        self._loop.room_opened()

    def abandon_pongs(self) -> None:
        """The connection was replaced: PONGs of batches written on it will not come."""
        for key in self._out.core_keys():
            self.settled(key, False)
