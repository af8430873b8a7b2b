"""The consumer around it: CONSUMER spans that continue the publisher's trace and the consumer's
metrics (OpenTelemetry SDK in memory), and fork safety — a consumer built before fork() connects
afresh in the child and never uses the parent's thread or connection."""

from __future__ import annotations

import collections
import os
import threading
from typing import Any

import pytest
from consumer_support import dead_letters, fill
from helpers import envelopes
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from edupulse_events import ConsumerConfig, NatsConsumer, NatsPublisher, PermanentFailure, ReceivedMessage
from edupulse_events.testing import NatsServer

pytestmark = pytest.mark.pull_consumer


def test_handler_spans_continue_the_producer_trace(nats_server: NatsServer) -> None:
    """Each handled message gets a CONSUMER span whose parent is its PRODUCER span; a failure marks it an error."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    events = envelopes(3)
    with NatsPublisher.connect(
        nats_server.url, "o.{tenant}.{type}", stream="O", create_stream=True, tracer_provider=provider
    ) as publisher:
        publisher.publish_many(events)
        assert publisher.flush(10.0)
    stop = threading.Event()
    seen: list[int] = []

    def handle(message: ReceivedMessage) -> None:
        seen.append(message.stream_sequence)
        if len(seen) == 4:
            stop.set()
        if message.stream_sequence == 2 and message.num_delivered == 1:
            raise RuntimeError("once")

    with NatsConsumer.connect(
        nats_server.url, stream="O", durable="d", tracer_provider=provider, backoff_initial=0.05
    ) as consumer:
        consumer.run(handle, stop=stop, timeout=30.0)
    finished = spans.get_finished_spans()
    attrs = {id(s): dict(s.attributes or {}) for s in finished}
    producers = {attrs[id(s)]["messaging.message.id"]: s for s in finished if s.kind is SpanKind.PRODUCER}
    consumers = [s for s in finished if s.kind is SpanKind.CONSUMER]
    assert len(consumers) == 4
    for span in consumers:
        producer = producers[attrs[id(span)]["messaging.message.id"]]
        assert span.parent is not None
        assert (span.context.trace_id, span.parent.span_id) == (producer.context.trace_id, producer.context.span_id)
        assert attrs[id(span)]["messaging.consumer.group.name"] == "d"
        assert span.name == f"process {attrs[id(span)]['messaging.destination.name']}"
    failed = [s for s in consumers if s.status.status_code is StatusCode.ERROR]
    assert [(attrs[id(s)]["edupulse.stream.sequence"], attrs[id(s)]["error.type"]) for s in failed] == [
        (2, "RuntimeError")
    ]


def _metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """The data points of each metric the reader collects now."""
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[Any]] = collections.defaultdict(list)
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points[metric.name].extend(metric.data.data_points)
    return points


def test_metrics_count_outcomes_time_handlers_and_show_what_is_in_flight(
    nats_server: NatsServer, otel: tuple[TracerProvider, InMemorySpanExporter, MeterProvider, InMemoryMetricReader]
) -> None:
    """Outcomes by kind (ack, nak, term, dead letter), messages consumed, in flight while handled, and a
    handler-duration histogram by error.type; each consumer on the meter provider reported apart."""
    _, _, meter_provider, reader = otel
    events = envelopes(10)
    fill(nats_server.url, "MT", "mt", events)
    dead_letters(nats_server.url, "DLMT", "dead.mt")
    doomed, flaky, ended = (e.event_id for e in events[:3])
    handled: set[object] = set()
    in_flight_seen: list[int] = []
    stop = threading.Event()

    def handle(message: ReceivedMessage) -> None:
        event_id = message.envelope.event_id
        if event_id == doomed:
            raise PermanentFailure("no such course")
        if event_id == flaky and message.num_delivered == 1:
            raise RuntimeError("once")
        if event_id == ended:
            message.term("not ours")
        if event_id == events[5].event_id:
            in_flight_seen.extend(p.value for p in _metric_points(reader)["edupulse.consumer.in_flight"])
        handled.add(event_id)
        if len(handled) == 9:
            stop.set()

    idle = NatsConsumer(
        ConsumerConfig(servers=nats_server.url, stream="MT", durable="idle", meter_provider=meter_provider)
    )
    with NatsConsumer.connect(
        nats_server.url,
        stream="MT",
        durable="d",
        dead_letter_subject="dead.mt",
        backoff_initial=0.05,
        meter_provider=meter_provider,
    ) as consumer:
        assert consumer.run(handle, stop=stop, timeout=30.0) == "stop event"
        points = _metric_points(reader)
    idle.close()
    mine = "edupulse_events-consumer-"
    by_client: dict[str, dict[str, Any]] = collections.defaultdict(dict)
    for name in ("messaging.client.consumed.messages", "edupulse.consumer.in_flight"):
        for point in points[name]:
            by_client[point.attributes["messaging.client.id"]][name] = point.value
    settled: dict[tuple[str, str], int] = {}
    for point in points["edupulse.consumer.settled"]:
        assert point.attributes["messaging.client.id"].startswith(mine)
        settled[point.attributes["messaging.consumer.group.name"], point.attributes["edupulse.consumer.outcome"]] = (
            point.value
        )
    assert {k: v for k, v in settled.items() if k[0] == "d"} == {
        ("d", "ack"): 8,
        ("d", "nak"): 1,
        ("d", "term"): 1,
        ("d", "dead_letter"): 1,
    }
    assert {k: v for k, v in settled.items() if k[0] == "idle"} == dict.fromkeys(
        [("idle", "ack"), ("idle", "nak"), ("idle", "term"), ("idle", "dead_letter")], 0
    )
    assert sorted(by_client.values(), key=lambda v: -v["messaging.client.consumed.messages"]) == [
        {"messaging.client.consumed.messages": 11, "edupulse.consumer.in_flight": 0},
        {"messaging.client.consumed.messages": 0, "edupulse.consumer.in_flight": 0},
    ]
    assert all(client.startswith(mine) for client in by_client)
    assert max(in_flight_seen) >= 1  # the message being handled, at least
    durations = {
        (p.attributes.get("error.type"), p.attributes["messaging.consumer.group.name"]): p
        for p in points["messaging.process.duration"]
    }
    assert {k: p.count for k, p in durations.items()} == {
        (None, "d"): 9,
        ("PermanentFailure", "d"): 1,
        ("RuntimeError", "d"): 1,
    }
    assert all(p.sum >= 0 for p in durations.values())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_consumer_built_before_fork_works_in_the_child(nats_server: NatsServer) -> None:
    """A consumer used in the parent, then fork(): the child's fetch connects anew and gets its own messages."""
    fill(nats_server.url, "F", "f", envelopes(4))
    consumer = NatsConsumer(ConsumerConfig(servers=nats_server.url, stream="F", durable="d"))
    [first] = consumer.fetch(1, timeout=5.0)
    first.ack()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it got, then leave without running the parent's exit hooks
        code = 1
        try:
            got = consumer.fetch(10, timeout=5.0)
            for message in got:
                message.ack()
            os.write(write, ",".join(str(m.stream_sequence) for m in got).encode())
            consumer.close(5.0)
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == "2,3,4"
    assert consumer.fetch(10, timeout=0.5) == []  # the parent's connection still works: nothing left
    consumer.close()
