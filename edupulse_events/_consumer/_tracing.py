"""OpenTelemetry CONSUMER spans for ``run()``'s handlers, continuing the producer's trace.

Used only where ``opentelemetry-api`` is installed (the ``otel`` extra; `tracing_for` returns
None otherwise) and a tracing SDK is configured (looked up at ``run()``'s start). Each handled
message gets a span ``process <subject>`` of kind CONSUMER whose parent is the context in the
message's ``traceparent``/``tracestate`` headers (put there by the publisher's PRODUCER span),
with OpenTelemetry's messaging attributes (``messaging.system`` = ``nats``,
``messaging.operation.type`` = ``process``, the subject, the event id, the durable as the
consumer group, the delivery count) and, when the handler raised, ``error.type`` and an error
status. Like the publisher's telemetry it imports nothing of opentelemetry until the
application has.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .._version import __version__

if TYPE_CHECKING:
    from ..config import ConsumerConfig
    from ._message import ReceivedMessage

__all__ = ["Tracing", "tracing_for"]

_NO_SDK = ("ProxyTracerProvider", "NoOpTracerProvider")


def tracing_for(config: ConsumerConfig) -> Tracing | None:
    """The consumer's tracing, or None when opentelemetry-api is not installed."""
    try:
        if importlib.util.find_spec("opentelemetry") is None:
            return None
    except ValueError:
        return None
    return Tracing(config)


class Tracing:
    """One consumer's CONSUMER spans."""

    def __init__(self, config: ConsumerConfig) -> None:
        self._config = config
        self._ready = False
        self.active = False
        self._base: dict[str, Any] = {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.consumer.group.name": config.durable,
        }

    def recheck(self) -> None:
        """Whether a tracing SDK is configured now (call at ``run()``'s start)."""
        if not self._ready:
            if self._config.tracer_provider is None and "opentelemetry" not in sys.modules:
                return
            from opentelemetry import propagate, trace

            self._trace, self._propagate = trace, propagate
            self._provider: Any = self._config.tracer_provider
            self._tracer = trace.get_tracer("edupulse_events", __version__, tracer_provider=self._provider)
            self._ready = True
        provider = self._provider or self._trace.get_tracer_provider()
        self.active = type(provider).__name__ not in _NO_SDK

    @contextlib.contextmanager
    def span(self, message: ReceivedMessage) -> Iterator[None]:
        """The handler's span for ``message``, its parent read from the message's headers."""
        trace = self._trace
        parent = self._propagate.extract(message.headers)
        attributes = {
            **self._base,
            "messaging.destination.name": message.subject,
            "messaging.message.id": str(message.envelope.event_id),
            "messaging.message.body.size": len(message.data),
            "messaging.nats.message.delivery_count": message.num_delivered,
            "edupulse.stream.sequence": message.stream_sequence,
        }
        with self._tracer.start_as_current_span(
            f"process {message.subject}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=True,
            set_status_on_exception=True,
        ) as span:
            try:
                yield
            except BaseException as exc:
                span.set_attribute("error.type", type(exc).__name__)
                raise
