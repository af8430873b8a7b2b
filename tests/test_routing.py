"""Caller-side routing: the header block and subject every event is sent with."""

from __future__ import annotations

import itertools
import uuid

import orjson
import pytest

from edupulse_events import Codec, EventEnvelope, LessonPublished, QuizSubmitted, encode
from edupulse_events._pipeline._routing import PAUSE_EVERY, Router, header_value
from edupulse_events.codec import ENVELOPE_LAYOUT

CAUSE = uuid.UUID("11111111-2222-4333-8444-555555555555")
CORRELATION = uuid.UUID("c0ffee00-dead-4bef-8bad-f00dbaadcafe")


def expected_headers(env: EventEnvelope, type_name: str) -> bytes:
    """The header block as the README documents it, formatted the plain way."""
    lines = [f"Nats-Msg-Id: {env.event_id}", f"Edupulse-Event-Type: {type_name}"]
    if env.tenant_id is not None:
        lines.append(f"Edupulse-Tenant: {header_value(env.tenant_id)}")
    lines.append(f"Edupulse-Pii: {'true' if env.personally_identifiable else 'false'}")
    if env.correlation_id is not None:
        lines.append(f"Edupulse-Correlation-Id: {env.correlation_id}")
    return ("NATS/1.0\r\n" + "".join(line + "\r\n" for line in lines) + "\r\n").encode()


@pytest.mark.parametrize(
    ("causation", "correlation", "tenant", "pii"),
    list(itertools.product([None, CAUSE], [None, CORRELATION], [None, "school-1", "Société 42", ""], [False, True])),
)
def test_headers_carry_the_envelopes_ids_tenant_and_flag(
    causation: uuid.UUID | None, correlation: uuid.UUID | None, tenant: str | None, pii: bool
) -> None:
    """Every combination of optional ids, tenant and GDPR flag gives exactly the documented header block."""
    for data in (
        LessonPublished(uuid.uuid4(), uuid.uuid4(), "t"),
        QuizSubmitted(uuid.uuid4(), uuid.uuid4(), {"q": "a"}),
    ):
        env = EventEnvelope.new(
            data, causation_id=causation, correlation_id=correlation, tenant_id=tenant, personally_identifiable=pii
        )
        type_name = type(data).__name__
        router = Router("edupulse.events")
        item = router.prepare(env, None)
        assert item.headers == router.headers(env, encode(env), type_name) == expected_headers(env, type_name)
        assert item.event_id == str(env.event_id)
        assert item.payload == encode(env)
        assert item.size == len(item.headers) + len(item.payload)


class _OwnCodec:
    """A codec of one's own (not `Codec`), whose bytes keep the envelope's key order or reverse it."""

    def __init__(self, reverse: bool) -> None:
        self.reverse = reverse

    def encode(self, envelope: EventEnvelope) -> bytes:
        fields = list(Codec().unstructure(envelope).items())
        return orjson.dumps(dict(reversed(fields) if self.reverse else fields))

    def decode(self, data: bytes) -> EventEnvelope:
        return Codec().decode(data)


def test_another_codecs_bytes_are_checked_for_the_layout() -> None:
    """A codec other than the package's has its bytes checked for where the ids sit: the same layout
    gives the same headers, another one is refused (no header is ever copied from the wrong bytes)."""
    env = EventEnvelope.new(LessonPublished(uuid.uuid4(), uuid.uuid4(), "t"), correlation_id=CORRELATION)
    assert Router("edupulse.events", _OwnCodec(False)).prepare(env, None).headers == expected_headers(
        env, "LessonPublished"
    )
    with pytest.raises(AssertionError, match="not the codec's envelope layout"):
        Router("edupulse.events", _OwnCodec(True)).prepare(env, None)


def test_subject_template_fills_type_and_tenant_token() -> None:
    """``{type}`` and ``{tenant}`` are filled per event; the tenant is percent-encoded into one token."""
    router = Router("edupulse.{tenant}.{type}")
    env = EventEnvelope.new(LessonPublished(uuid.uuid4(), uuid.uuid4(), "t"), tenant_id="Société 42.a")
    assert router.prepare(env, None).subject == b"edupulse.Soci%C3%A9t%C3%A9%2042%2Ea.LessonPublished"
    none = EventEnvelope.new(LessonPublished(uuid.uuid4(), uuid.uuid4(), "t"))
    assert router.prepare(none, None).subject == b"edupulse._.LessonPublished"


def test_prepare_many_pauses_after_every_so_many_envelopes() -> None:
    """prepare_many calls its pause hook after every PAUSE_EVERY envelopes (where publish_many lets the
    publisher thread run), and prepares every envelope in order."""
    envs = [EventEnvelope.new(LessonPublished(uuid.uuid4(), uuid.uuid4(), str(i))) for i in range(2 * PAUSE_EVERY + 5)]
    pauses: list[None] = []
    items = Router("edupulse.{type}").prepare_many(envs, None, pause=lambda: pauses.append(None))
    assert len(pauses) == 2
    assert [item.payload for item in items] == [encode(e) for e in envs]


@pytest.mark.parametrize("causation", [None, uuid.uuid4()], ids=["no causation", "causation"])
@pytest.mark.parametrize("correlation", [None, uuid.uuid4()], ids=["no correlation", "correlation"])
def test_the_codec_exports_where_the_ids_sit_in_its_bytes(
    causation: uuid.UUID | None, correlation: uuid.UUID | None
) -> None:
    """codec.ENVELOPE_LAYOUT locates the event, causation and correlation ids in encoded bytes (what routers slice)."""
    event = QuizSubmitted(uuid.uuid4(), uuid.uuid4(), {"q": "a"})
    env = EventEnvelope.new(event, correlation_id=correlation, causation_id=causation)
    payload = encode(env)
    layout = ENVELOPE_LAYOUT
    assert payload.startswith(layout.prefix)
    assert payload[layout.event_id] == str(env.event_id).encode()
    if causation is None:
        assert payload[layout.causation_at : layout.causation_at + 4] == b"null"
    else:
        assert payload[layout.causation_at + 1 : layout.causation_at + 37] == str(causation).encode()
    at = layout.correlation_at_null if causation is None else layout.correlation_at_uuid
    assert payload[at - len(layout.correlation_key) : at] == layout.correlation_key
    expected = b"null" if correlation is None else b'"%s"' % str(correlation).encode()
    assert payload[at : at + len(expected)] == expected
