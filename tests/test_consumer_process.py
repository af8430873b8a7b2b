"""The consumer around it: CONSUMER spans that continue the publisher's trace (OpenTelemetry SDK
in memory), and fork safety — a consumer built before fork() connects afresh in the child and
never uses the parent's thread or connection."""

from __future__ import annotations

import os
import threading

import pytest
from consumer_support import fill
from helpers import envelopes
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from edupulse_events import ConsumerConfig, NatsConsumer, NatsPublisher, ReceivedMessage
from edupulse_events.testing import NatsServer


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
