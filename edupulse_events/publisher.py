"""What every publisher offers: the `EventPublisher` protocol, and the `InMemoryPublisher`
for applications' own tests. The outcome types, `PublishAck` and `PublishFuture`, live in
:mod:`.futures`; the caller-side preparation of events with their routing headers
(``_pipeline/_routing.py``) is shared by every publisher.
"""

from __future__ import annotations

import concurrent.futures
import queue
import time
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from ._pipeline._encoded import EncodedEvent, RowCheck, encoded_items
from ._pipeline._routing import Router, check_atomic
from .codec import Codec, decode
from .config import check_codec, check_subject, count_validator, seconds_validator
from .envelope import EventEnvelope
from .errors import ConfigError, DecodeError, InvalidEvent, PublisherClosed, QueueFull
from .futures import PublishAck
from .stats import PublisherState, PublisherStats

__all__ = ["EventPublisher", "InMemoryPublisher"]


@runtime_checkable
class EventPublisher(Protocol):
    """What every publisher offers (`NatsPublisher` and `InMemoryPublisher`; what
    `build_from_env` returns). Blocking calls take float-second timeouts. Both also offer
    ``publish_encoded()`` for events already encoded (`EncodedEvent`), which `OutboxRelay` uses
    where a publisher has it; a publisher of one's own needs only what is here."""

    def publish(
        self, envelope: EventEnvelope, *, timeout: float | None = None
    ) -> concurrent.futures.Future[PublishAck]: ...

    def publish_many(
        self,
        envelopes: Iterable[EventEnvelope],
        *,
        timeout: float | None = None,
        atomic: bool = False,
        resend: bool = False,
    ) -> list[concurrent.futures.Future[PublishAck]]: ...

    def flush(self, timeout: float | None = None) -> bool: ...

    def close(self, timeout: float | None = None) -> None: ...

    def stats(self) -> PublisherStats: ...

    @property
    def state(self) -> PublisherState: ...

    def __enter__(self) -> EventPublisher: ...

    def __exit__(self, *exc: object) -> None: ...


class _Channel(queue.Queue[EventEnvelope]):
    """The `InMemoryPublisher`'s bounded queue: `put` numbers each envelope in the order it is
    stored (under the queue's lock, so sequence numbers match the read order across threads),
    can discard the oldest entry instead of waiting, and `close` wakes blocked `put` calls."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.sequence = 0
        self.closed = False
        self.discarded = 0
        self.blocked = 0  # puts that had to wait for room

    def put_numbered(self, envelope: EventEnvelope, timeout: float, discard_oldest: bool) -> int:
        """Store ``envelope`` and return its sequence number; wait up to ``timeout`` s for room
        (`queue.Full` after it), or discard the oldest entry when ``discard_oldest``."""
        with self.not_full:
            if not self.closed and len(self.queue) >= self.maxsize:
                if discard_oldest:
                    self.queue.popleft()
                    self.unfinished_tasks -= 1
                    self.discarded += 1
                elif timeout <= 0:
                    raise queue.Full
                else:
                    self.blocked += 1
                    end = time.monotonic() + timeout
                    while not self.closed and len(self.queue) >= self.maxsize:
                        remaining = end - time.monotonic()
                        if remaining <= 0:
                            raise queue.Full
                        self.not_full.wait(remaining)
            if self.closed:
                raise PublisherClosed("publish() on a closed InMemoryPublisher")
            self.sequence += 1
            self.queue.append(envelope)
            self.unfinished_tasks += 1
            self.not_empty.notify()
            return self.sequence

    def put_all(self, envelopes: list[EventEnvelope], timeout: float, discard_oldest: bool) -> int:
        """Store all of ``envelopes`` at once (contiguous numbers) or none; return the first number.
        Waits up to ``timeout`` s for room for all (`queue.Full` after it), or discards the oldest."""
        n = len(envelopes)
        with self.not_full:
            end = time.monotonic() + timeout
            while not self.closed and self.maxsize - len(self.queue) < n:
                if discard_oldest and n <= self.maxsize:
                    while self.maxsize - len(self.queue) < n:
                        self.queue.popleft()
                        self.unfinished_tasks -= 1
                        self.discarded += 1
                    break
                remaining = end - time.monotonic()
                if remaining <= 0 or n > self.maxsize:
                    raise queue.Full
                self.blocked += 1
                self.not_full.wait(remaining)
            if self.closed:
                raise PublisherClosed("publish_many() on a closed InMemoryPublisher")
            first = self.sequence + 1
            self.sequence += n
            self.queue.extend(envelopes)
            self.unfinished_tasks += n
            self.not_empty.notify(n)
            return first

    def close(self) -> None:
        with self.mutex:
            self.closed = True
            self.not_full.notify_all()


class InMemoryPublisher:
    """A publisher that keeps what it accepts, bounded like a channel, for applications' tests.

    It validates and encodes exactly like `NatsPublisher` (`InvalidEvent` at the call site),
    and resolves each future at once with ``PublishAck(n, "memory", False)``, ``n`` counting
    from 1 in the order events are stored. The test reads accepted envelopes back in order
    with `get()` or `drain()`, which also frees room: a full channel blocks `publish()` up to
    its ``timeout`` (then `QueueFull`), unless ``discard_oldest=True``, which drops the oldest
    unread envelope instead (what `build_from_env` uses, so an application without a broker
    that never reads them never blocks). `close()` wakes blocked publishers with
    `PublisherClosed`; what was accepted can still be read. ``codec`` encodes the events (default:
    the default codec): ``Codec(my_registry)`` for the event types of an application's own
    `EventRegistry`, as given to `NatsPublisher`; ``max_batch`` bounds an atomic batch as
    `PublisherConfig.max_batch` does.
    """

    def __init__(
        self,
        max_queue: int = 10_000,
        *,
        subject: str = "edupulse.events",
        publish_timeout: float = 5.0,
        discard_oldest: bool = False,
        codec: Codec | None = None,
        max_batch: int = 1000,
    ) -> None:
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ConfigError(f"max_queue must be an int >= 1, got {max_queue!r}")
        seconds_validator("publish_timeout")(None, None, publish_timeout)
        check_subject(None, None, subject)
        if not isinstance(discard_oldest, bool):
            raise ConfigError(f"discard_oldest must be a bool, got {discard_oldest!r}")
        check_codec(None, None, codec)
        count_validator("max_batch")(None, None, max_batch)
        self._max_batch = max_batch
        self._queue = _Channel(max_queue)
        self._router = Router(subject, codec)
        self._subject = subject
        self._check: RowCheck | None = None  # publish_encoded()'s, made at its first call
        self._decode = decode if codec is None else codec.decode
        self._publish_timeout = publish_timeout
        self._discard_oldest = discard_oldest

    def publish(
        self, envelope: EventEnvelope, *, timeout: float | None = None
    ) -> concurrent.futures.Future[PublishAck]:
        """Validate, encode and keep ``envelope``; block up to ``timeout`` (default
        ``publish_timeout``; 0 = do not wait) while the channel is full, then `QueueFull`."""
        if self._queue.closed:
            raise PublisherClosed("publish() on a closed InMemoryPublisher")
        item = self._router.prepare(envelope, None)
        wait = self._publish_timeout if timeout is None else timeout
        try:
            sequence = self._queue.put_numbered(envelope, wait, self._discard_oldest)
        except queue.Full:
            raise QueueFull(
                f"InMemoryPublisher stayed full for {wait} s ({self._queue.maxsize} events); "
                "read them with get() or drain()"
            ) from None
        item.future.set_result(PublishAck(sequence, "memory", False))
        return item.future

    def publish_many(
        self,
        envelopes: Iterable[EventEnvelope],
        *,
        timeout: float | None = None,
        atomic: bool = False,
        resend: bool = False,
    ) -> list[concurrent.futures.Future[PublishAck]]:
        """`publish` for a batch, in order, as `NatsPublisher.publish_many` does: every envelope
        validated and encoded first (`InvalidEvent` naming the index; nothing kept), then kept
        one by one within ``timeout`` in all; `QueueFull` (with the ``futures`` of those kept)
        if the channel stayed full. With ``atomic=True`` the batch is kept whole or not at all:
        `InvalidBatch` for one that could not be an atomic batch on a broker (more than
        ``max_batch`` events, an event id twice), `QueueFull` (no futures) if room for all of
        it did not come within ``timeout``. ``resend`` changes nothing here (nothing is stored twice)."""
        if self._queue.closed:
            raise PublisherClosed("publish_many() on a closed InMemoryPublisher")
        envelopes = envelopes if isinstance(envelopes, list) else list(envelopes)
        items = self._router.prepare_many(envelopes, None)
        wait = self._publish_timeout if timeout is None else timeout
        if atomic:
            check_atomic(items, self._max_batch)
            try:
                first = self._queue.put_all(envelopes, wait, self._discard_oldest)
            except queue.Full:
                raise QueueFull(
                    f"InMemoryPublisher had no room for an atomic batch of {len(items)} events within {wait} s"
                ) from None
            for n, item in enumerate(items, first):
                item.future.set_result(PublishAck(n, "memory", False))
            return [item.future for item in items]
        end = time.monotonic() + wait
        for index, (envelope, item) in enumerate(zip(envelopes, items, strict=True)):
            try:
                sequence = self._queue.put_numbered(envelope, max(0.0, end - time.monotonic()), self._discard_oldest)
            except queue.Full:
                raise QueueFull.partial([i.future for i in items[:index]], len(items), wait) from None
            item.future.set_result(PublishAck(sequence, "memory", False))
        return [item.future for item in items]

    def publish_encoded(
        self,
        events: Iterable[EncodedEvent],
        *,
        timeout: float | None = None,
        atomic: bool = False,
        resend: bool = False,
    ) -> list[concurrent.futures.Future[PublishAck]]:
        """`publish_many` for events already encoded (`EncodedEvent`), checked as
        `NatsPublisher.publish_encoded` checks them against this publisher's ``subject`` (the first
        that fails raises `InvalidEvent` naming its index; nothing kept); each body is then decoded
        with the codec (`InvalidEvent` if one does not decode) and kept as its envelope, to be read
        back with `get()` or `drain()`."""
        if self._queue.closed:
            raise PublisherClosed("publish_encoded() on a closed InMemoryPublisher")
        events = events if isinstance(events, list) else list(events)
        if self._check is None:
            self._check = RowCheck(self._subject, cloudevents=False)
        encoded_items(events, self._check, None)
        envelopes: list[EventEnvelope] = []
        for index, event in enumerate(events):
            try:
                envelopes.append(self._decode(event.body))
            except DecodeError as exc:
                raise InvalidEvent(f"events[{index}]: its body does not decode: {exc}") from exc
        return self.publish_many(envelopes, timeout=timeout, atomic=atomic)

    def get(self, timeout: float | None = 5.0) -> EventEnvelope:
        """The oldest accepted envelope not read yet; `queue.Empty` after ``timeout``."""
        return self._queue.get(timeout=timeout)

    def drain(self) -> list[EventEnvelope]:
        """Every accepted envelope not read yet, oldest first."""
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    @property
    def discarded(self) -> int:
        """How many unread envelopes ``discard_oldest`` dropped to make room."""
        return self._queue.discarded

    @property
    def state(self) -> PublisherState:
        """RUNNING until `close()`, then CLOSED."""
        return PublisherState.CLOSED if self._queue.closed else PublisherState.RUNNING

    def stats(self) -> PublisherStats:
        """A snapshot of the counters, as `NatsPublisher.stats` gives them: every accepted event
        is acknowledged at once (``accepted == acknowledged``; nothing queued, in flight or failed)."""
        channel = self._queue
        with channel.mutex:
            accepted, blocked = channel.sequence, channel.blocked
        return PublisherStats(
            accepted=accepted,
            acknowledged=accepted,
            failed=0,
            queued=0,
            blocked_publishes=blocked,
            peak_in_flight=0,
            batches=0,
            state=self.state,
        )

    def __len__(self) -> int:
        return self._queue.qsize()

    def flush(self, timeout: float | None = None) -> bool:
        """Always True: every accepted event is already acknowledged."""
        return True

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting (blocked publishers get `PublisherClosed`); what was accepted can still be read."""
        self._queue.close()

    def __enter__(self) -> InMemoryPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<InMemoryPublisher {len(self)} unread, {'closed' if self._queue.closed else 'open'}>"
