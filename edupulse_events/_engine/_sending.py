"""How a batch goes out and how its outcome comes back, for JetStream and for core NATS.

The publisher thread's drain loop hands each batch to one of two small strategies:

- `JetStreamSender` numbers every event (its ack arrives on ``reply prefix + number``),
  registers it in flight and writes the batch; `on_acks` settles a run of acks at once: a
  stream sequence, a duplicate, an error (`_retry.refusal` says transient or permanent), or
  "no responders" (then the events are parked and one stream check per subject decides:
  no stream captures it, a permanent `EventRejected`; one does, a leader election, retried).
- `CoreSender` writes the batch and a PING; the PONG settles the whole batch (the server has
  read it), and a timer ends the attempt at ``attempt_timeout`` or at the batch's earliest
  deadline, whichever comes first.

Both work on the `Worker` they belong to: its `Outstanding` bookkeeping, its transport, and
its retry and failure paths. Everything here runs on the publisher thread.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._nats._acks import Ack
from .._pipeline._routing import Item
from ..errors import BrokerError, BrokerUnavailable, EventRejected, InvalidEvent
from ..futures import PublishAck, new_ack
from ._retry import refusal

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["CoreSender", "JetStreamSender"]

_CORE_ACK = PublishAck(None, None, False)
_NO_LIMIT = 1 << 62


class JetStreamSender:
    """Pipelined JetStream publishes, each awaiting its own ack (within the window)."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._seq = 0
        self._stream_seen: set[bytes] = set()

    async def send(self, batch: Sequence[Item]) -> None:
        worker = self._worker
        inflight = worker.outstanding.inflight
        limit = worker.max_payload or _NO_LIMIT
        if any(item.size > limit for item in batch):
            batch = [item for item in batch if not _too_big(worker, item, limit)]
        now = time.monotonic()
        first = seq = self._seq + 1
        for item in batch:
            item.attempts += 1
            item.sent_at = now
            inflight[seq] = item
            seq += 1
        self._seq = seq - 1
        # Not sent on a failure here: the events stay in flight and are resent at attempt_timeout.
        await worker.transport.publish_js(batch, first)

    def on_acks(self, acks: list[Ack]) -> None:
        """Acks as they arrived (`_acks.Ack` tuples): settle the events they answer, together."""
        worker = self._worker
        out = worker.outstanding
        pop = out.inflight.pop
        hand = out.hand  # what is popped stays findable there until it is settled
        items: list[Item] = []
        results: list[Any] = []
        for ack in acks:
            item = pop(ack[0], None)
            if item is None:  # a late ack for an attempt already retried: the retry gets its own
                continue
            hand.append(item)
            error = ack[4]
            if error is not None:
                self._refused(item, error)
            elif ack[3]:  # a duplicate: rare, so a PublishAck now
                out.duplicates += 1
                items.append(item)
                results.append(new_ack(ack[2], ack[1], True))
            else:
                items.append(item)
                results.append(ack)  # settle() keeps the sequence; result() makes the PublishAck
        if items:
            out.succeed(items, results)
        hand.clear()
        worker.room_opened()

    def _refused(self, item: Item, error: dict[str, Any]) -> None:
        """An ack that is an error: a status without a body (503: "no responders"), or
        JetStream's error object (which may come with a status, e.g. 429)."""
        status = error.get("status")
        if status is not None and "code" not in error:
            if status == "503":
                self._no_responders(item)
            else:
                self._worker.attempts.failed(
                    item, BrokerUnavailable(f"JetStream answered event {item.event_id} with status {status}")
                )
            return
        self._worker.attempts.failed(item, refusal(item.event_id, error))

    def _no_responders(self, item: Item) -> None:
        """No stream answered: ask once per subject whether any captures it; park the events
        meanwhile (the sweep fails those that reach their deadline while parked)."""
        worker = self._worker
        if item.subject in self._stream_seen:
            worker.attempts.failed(item, BrokerUnavailable(f"no JetStream responder for {item.subject.decode()}"))
            return
        parked = worker.outstanding.parked
        waiting = parked.get(item.subject)
        if waiting is not None:  # one check per subject answers for every event waiting on it
            waiting.append(item)
            return
        parked[item.subject] = [item]
        worker.supervisor.spawn(self._check_stream(item.subject))

    async def _check_stream(self, subject: bytes) -> None:
        worker = self._worker
        name = subject.decode()
        captured = await worker.transport.stream_captures(name, min(worker.config.retry.attempt_timeout, 2.0))
        if captured:
            self._stream_seen.add(subject)
        out = worker.outstanding
        waiting = out.parked.get(subject, [])
        out.hand += waiting
        del out.parked[subject]
        for item in waiting:
            if captured is False:
                why = (
                    f"no JetStream stream captures subject {name!r}: "
                    "create one, or pass create_stream=True with stream=<name>"
                )
                worker.outstanding.fail(item, EventRejected(why))
            else:
                worker.attempts.failed(item, BrokerUnavailable(f"no JetStream responder for {name} (leader election?)"))
        out.hand.clear()
        worker.room_opened()


class CoreSender:
    """Core NATS: a batch is delivered when the PONG after it arrives."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._key = 0

    async def send(self, batch: Sequence[Item]) -> None:
        worker = self._worker
        limit = worker.max_payload or _NO_LIMIT
        if any(item.size > limit for item in batch):
            batch = [item for item in batch if not _too_big(worker, item, limit)]
        if not batch:
            return
        for item in batch:
            item.attempts += 1
        try:
            pong = await worker.transport.publish_core(batch)
        except BrokerError as exc:
            for item in batch:
                worker.attempts.failed(item, exc)
            return
        self._key += 1
        key = self._key
        end = min(time.monotonic() + worker.config.retry.attempt_timeout, min(item.deadline for item in batch))
        worker.outstanding.core[key] = (list(batch), worker.supervisor.call_at(end, self.timed_out, key))
        guard = worker.supervisor.guard
        pong.add_done_callback(lambda f: guard(self.settled, key, not f.cancelled() and not f.exception()))

    def settled(self, key: int, ok: bool) -> None:
        """The batch's PONG came (every event in it reached the server), or the connection went."""
        worker = self._worker
        out = worker.outstanding
        entry = out.core.get(key)
        if entry is None:
            return
        batch, timer = entry
        out.hand += batch
        del out.core[key]
        timer.cancel()
        pending = [item for item in batch if not item.future.resolved()]
        if ok:
            out.succeed(pending, [_CORE_ACK] * len(pending))
        else:
            exc = BrokerUnavailable("the connection to the broker was lost before the server confirmed the batch")
            for item in pending:
                worker.attempts.failed(item, exc)
        out.hand.clear()
        worker.room_opened()

    def timed_out(self, key: int) -> None:
        """No PONG by the attempt's end: events past their deadline fail, the rest are retried."""
        worker = self._worker
        out = worker.outstanding
        entry = out.core.get(key)
        if entry is None:
            return
        out.hand += entry[0]
        del out.core[key]
        exc = BrokerUnavailable(f"no answer from the broker within {worker.config.retry.attempt_timeout} s")
        for item in entry[0]:
            if not item.future.resolved():
                worker.attempts.failed(item, exc)
        out.hand.clear()
        worker.room_opened()

    def abandon_pongs(self) -> None:
        """The connection was replaced: PONGs of batches written on it will not come."""
        for key in list(self._worker.outstanding.core):
            self.settled(key, False)


def _too_big(worker: Worker, item: Item, limit: int) -> bool:
    """Fail ``item`` if it is larger than the server's max_payload (learnt after it was queued)."""
    if item.size <= limit:
        return False
    why = (
        f"event {item.event_id} is {item.size} bytes with headers, more than the server's max_payload of {limit} bytes"
    )
    worker.outstanding.fail(item, InvalidEvent(why))
    return True
