"""Hostile input (issue 4): every bad event raises InvalidEvent at the call site (building the
event or publish()), nothing reaches the stream, and the publisher keeps working."""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
from helpers import envelope, read_stream

from edupulse_events import (
    BadgeAwarded,
    EventEnvelope,
    InvalidEvent,
    LessonPublished,
    NatsPublisher,
    PaymentProcessed,
    QuizSubmitted,
    Timestamp,
)
from edupulse_events.testing import NatsServer

STREAM = "HOSTILE"
SUBJECT = "hostile.events"
U1 = uuid.UUID("7d444840-9dc0-11d1-b245-5ffdce74fad2")
U2 = uuid.UUID("e902893a-9d22-3c7e-a7b8-d6e313b71d9f")
TS = Timestamp(1_700_000_000, 123)
MIB = 1024 * 1024

EVENTS: dict[type, dict[str, Any]] = {
    LessonPublished: {"lesson_id": U1, "author_id": U2, "title": "Fractions"},
    QuizSubmitted: {"quiz_id": U1, "student_id": U2, "answers": {"q1": "a", "q2": "b"}},
    BadgeAwarded: {"badge_id": U1, "recipient_id": U2, "reason": "streak"},
    PaymentProcessed: {"payment_id": U1, "from_user": U2, "amount_cents": 1999},
}
ENVELOPE = {
    "event_id": U1,
    "causation_id": None,
    "correlation_id": None,
    "tenant_id": "school-1",
    "created_at": TS,
    "personally_identifiable": False,
}


def event(cls: type, **changes: Any) -> Any:
    return cls(**{**EVENTS[cls], **changes})


def wrap(data: Any, **changes: Any) -> EventEnvelope:
    return EventEnvelope(**{**ENVELOPE, "event_id": uuid.uuid4(), "data": data, **changes})


@attrs.frozen
class NotRegistered:
    """An attrs class that was never registered as an event type."""

    x: int = 1


BAD_UUIDS: list[object] = [
    None,
    5,
    1.5,
    True,
    b"\x00" * 16,
    [],
    U1.hex.upper().encode(),
    "",
    "not-a-uuid",
    "0" * 33,
    f"{U1}0",
    str(U1)[:-1],
    str(U1).replace("-", "_"),
    f" {U1}",
    f"{U1}\n",
    "{" + str(U1),
    str(U1).replace("7", "\uff17"),
    str(U1).replace("d", "g"),
]
BAD_STRS: list[object] = [
    None,
    5,
    1.5,
    b"text",
    ["a"],
    {"a": "b"},
    "\ud800",
    "ok \udfff ok",
    "half emoji \ud83d",
    "\udc00\ud800",
]
BAD_MAPS: list[object] = [
    None,
    "q1=a",
    [("q1", "a")],
    {1: "a"},
    {"q1": 1},
    {"q1": None},
    {None: "a"},
    {b"q1": "a"},
    {"q1": b"a"},
    {("q", 1): "a"},
    {"\ud800": "a"},
    {"q1": "\udfff"},
    {"ok": "ok", "bad": ["list"]},
]
BAD_U32: list[object] = [
    True,
    False,
    1.0,
    1.5,
    float("nan"),
    float("inf"),
    2**32,
    2**64,
    -1,
    -(2**31),
    "5",
    None,
    decimal.Decimal(5),
    5j,
]
BAD_OPT_UUIDS = [v for v in BAD_UUIDS if v is not None]
BAD_TENANTS = [v for v in BAD_STRS if v is not None]
BAD_TIMES: list[object] = [
    None,
    "2024-01-01T00:00:00Z",
    1_700_000_000,
    1.7e9,
    datetime.date(2024, 1, 1),
    datetime.datetime(2024, 1, 1),
    datetime.datetime(1960, 1, 1, tzinfo=datetime.timezone.utc),
    (1_700_000_000, 0),
]
BAD_FLAGS: list[object] = [None, 0, 1, "true", "false", "", 1.0]
BAD_DATA: list[object] = [
    None,
    {"type": "LessonPublished", "payload": {}},
    "LessonPublished",
    object(),
    NotRegistered(),
    LessonPublished,
    lambda: wrap(event(LessonPublished)),
]


def _cases() -> Iterator[Any]:
    for cls, fields in EVENTS.items():
        for name, good in fields.items():
            bad_values = (
                BAD_UUIDS
                if isinstance(good, uuid.UUID)
                else BAD_MAPS
                if isinstance(good, dict)
                else BAD_U32
                if isinstance(good, int)
                else BAD_STRS
            )
            for i, bad in enumerate(bad_values):
                yield pytest.param(
                    lambda cls=cls, name=name, bad=bad: wrap(event(cls, **{name: bad})),
                    name,
                    id=f"{cls.__name__}.{name}-{i}",
                )
    envelope_fields: dict[str, list[object]] = {
        "event_id": [None, *BAD_UUIDS],
        "causation_id": BAD_OPT_UUIDS,
        "correlation_id": BAD_OPT_UUIDS,
        "tenant_id": BAD_TENANTS,
        "created_at": BAD_TIMES,
        "personally_identifiable": BAD_FLAGS,
        "data": BAD_DATA,
    }
    for name, bad_values in envelope_fields.items():
        for i, bad in enumerate(bad_values):

            def make(name: str = name, bad: object = bad) -> EventEnvelope:
                if name == "data":
                    return wrap(bad() if callable(bad) and not isinstance(bad, type) else bad)
                return wrap(event(LessonPublished), **{name: bad})

            yield pytest.param(make, name, id=f"EventEnvelope.{name}-{i}")
    timestamps = [(-1, 0), (1.5, 0), (True, 0), ("1", 0), (2**63, 0), (1, -1), (1, 10**9), (1, 0.5), (1, None)]
    for i, (secs, nanos) in enumerate(timestamps):
        yield pytest.param(
            lambda secs=secs, nanos=nanos: wrap(event(LessonPublished), created_at=Timestamp(secs, nanos)),
            "Timestamp",
            id=f"Timestamp-{i}",
        )
    # not an envelope at all
    for i, bad in enumerate([None, "event", b"{}", {"event_id": str(U1)}, 42]):
        yield pytest.param(lambda bad=bad: bad, "EventEnvelope", id=f"not-an-envelope-{i}")
    yield pytest.param(lambda: event(LessonPublished), "EventEnvelope", id="bare-event")
    # megabyte strings: valid events whose encoding is over the server's max_payload (1 MiB)
    yield pytest.param(lambda: wrap(event(LessonPublished, title="x" * MIB)), "max_payload", id="title-1MiB")
    yield pytest.param(
        lambda: wrap(event(LessonPublished, title="\u00e9" * (MIB // 2 + 1))),
        "max_payload",
        id="title-2-byte-chars-over-1MiB",
    )
    yield pytest.param(
        lambda: wrap(event(BadgeAwarded, reason="\U0001f600" * (MIB // 4))), "max_payload", id="reason-emoji-1MiB"
    )
    yield pytest.param(
        lambda: wrap(event(QuizSubmitted, answers={f"q{i}": "a" * 1000 for i in range(1100)})),
        "max_payload",
        id="answers-1100x1KB",
    )
    yield pytest.param(
        lambda: wrap(event(LessonPublished), tenant_id="\u00e9" * 150_000),
        "max_payload",
        id="tenant-1.2MB-percent-encoded-in-header",
    )
    # an event altered after it was built (bypassing its checks) is still caught by the encoder
    for i, (cls, name, bad) in enumerate(
        [
            (PaymentProcessed, "amount_cents", 2**32),
            (PaymentProcessed, "amount_cents", True),
            (PaymentProcessed, "payment_id", "zz"),
            (LessonPublished, "title", "\ud800"),
            (LessonPublished, "title", 5),
            (QuizSubmitted, "answers", {1: "a"}),
        ]
    ):
        yield pytest.param(
            lambda cls=cls, name=name, bad=bad: _tampered(cls, name, bad),
            name,
            id=f"tampered-{cls.__name__}.{name}-{i}",
        )


def _tampered(cls: type, name: str, bad: Any) -> EventEnvelope:
    data = event(cls)
    object.__setattr__(data, name, bad)
    return wrap(data)


@pytest.fixture(scope="module")
def server(nats_binary: str) -> Iterator[NatsServer]:
    """One JetStream server (default max_payload: 1 MiB) for the whole table."""
    with NatsServer(binary=nats_binary) as srv:
        yield srv


@pytest.fixture(scope="module")
def publisher(server: NatsServer) -> Iterator[NatsPublisher]:
    """One publisher for the whole table; at the end the stream holds exactly the good events it acked."""
    pub = NatsPublisher.connect(server.url, SUBJECT, stream=STREAM, create_stream=True)
    try:
        yield pub
        assert pub.flush(timeout=10)
        stats = pub.stats()
    finally:
        pub.close(5)
    stored = read_stream(server.url, STREAM)
    assert stats.failed == 0
    assert len(stored) == stats.acknowledged == stats.accepted
    assert len({m.headers["Nats-Msg-Id"] for m in stored}) == len(stored)


def good_sequence(pub: NatsPublisher) -> int:
    sequence = pub.publish(envelope()).result(timeout=10).broker_sequence
    assert sequence is not None  # a JetStream stream numbers every message
    return sequence


@pytest.mark.parametrize(("make", "named"), list(_cases()))
def test_bad_event_raises_at_call_site_and_nothing_is_stored(
    publisher: NatsPublisher, make: Callable[[], Any], named: str
) -> None:
    """A bad event raises InvalidEvent naming the problem when built or at publish(); the stream
    gets nothing and the next good event is acked right after the previous one."""
    before = good_sequence(publisher)
    accepted = publisher.stats().accepted
    with pytest.raises(InvalidEvent) as info:
        publisher.publish(make())
    assert named in str(info.value)
    assert publisher.stats().accepted == accepted
    assert good_sequence(publisher) == before + 1


def test_large_but_valid_event_is_stored(publisher: NatsPublisher, server: NatsServer) -> None:
    """A 900 KB event (under max_payload with its headers) is accepted, acked and stored intact."""
    env = wrap(event(LessonPublished, title="y" * 900_000))
    before = good_sequence(publisher)
    assert publisher.publish(env).result(timeout=10).broker_sequence == before + 1


def test_long_tenant_in_subject_template_is_refused(make_server: Callable[..., NatsServer]) -> None:
    """With a {tenant} subject template, a tenant id too long for a NATS subject raises
    InvalidEvent at publish() instead of getting the connection closed by the server."""
    server = make_server()
    with NatsPublisher.connect(
        server.url, "hostile.{tenant}.{type}", stream=STREAM, create_stream=True, delivery_timeout=5.0
    ) as pub:
        assert pub.publish(envelope(tenant="ok")).result(timeout=10).broker_sequence == 1
        for tenant in ("t" * 5000, "\u00e9" * 700, "/" * 1400):
            with pytest.raises(InvalidEvent, match="subject"):
                pub.publish(envelope(tenant=tenant))
        assert pub.publish(envelope(tenant="t" * 3000)).result(timeout=10).broker_sequence == 2
        assert pub.publish(envelope(tenant="ok")).result(timeout=10).broker_sequence == 3
        assert pub.stats().failed == 0
    assert len(read_stream(server.url, STREAM)) == 3


def _tampered_envelope(name: str, value: Any) -> EventEnvelope:
    env = wrap(event(LessonPublished))
    object.__setattr__(env, name, value)
    return env


def _tampered_timestamp(secs: int, nanos: int) -> EventEnvelope:
    env = wrap(event(LessonPublished), created_at=Timestamp(1, 0))
    object.__setattr__(env.created_at, "secs", secs)
    object.__setattr__(env.created_at, "nanos", nanos)
    return env


@pytest.mark.parametrize(
    "make",
    [
        lambda: _tampered_envelope("event_id", 5),
        lambda: _tampered_envelope("correlation_id", "not-a-uuid"),
        lambda: _tampered_envelope("tenant_id", 5),
        lambda: _tampered_envelope("personally_identifiable", 1),
        lambda: _tampered_timestamp(-5, 0),
        lambda: _tampered_timestamp(1, 10**9),
    ],
    ids=["event_id-int", "correlation_id-str", "tenant_id-int", "pii-int", "secs-negative", "nanos-too-big"],
)
def test_tampered_envelope_fields_are_caught_at_publish(
    make_server: Callable[..., NatsServer], make: Callable[[], EventEnvelope]
) -> None:
    """An envelope whose own fields were altered after construction (object.__setattr__) raises
    InvalidEvent at publish() and is not stored."""
    server = make_server()
    with NatsPublisher.connect(server.url, SUBJECT, stream=STREAM, create_stream=True) as pub:
        with pytest.raises(InvalidEvent):
            pub.publish(make())
        assert pub.publish(envelope()).result(timeout=10).broker_sequence == 1
