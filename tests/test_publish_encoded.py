"""publish_encoded() against a real nats-server: events already encoded are stored byte for byte,
atomic batches whole or not at all, and an event this publisher could not have written is refused
before anything is queued."""

from __future__ import annotations

import uuid

import pytest
from faults_support import sized
from helpers import add_stream, encoded, envelope, envelopes, raw_messages, read_stream

from edupulse_events import EncodedEvent, InvalidEvent, NatsPublisher
from edupulse_events.testing import NatsServer

pytestmark = pytest.mark.batch_streams

STREAM = "ENCODED"
SUBJECT = "edupulse.{tenant}.{type}"


def connect(server: NatsServer, **options: object) -> NatsPublisher:
    return NatsPublisher.connect(server.url, SUBJECT, stream=STREAM, delivery_timeout=20.0, **options)  # type: ignore[arg-type]


def test_encoded_events_are_stored_byte_for_byte(nats_server: NatsServer) -> None:
    """An atomic batch and a plain one of encoded events: the stream holds each subject, header
    block and body exactly as given, in order."""
    add_stream(nats_server.url, STREAM, ["edupulse.>"], allow_atomic=True)
    atomic = encoded(envelopes(5, correlation_id=uuid.uuid4()), SUBJECT)
    plain = encoded([envelope(1, tenant=None), envelope(2, tenant="école 7")], SUBJECT)
    with connect(nats_server) as pub:
        acks = [f.result(timeout=10) for f in pub.publish_encoded(atomic, atomic=True)]
        acks += [f.result(timeout=10) for f in pub.publish_encoded(iter(plain))]
    assert [ack.broker_sequence for ack in acks] == [1, 2, 3, 4, 5, 6, 7]
    assert raw_messages(nats_server.url, STREAM, 7) == [(e.subject, e.headers, e.body) for e in atomic + plain]


def test_an_atomic_encoded_batch_is_stored_whole_or_not_at_all(nats_server: NatsServer) -> None:
    """An encoded atomic batch with an event over the stream's max_msg_size: every future fails with
    that event's refusal and nothing is stored; the next batch is stored whole."""
    add_stream(nats_server.url, STREAM, ["edupulse.>"], max_msg_size=4_000, allow_atomic=True)
    batch = encoded([*envelopes(3), sized(6_000), *envelopes(3)], SUBJECT)
    with connect(nats_server) as pub:
        errors = [f.exception(timeout=10) for f in pub.publish_encoded(batch, atomic=True)]
        fine = pub.publish_encoded(encoded(envelopes(3), SUBJECT), atomic=True)
        assert [f.result(timeout=10).broker_sequence for f in fine] == [1, 2, 3]
    assert {type(e).__name__ for e in errors} == {"EventRejected"}
    assert len({str(e) for e in errors}) == 1
    assert f"its event {batch[3].event_id}" in str(errors[0])
    assert len(read_stream(nats_server.url, STREAM)) == 3


def test_an_event_this_publisher_could_not_have_written_is_refused(nats_server: NatsServer) -> None:
    """Each forgery (another subject, a header it does not write, another event's id or body, a
    correlation id the body does not carry, not an EncodedEvent) raises InvalidEvent naming its
    index, and nothing is queued; a CloudEvents publisher refuses rows without its ce- headers."""
    add_stream(nats_server.url, STREAM, ["edupulse.>"], allow_atomic=True)
    correlation = str(uuid.uuid4()).encode()
    good, other = encoded([envelope(0, correlation_id=correlation.decode()), envelope(1)], SUBJECT)
    forged = b"X-Forged: 1\r\n\r\n"
    forgeries: dict[str, object] = {  # each after ``good``, which the publisher then knows the shape of
        "another subject": good._replace(subject="edupulse.school-1.PaymentProcessed"),
        "a header it does not write": good._replace(headers=good.headers[:-2] + forged),
        "another event's id": good._replace(event_id=other.event_id),
        "another event's body": good._replace(body=other.body),
        "a correlation id the body lacks": good._replace(
            headers=good.headers.replace(correlation, str(uuid.uuid4()).encode())
        ),
        "not an EncodedEvent": tuple(good),
        "bytes for the subject": good._replace(subject=good.subject.encode()),  # type: ignore[arg-type]
    }
    refused = {}
    with connect(nats_server) as pub:
        for name, forgery in forgeries.items():
            with pytest.raises(InvalidEvent, match=r"events\[1\]") as info:
                pub.publish_encoded([good, forgery], atomic=True)  # type: ignore[list-item]
            refused[name] = str(info.value)
        assert pub.stats().accepted == 0
    with connect(nats_server, cloudevents=True) as pub, pytest.raises(InvalidEvent, match="ce- headers"):
        pub.publish_encoded([good])
    assert "does not fit this publisher's subject template" not in refused["another subject"]  # fits: type differs
    assert "Edupulse-Event-Type" in refused["another subject"]
    assert "X-Forged" in refused["a header it does not write"]
    assert "Nats-Msg-Id" in refused["another event's id"]
    assert "body" in refused["another event's body"]
    assert "Correlation" in refused["a correlation id the body lacks"]
    assert "EncodedEvent" in refused["not an EncodedEvent"]
    assert "str, str, bytes, bytes" in refused["bytes for the subject"]


def test_encoded_event_type_is_public() -> None:
    """EncodedEvent is a named tuple of (event_id, subject, headers, body)."""
    event = EncodedEvent("id", "subject", b"NATS/1.0\r\n\r\n", b"{}")
    assert event._fields == ("event_id", "subject", "headers", "body")
