"""edupulse_events: typed EduPulse domain events, a codec that speaks the Rust service's JSON,
and a blocking, thread-safe publisher to NATS.

Public API: the four built-in events and the event registry (:mod:`.events`), the envelope
and its nanosecond timestamp (:mod:`.envelope`), the request context envelopes take their
correlation id, tenant and cause from (:mod:`.context`), the JSON codec (:mod:`.codec`), the
publishers (`NatsPublisher`, `InMemoryPublisher`, `build_from_env`) with their config and
acks, and the error tree (:mod:`.errors`). `edupulse_events.testing` has an embedded
nats-server for tests and demos.
"""

from __future__ import annotations

import logging

from ._frozen import FrozenMap
from ._pipeline._encoded import EncodedEvent
from ._version import __version__ as __version__
from .codec import Codec, decode, encode, make_converter
from .config import ConsumerConfig, PublisherConfig, RetryPolicy
from .consumer import Inbox, NatsConsumer, ReceivedMessage
from .context import INHERIT, EventContext, current_event_context, event_context
from .envelope import EventEnvelope, Timestamp
from .errors import (
    AlreadySettled,
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    ConsumerClosed,
    DeadlockError,
    DecodeError,
    EventRejected,
    EventsError,
    InvalidBatch,
    InvalidEvent,
    OutboxDatabaseError,
    PermanentFailure,
    PublisherClosed,
    PublisherCrashed,
    PublishTimeout,
    QueueFull,
    ServerError,
    ServerNotFound,
    SpoolError,
    SpoolFull,
    WaitTimeout,
)
from .events import (
    I32,
    I64,
    U32,
    U64,
    BadgeAwarded,
    EventRegistry,
    LessonPublished,
    PaymentProcessed,
    QuizSubmitted,
    default_registry,
    event_type_name,
    register_event,
)
from .factory import build_from_env
from .futures import PublishAck, PublishFuture
from .nats_publisher import NatsPublisher, PublisherState
from .outbox import Outbox, OutboxRelay, OutboxStats
from .publisher import EventPublisher, InMemoryPublisher
from .stats import ConsumerStats, PublisherStats

# A library never configures logging: without this, an application that set up none would get
# the library's warnings on stderr through Python's last-resort handler.
logging.getLogger("edupulse_events").addHandler(logging.NullHandler())

__all__ = [
    "I32",
    "I64",
    "INHERIT",
    "U32",
    "U64",
    "AlreadySettled",
    "BadgeAwarded",
    "BrokerError",
    "BrokerUnavailable",
    "Codec",
    "ConfigError",
    "ConsumerClosed",
    "ConsumerConfig",
    "ConsumerStats",
    "DeadlockError",
    "DecodeError",
    "EncodedEvent",
    "EventContext",
    "EventEnvelope",
    "EventPublisher",
    "EventRegistry",
    "EventRejected",
    "EventsError",
    "FrozenMap",
    "InMemoryPublisher",
    "Inbox",
    "InvalidBatch",
    "InvalidEvent",
    "LessonPublished",
    "NatsConsumer",
    "NatsPublisher",
    "Outbox",
    "OutboxDatabaseError",
    "OutboxRelay",
    "OutboxStats",
    "PaymentProcessed",
    "PermanentFailure",
    "PublishAck",
    "PublishFuture",
    "PublishTimeout",
    "PublisherClosed",
    "PublisherConfig",
    "PublisherCrashed",
    "PublisherState",
    "PublisherStats",
    "QueueFull",
    "QuizSubmitted",
    "ReceivedMessage",
    "RetryPolicy",
    "ServerError",
    "ServerNotFound",
    "SpoolError",
    "SpoolFull",
    "Timestamp",
    "WaitTimeout",
    "build_from_env",
    "current_event_context",
    "decode",
    "default_registry",
    "encode",
    "event_context",
    "event_type_name",
    "make_converter",
    "register_event",
]
