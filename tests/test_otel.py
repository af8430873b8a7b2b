"""OpenTelemetry: PRODUCER spans per publish (messaging conventions) with the trace context in the NATS
headers, and metrics through the metrics API — checked with the real opentelemetry-sdk, its in-memory
span exporter and metric reader, against a real nats-server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

from faults_support import STREAM, SUBJECT, connect
from helpers import envelope, envelopes, read_stream
from opentelemetry import propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from edupulse_events import EventRejected, NatsPublisher, RetryPolicy
from edupulse_events.testing import NatsServer


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def test_each_publish_is_a_producer_span_whose_context_travels_in_the_headers(
    nats_server: NatsServer, otel: tuple[TracerProvider, InMemorySpanExporter, MeterProvider, InMemoryMetricReader]
) -> None:
    """A PRODUCER span per event, child of the caller's span, ended at the ack; consumers continue its trace."""
    tracer_provider, spans, meter_provider, _ = otel
    envs = envelopes(10, correlation_id=envelope().event_id)
    parent_tracer = tracer_provider.get_tracer("the-app")
    with connect(nats_server.url, tracer_provider=tracer_provider, meter_provider=meter_provider) as pub:
        with parent_tracer.start_as_current_span("POST /lessons") as request_span:
            acks = [pub.publish(e).result(timeout=10) for e in envs]
        assert pub.flush(timeout=10)
    finished = [s for s in spans.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    assert len(finished) == 10
    by_id = {s.attributes["messaging.message.id"]: s for s in finished if s.attributes}
    for env, ack in zip(envs, acks, strict=True):
        span = by_id[str(env.event_id)]
        assert span.name == f"publish {SUBJECT}"
        assert span.parent is not None
        assert span.parent.span_id == request_span.get_span_context().span_id
        assert span.status.status_code is not StatusCode.ERROR
        attributes = dict(span.attributes or {})
        assert attributes["messaging.system"] == "nats"
        assert attributes["messaging.operation.type"] == "send"
        assert attributes["messaging.destination.name"] == SUBJECT
        assert attributes["messaging.message.conversation_id"] == str(env.correlation_id)
        assert isinstance(attributes["messaging.message.body.size"], int)
        assert attributes["messaging.message.body.size"] > 0
        assert attributes["edupulse.stream.sequence"] == ack.broker_sequence
    stored = read_stream(nats_server.url, STREAM)
    for message in stored:
        span = by_id[message.headers["Nats-Msg-Id"]]
        carried = propagate.extract(message.headers)
        consumer_parent = trace.get_current_span(carried).get_span_context()
        assert consumer_parent.trace_id == span.context.trace_id
        assert consumer_parent.span_id == span.context.span_id


def test_a_failed_event_ends_its_span_with_the_error(
    nats_server: NatsServer, otel: tuple[TracerProvider, InMemorySpanExporter, MeterProvider, InMemoryMetricReader]
) -> None:
    """An event the broker rejects ends its span with status ERROR, error.type and the exception recorded."""
    tracer_provider, spans, meter_provider, _ = otel
    with NatsPublisher.connect(
        nats_server.url, "nobody.listens", tracer_provider=tracer_provider, meter_provider=meter_provider
    ) as pub:
        assert isinstance(pub.publish(envelope()).exception(timeout=10), EventRejected)
        assert pub.flush(timeout=10)
    [span] = [s for s in spans.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "EventRejected"
    assert [event.name for event in span.events] == ["exception"]


def test_metrics_count_what_stats_counts_and_time_each_outcome(
    nats_server: NatsServer, otel: tuple[TracerProvider, InMemorySpanExporter, MeterProvider, InMemoryMetricReader]
) -> None:
    """Sent, acknowledged, failed (by error.type), duplicates, gauges and the duration histogram match stats()."""
    tracer_provider, _, meter_provider, reader = otel
    with connect(nats_server.url, tracer_provider=tracer_provider, meter_provider=meter_provider) as pub:
        envs = envelopes(30)
        for env in envs:
            pub.publish(env)
        pub.publish(envs[0]).result(timeout=10)  # a duplicate
        assert pub.flush(timeout=10)
        stats = pub.stats()
        points = metric_points(reader)
    assert stats.acknowledged == 31
    assert stats.duplicates == 1
    assert [p.value for p in points["messaging.client.sent.messages"]] == [31]
    assert [p.value for p in points["edupulse.publisher.acknowledged"]] == [31]
    assert [p.value for p in points["edupulse.publisher.duplicates"]] == [1]
    assert [p.value for p in points["edupulse.publisher.queue.depth"]] == [0]
    assert [p.value for p in points["edupulse.publisher.in_flight"]] == [0]
    [durations] = points["messaging.client.operation.duration"]
    assert durations.count == 31
    assert 0 < durations.sum < 31 * 10
    attributes = dict(durations.attributes)
    assert attributes.pop("messaging.client.id").startswith("edupulse_events-")
    assert attributes == {"messaging.system": "nats", "messaging.operation.name": "publish"}


def test_failures_are_counted_by_error_type(
    make_server: Callable[..., NatsServer],
    otel: tuple[TracerProvider, InMemorySpanExporter, MeterProvider, InMemoryMetricReader],
) -> None:
    """Events that time out are counted under error.type=PublishTimeout, in stats() and the failed counter."""
    tracer_provider, _, meter_provider, reader = otel
    server = make_server(start=False)
    with NatsPublisher.connect(
        server.url,
        SUBJECT,
        start_without_broker=True,
        delivery_timeout=0.3,
        retry=RetryPolicy(attempt_timeout=0.1),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    ) as pub:
        for env in envelopes(4):
            pub.publish(env)
        assert pub.flush(timeout=10)
        assert pub.stats().failures == {"PublishTimeout": 4}
        points = metric_points(reader)
    [failed] = points["edupulse.publisher.failed"]
    assert failed.value == 4
    assert dict(failed.attributes)["error.type"] == "PublishTimeout"


def test_two_publishers_on_one_meter_provider_are_both_reported(
    nats_server: NatsServer, otel: tuple[TracerProvider, InMemorySpanExporter, MeterProvider, InMemoryMetricReader]
) -> None:
    """Two publishers in one process each report their own counts (messaging.client.id tells them apart):
    5 + 2 sent, and the second's failure is counted, where only the first publisher used to be."""
    tracer_provider, _, meter_provider, reader = otel
    providers: dict[str, Any] = {"tracer_provider": tracer_provider, "meter_provider": meter_provider}
    with (
        connect(nats_server.url, **providers) as first,
        NatsPublisher.connect(nats_server.url, "nobody.listens", client_name="second", **providers) as second,
    ):
        for env in envelopes(5):
            first.publish(env)
        second.publish(envelope())
        assert isinstance(second.publish(envelope()).exception(timeout=10), EventRejected)
        assert first.flush(timeout=10)
        assert second.flush(timeout=10)
        points = metric_points(reader)
    sent = {dict(p.attributes)["messaging.client.id"]: p.value for p in points["messaging.client.sent.messages"]}
    assert sorted(sent.values()) == [2, 5]
    assert sum(sent.values()) == 7
    assert len(sent) == 2
    [failed] = points["edupulse.publisher.failed"]
    assert failed.value == 2
    assert dict(failed.attributes)["messaging.client.id"].startswith("second-")
    assert dict(failed.attributes)["error.type"] == "EventRejected"


def test_without_opentelemetry_nothing_is_traced_and_publishing_works(nats_server: NatsServer) -> None:
    """With opentelemetry not importable, publishers have no telemetry and publish as usual."""
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from edupulse_events import NatsPublisher\n"
        "from edupulse_events._engine._otel import telemetry_for\n"
        f"pub = NatsPublisher.connect({nats_server.url!r}, 'no.otel', stream='NOOTEL', create_stream=True)\n"
        "assert telemetry_for(pub.config, pub.stats) is None\n"
        "import uuid\n"
        "from edupulse_events import EventEnvelope, LessonPublished\n"
        "env = EventEnvelope.new(LessonPublished(uuid.uuid4(), uuid.uuid4(), 't'))\n"
        "print(pub.publish(env).result(timeout=10).broker_sequence)\n"
        "pub.close(5)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"
