"""OpenTelemetry tracing and metrics for `NatsPublisher`, used only where ``opentelemetry-api`` is
installed (the ``otel`` extra) — `telemetry_for` returns None otherwise, and the publish path then
pays one ``is None`` check.

Tracing (OpenTelemetry's messaging conventions): each event (``publish()``, and each of
``publish_many()`` and ``publish_encoded()``) starts a PRODUCER span
``publish <subject template>`` in the caller's context, with ``messaging.system`` = ``nats``,
``messaging.operation.type`` = ``send``, the destination (subject and template), the message id
(the event id), the conversation id (the correlation id) and the body size; the W3C
``traceparent``/``tracestate`` of that span go into the message's NATS headers, so consumers
continue the trace; the span ends when the event's future resolves (an ack, or the error, with
``error.type``).

Metrics: observable counters and gauges read from ``stats()`` at collection time (sent,
acknowledged, failed by ``error.type``, retried, duplicates, queue depth, in flight) — nothing
per event — and the ``messaging.client.operation.duration`` histogram (acceptance to outcome),
recorded by the publisher thread per resolved event while a metrics SDK is configured. Every
point carries ``messaging.client.id`` (the publisher's ``client_name`` and a number unique in the
process): the instruments of a meter are created once and report every publisher that uses it
(an SDK keeps the first registration of a name and ignores later callbacks).

With the API but no SDK configured, nothing is started or recorded: whether an SDK is there is
looked up when the publisher is built and every `RECHECK_EVERY` publishes after.

`shared` (instruments made once per meter provider) and `Readings` (the observable instruments'
callbacks over the live members) serve the consumer's and the outbox's instruments too.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from .._version import __version__

if TYPE_CHECKING:
    from .._pipeline._routing import Item
    from ..config import PublisherConfig
    from ..stats import PublisherStats

__all__ = ["RECHECK_EVERY", "Observed", "Readings", "Telemetry", "correlation_of", "shared", "telemetry_for"]

#: Publishes between two looks at whether a tracing or metrics SDK has been configured.
RECHECK_EVERY = 1024
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_NO_SDK = ("ProxyTracerProvider", "NoOpTracerProvider", "_ProxyMeterProvider", "NoOpMeterProvider")
_client_numbers = itertools.count(1)


def telemetry_for(config: PublisherConfig, stats: Callable[[], PublisherStats]) -> Telemetry | None:
    """The publisher's telemetry, or None when opentelemetry-api is not installed."""
    try:
        if importlib.util.find_spec("opentelemetry") is None:
            return None
    except ValueError:  # imported as None: blocked on purpose
        return None
    return Telemetry(config, stats)


class Telemetry:
    """One publisher's spans, trace-context headers and metric instruments."""

    def __init__(self, config: PublisherConfig, stats: Callable[[], PublisherStats]) -> None:
        self._config = config
        self._ready = False
        self._stats = stats
        self._template = config.subject
        host, port = _address(config.servers[0])
        self._base: dict[str, Any] = {
            "messaging.system": "nats",
            "messaging.operation.name": "publish",
            "messaging.client.id": f"{config.client_name}-{next(_client_numbers)}",
        }
        self._span_attributes: dict[str, Any] = {
            **self._base,
            "messaging.operation.type": "send",
            "server.address": host,
            "server.port": port,
        }
        if "{" in config.subject:
            self._span_attributes["messaging.destination.template"] = config.subject
        self._span_name = f"publish {config.subject}"
        self._delivery_timeout = config.delivery_timeout
        self.countdown = RECHECK_EVERY
        self.tracing = False
        #: Whether the publisher thread records durations (a metrics SDK is configured).
        self.metering = False
        self.recheck()

    def _set_up(self) -> None:
        """Get the tracer and the instruments (the first time opentelemetry is found imported)."""
        from opentelemetry import metrics, propagate, trace

        config = self._config
        self._trace, self._propagate, self._metrics_api = trace, propagate, metrics
        self._tracer_provider: Any = config.tracer_provider
        self._meter_provider: Any = config.meter_provider
        self._tracer = trace.get_tracer("edupulse_events", __version__, tracer_provider=self._tracer_provider)
        meter = metrics.get_meter("edupulse_events", __version__, meter_provider=self._meter_provider)
        provider = self._meter_provider or metrics.get_meter_provider()
        self.duration = shared(provider, meter, _Instruments).join(self)
        self._ready = True

    def observe(self, field: str) -> tuple[int, Mapping[str, Any]]:
        """One reading of ``stats()``: the value of ``field`` and this publisher's attributes."""
        return getattr(self._stats(), field), self._base

    def failures(self) -> list[tuple[int, Mapping[str, Any]]]:
        """This publisher's failure counts, by ``error.type``."""
        return [(n, {**self._base, "error.type": kind}) for kind, n in self._stats().failures.items()]

    def recheck(self) -> None:
        """Look again whether a tracing or metrics SDK is configured (cheap, but not per event).

        Until the application (or its instrumentation) has imported opentelemetry, no SDK can be
        configured: the library then does not import it either (an import pre-fork servers would pay per
        worker: docs/performance.md)."""
        self.countdown = RECHECK_EVERY
        if not self._ready:
            given = self._config.tracer_provider is not None or self._config.meter_provider is not None
            if not given and "opentelemetry" not in sys.modules:
                return
            self._set_up()
        tracers = self._tracer_provider or self._trace.get_tracer_provider()
        meters = self._meter_provider or self._metrics_api.get_meter_provider()
        self.tracing = type(tracers).__name__ not in _NO_SDK
        self.metering = type(meters).__name__ not in _NO_SDK

    def trace(self, item: Item, correlation_id: object) -> None:
        """Start ``item``'s PRODUCER span in the caller's context (``correlation_id``: its
        envelope's, or None), put its trace context into the item's NATS headers, and end it when
        the item's future resolves."""
        trace = self._trace
        attributes = {
            **self._span_attributes,
            "messaging.destination.name": item.subject.decode(),
            "messaging.message.id": item.event_id,
            "messaging.message.body.size": len(item.payload),
        }
        if correlation_id is not None:
            attributes["messaging.message.conversation_id"] = str(correlation_id)
        span = self._tracer.start_span(self._span_name, kind=trace.SpanKind.PRODUCER, attributes=attributes)
        carrier: dict[str, str] = {}
        self._propagate.inject(carrier, context=trace.set_span_in_context(span))
        if carrier:
            extra = "".join(f"{name}: {value}\r\n" for name, value in carrier.items()).encode()
            item.headers = item.headers[:-2] + extra + b"\r\n"
            item.size = len(item.headers) + len(item.payload)
        item.future.add_done_callback(lambda future: _end(span, future, trace))

    def record(self, items: Iterable[Item], now: float, error: BaseException | None = None) -> None:
        """Record acceptance-to-outcome durations of resolved ``items`` (the publisher thread)."""
        attributes = self._base if error is None else {**self._base, "error.type": type(error).__name__}
        record, accepted = self.duration.record, self._delivery_timeout
        for item in items:
            record(max(0.0, now - (item.deadline - accepted)), attributes)


class _Instruments:
    """The instruments of one meter provider, created once and shared by every publisher that
    reports to it: the observable ones read each live publisher's ``stats()`` at collection."""

    def __init__(self, meter: Any) -> None:
        from opentelemetry.metrics import CallbackOptions, Observation

        self._members: weakref.WeakSet[Telemetry] = weakref.WeakSet()

        def reading(field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def observe(_options: CallbackOptions) -> Iterable[Observation]:
                return [Observation(*member.observe(field)) for member in list(self._members)]

            return observe

        def failures(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(*point) for member in list(self._members) for point in member.failures()]

        counters = (
            ("messaging.client.sent.messages", "accepted", "Events accepted by publish()"),
            ("edupulse.publisher.acknowledged", "acknowledged", "Events the broker acknowledged"),
            ("edupulse.publisher.retried", "retried", "Attempts retried after a transient failure"),
            ("edupulse.publisher.duplicates", "duplicates", "Acks that were JetStream duplicates"),
        )
        for name, field, description in counters:
            meter.create_observable_counter(name, [reading(field)], unit="{message}", description=description)
        meter.create_observable_counter(
            "edupulse.publisher.failed", [failures], unit="{message}", description="Events failed, by error.type"
        )
        for name, field, description in (
            ("edupulse.publisher.queue.depth", "queued", "Events queued, not taken by the publisher thread yet"),
            ("edupulse.publisher.in_flight", "in_flight", "Events taken from the queue and not resolved yet"),
        ):
            meter.create_observable_gauge(name, [reading(field)], unit="{message}", description=description)
        self.duration = meter.create_histogram(
            "messaging.client.operation.duration", unit="s", description="From publish() to the broker's answer"
        )

    def join(self, member: Telemetry) -> Any:
        """Report ``member`` from now on (for as long as it lives); returns the duration histogram."""
        self._members.add(member)
        return self.duration


class Observed(Protocol):
    """What `Readings` reads: one member's points (value, attributes) for an instrument."""

    def observe(self, what: str) -> Iterable[tuple[float, Mapping[str, Any]]]: ...


class Readings:
    """The live members an instrument set reports (weakly held: a member reports while it lives), and
    the callbacks of its observable instruments, each reading every member's points."""

    def __init__(self) -> None:
        self._members: weakref.WeakSet[Any] = weakref.WeakSet()

    def join(self, member: Observed) -> None:
        self._members.add(member)

    def reading(self, what: str) -> Callable[[Any], Iterable[Any]]:
        """The callback of an observable instrument: ``member.observe(what)`` of every live member."""
        from opentelemetry.metrics import Observation

        def observe(_options: Any) -> Iterable[Any]:
            return [Observation(*point) for member in list(self._members) for point in member.observe(what)]

        return observe


#: Instruments by meter provider and kind (kept for the process's life, as the providers themselves are).
_instruments: dict[tuple[int, Callable[[Any], Any]], tuple[Any, Any]] = {}
_instruments_lock = threading.Lock()

_T = TypeVar("_T")


def shared(provider: Any, meter: Any, make: Callable[[Any], _T]) -> _T:
    """The instruments ``make(meter)`` builds for ``provider`` (whose meter is ``meter``), built at
    its first user and shared by every later one (an SDK keeps the first registration of a name)."""
    with _instruments_lock:
        key = (id(provider), make)
        entry = _instruments.get(key)
        if entry is None or entry[0] is not provider:
            entry = _instruments[key] = (provider, make(meter))
        return entry[1]


_CORRELATION_LINE = b"\r\nEdupulse-Correlation-Id: "


def correlation_of(headers: bytes) -> str | None:
    """The correlation id an encoded event's header block carries (None without one)."""
    at = headers.find(_CORRELATION_LINE)
    if at < 0:
        return None
    start = at + len(_CORRELATION_LINE)
    return headers[start : headers.index(b"\r\n", start)].decode()


def _address(url: str) -> tuple[str, int]:
    """The first server's host and port for span attributes; never its credentials, and never a
    `ValueError` (whose message would quote the text after a ':', possibly part of a password):
    `PublisherConfig` has checked the URL, this only makes sure telemetry cannot be the place it
    breaks."""
    try:
        split = urlsplit(url)
        return split.hostname or "", split.port or 4222
    except ValueError:
        return "", 4222


def _end(span: Any, future: Any, trace: Any) -> None:
    error = future.exception(timeout=0)
    if error is None:
        ack = future.result(timeout=0)
        if ack.broker_sequence is not None:
            span.set_attribute("edupulse.stream", ack.stream or "")
            span.set_attribute("edupulse.stream.sequence", ack.broker_sequence)
    else:
        span.set_attribute("error.type", type(error).__name__)
        span.record_exception(error)
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
    span.end()
