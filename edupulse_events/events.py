"""The EduPulse domain events, the event-type registry, and the field types the wire can carry.

The four built-in events mirror the Rust ``EventData`` enum variants. They are frozen, slotted
attrs classes validated at construction: ids are ``uuid.UUID`` (a valid UUID string is
converted), text is ``str`` without lone surrogates, ``answers`` is an immutable
:class:`FrozenMap` and ``amount_cents`` a ``u32``. Anything else raises :class:`InvalidEvent`
naming ``Class.field`` and the bad value's type.

Applications add their own attrs classes with :func:`register_event`; the built-in four are
registered the same way, into every :class:`EventRegistry` created with
``include_builtins=True`` (the default, and :data:`default_registry`). Registration checks
that every field has a type the wire can carry (:func:`wire_type`); the codec checks values
against those types when encoding and decoding, and a custom class may validate more in its
own ``__init__`` (the ``check_*`` helpers give the same rules and messages as the built-ins).
"""

from __future__ import annotations

import collections.abc
import re
import threading
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple, NewType, TypeVar, Union, overload
from uuid import UUID

import attrs

from ._frozen import (
    FrozenMap,
    describe,
    is_utf8,
    make_uuid,
    mark_str_map,
    parse_uuid,
    short_repr,
    surrogate_index,
)
from .errors import InvalidEvent

__all__ = [
    "I32",
    "I64",
    "U32",
    "U64",
    "BadgeAwarded",
    "EventRegistry",
    "EventType",
    "FieldSpec",
    "LessonPublished",
    "PaymentProcessed",
    "QuizSubmitted",
    "WireType",
    "check_int",
    "check_str",
    "check_str_map",
    "check_u32",
    "check_uuid",
    "default_registry",
    "event_type_name",
    "register_event",
    "wire_type",
]

U32 = NewType("U32", int)
"""An ``int`` field carried as Rust ``u32`` (0..=4294967295)."""
U64 = NewType("U64", int)
"""An ``int`` field carried as Rust ``u64`` (0..=2**64-1)."""
I32 = NewType("I32", int)
"""An ``int`` field carried as Rust ``i32``."""
I64 = NewType("I64", int)
"""An ``int`` field carried as Rust ``i64``; a plain ``int`` annotation means the same."""

_INT_RANGES: dict[object, tuple[int, int, str]] = {
    U32: (0, 2**32 - 1, "u32"),
    U64: (0, 2**64 - 1, "u64"),
    I32: (-(2**31), 2**31 - 1, "i32"),
    I64: (-(2**63), 2**63 - 1, "i64"),
    int: (-(2**63), 2**63 - 1, "i64"),
}


class WireType(NamedTuple):
    """How one field travels: ``kind`` is uuid, str, bool, int, float, optional, map, list,
    tuple (homogeneous, any length) or fixed (a fixed-length tuple); ``args`` holds the int
    range, the inner WireType(s), or for map whether it is stored as a FrozenMap."""

    kind: str
    args: tuple[Any, ...] = ()
    label: str = ""


_NONE_TYPE = type(None)


def wire_type(tp: Any) -> WireType:
    """The :class:`WireType` for annotation ``tp``; ``InvalidEvent`` when the wire cannot carry it."""
    if tp is UUID or tp is str or tp is bool:
        return WireType(tp.__name__.lower(), (), tp.__name__)
    if tp is float:
        return WireType("float", (), "f64")
    if tp in _INT_RANGES:
        lo, hi, label = _INT_RANGES[tp]
        return WireType("int", (lo, hi), label)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        rest = [a for a in args if a is not _NONE_TYPE]
        if len(rest) == 1 and len(args) == 2:
            inner = wire_type(rest[0])
            return WireType("optional", (inner,), f"Optional[{inner.label}]")
    elif origin in (dict, collections.abc.Mapping) and args == (str, str):
        return WireType("map", (origin is not dict,), f"{origin.__name__}[str, str]")
    elif origin is list and len(args) == 1:
        inner = wire_type(args[0])
        return WireType("list", (inner,), f"list[{inner.label}]")
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        inner = wire_type(args[0])
        return WireType("tuple", (inner,), f"tuple[{inner.label}, ...]")
    elif origin is tuple and args and Ellipsis not in args:
        inners = tuple(wire_type(a) for a in args)
        return WireType("fixed", inners, f"tuple[{', '.join(i.label for i in inners)}]")
    raise InvalidEvent(
        f"the wire cannot carry {tp!r}: use UUID, str, bool, int (or U32/U64/I32/I64), float, "
        "Optional[...] of those, Mapping[str, str], dict[str, str], list[...] or tuple[...]"
    )


# --- construction-time validation; ``where`` is "Class.field" for the messages ---


def check_str(value: object, where: str) -> str:
    """Return ``value`` as a plain ``str``; ``InvalidEvent`` unless it is a UTF-8-safe str."""
    if type(value) is str and value.isascii():
        return value
    if type(value) is not str:
        if not isinstance(value, str):
            raise InvalidEvent(f"{where} must be a str, got {describe(value)}")
        value = str.__str__(value)
    if not is_utf8(value):
        raise InvalidEvent(
            f"{where} contains a lone surrogate at index {surrogate_index(value)}; it cannot be sent as UTF-8"
        )
    return value


def check_uuid(value: object, where: str) -> UUID:
    """Return ``value`` as a ``UUID``; UUID strings in the forms Rust accepts are converted."""
    if type(value) is UUID:
        return value
    if isinstance(value, str):
        parsed = parse_uuid(value)
        if parsed is not None:
            return parsed
        raise InvalidEvent(f"{where} must be a UUID or a UUID string, got invalid {describe(value)}")
    if isinstance(value, UUID):
        return make_uuid(value.int)
    raise InvalidEvent(f"{where} must be a UUID or a UUID string, got {describe(value)}")


def check_str_map(value: object, where: str) -> FrozenMap:
    """Return ``value`` as a :class:`FrozenMap` of str to str, keeping its order."""
    if not isinstance(value, Mapping):
        raise InvalidEvent(f"{where} must be a mapping of str to str, got {describe(value)}")
    try:  # one C-speed pass: join() needs every key and value to be a str
        text = "".join(value) + "".join(value.values())
    except TypeError:
        text = "\ud800"  # not all str: take the slow path below, which names the culprit
    if text.isascii() or is_utf8(text):
        return mark_str_map(value if type(value) is FrozenMap else FrozenMap(value))
    return mark_str_map(
        FrozenMap({check_str(k, f"{where} key"): check_str(v, f"{where}[{short_repr(k)}]") for k, v in value.items()})
    )


def check_int(value: object, where: str, lo: int, hi: int) -> int:
    """Return ``value`` if it is an ``int`` (``bool`` is not) in ``lo..=hi``."""
    if type(value) is int and lo <= value <= hi:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
        return int(value)  # an IntEnum or other int subclass: store the plain int
    raise InvalidEvent(f"{where} must be an int in {lo}..={hi}, got {describe(value)}")


def check_u32(value: object, where: str) -> U32:
    """Return ``value`` if it is an ``int`` in the Rust u32 range."""
    if type(value) is int and 0 <= value <= 4294967295:
        return value  # type: ignore[return-value]  # U32 is a NewType of int
    return check_int(value, where, 0, 2**32 - 1)  # type: ignore[return-value]  # range checked: a U32


# The built-in events validate in an explicit __init__ (typed, and naming Class.field in every
# message); attrs generates the rest (frozen, slots, eq, hash, repr) and ``__attrs_init__``.


@attrs.frozen(init=False)
class LessonPublished:
    """A teacher published a lesson."""

    lesson_id: UUID
    author_id: UUID
    title: str

    def __init__(self, lesson_id: UUID | str, author_id: UUID | str, title: str) -> None:
        self.__attrs_init__(
            check_uuid(lesson_id, "LessonPublished.lesson_id"),
            check_uuid(author_id, "LessonPublished.author_id"),
            check_str(title, "LessonPublished.title"),
        )


@attrs.frozen(init=False)
class QuizSubmitted:
    """A student submitted a quiz; ``answers`` maps question id to answer (order kept)."""

    quiz_id: UUID
    student_id: UUID
    answers: Mapping[str, str]

    def __init__(self, quiz_id: UUID | str, student_id: UUID | str, answers: Mapping[str, str]) -> None:
        self.__attrs_init__(
            check_uuid(quiz_id, "QuizSubmitted.quiz_id"),
            check_uuid(student_id, "QuizSubmitted.student_id"),
            check_str_map(answers, "QuizSubmitted.answers"),
        )


@attrs.frozen(init=False)
class BadgeAwarded:
    """A badge was awarded to a user."""

    badge_id: UUID
    recipient_id: UUID
    reason: str

    def __init__(self, badge_id: UUID | str, recipient_id: UUID | str, reason: str) -> None:
        self.__attrs_init__(
            check_uuid(badge_id, "BadgeAwarded.badge_id"),
            check_uuid(recipient_id, "BadgeAwarded.recipient_id"),
            check_str(reason, "BadgeAwarded.reason"),
        )


@attrs.frozen(init=False)
class PaymentProcessed:
    """A payment went through; ``amount_cents`` is a Rust ``u32``."""

    payment_id: UUID
    from_user: UUID
    amount_cents: U32

    def __init__(self, payment_id: UUID | str, from_user: UUID | str, amount_cents: int) -> None:
        self.__attrs_init__(
            check_uuid(payment_id, "PaymentProcessed.payment_id"),
            check_uuid(from_user, "PaymentProcessed.from_user"),
            check_u32(amount_cents, "PaymentProcessed.amount_cents"),
        )


BUILTIN_EVENTS: tuple[type, ...] = (LessonPublished, QuizSubmitted, BadgeAwarded, PaymentProcessed)

# --- the registry ---


class FieldSpec(NamedTuple):
    """One field of a registered event: wire key, ``__init__`` keyword, wire type, has default."""

    name: str
    alias: str
    wire: WireType
    has_default: bool


class EventType(NamedTuple):
    """A registered event class with its wire name and field specs (what the codec needs)."""

    cls: type
    name: str
    fields: tuple[FieldSpec, ...]


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GLOBAL_LOCK = threading.Lock()
_WIRE_NAMES: dict[type, str] = {}  # every registered class -> its one wire name, all registries
KNOWN_EVENT_TYPES = _WIRE_NAMES.keys()
"""Classes registered in any registry (``EventEnvelope.data`` must be one of them)."""
wire_name_of: Callable[[type], str | None] = _WIRE_NAMES.get
"""A registered class's wire name, or None: `event_type_name` of a class without its checks (a hot path's)."""

T = TypeVar("T", bound=type)


def _is_attrs_class(obj: object) -> bool:
    return isinstance(obj, type) and attrs.has(obj)


def _field_specs(cls: type) -> tuple[FieldSpec, ...]:
    try:
        attrs.resolve_types(cls)
    except Exception as exc:  # a NameError from a string annotation, typically
        raise InvalidEvent(f"cannot resolve the field annotations of {cls.__qualname__}: {exc}") from exc
    specs = []
    for a in attrs.fields(cls):
        if not a.init:
            raise InvalidEvent(f"{cls.__qualname__}.{a.name} has init=False; event fields must be init args")
        try:
            wt = wire_type(a.type)
        except InvalidEvent as exc:
            raise InvalidEvent(f"{cls.__qualname__}.{a.name}: {exc}") from None
        specs.append(FieldSpec(a.name, a.alias or a.name, wt, a.default is not attrs.NOTHING))
    return tuple(specs)


class EventRegistry:
    """Maps wire type names (the ``data.type`` tag) to event classes and back.

    Registration errors raise :class:`InvalidEvent`, not ``ConfigError``: what is wrong is an
    event type (not an attrs class, a field the wire cannot carry, a name already taken), which
    is the same family as an invalid event, and it is found where the type is defined, long
    before any publisher config exists. A class has one wire name across all registries.
    Registering is thread-safe; lookups are lock-free.
    """

    def __init__(self, *, include_builtins: bool = True) -> None:
        self._by_name: dict[str, EventType] = {}
        self._by_class: dict[type, EventType] = {}
        if include_builtins:
            for cls in BUILTIN_EVENTS:
                self.register(cls)

    def register(self, cls: T, name: str | None = None) -> T:
        """Register attrs class ``cls`` under ``name`` (default: the class name); returns ``cls``."""
        if not _is_attrs_class(cls):
            raise InvalidEvent(f"an event type must be an attrs class, got {describe(cls)}")
        name = cls.__name__ if name is None else name
        if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
            raise InvalidEvent(f"an event type name must be a Rust identifier, got {describe(name)}")
        fields = _field_specs(cls)
        with _GLOBAL_LOCK:
            if name in self._by_name:
                other = self._by_name[name].cls.__qualname__
                raise InvalidEvent(f"event type name {name!r} is already registered (by {other})")
            if cls in self._by_class:
                raise InvalidEvent(f"{cls.__qualname__} is already registered as {self._by_class[cls].name!r}")
            known = _WIRE_NAMES.get(cls)
            if known is not None and known != name:
                raise InvalidEvent(f"{cls.__qualname__} is already registered as {known!r} elsewhere")
            _WIRE_NAMES[cls] = name
            entry = EventType(cls, name, fields)
            self._by_class[cls] = entry
            self._by_name[name] = entry
        return cls

    def get(self, name: str) -> EventType | None:
        """The entry for wire name ``name`` (case-sensitive), or ``None``."""
        return self._by_name.get(name)

    def lookup(self, cls: type) -> EventType | None:
        """The entry for class ``cls``, or ``None`` when it is not registered here."""
        return self._by_class.get(cls)

    def name_of(self, event_or_class: object) -> str:
        """Wire name of an event instance or class; ``InvalidEvent`` if not registered here."""
        cls = event_or_class if isinstance(event_or_class, type) else type(event_or_class)
        entry = self._by_class.get(cls)
        if entry is None:
            raise InvalidEvent(f"{cls.__qualname__} is not a registered event type")
        return entry.name

    @property
    def names(self) -> tuple[str, ...]:
        """Registered wire names, in registration order."""
        return tuple(self._by_name)

    def __contains__(self, item: object) -> bool:
        return item in self._by_name if isinstance(item, str) else item in self._by_class

    def __iter__(self) -> Iterator[EventType]:
        return iter(tuple(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    def __repr__(self) -> str:
        return f"EventRegistry({', '.join(self._by_name)})"


default_registry = EventRegistry()
"""The registry :func:`register_event`, ``edupulse_events.encode`` and ``decode`` use by default."""


@overload
def register_event(cls: T, /) -> T: ...
@overload
def register_event(name: str | None = None, /, *, registry: EventRegistry | None = None) -> Callable[[T], T]: ...
@overload
def register_event(*, name: str | None = None, registry: EventRegistry | None = None) -> Callable[[T], T]: ...


def register_event(target: Any = None, /, *, name: str | None = None, registry: EventRegistry | None = None) -> Any:
    """Class decorator registering an event type: ``@register_event``, ``@register_event("Name")``
    or ``@register_event(name="Name", registry=my_registry)``. The name defaults to the class name.
    """
    reg = default_registry if registry is None else registry
    if isinstance(target, type):
        return reg.register(target, name)
    if target is not None:
        if name is not None or not isinstance(target, str):
            raise InvalidEvent(f"register_event takes a class or a name, got {describe(target)}")
        name = target
    return lambda cls: reg.register(cls, name)


def event_type_name(event_or_class: object) -> str:
    """The wire type name of an event instance or class (the same in every registry)."""
    cls = event_or_class if isinstance(event_or_class, type) else type(event_or_class)
    name = _WIRE_NAMES.get(cls)
    if name is None:
        raise InvalidEvent(f"{cls.__qualname__} is not a registered event type")
    return name
