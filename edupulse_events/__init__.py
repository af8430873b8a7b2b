"""edupulse_events: typed EduPulse domain events, a codec that speaks the Rust service's JSON,
and a blocking, thread-safe publisher to NATS.

Public API: the four built-in events and the event registry (:mod:`.events`), the envelope
and its nanosecond timestamp (:mod:`.envelope`), the JSON codec (:mod:`.codec`), the
publishers (`NatsPublisher`, `InMemoryPublisher`, `build_from_env`) with their config and
acks, and the error tree (:mod:`.errors`). `edupulse_events.testing` has an embedded
nats-server for tests and demos.
"""

from __future__ import annotations

from ._frozen import FrozenMap
from .codec import Codec, decode, encode, make_converter
from .config import PublisherConfig, RetryPolicy
from .envelope import EventEnvelope, Timestamp
from .errors import (
    BrokerError,
    ConfigError,
    DeadlockError,
    DecodeError,
    EventsError,
    InvalidEvent,
    PublisherClosed,
    PublishTimeout,
    QueueFull,
    ServerError,
    ServerNotFound,
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
from .nats_publisher import NatsPublisher, PublisherStats
from .publisher import EventPublisher, InMemoryPublisher, PublishAck, PublishFuture

__all__ = [
    "I32",
    "I64",
    "U32",
    "U64",
    "BadgeAwarded",
    "BrokerError",
    "Codec",
    "ConfigError",
    "DeadlockError",
    "DecodeError",
    "EventEnvelope",
    "EventPublisher",
    "EventRegistry",
    "EventsError",
    "FrozenMap",
    "InMemoryPublisher",
    "InvalidEvent",
    "LessonPublished",
    "NatsPublisher",
    "PaymentProcessed",
    "PublishAck",
    "PublishFuture",
    "PublishTimeout",
    "PublisherClosed",
    "PublisherConfig",
    "PublisherStats",
    "QueueFull",
    "QuizSubmitted",
    "RetryPolicy",
    "ServerError",
    "ServerNotFound",
    "Timestamp",
    "build_from_env",
    "decode",
    "default_registry",
    "encode",
    "event_type_name",
    "make_converter",
    "register_event",
]
