"""`ReceivedMessage`: one decoded message in a caller's hands, and its one outcome.

A message is decoded in the caller's thread (`decode_deliveries`); one that does not decode
never reaches the caller: it goes to the dead letter with the codec's reason. Each message
takes exactly one outcome — `ack`, `nak` (redelivered after a delay), `term` or
`dead_letter` — and any number of `in_progress` calls before it; a second outcome raises
`AlreadySettled`. A `nak` of the delivery that is the durable's last (``max_deliver``) goes to
the dead letter instead: the server would drop it. Outcomes travel to the consumer thread
through `ConsumerLoop.respond`; none blocks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import tenacity

from .._nats._pull import ACK, PROGRESS, Delivery, nak_payload, term_payload
from ..config import ConsumerConfig
from ..envelope import EventEnvelope
from ..errors import AlreadySettled, DecodeError
from ._loop import ConsumerLoop
from ._tally import Tally

__all__ = ["Backoff", "ReceivedMessage", "decode_deliveries"]

_settle_lock = threading.Lock()


class Backoff:
    """The redelivery delay after a failed delivery: tenacity's exponential wait with jitter,
    by the number of deliveries so far (1 s, 2 s, 4 s, ... up to the maximum, by default)."""

    def __init__(self, config: ConsumerConfig) -> None:
        self._wait = tenacity.wait_exponential(
            multiplier=config.backoff_initial, max=config.backoff_maximum
        ) + tenacity.wait_random(0, config.backoff_jitter)

    def __call__(self, num_delivered: int) -> float:
        state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]  # only attempt_number is read
        state.attempt_number = max(1, num_delivered)
        return float(self._wait(state))


class ReceivedMessage:
    """One message from the stream: its decoded `envelope`, its metadata, and its outcome.

    ``subject``, ``headers``, ``data`` (the raw body), ``stream_sequence``, ``consumer_sequence``,
    ``num_delivered`` (1 on the first delivery) and ``num_pending`` (left for the durable) are
    what JetStream said about it. Settle it once: `ack`, `nak`, `term` or `dead_letter`.
    """

    __slots__ = ("_backoff", "_delivery", "_loop", "_settled", "_tally", "envelope")

    def __init__(
        self, delivery: Delivery, envelope: EventEnvelope, loop: ConsumerLoop, tally: Tally, backoff: Backoff
    ) -> None:
        self._delivery = delivery
        self.envelope = envelope
        self._loop = loop
        self._tally = tally
        self._backoff = backoff
        self._settled: str | None = None

    subject = property(lambda self: self._delivery.subject, doc="The subject the message was published to.")
    data = property(lambda self: self._delivery.data, doc="The message's body as stored.")
    headers = property(lambda self: dict(self._delivery.headers or {}), doc="Its headers (a copy).")
    stream_sequence = property(lambda self: self._delivery.stream_sequence, doc="Its sequence in the stream.")
    consumer_sequence = property(lambda self: self._delivery.consumer_sequence, doc="The durable's delivery count.")
    num_delivered = property(lambda self: self._delivery.num_delivered, doc="Deliveries so far, this one included.")
    num_pending = property(lambda self: self._delivery.num_pending, doc="Messages left for the durable.")

    @property
    def settled(self) -> str | None:
        """None until settled; then ``"ack"``, ``"nak"``, ``"term"`` or ``"dead_letter"``."""
        return self._settled

    def _settle(self, outcome: str) -> None:
        with _settle_lock:
            if self._settled is not None:
                raise AlreadySettled(
                    f"{self._loop.config.stream}#{self._delivery.stream_sequence} was settled already ({self._settled})"
                )
            self._settled = outcome

    def try_settle(self, outcome: str) -> bool:
        """Settle as ``outcome`` unless settled already (run() uses it; no exception)."""
        with _settle_lock:
            if self._settled is not None:
                return False
            self._settled = outcome
            return True

    def ack(self) -> None:
        """Handled: the server will not deliver it again."""
        self._settle("ack")
        self._tally.add(acknowledged=1)
        self._loop.respond(self._delivery.reply, ACK)

    def nak(self, delay: float | None = None) -> None:
        """Not handled now: deliver it again after ``delay`` seconds (None: the consumer's backoff
        for this delivery count; 0: at once). On the durable's last delivery it goes to the dead
        letter instead."""
        self._settle("nak")
        self._nak(delay)

    def _nak(self, delay: float | None) -> None:
        last = self._loop.max_deliver
        if last is not None and self._delivery.num_delivered >= last:
            self._settled = "dead_letter"
            self._loop.dead_letter(self._delivery, f"max_deliver reached ({self._delivery.num_delivered} deliveries)")
            return
        self._tally.add(nacked=1)
        wait = self._backoff(self._delivery.num_delivered) if delay is None else delay
        self._loop.respond(self._delivery.reply, nak_payload(wait))

    def term(self, reason: str | None = None) -> None:
        """Never deliver it again (not dead-lettered: see `dead_letter`)."""
        self._settle("term")
        self._tally.add(terminated=1)
        self._loop.respond(self._delivery.reply, term_payload(reason))

    def dead_letter(self, reason: str) -> None:
        """Store it under the dead-letter subject with ``reason`` and terminate it."""
        self._settle("dead_letter")
        self._loop.dead_letter(self._delivery, reason)

    def in_progress(self) -> None:
        """Still working on it: the server restarts its ack wait (any number of times)."""
        if self._settled is not None:
            raise AlreadySettled(f"in_progress() after {self._settled}")
        self._tally.add(in_progress=1)
        self._loop.respond(self._delivery.reply, PROGRESS, final=False)

    def __repr__(self) -> str:
        return (
            f"<ReceivedMessage {self._delivery.subject} #{self._delivery.stream_sequence} "
            f"delivered={self._delivery.num_delivered} {self._settled or 'unsettled'}>"
        )


def decode_deliveries(
    deliveries: list[Delivery],
    decode: Callable[[bytes], Any],
    loop: ConsumerLoop,
    tally: Tally,
    backoff: Backoff,
) -> list[ReceivedMessage]:
    """Decode each delivery; one that does not decode is dead-lettered with the reason, not returned."""
    out = []
    for delivery in deliveries:
        try:
            envelope = decode(delivery.data)
        except (DecodeError, ValueError) as exc:  # DecodeError is one; a codec maps all it finds to it
            tally.add(undecodable=1)
            loop.dead_letter(delivery, f"undecodable: {exc}")
            continue
        out.append(ReceivedMessage(delivery, envelope, loop, tally, backoff))
    return out
