"""OpenTelemetry for the outbox relay, used only where ``opentelemetry-api`` is installed (the
``otel`` extra): `relay_telemetry` returns None otherwise.

Tracing: each claim of rows is an INTERNAL span ``outbox relay <table>`` that links to the spans
that added its events (the ``traceparent`` stored with each row; at most `MAX_LINKS` distinct
ones), with the rows claimed, delivered and dead-lettered as attributes, from the claim to its
settling. The publisher's own PRODUCER spans (one per event, `_engine._otel`) start inside it, so
a trace goes from the request that committed, by a link, to the relay's claim and its sends.

Metrics (observable, read at collection time, nothing per event): ``edupulse.outbox.pending``
(rows waiting), ``edupulse.outbox.oldest_age`` (seconds the oldest waits), and the counters
``edupulse.outbox.delivered`` and ``edupulse.outbox.dead`` (rows this relay delivered, moved to
the dead letters). The gauges report the relay's last count of the table (taken after each pass
and while idle, only when a metrics SDK is configured): a collection never queries the database
from the exporter's thread. Every point carries ``edupulse.outbox.table`` and ``db.system``.

As for the publisher, nothing is imported until the application has imported opentelemetry.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .._engine._otel import shared
from .._version import __version__
from ._schema import StoredRow
from ._stores import Counts

__all__ = ["MAX_LINKS", "RelayTelemetry", "relay_telemetry", "traceparent"]

#: The most span links one relay span carries.
MAX_LINKS = 128
_NO_SDK = ("ProxyTracerProvider", "NoOpTracerProvider", "_ProxyMeterProvider", "NoOpMeterProvider")


def traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, when OpenTelemetry is imported and tracing."""
    if "opentelemetry" not in sys.modules:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def relay_telemetry(
    table: str,
    family: str,
    counters: Callable[[], tuple[int, int]],
    tracer_provider: Any = None,
    meter_provider: Any = None,
) -> RelayTelemetry | None:
    """The relay's telemetry, or None when opentelemetry-api is not installed."""
    try:
        if importlib.util.find_spec("opentelemetry") is None:
            return None
    except ValueError:  # imported as None: blocked on purpose
        return None
    return RelayTelemetry(table, family, counters, tracer_provider, meter_provider)


class RelayTelemetry:
    """One relay's span per pass and its metric readings."""

    def __init__(
        self,
        table: str,
        family: str,
        counters: Callable[[], tuple[int, int]],
        tracer_provider: Any,
        meter_provider: Any,
    ) -> None:
        self.attributes = {"edupulse.outbox.table": table, "db.system": family}
        self._counters = counters
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._span_name = f"outbox relay {table}"
        self._ready = False
        self.counts: Counts | None = None
        self.tracing = False
        self.metering = False
        self.recheck()

    def recheck(self) -> None:
        """Whether a tracing or metrics SDK is configured now (once per pass: cheap)."""
        if not self._ready:
            if self._tracer_provider is None and self._meter_provider is None and "opentelemetry" not in sys.modules:
                return
            from opentelemetry import metrics, trace

            self._trace, self._metrics = trace, metrics
            self._tracer = trace.get_tracer(
                "edupulse_events.outbox", __version__, tracer_provider=self._tracer_provider
            )
            meter = metrics.get_meter("edupulse_events.outbox", __version__, meter_provider=self._meter_provider)
            shared(self._meter_provider or metrics.get_meter_provider(), meter, _Instruments).join(self)
            self._ready = True
        tracers = self._tracer_provider or self._trace.get_tracer_provider()
        meters = self._meter_provider or self._metrics.get_meter_provider()
        self.tracing = type(tracers).__name__ not in _NO_SDK
        self.metering = type(meters).__name__ not in _NO_SDK

    def context(self) -> Any:
        """The context a pass's claim spans start in (the caller's), None when not tracing."""
        self.recheck()
        if not self.tracing:
            return None
        from opentelemetry import context

        return context.get_current()

    def start(self, rows: Sequence[StoredRow], parent: Any) -> Any:
        """A claim's span (None when not tracing), in ``parent`` (`context`), linking to the spans
        that added its rows."""
        if not self.tracing or parent is None:
            return None
        trace = self._trace
        links: list[Any] = []
        seen: set[str] = set()
        for row in rows:
            traceparent = row.traceparent
            if traceparent and traceparent not in seen and len(links) < MAX_LINKS:
                seen.add(traceparent)
                context = _span_context(traceparent, trace)
                if context is not None:
                    links.append(trace.Link(context))
        return self._tracer.start_span(
            self._span_name,
            context=parent,
            kind=trace.SpanKind.INTERNAL,
            links=links,
            attributes={**self.attributes, "edupulse.outbox.claimed": len(rows)},
        )

    def current(self, span: Any) -> contextlib.AbstractContextManager[Any]:
        """``span`` as the current span while its batches are handed to the publisher (whose
        spans are then its children); it ends at `finish`."""
        return self._trace.use_span(span, end_on_exit=False)

    def finish(self, span: Any, delivered: int, dead: int, error: BaseException | None) -> None:
        """Record a claim's outcome on its span and end it."""
        span.set_attribute("edupulse.outbox.delivered", delivered)
        span.set_attribute("edupulse.outbox.dead", dead)
        if error is not None:
            error = getattr(error, "error", error)
            span.set_attribute("error.type", type(error).__name__)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, str(error)))
        span.end()

    def observe(self, what: str) -> list[tuple[float, dict[str, str]]]:
        """One reading for the instruments (``pending``, ``oldest_age``, ``delivered``, ``dead``)."""
        if what in ("delivered", "dead"):
            delivered, dead = self._counters()
            return [(delivered if what == "delivered" else dead, self.attributes)]
        counts = self.counts
        if counts is None:
            return []
        if what == "pending":
            return [(counts.pending, self.attributes)]
        age = 0.0 if counts.oldest is None else max(0.0, time.time() - counts.oldest)
        return [(age, self.attributes)]


def _span_context(parent: str, trace: Any) -> Any:
    """The span context a stored ``traceparent`` names (None if it does not parse)."""
    parts = parent.split("-")
    try:
        if len(parts) != 4:
            return None
        return trace.SpanContext(
            int(parts[1], 16), int(parts[2], 16), is_remote=True, trace_flags=trace.TraceFlags(int(parts[3], 16))
        )
    except ValueError:
        return None


class _Instruments:
    """The outbox instruments of one meter provider, created once, reporting every live relay."""

    def __init__(self, meter: Any) -> None:
        from opentelemetry.metrics import CallbackOptions, Observation

        self._members: weakref.WeakSet[RelayTelemetry] = weakref.WeakSet()

        def reading(what: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def observe(_options: CallbackOptions) -> Iterable[Observation]:
                return [Observation(*point) for member in list(self._members) for point in member.observe(what)]

            return observe

        meter.create_observable_gauge(
            "edupulse.outbox.pending", [reading("pending")], unit="{event}", description="Outbox rows waiting"
        )
        meter.create_observable_gauge(
            "edupulse.outbox.oldest_age", [reading("oldest_age")], unit="s", description="Age of the oldest row waiting"
        )
        meter.create_observable_counter(
            "edupulse.outbox.delivered", [reading("delivered")], unit="{event}", description="Rows the relay delivered"
        )
        meter.create_observable_counter(
            "edupulse.outbox.dead", [reading("dead")], unit="{event}", description="Rows moved to the dead letters"
        )

    def join(self, member: RelayTelemetry) -> None:
        self._members.add(member)
