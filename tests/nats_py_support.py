"""What the installed nats-py can do that some tests need (the `matrix` run has nats-py 2.6)."""

from __future__ import annotations

import inspect

import nats.js
from nats.js.api import StreamConfig

#: nats-py 2.12 and later create streams with allow_atomic/allow_batched.
BATCH_FIELDS = "allow_atomic" in getattr(StreamConfig, "__dataclass_fields__", {})
#: nats-py 2.9 and later pull with idle heartbeats (what NatsConsumer needs).
PULL_HEARTBEAT = "heartbeat" in inspect.signature(nats.js.JetStreamContext.PullSubscription.fetch).parameters
