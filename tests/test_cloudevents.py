"""CloudEvents binary-mode headers (`PublisherConfig(cloudevents=True)`): messages read back from a
real nats-server parse with the cloudevents SDK into the event's attributes and body."""

from __future__ import annotations

import datetime
import json
import uuid
from urllib.parse import unquote

import pytest
from helpers import read_stream

from edupulse_events import (
    ConfigError,
    EventEnvelope,
    LessonPublished,
    NatsPublisher,
    PublisherConfig,
    QuizSubmitted,
)
from edupulse_events.testing import NatsServer

http = pytest.importorskip("cloudevents.core.bindings.http", reason="the cloudevents SDK is in the test extra")

STREAM = "CE"


def parse(headers: dict[str, str], body: bytes) -> tuple[dict[str, object], object]:
    """The CloudEvent the SDK reads from a message's headers and body (as the HTTP binding would)."""
    event = http.from_http(http.HTTPMessage(headers=dict(headers), body=body), http.JSONFormat())
    return event.get_attributes(), event.get_data()


def test_published_events_are_cloudevents_for_the_sdk(nats_server: NatsServer) -> None:
    """Every attribute comes through: id, source, type, time (to the microsecond), subject, extensions, body."""
    cause = EventEnvelope.new(LessonPublished(uuid.uuid4(), uuid.uuid4(), "Fractions"), tenant_id="école-42")
    quiz = cause.follow_up(QuizSubmitted(uuid.uuid4(), uuid.uuid4(), {"q1": "a"}), personally_identifiable=True)
    with NatsPublisher.connect(
        nats_server.url,
        "edupulse.{tenant}.{type}",
        stream=STREAM,
        create_stream=True,
        cloudevents=True,
        cloudevents_source="https://edupulse.example/lessons",
    ) as pub:
        for env in (cause, quiz):
            pub.publish(env).result(timeout=10)
    stored = read_stream(nats_server.url, STREAM)
    assert len(stored) == 2
    (first, first_body), (second, second_body) = (parse(m.headers, m.data) for m in stored)
    assert first["specversion"] == "1.0"
    assert (first["id"], first["source"], first["type"]) == (
        str(cause.event_id),
        "https://edupulse.example/lessons",
        "LessonPublished",
    )
    created = datetime.datetime.fromtimestamp(cause.created_at.secs, datetime.timezone.utc)
    assert first["time"] == created.replace(microsecond=cause.created_at.nanos // 1000)
    assert stored[0].headers["ce-time"].endswith(f".{cause.created_at.nanos:09d}Z")  # nanoseconds on the wire
    assert first["subject"] == stored[0].subject
    assert first["tenantid"] == "école-42"
    assert first["personallyidentifiable"] == "false"
    assert "correlationid" not in first
    assert first_body == json.loads(stored[0].data)  # the body is the envelope, unchanged
    assert (second["type"], second["causationid"], second["correlationid"]) == (
        "QuizSubmitted",
        str(cause.event_id),
        str(quiz.correlation_id),
    )
    assert second["personallyidentifiable"] == "true"
    assert second_body == json.loads(stored[1].data)
    assert stored[0].headers["Nats-Msg-Id"] == str(cause.event_id)  # the routing headers stay


@pytest.mark.parametrize("tenant", ["", "school.1", '学校 "A" 100%', "a_b~c"])
def test_both_tenant_headers_carry_the_tenant_itself(nats_server: NatsServer, tenant: str) -> None:
    """Edupulse-Tenant and ce-tenantid hold the tenant as a header value (the CloudEvents NATS binding's
    percent-encoding, decoded once by the SDK), not the subject token: "" is empty, not "_empty"."""
    env = EventEnvelope.new(LessonPublished(uuid.uuid4(), uuid.uuid4(), "t"), tenant_id=tenant)
    with NatsPublisher.connect(
        nats_server.url, "edupulse.{tenant}.{type}", stream=STREAM, create_stream=True, cloudevents=True
    ) as pub:
        pub.publish(env).result(timeout=10)
    [stored] = read_stream(nats_server.url, STREAM)
    attributes, _ = parse(stored.headers, stored.data)
    assert attributes["tenantid"] == tenant
    assert unquote(stored.headers["Edupulse-Tenant"]) == tenant
    assert stored.headers["Edupulse-Tenant"] == stored.headers["ce-tenantid"]
    assert all(" " < c <= "~" and c != '"' for c in stored.headers["ce-tenantid"])


def test_without_the_option_no_cloudevents_headers_are_sent(nats_server: NatsServer) -> None:
    """cloudevents=False (the default): no ce- header at all."""
    with NatsPublisher.connect(nats_server.url, "edupulse.events", stream=STREAM, create_stream=True) as pub:
        pub.publish(EventEnvelope.new(LessonPublished(uuid.uuid4(), uuid.uuid4(), "x"))).result(timeout=10)
    [message] = read_stream(nats_server.url, STREAM)
    assert not [name for name in message.headers if name.lower().startswith("ce-")]


@pytest.mark.parametrize("source", ["", "has space", "line\r\nbreak", "é"])
def test_a_source_that_cannot_be_a_header_is_a_config_error(source: str) -> None:
    """ce-source must be a one-line URI-reference: anything else fails when the config is built."""
    with pytest.raises(ConfigError, match="cloudevents_source"):
        PublisherConfig(servers="nats://127.0.0.1:4222", subject="a", cloudevents=True, cloudevents_source=source)
