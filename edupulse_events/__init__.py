"""edupulse_events: typed EduPulse domain events and a codec that speaks the Rust wire format.

Public API: the four built-in events and the event registry (:mod:`.events`), the envelope
and its nanosecond timestamp (:mod:`.envelope`), the JSON codec (:mod:`.codec`) and the
error tree (:mod:`.errors`).
"""

from __future__ import annotations

from ._frozen import FrozenMap
from .codec import Codec, decode, encode, make_converter
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

__all__ = [
    "BadgeAwarded",
    "BrokerError",
    "Codec",
    "ConfigError",
    "DeadlockError",
    "DecodeError",
    "EventEnvelope",
    "EventRegistry",
    "EventsError",
    "FrozenMap",
    "I32",
    "I64",
    "InvalidEvent",
    "LessonPublished",
    "PaymentProcessed",
    "PublishTimeout",
    "PublisherClosed",
    "QueueFull",
    "QuizSubmitted",
    "ServerError",
    "ServerNotFound",
    "Timestamp",
    "U32",
    "U64",
    "decode",
    "default_registry",
    "encode",
    "event_type_name",
    "make_converter",
    "register_event",
]

# --- publisher API (lead) ---
from .config import PublisherConfig, RetryPolicy  # noqa: E402
from .factory import build_from_env  # noqa: E402
from .nats_publisher import NatsPublisher, PublisherStats  # noqa: E402
from .publisher import EventPublisher, InMemoryPublisher, PublishAck, PublishFuture  # noqa: E402

__all__ += ["EventPublisher", "InMemoryPublisher", "NatsPublisher", "PublishAck", "PublishFuture", "PublisherConfig", "PublisherStats", "RetryPolicy", "build_from_env"]
