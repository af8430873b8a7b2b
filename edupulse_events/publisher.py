"""What every publisher shares: `PublishAck`, the `EventPublisher` protocol, the futures it
returns, the caller-thread preparation of an event (validate, encode, route), and the
`InMemoryPublisher` for applications' own tests.

Routing headers sent beside every body (so consumers can route without parsing JSON):

==========================  ====================================================
``Nats-Msg-Id``             the event_id (JetStream de-duplicates on it)
``Edupulse-Event-Type``     the event type name, e.g. ``QuizSubmitted``
``Edupulse-Tenant``         the tenant id, percent-encoded UTF-8; absent if None
``Edupulse-Pii``            ``true`` or ``false`` (the GDPR flag)
``Edupulse-Correlation-Id`` the correlation id; absent if None
==========================  ====================================================
"""

from __future__ import annotations

import concurrent.futures
import queue
import re
import threading
import time
from typing import Any, List, Optional, Protocol, Tuple, runtime_checkable
from urllib.parse import quote

import attrs

from .codec import encode
from .config import MAX_SUBJECT_BYTES, _check_subject, _positive
from .envelope import EventEnvelope
from .errors import ConfigError, DeadlockError, InvalidEvent, PublisherClosed, QueueFull
from .events import event_type_name

__all__ = ["EventPublisher", "InMemoryPublisher", "PublishAck", "PublishFuture"]

_worker_state = threading.local()
_PLAIN = re.compile(r"[A-Za-z0-9\-]+")
_FIELD = re.compile(r"\{(type|tenant)\}")


@attrs.frozen(slots=True)
class PublishAck:
    """The broker's receipt for one event. Core NATS has no sequence: ``broker_sequence=None``."""

    broker_sequence: Optional[int]
    stream: Optional[str]
    duplicate: bool = False


_FINISHED = concurrent.futures._base.FINISHED  # type: ignore[attr-defined]
_PENDING = concurrent.futures._base.PENDING  # type: ignore[attr-defined]
_new = object.__new__
_set_sequence = PublishAck.broker_sequence.__set__  # type: ignore[attr-defined]
_set_stream = PublishAck.stream.__set__  # type: ignore[attr-defined]
_set_duplicate = PublishAck.duplicate.__set__  # type: ignore[attr-defined]


def new_ack(broker_sequence: Optional[int], stream: Optional[str], duplicate: bool) -> PublishAck:
    """`PublishAck(...)` for the publisher thread's hot path: half the cost of the frozen
    class's ``__init__`` (the values come from the broker's ack, already typed)."""
    ack = _new(PublishAck)
    _set_sequence(ack, broker_sequence)
    _set_stream(ack, stream)
    _set_duplicate(ack, duplicate)
    return ack


class PublishFuture(concurrent.futures.Future):
    """A `concurrent.futures.Future` for one published event; it cannot be cancelled.

    Speed: the futures of one publisher share one `threading.Condition` (a new Condition per
    future costs more than encoding the event), so `result()`/`exception()` wait in a loop
    until *this* future is done. Waiting inside a publisher's own thread (e.g. from a
    done-callback) could never finish, so it raises `DeadlockError` instead.
    """

    __slots__ = ()

    def __init__(self, condition: Optional[threading.Condition] = None) -> None:  # noqa: D107
        self._condition = condition if condition is not None else threading.Condition()
        self._state = "PENDING"
        self._result = None
        self._exception = None
        self._waiters: list = []
        self._done_callbacks: list = []

    def _finished(self) -> bool:
        return self._state == _FINISHED

    def _wait(self, timeout: Optional[float]) -> None:
        if self._state != _FINISHED:
            if getattr(_worker_state, "active", False):
                raise DeadlockError("waiting on an unresolved event from the publisher's own thread would wait forever")
            with self._condition:
                self._condition.wait_for(self._finished, timeout)

    def result(self, timeout: Optional[float] = None) -> Any:
        self._wait(timeout)
        return super().result(0)

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        self._wait(timeout)
        return super().exception(0)

    def cancel(self) -> bool:
        """Always False: an accepted event is on its way and cannot be taken back."""
        return False


def settle(results: List[Tuple["PublishFuture", PublishAck]]) -> int:
    """Resolve many futures at once, as ``set_result`` each would (waiters of
    `concurrent.futures.wait`/`as_completed`, then done-callbacks), taking their shared
    condition once and waking its waiters once. Skips futures already done; returns how many
    it resolved. Futures with another condition (none, in practice) get ``set_result``.
    """
    if not results:
        return 0
    condition = results[0][0]._condition
    done = []
    with condition:
        for future, ack in results:
            if future._condition is not condition:
                continue
            if future._state == _PENDING:
                future._result = ack
                future._state = _FINISHED
                for waiter in future._waiters:
                    waiter.add_result(future)
                done.append(future)
        condition.notify_all()
    count = len(done)
    for future, ack in results:
        if future._condition is not condition:
            try:
                future.set_result(ack)
                count += 1
            except concurrent.futures.InvalidStateError:
                pass
    for future in done:
        if future._done_callbacks:
            future._invoke_callbacks()
    return count


def mark_worker_thread() -> None:
    """Called once by each publisher thread, so its futures can refuse to block there."""
    _worker_state.active = True


@runtime_checkable
class EventPublisher(Protocol):
    """What every publisher offers. Blocking calls take float-second timeouts."""

    def publish(self, envelope: EventEnvelope, *, timeout: Optional[float] = None) -> "concurrent.futures.Future[PublishAck]": ...

    def flush(self, timeout: Optional[float] = None) -> bool: ...

    def close(self, timeout: Optional[float] = None) -> None: ...

    def __enter__(self) -> "EventPublisher": ...

    def __exit__(self, *exc: object) -> None: ...


class Item:
    """One prepared event on its way to the broker (bytes only: no Python objects of the caller)."""

    __slots__ = ("future", "subject", "headers", "payload", "size", "event_id", "deadline", "attempts", "sent_at", "mark")

    def __init__(self, future: PublishFuture, subject: bytes, headers: bytes, payload: bytes, event_id: str, deadline: float) -> None:
        self.future = future
        self.subject = subject
        self.headers = headers
        self.payload = payload
        self.size = len(headers) + len(payload)
        self.event_id = event_id
        self.deadline = deadline
        self.attempts = 0
        self.sent_at = 0.0


_TOKENS: dict = {}  # tenant -> token; tenants repeat, so this is a small, hot cache


def tenant_token(tenant: Optional[str]) -> str:
    """The tenant as one subject token / header value: percent-encoded, ``_`` for None."""
    token = _TOKENS.get(tenant)
    if token is not None:
        return token
    if tenant is None:
        return "_"
    if not tenant:
        token = "_empty"
    elif _PLAIN.fullmatch(tenant):
        token = tenant
    else:
        token = quote(tenant, safe="-").replace("_", "%5F").replace(".", "%2E").replace("~", "%7E")
    if len(tenant) <= 256:
        if len(_TOKENS) >= 4096:
            _TOKENS.clear()
        _TOKENS[tenant] = token
    return token


class Router:
    """Turns an envelope into (subject, header block, body) in the caller's thread."""

    def __init__(self, subject_template: str) -> None:
        self._template = subject_template
        self._fixed = None if _FIELD.search(subject_template) else subject_template.encode()

    def subject(self, envelope: EventEnvelope, type_name: str) -> bytes:
        if self._fixed is not None:
            return self._fixed
        fields = {"type": type_name, "tenant": tenant_token(envelope.tenant_id)}
        subject = _FIELD.sub(lambda m: fields[m.group(1)], self._template).encode()
        if len(subject) > MAX_SUBJECT_BYTES:  # the server would drop the connection, not just this event
            raise InvalidEvent(
                f"the subject for this event would be {len(subject)} bytes (tenant_id of {len(envelope.tenant_id or '')} "
                f"characters), more than the {MAX_SUBJECT_BYTES} bytes a NATS subject may have"
            )
        return subject

    @staticmethod
    def headers(envelope: EventEnvelope, event_id: str, type_name: str) -> bytes:
        tenant, correlation = envelope.tenant_id, envelope.correlation_id
        t = "" if tenant is None else f"Edupulse-Tenant: {tenant_token(tenant)}\r\n"
        c = "" if correlation is None else f"Edupulse-Correlation-Id: {correlation}\r\n"
        pii = "true" if envelope.personally_identifiable else "false"
        return f"NATS/1.0\r\nNats-Msg-Id: {event_id}\r\nEdupulse-Event-Type: {type_name}\r\n{t}Edupulse-Pii: {pii}\r\n{c}\r\n".encode()

    def prepare(self, envelope: EventEnvelope, deadline: float, max_payload: Optional[int], condition: Optional[threading.Condition] = None) -> Item:
        """Validate and encode; bad input raises `InvalidEvent` here, in the caller's thread."""
        if not isinstance(envelope, EventEnvelope):
            raise InvalidEvent(f"publish() takes an EventEnvelope, got {type(envelope).__name__}")
        payload = encode(envelope)
        type_name = event_type_name(envelope.data)
        # The wire format always starts with the event_id, canonical: reuse it (str(UUID) costs more).
        event_id = payload[13:49].decode() if payload[:13] == b'{"event_id":"' else str(envelope.event_id)
        item = Item(PublishFuture(condition), self.subject(envelope, type_name), self.headers(envelope, event_id, type_name), payload, event_id, deadline)
        if max_payload is not None and item.size > max_payload:
            raise InvalidEvent(
                f"event {event_id} is {item.size} bytes with headers, more than the server's max_payload of {max_payload} bytes"
            )
        return item


class _Channel(queue.Queue):
    """The `InMemoryPublisher`'s bounded queue: `put` numbers each envelope in the order it is
    stored (under the queue's lock, so sequence numbers match the read order across threads),
    can discard the oldest entry instead of waiting, and `close` wakes blocked `put` calls."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.sequence = 0
        self.closed = False
        self.discarded = 0

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
    `PublisherClosed`; what was accepted can still be read.
    """

    def __init__(
        self,
        max_queue: int = 10_000,
        *,
        subject: str = "edupulse.events",
        publish_timeout: float = 5.0,
        discard_oldest: bool = False,
    ) -> None:
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ConfigError(f"max_queue must be an int >= 1, got {max_queue!r}")
        _positive("publish_timeout")(None, None, publish_timeout)
        _check_subject(None, None, subject)
        if not isinstance(discard_oldest, bool):
            raise ConfigError(f"discard_oldest must be a bool, got {discard_oldest!r}")
        self._queue = _Channel(max_queue)
        self._router = Router(subject)
        self._publish_timeout = publish_timeout
        self._discard_oldest = discard_oldest

    def publish(self, envelope: EventEnvelope, *, timeout: Optional[float] = None) -> "concurrent.futures.Future[PublishAck]":
        """Validate, encode and keep ``envelope``; block up to ``timeout`` (default
        ``publish_timeout``; 0 = do not wait) while the channel is full, then `QueueFull`."""
        if self._queue.closed:
            raise PublisherClosed("publish() on a closed InMemoryPublisher")
        item = self._router.prepare(envelope, time.monotonic(), None)
        wait = self._publish_timeout if timeout is None else timeout
        try:
            sequence = self._queue.put_numbered(envelope, wait, self._discard_oldest)
        except queue.Full:
            raise QueueFull(f"InMemoryPublisher stayed full for {wait} s ({self._queue.maxsize} events); read them with get() or drain()") from None
        item.future.set_result(PublishAck(sequence, "memory", False))
        return item.future

    def get(self, timeout: Optional[float] = 5.0) -> EventEnvelope:
        """The oldest accepted envelope not read yet; `queue.Empty` after ``timeout``."""
        return self._queue.get(timeout=timeout)

    def drain(self) -> List[EventEnvelope]:
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

    def __len__(self) -> int:
        return self._queue.qsize()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Always True: every accepted event is already acknowledged."""
        return True

    def close(self, timeout: Optional[float] = None) -> None:
        """Stop accepting (blocked publishers get `PublisherClosed`); what was accepted can still be read."""
        self._queue.close()

    def __enter__(self) -> "InMemoryPublisher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<InMemoryPublisher {len(self)} unread, {'closed' if self._queue.closed else 'open'}>"
