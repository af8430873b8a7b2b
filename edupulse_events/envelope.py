"""The envelope every event travels in, and the nanosecond :class:`Timestamp` it carries.

``EventEnvelope`` mirrors the Rust struct field for field (same order), validated at
construction. ``Timestamp`` mirrors Rust's ``SystemTime`` as serde writes it: whole seconds
and nanoseconds since the Unix epoch, from 1970-01-01T00:00:00Z up to ``secs == 2**63-1``
(far beyond ``datetime``), with nanoseconds kept. Times before 1970 cannot be serialized by
serde ("SystemTime must be later than UNIX_EPOCH"), so building one raises ``InvalidEvent``.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import attrs

from ._frozen import describe
from .context import INHERIT, Inherit, active_context
from .errors import InvalidEvent
from .events import KNOWN_EVENT_TYPES, check_str, check_uuid, event_type_name

__all__ = ["EventEnvelope", "Timestamp"]

I64_MAX = 2**63 - 1
NANOS_PER_SEC = 1_000_000_000
BEFORE_EPOCH = "SystemTime must be later than UNIX_EPOCH"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_DATETIME_MAX_SECS = 253402300799  # 9999-12-31T23:59:59Z, the last second datetime can hold


def _secs(value: object) -> int:
    if type(value) is not int:
        raise InvalidEvent(f"Timestamp.secs must be an int, got {describe(value)}")
    if value < 0:
        raise InvalidEvent(
            f"Timestamp.secs must be >= 0: times before 1970-01-01T00:00:00Z cannot be sent "
            f"(serde: {BEFORE_EPOCH}), got {value}"
        )
    if value > I64_MAX:
        raise InvalidEvent(f"Timestamp.secs must be <= 2**63-1 (the latest SystemTime), got {value}")
    return value


def _nanos(value: object) -> int:
    if type(value) is not int or not 0 <= value < NANOS_PER_SEC:
        raise InvalidEvent(f"Timestamp.nanos must be an int in 0..=999999999, got {describe(value)}")
    return value


@attrs.frozen(order=True)
class Timestamp:
    """A point in time as Rust's ``SystemTime``: ``secs`` since the epoch plus ``nanos``.

    Ordered and hashable. ``from_datetime`` rejects naive datetimes (``InvalidEvent``): a
    wall-clock time without a zone would silently shift by the host's UTC offset.
    """

    secs: int = attrs.field(converter=_secs)
    nanos: int = attrs.field(default=0, converter=_nanos)

    @classmethod
    def now(cls) -> Timestamp:
        """The current time, with the nanosecond resolution of ``time.time_ns()``."""
        return cls.from_unix_nanos(time.time_ns())

    @classmethod
    def from_unix_nanos(cls, nanos: int) -> Timestamp:
        """The time ``nanos`` nanoseconds after the epoch (``InvalidEvent`` if negative)."""
        if type(nanos) is not int:
            raise InvalidEvent(f"unix nanoseconds must be an int, got {describe(nanos)}")
        if nanos < 0:
            raise InvalidEvent(f"a time before 1970 cannot be sent (serde: {BEFORE_EPOCH}), got {nanos} ns")
        secs, rest = divmod(nanos, NANOS_PER_SEC)
        return cls(secs, rest)

    @classmethod
    def from_datetime(cls, dt: datetime) -> Timestamp:
        """Convert a timezone-aware datetime; naive ones and times before 1970 raise InvalidEvent."""
        if not isinstance(dt, datetime):
            raise InvalidEvent(f"expected a datetime, got {describe(dt)}")
        if dt.utcoffset() is None:
            raise InvalidEvent(f"naive datetime {dt.isoformat()} is ambiguous: give it a tzinfo (e.g. timezone.utc)")
        delta = dt - _EPOCH
        if delta < timedelta(0):
            raise InvalidEvent(f"{dt.isoformat()} is before 1970 and cannot be sent (serde: {BEFORE_EPOCH})")
        return cls(delta.days * 86400 + delta.seconds, delta.microseconds * 1000)

    @property
    def unix_nanos(self) -> int:
        """Nanoseconds since the epoch."""
        return self.secs * NANOS_PER_SEC + self.nanos

    def to_datetime(self) -> datetime:
        """A UTC datetime (nanoseconds truncated to microseconds); InvalidEvent after year 9999."""
        if self.secs > _DATETIME_MAX_SECS:
            raise InvalidEvent(f"Timestamp(secs={self.secs}) is after 9999-12-31T23:59:59Z, beyond datetime's range")
        return _EPOCH + timedelta(seconds=self.secs, microseconds=self.nanos // 1000)

    def __str__(self) -> str:
        if self.secs > _DATETIME_MAX_SECS:
            return f"{self.secs}.{self.nanos:09d}s after the epoch"
        return f"{self.to_datetime():%Y-%m-%dT%H:%M:%S}.{self.nanos:09d}Z"


def _uuid(value: object) -> UUID:
    return value if type(value) is UUID else check_uuid(value, "EventEnvelope.event_id")


def _causation(value: object) -> UUID | None:
    return None if value is None else check_uuid(value, "EventEnvelope.causation_id")


def _correlation(value: object) -> UUID | None:
    return None if value is None else check_uuid(value, "EventEnvelope.correlation_id")


def _tenant(value: object) -> str | None:
    return None if value is None else check_str(value, "EventEnvelope.tenant_id")


def _created_at(value: object) -> Timestamp:
    if type(value) is Timestamp:
        return value
    if isinstance(value, datetime):
        try:
            return Timestamp.from_datetime(value)
        except InvalidEvent as exc:
            raise InvalidEvent(f"EventEnvelope.created_at: {exc}") from None
    raise InvalidEvent(f"EventEnvelope.created_at must be a Timestamp or an aware datetime, got {describe(value)}")


def _flag(value: object) -> bool:
    if type(value) is not bool:
        raise InvalidEvent(f"EventEnvelope.personally_identifiable must be a bool, got {describe(value)}")
    return value


def _data(value: object) -> Any:
    if type(value) not in KNOWN_EVENT_TYPES:
        raise InvalidEvent(f"EventEnvelope.data must be an instance of a registered event type, got {describe(value)}")
    return value


@attrs.frozen
class EventEnvelope:
    """One event with its metadata, exactly as the Rust ``EventEnvelope`` (same field order).

    ``created_at`` also accepts an aware ``datetime`` (converted to :class:`Timestamp`); ids
    accept UUID strings. ``data`` must be an instance of a registered event type.
    """

    event_id: UUID = attrs.field(converter=_uuid)
    causation_id: UUID | None = attrs.field(converter=_causation)
    correlation_id: UUID | None = attrs.field(converter=_correlation)
    tenant_id: str | None = attrs.field(converter=_tenant)
    created_at: Timestamp = attrs.field(converter=_created_at)
    personally_identifiable: bool = attrs.field(converter=_flag)
    data: Any = attrs.field(converter=_data)

    @classmethod
    def new(
        cls,
        data: Any,
        correlation_id: UUID | str | Inherit | None = INHERIT,
        causation_id: UUID | str | Inherit | None = INHERIT,
        tenant_id: str | Inherit | None = INHERIT,
        personally_identifiable: bool | Inherit = INHERIT,
    ) -> EventEnvelope:
        """A fresh envelope for ``data``: random (v4) ``event_id``, ``created_at`` now.

        Each of the other fields not passed comes from the active
        :func:`~edupulse_events.context.event_context` (outside one: ``None``, and
        ``personally_identifiable=False``); a value passed, ``None`` included, wins over it.
        """
        context = active_context()
        return cls(
            uuid.uuid4(),
            context.causation_id if causation_id is INHERIT else causation_id,
            context.correlation_id if correlation_id is INHERIT else correlation_id,
            context.tenant_id if tenant_id is INHERIT else tenant_id,
            Timestamp.now(),
            context.personally_identifiable if personally_identifiable is INHERIT else personally_identifiable,
            data,
        )

    def follow_up(self, data: Any, *, personally_identifiable: bool | Inherit = INHERIT) -> EventEnvelope:
        """The envelope for an event caused by this one: same tenant, causation_id = this
        event_id, correlation_id = this correlation_id (or this event_id when it has none).

        It keeps this event's ``personally_identifiable`` flag unless told otherwise: an event
        that follows one about a student is about that student too. Every field comes from this
        envelope (or the arguments), none from the active
        :func:`~edupulse_events.context.event_context`.
        """
        correlation = self.event_id if self.correlation_id is None else self.correlation_id
        return type(self).new(
            data,
            correlation_id=correlation,
            causation_id=self.event_id,
            tenant_id=self.tenant_id,
            personally_identifiable=(
                self.personally_identifiable if personally_identifiable is INHERIT else personally_identifiable
            ),
        )

    @property
    def event_type(self) -> str:
        """The wire type name of ``data`` (the ``data.type`` tag)."""
        return event_type_name(self.data)


_new = object.__new__
_TS_SET = tuple(getattr(Timestamp, a.name).__set__ for a in attrs.fields(Timestamp))
_ENV_SET = tuple(getattr(EventEnvelope, a.name).__set__ for a in attrs.fields(EventEnvelope))


def unchecked_timestamp(secs: int, nanos: int) -> Timestamp:
    """A Timestamp from values the caller has already range-checked (the decoder's fast path)."""
    ts = _new(Timestamp)
    set_secs, set_nanos = _TS_SET
    set_secs(ts, secs)
    set_nanos(ts, nanos)
    return ts


def unchecked_envelope(
    event_id: UUID,
    causation_id: UUID | None,
    correlation_id: UUID | None,
    tenant_id: str | None,
    created_at: Timestamp,
    personally_identifiable: bool,
    data: Any,
) -> EventEnvelope:
    """An envelope from values the caller has already validated (the decoder's fast path);
    sets the slots directly, in field order."""
    env = _new(EventEnvelope)
    s0, s1, s2, s3, s4, s5, s6 = _ENV_SET
    s0(env, event_id)
    s1(env, causation_id)
    s2(env, correlation_id)
    s3(env, tenant_id)
    s4(env, created_at)
    s5(env, personally_identifiable)
    s6(env, data)
    return env
