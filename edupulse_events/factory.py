"""`build_from_env()`: the publisher an application gets from its environment.

``EDUPULSE_EVENT_BROKER_URL`` and ``EDUPULSE_EVENT_BROKER_SUBJECT`` both set: a connected
`NatsPublisher` (``EDUPULSE_EVENT_BROKER_TOKEN`` is the auth token, if any). Otherwise an
`InMemoryPublisher`, with a warning in the log. A configured but unreachable broker raises
`BrokerError`: a silent fallback would lose every event. Only when
``EDUPULSE_EVENT_BROKER_FALLBACK=memory`` is set does it fall back to memory (logged as an error).

The in-memory publisher built here keeps the latest ``max_queue`` events and discards older
unread ones (``discard_oldest=True``): an application running without a broker never reads
them, and must not start blocking in `publish()` once 10,000 events have piled up.

Either publisher encodes with ``codec`` (default: the default codec): ``Codec(my_registry)``
for the event types of an application's own `EventRegistry`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from .codec import Codec
from .config import ENV_PREFIX, PublisherConfig
from .errors import BrokerError
from .nats_publisher import NatsPublisher
from .publisher import EventPublisher, InMemoryPublisher

__all__ = ["FALLBACK_ENV", "build_from_env"]

log = logging.getLogger("edupulse_events")
FALLBACK_ENV = ENV_PREFIX + "FALLBACK"


def _in_memory(subject: str, options: Mapping[str, Any], codec: Codec | None) -> InMemoryPublisher:
    return InMemoryPublisher(
        options.get("max_queue", 10_000), subject=subject or "edupulse.events", discard_oldest=True, codec=codec
    )


def build_from_env(
    environ: Mapping[str, str] | None = None, *, codec: Codec | None = None, **options: Any
) -> EventPublisher:
    """Build the publisher the environment asks for, encoding with ``codec`` (default: the default
    codec); ``options`` override `PublisherConfig` fields."""
    env = os.environ if environ is None else environ
    url = env.get(ENV_PREFIX + "URL", "").strip()
    subject = env.get(ENV_PREFIX + "SUBJECT", "").strip()
    if not (url and subject):
        missing = [name for name, value in (("URL", url), ("SUBJECT", subject)) if not value]
        log.warning(
            "%s not set: using an InMemoryPublisher, events will NOT reach a broker",
            " and ".join(ENV_PREFIX + m for m in missing),
        )
        return _in_memory(subject, options, codec)
    config = PublisherConfig.from_env(env, codec=codec, **options)
    publisher = NatsPublisher(config)
    try:
        publisher.check()  # fails here, at build time, if publishing could not work; leaves nothing running
        return publisher  # each process connects on its first publish() (pre-fork servers fork after import)
    except BrokerError as exc:
        publisher.close(0.0)
        if env.get(FALLBACK_ENV, "").strip().lower() == "memory":
            log.error(
                "%s; %s=memory: falling back to an InMemoryPublisher, events will NOT reach a broker", exc, FALLBACK_ENV
            )
            return _in_memory(config.subject, options, codec)
        raise
