"""The decoder's fast path: parsed JSON -> ``EventEnvelope`` for canonical documents only.

Owns the per-``WireType`` cattrs structure hooks (:func:`structure_hook`: they return exactly
what the reference decoder would, or raise anything), cattrs' generated payload functions
(:func:`fast_payload`) and :func:`make_fast_envelope`. Whatever the fast path does not take
it declines by raising; the codec then asks the reference decoder (``_reference``), which
decides and names the JSON path in its ``DecodeError``.

Documents from orjson need more care than those from ``_jsontext.parse``: orjson silently
keeps the last of repeated keys and reads ``-0`` as ``0``, so the fast envelope proves
neither happened (see :func:`make_fast_envelope`) and otherwise declines.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, NoReturn
from uuid import UUID

import cattrs
from cattrs.gen import make_dict_structure_fn

from .._frozen import FrozenMap, is_utf8, parse_uuid
from ..envelope import I64_MAX, NANOS_PER_SEC, EventEnvelope, unchecked_envelope, unchecked_timestamp
from ..errors import DecodeError
from ..events import EventRegistry, EventType, WireType, wire_type
from ._jsontext import OddObject, jdesc

__all__ = ["Payload", "fast_payload", "make_fast_envelope", "structure_hook"]

_ENVELOPE_KEYSET = frozenset(
    ("event_id", "causation_id", "correlation_id", "tenant_id", "created_at", "personally_identifiable", "data")
)


class _NotFast(Exception):
    """The fast path does not take this input; the reference decoder decides."""


def _reject(wt: WireType, value: object) -> NoReturn:
    raise DecodeError(f"expected {wt.label}, got {jdesc(value)}")


def structure_hook(wt: WireType) -> Callable[..., Any]:
    """A cattrs structure hook ``(value, type) -> value`` for ``wt``; raises on anything odd."""
    kind = wt.kind
    if kind == "uuid":

        def s_uuid(v: Any, _: Any = None) -> UUID:
            u = parse_uuid(v) if type(v) is str else None
            return u if u is not None else _reject(wt, v)

        return s_uuid
    if kind == "str":

        def s_str(v: Any, _: Any = None) -> str:
            return v if type(v) is str and (v.isascii() or is_utf8(v)) else _reject(wt, v)

        return s_str
    if kind == "bool":

        def s_bool(v: Any, _: Any = None) -> bool:
            return v if type(v) is bool else _reject(wt, v)

        return s_bool
    if kind == "int":
        lo, hi = wt.args

        def s_int(v: Any, _: Any = None) -> int:
            return v if type(v) is int and lo <= v <= hi else _reject(wt, v)

        return s_int
    if kind == "float":

        def s_float(v: Any, _: Any = None) -> float:
            if type(v) is int:
                v = float(v)  # serde reads integers into f64 fields too
            return v if type(v) is float and math.isfinite(v) else _reject(wt, v)

        return s_float
    if kind == "optional":
        inner = structure_hook(wt.args[0])

        def s_optional(v: Any, _: Any = None) -> Any:
            return None if v is None else inner(v)

        return s_optional
    if kind == "map":
        make: Callable[[Any], Any] = FrozenMap if wt.args[0] else dict

        def s_map(v: Any, _: Any = None) -> Any:
            if type(v) is not dict and (
                not isinstance(v, dict)
                # a repeated key: serde reads its earlier values too, so they must be strings
                or (type(v) is OddObject and not all(type(x) is str and is_utf8(x) for _, x in v.pairs))
            ):
                _reject(wt, v)
            try:
                text = "".join(v) + "".join(v.values())  # TypeError unless all are str
            except TypeError:
                _reject(wt, v)
            return make(v) if text.isascii() or is_utf8(text) else _reject(wt, v)

        return s_map
    if kind in ("list", "tuple"):
        elem, out = structure_hook(wt.args[0]), (list if kind == "list" else tuple)

        def s_seq(v: Any, _: Any = None) -> Any:
            return out([elem(x) for x in v]) if type(v) is list else _reject(wt, v)

        return s_seq
    elems = [structure_hook(w) for w in wt.args]  # fixed-length tuple

    def s_fixed(v: Any, _: Any = None) -> tuple[Any, ...]:
        if type(v) is not list or len(v) != len(elems):
            _reject(wt, v)
        return tuple(h(x) for h, x in zip(elems, v))  # noqa: B905  # lengths checked above; strict= costs here

    return s_fixed


class Payload(NamedTuple):
    """What the fast path needs for one registered class."""

    structure: Callable[[Any], Any]  # cattrs' generated function, plain dicts only
    keys: frozenset[str]  # its field names
    nested: tuple[str, ...]  # fields whose values hold JSON objects (maps)
    numeric: tuple[str, ...]  # fields whose values hold numbers


def _holds(wt: WireType, kinds: tuple[str, ...]) -> bool:
    return wt.kind in kinds or any(isinstance(a, WireType) and _holds(a, kinds) for a in wt.args)


def fast_payload(conv: cattrs.Converter, entry: EventType) -> Payload:
    """cattrs' generated structure function for a registered class, taking only a plain dict
    that holds every field with a Python default (serde would not use the default)."""
    cls = entry.cls
    gen: Callable[[Any, type], Any] = make_dict_structure_fn(
        cls, conv, _cattrs_forbid_extra_keys=False, _cattrs_detailed_validation=False
    )
    needed = tuple(fs.name for fs in entry.fields if fs.has_default)

    def fast(o: Any) -> Any:
        if type(o) is not dict or (needed and not all(k in o for k in needed)):
            raise _NotFast
        return gen(o, cls)

    return Payload(
        fast,
        frozenset(fs.name for fs in entry.fields),
        tuple(fs.name for fs in entry.fields if _holds(fs.wire, ("map",))),
        tuple(fs.name for fs in entry.fields if _holds(fs.wire, ("int", "float"))),
    )


def _keys_in(v: Any) -> int:
    """Keys of the objects in a map-typed value (deeper ones are not counted: undercounting
    only sends a document to the slower path)."""
    if type(v) is dict:
        return len(v)
    return sum(len(x) for x in v if type(x) is dict) if type(v) is list else 0


def _has_zero(v: Any) -> bool:
    """True if a number-typed value holds an int 0 (which orjson also makes of `-0`)."""
    if type(v) is int:
        return v == 0
    return type(v) is list and any(_has_zero(x) for x in v)


def make_fast_envelope(conv: cattrs.Converter, reg: EventRegistry) -> Callable[..., EventEnvelope]:
    """The fast path ``(o, colons=-1) -> EventEnvelope`` over ``reg``'s events; raises on any
    document it does not take (the caller then asks the reference decoder)."""
    decoders: dict[str, Payload] = {}
    s_uuid = structure_hook(wire_type(UUID))

    def decoder_for(tag: str) -> Payload:
        entry = reg.get(tag)
        if entry is None:
            raise _NotFast
        info = decoders[tag] = fast_payload(conv, entry)
        return info

    def fast_envelope(o: Any, colons: int = -1) -> EventEnvelope:
        """The canonical shape only. ``colons >= 0`` means ``o`` came from orjson, which keeps
        the last of repeated keys and reads -0 as 0: then every object must hold known keys
        only (so the document has no other objects), and the text's colon count must equal
        the number of keys, which proves no key was repeated and no string held a colon; and
        no number may be 0."""
        if type(o) is not dict:
            raise _NotFast
        ca = o["created_at"]
        if type(ca) is not dict or len(ca) != 2:
            raise _NotFast
        secs, nanos = ca["secs_since_epoch"], ca["nanos_since_epoch"]
        if (
            type(secs) is not int
            or type(nanos) is not int
            or not 0 <= secs <= I64_MAX
            or not 0 <= nanos < NANOS_PER_SEC
        ):
            raise _NotFast
        d = o["data"]
        if type(d) is not dict or next(iter(d)) != "type":
            raise _NotFast  # a payload before its tag is buffered by serde: slow path
        tag, payload = d["type"], d["payload"]
        info = decoders.get(tag) or decoder_for(tag)
        if colons >= 0:
            if (
                len(d) != 2
                or type(payload) is not dict
                or not secs
                or not nanos
                or not o.keys() <= _ENVELOPE_KEYSET
                or not payload.keys() <= info.keys
            ):
                raise _NotFast
            keys = len(o) + 4 + len(payload)
            for name in info.nested:
                keys += _keys_in(payload.get(name))
            if keys != colons or any(_has_zero(payload.get(name)) for name in info.numeric):
                raise _NotFast
        data = info.structure(payload)
        flag = o["personally_identifiable"]
        tenant = o.get("tenant_id")
        if type(flag) is not bool or not (
            tenant is None or (type(tenant) is str and (tenant.isascii() or is_utf8(tenant)))
        ):
            raise _NotFast
        causation, correlation = o.get("causation_id"), o.get("correlation_id")
        return unchecked_envelope(
            s_uuid(o["event_id"]),
            None if causation is None else s_uuid(causation),
            None if correlation is None else s_uuid(correlation),
            tenant,
            unchecked_timestamp(secs, nanos),
            flag,
            data,
        )

    return fast_envelope
