"""OpenTelemetry for the outbox: the row keeps the adding span's traceparent, the relay's span
links to it and parents the publisher's spans, and the metrics report pending rows, the oldest
one's age, delivered and dead rows."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import add_stream, envelopes, read_stream
from opentelemetry import propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from outbox_support import STREAM, SUBJECT, Database

from edupulse_events import InMemoryPublisher, NatsPublisher, OutboxRelay
from edupulse_events.testing import NatsServer


def _points(reader: InMemoryMetricReader) -> dict[str, float]:
    """The last value of each edupulse.outbox metric."""
    data = reader.get_metrics_data()
    assert data is not None
    values: dict[str, float] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name.startswith("edupulse.outbox."):
                    values[metric.name] = sum(getattr(point, "value", 0.0) for point in metric.data.data_points)
    return values


def test_the_relay_span_links_to_the_request_that_added_the_events(
    tmp_path: Any, otel: tuple[TracerProvider, InMemorySpanExporter, MeterProvider, InMemoryMetricReader]
) -> None:
    """Events added inside a request's span: the relay's pass is a span linking to that request's
    span (once), with what it claimed and delivered; the metrics count pending and delivered rows."""
    tracer_provider, spans, meter_provider, reader = otel
    database = Database("sqlite", f"sqlite:///{tmp_path / 'app.db'}")
    database.create()
    with tracer_provider.get_tracer("app").start_as_current_span("POST /orders") as request:
        database.commit(envelopes(2))
    relay = OutboxRelay(
        database.url, InMemoryPublisher(), tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    with relay:
        relay.stats()
        before = _points(reader)
        assert relay.run_once(timeout=30.0) == 2
        after = _points(reader)
    database.close()
    (span,) = [s for s in spans.get_finished_spans() if s.name == "outbox relay edupulse_outbox"]
    assert [link.context.span_id for link in span.links] == [request.get_span_context().span_id]
    assert span.links[0].context.trace_id == request.get_span_context().trace_id
    assert span.attributes is not None
    assert (span.attributes["edupulse.outbox.claimed"], span.attributes["edupulse.outbox.delivered"]) == (2, 2)
    assert before["edupulse.outbox.pending"] == 2
    assert before["edupulse.outbox.oldest_age"] >= 0
    assert (after["edupulse.outbox.pending"], after["edupulse.outbox.delivered"], after["edupulse.outbox.dead"]) == (
        0,
        2,
        0,
    )


@pytest.mark.batch_streams  # sent as stored: atomic batches
def test_the_events_sent_as_stored_are_producer_spans_of_the_relays_claim(
    tmp_path: Any,
    nats_server: NatsServer,
    otel: tuple[TracerProvider, InMemorySpanExporter, MeterProvider, InMemoryMetricReader],
) -> None:
    """With a NatsPublisher, each stored row sent as it is still gets its PRODUCER span (with the
    row's correlation id), a child of the relay's claim span, whose context travels in the headers."""
    tracer_provider, spans, _, _ = otel
    database = Database("sqlite", f"sqlite:///{tmp_path / 'app.db'}")
    database.create()
    correlation = envelopes(1)[0].event_id
    database.commit(envelopes(3, correlation_id=correlation))
    add_stream(nats_server.url, STREAM, ["edupulse.>"], allow_atomic=True)
    publisher = NatsPublisher.connect(nats_server.url, SUBJECT, stream=STREAM, tracer_provider=tracer_provider)
    with publisher, OutboxRelay(database.url, publisher, tracer_provider=tracer_provider) as relay:
        assert relay.run_once(timeout=30.0) == 3
    database.close()
    finished = spans.get_finished_spans()
    (claim,) = [s for s in finished if s.name == "outbox relay edupulse_outbox"]
    producers = [s for s in finished if s.kind is SpanKind.PRODUCER]
    assert len(producers) == 3
    assert all(s.parent is not None and s.parent.span_id == claim.context.span_id for s in producers)
    assert {(s.attributes or {})["messaging.message.conversation_id"] for s in producers} == {str(correlation)}
    by_id = {(s.attributes or {})["messaging.message.id"]: s for s in producers}
    for message in read_stream(nats_server.url, STREAM, at_least=3):
        carried = trace.get_current_span(propagate.extract(message.headers)).get_span_context()
        assert carried.span_id == by_id[message.headers["Nats-Msg-Id"]].context.span_id
