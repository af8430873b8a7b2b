"""The exception tree: every error this library raises on purpose.

::

    EventsError
    ├── InvalidEvent      (ValueError)    bad event/envelope at construction, encode or publish()
    │   └── InvalidBatch                      an atomic batch that cannot be one (too long, an id twice, core NATS)
    ├── DecodeError       (ValueError)    bytes the Rust service would reject
    ├── ConfigError       (ValueError)    a publisher setting that cannot work
    ├── QueueFull         (queue.Full)    publish() waited `timeout` for room and found none
    │   └── SpoolFull                         the local spool is at spool_max_bytes or its disk is full
    ├── PublisherClosed   (RuntimeError)  publish() after close(), or queued when close() gave up
    ├── WaitTimeout       (TimeoutError)  future.result(timeout) gave up waiting; the event is still on its way
    ├── BrokerError       (ConnectionError) the broker could not be used for an event or a connection
    │   ├── BrokerUnavailable                 transient: no connection, no ack in time, no leader (retried)
    │   ├── EventRejected                     permanent: the stream refused this event (err_code says why)
    │   ├── PublishTimeout                    the event failed: not acknowledged before its delivery deadline
    │   └── PublisherCrashed                  the publisher thread crashed; it restarts on the next publish()
    ├── DeadlockError     (RuntimeError)  waiting on a future from the publisher's (or consumer's) own thread
    ├── OutboxDatabaseError (ConnectionError) the outbox relay could not use its database (retried with backoff)
    ├── ConsumerClosed    (RuntimeError)  fetch() or run() on a closed NatsConsumer
    ├── AlreadySettled    (RuntimeError)  a second ack/nak/term of one received message
    ├── PermanentFailure                  raised by a consumer's handler: never retried, dead-lettered
    ├── ServerError       (RuntimeError)  a .testing nats-server failed to start, or was misused
    ├── ServerNotFound    (FileNotFoundError) .testing found no nats-server executable
    └── SpoolError        (OSError)       a spool file could not be used (corrupt, foreign, unwritable)

Every subclass also derives from the matching builtin, so ``except ValueError`` keeps working
for code that does not know this library. The only `TimeoutError` is `WaitTimeout`: around
``future.result(timeout)``, ``except TimeoutError`` means "not resolved yet", never "failed"
(an event that failed at its deadline raises `PublishTimeout`, a `BrokerError`). Whether
retrying can help is part of the type: ``BrokerError.retryable`` is a class attribute, True
only for `BrokerUnavailable` (the publisher retries those itself until the delivery deadline).
Dependency exceptions (nats-py, cattrs, orjson) never reach callers: they are mapped to one of
these, with the original kept as ``__cause__``.
Messages never contain credentials or event payloads.
"""

from __future__ import annotations

import concurrent.futures
import queue
import sys
from typing import Any, ClassVar

__all__ = [
    "AlreadySettled",
    "BrokerError",
    "BrokerUnavailable",
    "ConfigError",
    "ConsumerClosed",
    "DeadlockError",
    "DecodeError",
    "EventRejected",
    "EventsError",
    "InvalidBatch",
    "InvalidEvent",
    "OutboxDatabaseError",
    "PermanentFailure",
    "PublishTimeout",
    "PublisherClosed",
    "PublisherCrashed",
    "QueueFull",
    "ServerError",
    "ServerNotFound",
    "SpoolError",
    "SpoolFull",
    "WaitTimeout",
]


class EventsError(Exception):
    """Base class of every error edupulse_events raises on purpose."""


class InvalidEvent(EventsError, ValueError):
    """An event or envelope is not valid: wrong type, out of range, or not encodable."""


class InvalidBatch(InvalidEvent):
    """``publish_many(atomic=True)`` was given a batch the broker cannot store as one: longer than
    the server's batch limit, the same event id twice, empty, or a core NATS publisher. Nothing
    was queued."""


class DecodeError(EventsError, ValueError):
    """Bytes that are not an envelope as the Rust service reads it; the message names the path."""


class ConfigError(EventsError, ValueError):
    """A publisher setting is invalid; raised when the config is constructed."""


class QueueFull(EventsError, queue.Full):
    """The publisher's bounded queue stayed full for the whole ``timeout`` of ``publish()``.

    From ``publish_many()``: ``futures`` holds the futures of the envelopes queued before the
    time ran out (the first ``len(futures)`` of the batch, delivered as usual); the rest were not.
    """

    futures: list[Any] = []  # noqa: RUF012 - read-only default; publish_many() sets its own

    @classmethod
    def partial(cls, futures: list[Any], total: int, timeout: float) -> QueueFull:
        """publish_many(): the queue stayed full for ``timeout`` s after the first ``len(futures)`` of ``total``."""
        error = cls(
            f"publisher queue stayed full for {timeout} s: {len(futures)} of {total} events queued "
            "(their futures are in this error's .futures), the rest not"
        )
        error.futures = futures
        return error


class SpoolFull(QueueFull):
    """The spool reached spool_max_bytes, or its disk is full: the event was not accepted (nothing written)."""


class PublisherClosed(EventsError, RuntimeError):
    """The publisher is closed: nothing more is accepted, or close() gave up on this event."""


if sys.version_info >= (3, 11):  # concurrent.futures.TimeoutError is TimeoutError
    _Timeout = TimeoutError
else:  # pragma: no cover - two classes on 3.10

    class _Timeout(TimeoutError, concurrent.futures.TimeoutError):
        """Both timeouts: ``except concurrent.futures.TimeoutError`` catches a `WaitTimeout` too."""


class WaitTimeout(EventsError, _Timeout):
    """``future.result(timeout)`` or ``.exception(timeout)`` ran out of time before the event
    resolved. Unlike `PublishTimeout` the event has not failed: it is still on its way, and its
    future resolves by the event's delivery deadline. A `TimeoutError` and a
    `concurrent.futures.TimeoutError` (two classes on Python 3.10, one since 3.11)."""


class BrokerError(EventsError, ConnectionError):
    """The broker could not be reached, refused the credentials, or did not take an event."""

    #: Whether the same attempt may succeed later (the publisher retries these itself).
    retryable: ClassVar[bool] = False


class BrokerUnavailable(BrokerError):
    """A transient failure: not connected, no answer in time, no stream leader for now."""

    retryable: ClassVar[bool] = True


class EventRejected(BrokerError):
    """The broker refused this event for good (stream full, message too large, no stream...).

    ``code`` and ``err_code`` are JetStream's status and error code (None where the server
    gave none); retrying the same bytes cannot help.
    """

    def __init__(self, message: str, *, code: int | None = None, err_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.err_code = err_code


class PublishTimeout(BrokerError):
    """The event failed: the broker did not acknowledge it before its delivery deadline.

    Not a `TimeoutError` (only `WaitTimeout`, "still on its way", is one): ``except
    TimeoutError`` around ``future.result(timeout)`` does not catch it. Its earlier attempts may
    have reached the stream: republishing the same envelope within the stream's duplicate
    window is safe.
    """


class PublisherCrashed(BrokerError):
    """The publisher thread stopped on an unexpected error before this event was acknowledged.

    The event may or may not have been stored (republishing the same envelope within the
    stream's duplicate window is safe). The next ``publish()`` starts a new thread.
    """


class DeadlockError(EventsError, RuntimeError):
    """A blocking call was made from the publisher's own thread, where it could never finish."""


class OutboxDatabaseError(EventsError, ConnectionError):
    """The outbox relay could not use its database: unreachable, locked past its timeout, or a
    statement failed. Nothing was lost (undelivered rows stay); `OutboxRelay.run` retries with
    backoff, `OutboxRelay.run_once` raises it. The driver's exception is the ``__cause__``."""


class ConsumerClosed(EventsError, RuntimeError):
    """The consumer is closed (or its thread ended): nothing more is fetched."""


class AlreadySettled(EventsError, RuntimeError):
    """A received message was acked, nak'ed or terminated already: it takes one outcome."""


class PermanentFailure(EventsError):
    """Raised by a consumer's handler: this message can never be handled. It is not retried:
    it goes to the dead letter (with this error as its reason) and is terminated."""


class ServerError(EventsError, RuntimeError):
    """A test nats-server could not be started, did not become ready, or was misused."""


class ServerNotFound(EventsError, FileNotFoundError):
    """No nats-server executable was found; the message says how to install one."""


class SpoolError(EventsError, OSError):
    """A spool file could not be used (corrupt, foreign, unwritable)."""
