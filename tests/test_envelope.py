"""EventEnvelope (validation, new(), follow_up()) and Timestamp (range, nanos, datetimes)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from edupulse_events import (
    EventEnvelope,
    InvalidEvent,
    LessonPublished,
    PaymentProcessed,
    Timestamp,
)

ID = uuid.UUID("0191f3c2-7a4b-4c1d-8e2f-a1b2c3d4e5f6")
OTHER = uuid.UUID("c0ffee00-dead-4bef-8bad-f00dbaadcafe")
I64_MAX = 2**63 - 1


def lesson() -> LessonPublished:
    """A valid LessonPublished."""
    return LessonPublished(ID, OTHER, "Intro")


def envelope(**overrides: Any) -> EventEnvelope:
    """A valid envelope with some fields replaced."""
    values: dict[str, Any] = {
        "event_id": ID,
        "causation_id": None,
        "correlation_id": None,
        "tenant_id": None,
        "created_at": Timestamp(1_700_000_000, 123_456_789),
        "personally_identifiable": False,
        "data": lesson(),
    }
    return EventEnvelope(**{**values, **overrides})


# --- EventEnvelope ---


def test_field_order_matches_rust() -> None:
    """The envelope fields are in the Rust struct's order."""
    assert [f.name for f in attrs.fields(EventEnvelope)] == [
        "event_id",
        "causation_id",
        "correlation_id",
        "tenant_id",
        "created_at",
        "personally_identifiable",
        "data",
    ]


def test_new_fills_id_and_time() -> None:
    """new() makes a v4 event_id and stamps created_at now, with nanoseconds, and defaults the rest."""
    before = time.time_ns()
    env = EventEnvelope.new(lesson())
    after = time.time_ns()
    assert type(env.event_id) is uuid.UUID
    assert env.event_id.version == 4
    assert before <= env.created_at.unix_nanos <= after
    assert (env.causation_id, env.correlation_id, env.tenant_id, env.personally_identifiable) == (
        None,
        None,
        None,
        False,
    )
    assert EventEnvelope.new(lesson()).event_id != env.event_id


def test_new_passes_options_and_converts_ids() -> None:
    """new() takes correlation/causation ids (UUID strings converted), tenant and the PII flag."""
    env = EventEnvelope.new(
        lesson(), correlation_id=str(OTHER), causation_id=ID, tenant_id="t-1", personally_identifiable=True
    )
    assert (env.correlation_id, env.causation_id, env.tenant_id, env.personally_identifiable) == (
        OTHER,
        ID,
        "t-1",
        True,
    )


def test_follow_up_of_a_root_event() -> None:
    """A follow-up of an event without correlation: causation and correlation are the parent's id."""
    parent = EventEnvelope.new(lesson(), tenant_id="school", personally_identifiable=True)
    child = parent.follow_up(PaymentProcessed(ID, OTHER, 5))
    assert child.causation_id == parent.event_id
    assert child.correlation_id == parent.event_id
    assert child.tenant_id == "school"
    assert child.personally_identifiable is True
    assert child.event_id not in (parent.event_id, None)
    assert child.data == PaymentProcessed(ID, OTHER, 5)


@pytest.mark.parametrize("cause_pii", [True, False])
def test_follow_up_keeps_the_pii_flag_unless_told(cause_pii: bool) -> None:
    """A follow-up keeps its cause's personally_identifiable flag; an explicit flag overrides it."""
    cause = EventEnvelope.new(lesson(), personally_identifiable=cause_pii)
    assert cause.follow_up(lesson()).personally_identifiable is cause_pii
    assert cause.follow_up(lesson()).follow_up(lesson()).personally_identifiable is cause_pii
    assert cause.follow_up(lesson(), personally_identifiable=not cause_pii).personally_identifiable is not cause_pii
    with pytest.raises(InvalidEvent, match=r"personally_identifiable must be a bool, got NoneType"):
        cause.follow_up(lesson(), personally_identifiable=None)  # type: ignore[arg-type]  # deliberately ill-typed


def test_follow_up_keeps_the_chain_correlation() -> None:
    """A follow-up of a correlated event keeps the correlation id; causation is the direct parent."""
    root = EventEnvelope.new(lesson(), tenant_id=None)
    middle = root.follow_up(lesson())
    leaf = middle.follow_up(lesson(), personally_identifiable=True)
    assert leaf.correlation_id == root.event_id
    assert leaf.causation_id == middle.event_id
    assert leaf.tenant_id is None
    assert leaf.personally_identifiable is True


def test_envelope_accepts_strings_and_datetimes() -> None:
    """ids may be UUID strings and created_at an aware datetime; both are converted."""
    when = datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=timezone.utc)
    env = envelope(event_id=str(ID).upper(), causation_id=OTHER.hex, correlation_id=str(OTHER), created_at=when)
    assert (env.event_id, env.causation_id, env.correlation_id) == (ID, OTHER, OTHER)
    assert env.created_at == Timestamp(1_700_000_000, 123_456_000)


@pytest.mark.parametrize(
    ("field", "bad", "pattern"),
    [
        ("event_id", None, "event_id must be a UUID or a UUID string, got NoneType"),
        ("event_id", "nope", "event_id must be a UUID or a UUID string, got invalid str 'nope'"),
        ("causation_id", 5, "causation_id must be a UUID or a UUID string, got int 5"),
        ("correlation_id", " " + str(ID), "correlation_id must be a UUID"),
        ("tenant_id", 42, "tenant_id must be a str, got int 42"),
        ("tenant_id", "a\udfffb", "tenant_id contains a lone surrogate at index 1"),
        ("created_at", 1_700_000_000, "created_at must be a Timestamp or an aware datetime, got int"),
        ("created_at", "2023-11-14T22:13:20Z", "created_at must be a Timestamp or an aware datetime, got str"),
        ("created_at", datetime(2023, 1, 1), "created_at: naive datetime .* is ambiguous"),
        ("created_at", datetime(1969, 12, 31, 23, 59, 59, tzinfo=timezone.utc), "created_at: .* is before 1970"),
        ("personally_identifiable", 0, "personally_identifiable must be a bool, got int 0"),
        ("personally_identifiable", "true", "personally_identifiable must be a bool, got str"),
        ("personally_identifiable", None, "personally_identifiable must be a bool, got NoneType"),
        ("data", {"lesson_id": str(ID)}, "data must be an instance of a registered event type, got dict"),
        ("data", Timestamp(0), "data must be an instance of a registered event type, got Timestamp"),
    ],
)
def test_envelope_validation(field: str, bad: object, pattern: str) -> None:
    """Each envelope field rejects wrong values with InvalidEvent naming EventEnvelope.field."""
    with pytest.raises(InvalidEvent, match=rf"EventEnvelope\.{pattern}"):
        envelope(**{field: bad})


def test_envelope_frozen_hashable_and_equal() -> None:
    """Envelopes are immutable, hashable and compare by value."""
    a, b = envelope(), envelope(tenant_id=None)
    assert a == b
    assert hash(a) == hash(b)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        a.tenant_id = "x"  # type: ignore[misc]  # frozen: the runtime refusal is under test


def test_event_type_property() -> None:
    """envelope.event_type is the wire name of its data."""
    assert envelope().event_type == "LessonPublished"


# --- Timestamp ---


@pytest.mark.parametrize(("secs", "nanos"), [(0, 0), (0, 999_999_999), (I64_MAX, 999_999_999), (253402300799, 0)])
def test_timestamp_range_accepted(secs: int, nanos: int) -> None:
    """secs in 0..=2**63-1 and nanos in 0..=999999999 are kept exactly."""
    ts = Timestamp(secs, nanos)
    assert (ts.secs, ts.nanos) == (secs, nanos)
    assert Timestamp.from_unix_nanos(ts.unix_nanos) == ts


@pytest.mark.parametrize(
    ("secs", "nanos", "pattern"),
    [
        (2**63, 0, r"secs must be <= 2\*\*63-1"),
        (0, 10**9, "nanos must be an int in 0..=999999999, got int 1000000000"),
        (0, -1, "nanos must be an int in 0..=999999999, got int -1"),
        (1.0, 0, "secs must be an int, got float 1.0"),
        (True, 0, "secs must be an int, got bool True"),
        (0, 0.5, "nanos must be an int"),
        (0, False, "nanos must be an int"),
    ],
)
def test_timestamp_out_of_range(secs: Any, nanos: Any, pattern: str) -> None:
    """Out-of-range or non-int parts raise InvalidEvent."""
    with pytest.raises(InvalidEvent, match=rf"Timestamp\.{pattern}"):
        Timestamp(secs, nanos)


@pytest.mark.parametrize("nanos", [0, 999_999_999])
def test_before_epoch_rejected(nanos: int) -> None:
    """Times before 1970 (which serde cannot serialize) raise InvalidEvent however they are built."""
    with pytest.raises(InvalidEvent, match=r"before 1970.*SystemTime must be later than UNIX_EPOCH"):
        Timestamp(-1, nanos)
    with pytest.raises(InvalidEvent, match=r"before 1970.*SystemTime must be later than UNIX_EPOCH"):
        Timestamp.from_unix_nanos(-(10**9) + nanos)
    with pytest.raises(InvalidEvent, match=r"before 1970.*SystemTime must be later than UNIX_EPOCH"):
        Timestamp.from_datetime(datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone.utc))


def test_from_datetime_keeps_microseconds_and_zone() -> None:
    """from_datetime converts any aware datetime to UTC seconds + nanoseconds."""
    utc = datetime(2023, 11, 14, 22, 13, 20, 999_999, tzinfo=timezone.utc)
    plus2 = utc.astimezone(timezone(timedelta(hours=2)))
    assert Timestamp.from_datetime(utc) == Timestamp.from_datetime(plus2) == Timestamp(1_700_000_000, 999_999_000)
    assert Timestamp.from_datetime(datetime(1970, 1, 1, tzinfo=timezone.utc)) == Timestamp(0, 0)


def test_from_datetime_rejects_naive() -> None:
    """A naive datetime is rejected rather than guessed as UTC or local time."""
    with pytest.raises(InvalidEvent, match="naive datetime"):
        Timestamp.from_datetime(datetime(2023, 1, 1))
    with pytest.raises(InvalidEvent, match="expected a datetime"):
        Timestamp.from_datetime("2023-01-01T00:00:00Z")  # type: ignore[arg-type]  # deliberately ill-typed


def test_to_datetime_truncates_nanos() -> None:
    """to_datetime gives an aware UTC datetime; sub-microsecond nanos are truncated."""
    dt = Timestamp(1_700_000_000, 123_456_789).to_datetime()
    assert dt == datetime(2023, 11, 14, 22, 13, 20, 123_456, tzinfo=timezone.utc)
    assert dt.tzinfo is timezone.utc
    assert Timestamp(253402300799, 999_999_999).to_datetime() == datetime.max.replace(tzinfo=timezone.utc)


@pytest.mark.parametrize("secs", [253402300800, I64_MAX])
def test_to_datetime_beyond_year_9999(secs: int) -> None:
    """A Timestamp past datetime's range (up to i64::MAX seconds) raises InvalidEvent on to_datetime."""
    ts = Timestamp(secs, 999_999_999)
    with pytest.raises(InvalidEvent, match="beyond datetime's range"):
        ts.to_datetime()
    assert str(secs) in str(ts)


def test_unix_nanos_round_trip() -> None:
    """from_unix_nanos and unix_nanos are inverse, including i64::MAX seconds."""
    for n in (0, 1, 999_999_999, 1_700_000_000_123_456_789, I64_MAX * 10**9 + 999_999_999):
        assert Timestamp.from_unix_nanos(n).unix_nanos == n
    with pytest.raises(InvalidEvent):
        Timestamp.from_unix_nanos((I64_MAX + 1) * 10**9)
    with pytest.raises(InvalidEvent, match="must be an int"):
        Timestamp.from_unix_nanos(1.5)  # type: ignore[arg-type]  # deliberately ill-typed


def test_now_has_nanoseconds() -> None:
    """now() lies between two time.time_ns() readings."""
    before = time.time_ns()
    now = Timestamp.now()
    assert before <= now.unix_nanos <= time.time_ns()


def test_timestamps_are_ordered() -> None:
    """Timestamps order by seconds, then nanoseconds."""
    stamps = [Timestamp(1, 5), Timestamp(0, 999_999_999), Timestamp(1, 0), Timestamp(I64_MAX, 0)]
    assert sorted(stamps) == [Timestamp(0, 999_999_999), Timestamp(1, 0), Timestamp(1, 5), Timestamp(I64_MAX, 0)]
    assert str(Timestamp(1_700_000_000, 5)) == "2023-11-14T22:13:20.000000005Z"
