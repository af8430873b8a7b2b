"""The request context of events: the correlation id, cause, tenant and privacy flag that the
envelopes created inside a block of code take when their caller does not say otherwise.

This module owns the context variable that holds the active :class:`EventContext`,
:func:`event_context` (a ``with`` block that sets some of its fields, nestable) and
:func:`current_event_context`, and :data:`INHERIT`, the default that means "not given: take it
from the context". ``EventEnvelope.new`` reads the active context with one ``ContextVar.get``.

Being a ``contextvars`` variable, the context follows the rules of one: each thread starts from
the empty context (run work in another thread with ``contextvars.copy_context().run`` or
``asyncio.to_thread`` to carry it there); an asyncio task sees the context that was active when
it was created, and what it sets stays its own.
"""

from __future__ import annotations

import contextvars
import enum
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Final
from uuid import UUID

import attrs

from ._frozen import describe
from .errors import InvalidEvent
from .events import check_str, check_uuid

__all__ = ["INHERIT", "EventContext", "Inherit", "current_event_context", "event_context"]


class Inherit(enum.Enum):
    """The type of :data:`INHERIT`."""

    INHERIT = "INHERIT"

    def __repr__(self) -> str:
        return "INHERIT"


#: The default of an argument that was not given: the value comes from the enclosing context
#: (``event_context``, ``EventEnvelope.new``) or from the cause (``EventEnvelope.follow_up``).
INHERIT: Final = Inherit.INHERIT


def _uuid_or_none(value: object, where: str) -> UUID | None:
    return None if value is None else check_uuid(value, where)


def _correlation(value: object) -> UUID | None:
    return _uuid_or_none(value, "EventContext.correlation_id")


def _causation(value: object) -> UUID | None:
    return _uuid_or_none(value, "EventContext.causation_id")


def _tenant(value: object) -> str | None:
    return None if value is None else check_str(value, "EventContext.tenant_id")


def _flag(value: object) -> bool:
    if type(value) is not bool:
        raise InvalidEvent(f"EventContext.personally_identifiable must be a bool, got {describe(value)}")
    return value


@attrs.frozen(kw_only=True)
class EventContext:
    """The values ``EventEnvelope.new`` takes for the arguments its caller does not pass.

    Immutable; ids are UUIDs (UUID strings are converted), and a bad value raises
    ``InvalidEvent``. Outside any :func:`event_context` block every field is empty
    (``None``, and ``personally_identifiable=False``).
    """

    correlation_id: UUID | None = attrs.field(default=None, converter=_correlation)
    causation_id: UUID | None = attrs.field(default=None, converter=_causation)
    tenant_id: str | None = attrs.field(default=None, converter=_tenant)
    personally_identifiable: bool = attrs.field(default=False, converter=_flag)


_EMPTY: Final = EventContext()
_CURRENT: Final = contextvars.ContextVar[EventContext]("edupulse_events.event_context", default=_EMPTY)

#: The active context, as :func:`current_event_context` gives it, without a Python frame:
#: ``EventEnvelope.new`` calls it on every envelope.
active_context: Final = _CURRENT.get


def current_event_context() -> EventContext:
    """The context active here: the innermost open :func:`event_context`'s values, or the empty one."""
    return _CURRENT.get()


class _Block(AbstractContextManager[EventContext]):
    """One ``event_context(...)`` block: its validated overrides, and its token while it is open."""

    __slots__ = ("_overrides", "_token")

    def __init__(self, overrides: dict[str, Any]) -> None:
        self._overrides = overrides
        self._token: contextvars.Token[EventContext] | None = None

    def __enter__(self) -> EventContext:
        if self._token is not None:
            raise RuntimeError("this event_context(...) block is already open: call event_context() again to nest one")
        context = attrs.evolve(_CURRENT.get(), **self._overrides)
        self._token = _CURRENT.set(context)
        return context

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        token, self._token = self._token, None
        if token is not None:
            _CURRENT.reset(token)


def event_context(
    *,
    correlation_id: UUID | str | Inherit | None = INHERIT,
    causation_id: UUID | str | Inherit | None = INHERIT,
    tenant_id: str | Inherit | None = INHERIT,
    personally_identifiable: bool | Inherit = INHERIT,
) -> AbstractContextManager[EventContext]:
    """A ``with`` block in which the given values are the active context; it gives the new context.

    What is not given is inherited from the enclosing context, and what is given (``None``
    included) overrides it; on leaving the block the enclosing context is active again. Values
    are checked here, at the call: ids must be UUIDs or UUID strings, ``tenant_id`` a str,
    ``personally_identifiable`` a bool, else ``InvalidEvent``. A block object can be open once
    at a time (``RuntimeError`` otherwise).
    """
    overrides: dict[str, Any] = {}
    if correlation_id is not INHERIT:
        overrides["correlation_id"] = _uuid_or_none(correlation_id, "event_context.correlation_id")
    if causation_id is not INHERIT:
        overrides["causation_id"] = _uuid_or_none(causation_id, "event_context.causation_id")
    if tenant_id is not INHERIT:
        overrides["tenant_id"] = None if tenant_id is None else check_str(tenant_id, "event_context.tenant_id")
    if personally_identifiable is not INHERIT:
        if type(personally_identifiable) is not bool:
            raise InvalidEvent(
                f"event_context.personally_identifiable must be a bool, got {describe(personally_identifiable)}"
            )
        overrides["personally_identifiable"] = personally_identifiable
    return _Block(overrides)
