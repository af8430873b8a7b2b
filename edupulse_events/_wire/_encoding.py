"""The encoder's side of the codec: ``EventEnvelope`` -> the JSON-ready dict orjson writes.

Owns the per-``WireType`` cattrs unstructure hooks (:func:`unstructure_hook`, which check
each value's type), float formatting as serde_json (ryu) writes it (:func:`format_f64`), the
envelope hook (:func:`make_unstructure_envelope`, which re-checks the envelope's own fields
in case one was altered with ``object.__setattr__`` after construction), the byte layout of
the ids at the start of every encoded envelope (:data:`ENVELOPE_LAYOUT`, which the routers
copy the ids from) and, when encoding fails, the ``InvalidEvent`` naming the field at fault
(:func:`encode_error`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, NoReturn
from uuid import UUID

import cattrs
import orjson
from cattrs.gen import make_dict_unstructure_fn

from .._frozen import FrozenMap, describe, is_str_map, is_utf8, make_uuid, parse_uuid
from ..envelope import I64_MAX, NANOS_PER_SEC, EventEnvelope, Timestamp
from ..errors import InvalidEvent
from ..events import EventRegistry, WireType

__all__ = [
    "ENVELOPE_LAYOUT",
    "EnvelopeLayout",
    "encode_error",
    "format_f64",
    "make_unstructure_envelope",
    "unstructure_hook",
]


class EnvelopeLayout(NamedTuple):
    """Where the ids sit in every encoded envelope, which begins (orjson writes the envelope hook's
    keys in order, UUIDs in canonical 36-character form)
    ``{"event_id":"<36>","causation_id":null|"<36>","correlation_id":null|"<36>",...``."""

    #: The bytes every encoded envelope begins with.
    prefix: bytes
    #: The event id's 36 bytes.
    event_id: slice
    #: The byte where the causation id's value begins: ``n`` (null) or ``"``.
    causation_at: int
    #: The key before the correlation id's value (what a router checks the layout with).
    correlation_key: bytes
    #: The byte where the correlation id's value begins (``n`` or ``"``), after a null causation
    #: id and after a UUID one.
    correlation_at_null: int
    correlation_at_uuid: int


def _layout() -> EnvelopeLayout:
    uuid_text = 36
    prefix = b'{"event_id":"'
    causation_at = len(prefix) + uuid_text + len(b'","causation_id":')
    correlation_key = b',"correlation_id":'
    return EnvelopeLayout(
        prefix=prefix,
        event_id=slice(len(prefix), len(prefix) + uuid_text),
        causation_at=causation_at,
        correlation_key=correlation_key,
        correlation_at_null=causation_at + len(b"null") + len(correlation_key),
        correlation_at_uuid=causation_at + uuid_text + 2 + len(correlation_key),
    )


#: The envelope layout `make_unstructure_envelope`'s dict takes in orjson's bytes.
ENVELOPE_LAYOUT = _layout()


def unstructure_hook(wt: WireType) -> Callable[[Any], Any]:
    """A cattrs unstructure hook for ``wt`` returning an orjson-ready value; raises
    ``InvalidEvent`` (without the field name; the codec adds it) for a value of the wrong type."""
    kind = wt.kind

    def bad(v: Any) -> NoReturn:
        raise InvalidEvent(f"expected {wt.label}, got {describe(v)}")

    if kind == "uuid":  # like the built-ins' fields, a valid UUID string is taken (canonicalized)

        def u_uuid(v: Any) -> Any:
            if type(v) is UUID:
                return v
            parsed = parse_uuid(v) if isinstance(v, str) else make_uuid(v.int) if isinstance(v, UUID) else None
            return parsed if parsed is not None else bad(v)

        return u_uuid
    if kind == "str":
        return lambda v: v if isinstance(v, str) else bad(v)
    if kind == "bool":
        return lambda v: v if v is True or v is False else bad(v)
    if kind == "int":
        lo, hi = wt.args
        return lambda v: (
            v
            if type(v) is int and lo <= v <= hi
            else (int(v) if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi else bad(v))
        )
    if kind == "float":

        def u_float(v: Any) -> orjson.Fragment:
            if type(v) is int:
                v = float(v)
            return orjson.Fragment(format_f64(v)) if type(v) is float and math.isfinite(v) else bad(v)

        return u_float
    if kind == "optional":
        inner = unstructure_hook(wt.args[0])
        return lambda v: None if v is None else inner(v)
    if kind == "map":

        def u_map(v: Any) -> Any:
            if is_str_map(v):  # checked when the event was made, and immutable since
                return v
            if type(v) is FrozenMap or isinstance(v, Mapping):  # what events hold, then any mapping
                try:
                    "".join(v), "".join(v.values())  # TypeError unless every key and value is a str
                except TypeError:
                    pass
                else:
                    return v if isinstance(v, dict) else dict(v)
            bad(v)

        return u_map
    if kind in ("list", "tuple"):
        elem = unstructure_hook(wt.args[0])
        return lambda v: [elem(x) for x in v] if isinstance(v, (list, tuple)) else bad(v)
    elems = [unstructure_hook(w) for w in wt.args]
    return lambda v: (
        [h(x) for h, x in zip(elems, v)]  # noqa: B905  # lengths checked below; strict= costs on a hot path
        if isinstance(v, (list, tuple)) and len(v) == len(elems)
        else bad(v)
    )


def format_f64(value: float) -> str:
    """A finite float as serde_json writes it (ryu: shortest round-trip digits; plain decimal
    when the exponent is in -5..16, else ``1.5e20`` / ``1e-7``, without ``+`` or padding)."""
    if value == 0.0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign, text = ("-", repr(-value)) if value < 0 else ("", repr(value))
    mantissa, _, exp = text.partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    point = len(digits) - len(frac) + int(exp or 0)  # value == 0.DIGITS * 10**point
    digits = digits.rstrip("0")
    if len(digits) <= point <= 16:
        return f"{sign}{digits}{'0' * (point - len(digits))}.0"
    if 0 < point <= 16:
        return f"{sign}{digits[:point]}.{digits[point:]}"
    if -5 < point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    rest = f".{digits[1:]}" if len(digits) > 1 else ""
    return f"{sign}{digits[0]}{rest}e{point - 1}"


def make_unstructure_envelope(
    conv: cattrs.Converter, reg: EventRegistry
) -> tuple[Callable[[EventEnvelope], dict[str, Any]], Callable[[], int]]:
    """The envelope hook: ``EventEnvelope`` -> the JSON-ready dict (UUIDs still ``UUID``s),
    with ``reg``'s events unstructured by cattrs-generated functions over ``conv``'s hooks,
    each built at its type's first encode; and ``warm()``, which builds those not built yet
    (returns how many)."""
    encoders: dict[type, tuple[str, Callable[[Any], Any]]] = {}

    def encoder_for(cls: type) -> tuple[str, Callable[[Any], Any]]:
        entry = reg.lookup(cls)
        if entry is None:
            raise InvalidEvent(f"{cls.__qualname__} is not registered in this codec's registry")
        pair = encoders[cls] = (entry.name, make_dict_unstructure_fn(cls, conv))
        return pair

    def unstructure_envelope(env: EventEnvelope) -> dict[str, Any]:
        if type(env) is not EventEnvelope and not isinstance(env, EventEnvelope):
            raise InvalidEvent(f"expected an EventEnvelope, got {describe(env)}")
        event_id, causation, correlation = env.event_id, env.causation_id, env.correlation_id
        tenant, ts, flag, data = env.tenant_id, env.created_at, env.personally_identifiable, env.data
        # re-checked (cheaply) in case a field was forced past its checks with object.__setattr__
        if (
            type(event_id) is not UUID
            or type(flag) is not bool
            or type(ts) is not Timestamp
            or not (causation is None or type(causation) is UUID)
            or not (correlation is None or type(correlation) is UUID)
            or not (tenant is None or type(tenant) is str)
        ):
            raise InvalidEvent("an envelope field was altered after construction")
        secs, nanos = ts.secs, ts.nanos
        if type(secs) is not int or type(nanos) is not int or not (0 <= secs <= I64_MAX and 0 <= nanos < NANOS_PER_SEC):
            raise InvalidEvent("created_at was altered after construction")
        name, payload = encoders.get(type(data)) or encoder_for(type(data))
        return {
            "event_id": event_id,
            "causation_id": causation,
            "correlation_id": correlation,
            "tenant_id": tenant,
            "created_at": {"secs_since_epoch": secs, "nanos_since_epoch": nanos},
            "personally_identifiable": flag,
            "data": {"type": name, "payload": payload(data)},
        }

    def warm() -> int:
        missing = [entry.cls for entry in reg if entry.cls not in encoders]
        for cls in missing:
            encoder_for(cls)
        return len(missing)

    return unstructure_envelope, warm


def _why_unencodable(v: Any, wt: WireType) -> str | None:
    """Why ``v`` cannot be written as ``wt``, or None: explains a failed encode."""
    kind = wt.kind
    if kind == "optional":
        return None if v is None else _why_unencodable(v, wt.args[0])
    if kind in ("list", "tuple", "fixed"):
        if not isinstance(v, (list, tuple)) or (kind == "fixed" and len(v) != len(wt.args)):
            return f"expected {wt.label}, got {describe(v)}"
        inner = wt.args if kind == "fixed" else (wt.args[0],) * len(v)
        return next(
            (
                f"[{i}]: {why}"
                for i, (x, w) in enumerate(zip(v, inner, strict=True))
                if (why := _why_unencodable(x, w)) is not None
            ),
            None,
        )
    try:
        unstructure_hook(wt)(v)
    except InvalidEvent as exc:
        return str(exc)
    texts = list(v.items()) if kind == "map" else [(v, v)] if kind == "str" else []
    if any(not is_utf8(k) or not is_utf8(x) for k, x in texts):
        return "a string holds a lone surrogate, which cannot be sent as UTF-8"
    return None


_ENVELOPE_TYPES: tuple[tuple[str, type, bool], ...] = (
    ("event_id", UUID, False),
    ("causation_id", UUID, True),
    ("correlation_id", UUID, True),
    ("tenant_id", str, True),
    ("created_at", Timestamp, False),
    ("personally_identifiable", bool, False),
)


def encode_error(envelope: Any, exc: Exception, registry: EventRegistry) -> InvalidEvent:
    """The InvalidEvent for a failed encode, naming the field at fault."""
    if not isinstance(envelope, EventEnvelope):
        return InvalidEvent(f"encode() needs an EventEnvelope, got {describe(envelope)}")
    for name, kind, optional in _ENVELOPE_TYPES:  # forced past the constructor's checks?
        value = getattr(envelope, name)
        if type(value) is not kind and not (optional and value is None):
            none = " or None" if optional else ""
            return InvalidEvent(f"EventEnvelope.{name}: expected {kind.__name__}{none}, got {describe(value)}")
    try:
        Timestamp(envelope.created_at.secs, envelope.created_at.nanos)
    except InvalidEvent as bad:
        return InvalidEvent(f"EventEnvelope.created_at: {bad}")
    data = envelope.data
    entry = registry.lookup(type(data))
    if entry is None:
        return InvalidEvent(f"{type(data).__qualname__} is not registered in this codec's registry")
    for fs in entry.fields:
        why = _why_unencodable(getattr(data, fs.name, None), fs.wire)
        if why is not None:
            return InvalidEvent(f"{entry.name}.{fs.name}: {why}")
    return InvalidEvent(f"cannot encode this {entry.name} envelope: {type(exc).__name__}: {str(exc)[:200]}")
