"""The one place that imports nats-py (a subpackage: the connection, two ways to publish, read-back).

The rest of the package talks to `NatsTransport` (``_client.py``), which speaks in bytes and
library exceptions: every nats-py exception is mapped to a `BrokerError` (`BrokerUnavailable`
when a retry can help); none escapes to callers. ``_fast.py`` and ``_public.py`` are the two
ways of publishing and reading acks, ``_acks.py`` reads acks from the raw bytes and decides
which count (the ack inbox is a trust boundary); ``_stream.py`` reads a stream back for tests
and demos.
"""

from __future__ import annotations

from ._batches import BATCH_HEADERS
from ._client import NatsTransport, cancel_and_wait, check_broker
from ._paths import PATH_ENV, prepare_process
from ._stream import StoredMessage, read_stream, read_stream_async

__all__ = [
    "BATCH_HEADERS",
    "PATH_ENV",
    "NatsTransport",
    "StoredMessage",
    "cancel_and_wait",
    "check_broker",
    "prepare_process",
    "read_stream",
    "read_stream_async",
]
