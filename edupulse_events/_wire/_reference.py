"""The reference decoder: serde's rules for parsed JSON, with the JSON path in every message.

Owns the slow, general decoding path (:func:`slow_envelope`, :func:`slow_event`,
:func:`slow_timestamp`): structs as objects or arrays, missing ``Option`` fields as ``None``,
repeated known keys (an error in a struct; in a map every value is checked and the last one
wins), integer ranges, finite floats, lone surrogates, and serde's buffering of a payload that
comes before its ``type`` tag. It decides every document the fast path
(``_fastdecode``) declines and raises ``DecodeError`` naming the path, e.g.
``$.data.payload.amount_cents``. Its input comes from ``_jsontext.parse`` (or any parsed JSON).
"""

from __future__ import annotations

import math
from typing import Any, NoReturn
from uuid import UUID

from .._frozen import FrozenMap, is_utf8, parse_uuid, short_repr
from ..envelope import I64_MAX, NANOS_PER_SEC, EventEnvelope, Timestamp
from ..errors import DecodeError, InvalidEvent
from ..events import U32, U64, EventRegistry, EventType, WireType, wire_type
from ._jsontext import OddObject, jdesc

__all__ = ["slow_envelope", "slow_event", "slow_timestamp"]

_STR = wire_type(str)
_ENVELOPE_KEYS = (
    "event_id",
    "causation_id",
    "correlation_id",
    "tenant_id",
    "created_at",
    "personally_identifiable",
    "data",
)
_ENVELOPE_IDS = tuple(
    zip(  # the fields before created_at (the keys run on past them), with their wire types
        _ENVELOPE_KEYS, map(wire_type, (UUID, UUID | None, UUID | None, str | None)), strict=False
    )
)
_TIME_KEYS = ("secs_since_epoch", "nanos_since_epoch")
_TIME_TYPES = (wire_type(U64), wire_type(U32))
_DATA_KEYS = ("type", "payload")
_DEPTH_LIMIT = 128  # serde_json's recursion limit: a container at this depth is an error


def _fail(path: str, message: str) -> NoReturn:
    raise DecodeError(f"{path}: {message}")


def _struct(o: object, path: str, keys: tuple[str, ...], what: str, *, closed: bool = False) -> dict[str, Any]:
    """A serde struct: an object (unknown keys ignored unless ``closed``; a repeated known key
    is an error) or an array holding exactly the fields in order (serde_json takes both)."""
    if type(o) is list:
        if len(o) != len(keys):
            _fail(path, f"{what} as an array needs exactly {len(keys)} elements, got {len(o)}")
        return dict(zip(keys, o, strict=True))
    if not isinstance(o, dict):
        _fail(path, f"expected {what} object, got {jdesc(o)}")
    if type(o) is OddObject:
        if o.bad_key is not None:
            _fail(path, "an object key holds a lone surrogate escape")
        for key in o.dups:
            if closed or key in keys:
                _fail(f"{path}.{key}", "duplicate key")
    if closed:
        for key in o:
            if key not in keys:
                _fail(path, f"unknown key {short_repr(key)} (only {' and '.join(keys)} are allowed)")
    return o


def _as_f64(v: int | float) -> float:
    """The f64 serde makes of a number (inf where it would report "number out of range")."""
    try:
        return float(v)
    except OverflowError:
        return math.inf


def _value(v: Any, wt: WireType, path: str) -> Any:
    kind = wt.kind
    if kind == "optional":
        return None if v is None else _value(v, wt.args[0], path)
    if kind == "int":
        lo, hi = wt.args
        if type(v) is not int or not lo <= v <= hi:
            _fail(path, f"expected an integer in {lo}..={hi}, got {jdesc(v)}")
        return v
    if kind in ("str", "uuid"):
        if type(v) is not str:
            _fail(path, f"expected a {'UUID ' if kind == 'uuid' else ''}string, got {jdesc(v)}")
        if not is_utf8(v):
            _fail(path, "the string holds a lone surrogate escape")
        if kind == "str":
            return v
        u = parse_uuid(v)
        if u is None:
            _fail(path, f"invalid UUID {short_repr(v)} (want 8-4-4-4-12 hex, 32 hex, {{braced}} or urn:uuid:)")
        return u
    if kind == "bool":
        return v if type(v) is bool else _fail(path, f"expected true or false, got {jdesc(v)}")
    if kind == "float":
        if type(v) is int:
            v = _as_f64(v)
        if type(v) is not float or not math.isfinite(v):
            _fail(path, f"expected a finite number, got {jdesc(v)}")
        return v
    if kind == "map":
        if not isinstance(v, dict):
            _fail(path, f"expected an object of strings, got {jdesc(v)}")
        if type(v) is OddObject:  # serde reads every key and value in order, even of a repeated key
            for key, item in v.pairs:
                if not is_utf8(key):
                    _fail(path, "a key holds a lone surrogate escape")
                _value(item, _STR, f"{path}[{short_repr(key)}]")
        else:
            for key, item in v.items():
                _value(item, _STR, f"{path}[{short_repr(key)}]")
        return FrozenMap(v) if wt.args[0] else dict(v)  # the last value of a repeated key wins
    if type(v) is not list:
        _fail(path, f"expected an array, got {jdesc(v)}")
    if kind == "fixed":
        if len(v) != len(wt.args):
            _fail(path, f"expected an array of {len(wt.args)} elements, got {len(v)}")
        return tuple(_value(x, w, f"{path}[{i}]") for i, (x, w) in enumerate(zip(v, wt.args, strict=True)))
    items = [_value(x, wt.args[0], f"{path}[{i}]") for i, x in enumerate(v)]
    return items if kind == "list" else tuple(items)


def _required(f: dict[str, Any], key: str, path: str) -> Any:
    if key not in f:
        _fail(f"{path}.{key}", "missing field")
    return f[key]


def _field(f: dict[str, Any], key: str, wt: WireType, path: str) -> Any:
    if key not in f and wt.kind == "optional":
        return None  # serde: a missing Option field is None
    return _value(_required(f, key, path), wt, f"{path}.{key}")


def _buffered(v: Any, path: str, depth: int) -> None:
    """serde buffers a payload that comes before "type" as a generic value, which is stricter
    than skipping: every string must be valid Unicode, every number a finite f64, and no
    container may sit at depth 128 or more."""
    root, stack = path, [(v, path, depth)]
    while stack:
        v, path, depth = stack.pop()
        if type(v) is str and not is_utf8(v):
            _fail(path, "the string holds a lone surrogate escape")
        elif type(v) in (int, float) and not math.isfinite(_as_f64(v)):
            _fail(path, f"number out of range: {jdesc(v)}")
        elif type(v) is list or isinstance(v, dict):
            if depth >= _DEPTH_LIMIT:
                _fail(root, f"nested too deeply: a container at depth {depth} (serde's limit is 127)")
            if type(v) is OddObject and v.bad_key is not None:
                _fail(path, "an object key holds a lone surrogate escape")
            # serde buffers every pair, the earlier values of a repeated key too
            items = (v.pairs if type(v) is OddObject else v.items()) if isinstance(v, dict) else enumerate(v)
            stack.extend((x, f"{path}[{short_repr(k)}]", depth + 1) for k, x in items)


def slow_event(entry: EventType, o: Any, path: str) -> Any:
    """The ``entry`` event in parsed JSON ``o`` (at ``path``), as serde reads it. Not from an array:
    the payload is the content of an adjacently tagged enum's struct variant, which serde refuses
    as a sequence (unlike a plain struct: the envelope, ``data``, ``created_at``)."""
    if type(o) is list:
        _fail(path, "invalid type: sequence, expected struct variant")
    f = _struct(o, path, tuple(fs.name for fs in entry.fields), entry.name)
    kwargs = {fs.alias: _field(f, fs.name, fs.wire, path) for fs in entry.fields}
    try:
        return entry.cls(**kwargs)
    except InvalidEvent as exc:
        _fail(path, str(exc))
    except Exception as exc:  # noqa: BLE001  # a custom event's own validator may raise anything
        _fail(path, f"{entry.name} refused the payload: {type(exc).__name__}: {str(exc)[:200]}")


def slow_timestamp(o: Any, path: str) -> Timestamp:
    """The ``SystemTime`` in parsed JSON ``o`` (at ``path``), nanoseconds past 1s carried."""
    f = _struct(o, path, _TIME_KEYS, "created_at {secs_since_epoch, nanos_since_epoch}", closed=True)
    secs, nanos = (_field(f, key, wt, path) for key, wt in zip(_TIME_KEYS, _TIME_TYPES, strict=True))
    carry, nanos = divmod(nanos, NANOS_PER_SEC)
    secs += carry
    if secs > I64_MAX:
        _fail(path, f"{secs} seconds (after the nanosecond carry) is past the latest SystemTime, 2**63-1")
    return Timestamp(secs, nanos)


def slow_envelope(o: Any, registry: EventRegistry) -> EventEnvelope:
    """The envelope in parsed JSON ``o`` as serde reads it; ``DecodeError`` naming the path."""
    f = _struct(o, "$", _ENVELOPE_KEYS, "EventEnvelope")
    event_id, causation, correlation, tenant = (_field(f, key, wt, "$") for key, wt in _ENVELOPE_IDS)
    created_at = slow_timestamp(_required(f, "created_at", "$"), "$.created_at")
    flag = _field(f, "personally_identifiable", wire_type(bool), "$")
    d = _struct(_required(f, "data", "$"), "$.data", _DATA_KEYS, "data {type, payload}")
    tag = _field(d, "type", _STR, "$.data")
    entry = registry.get(tag)
    if entry is None:
        _fail("$.data.type", f"unknown event type {short_repr(tag)} (known: {', '.join(registry.names)})")
    payload = _required(d, "payload", "$.data")
    if next(k for k in d if k in _DATA_KEYS) == "payload":
        _buffered(payload, "$.data.payload", 3)
    data = slow_event(entry, payload, "$.data.payload")
    try:
        return EventEnvelope(event_id, causation, correlation, tenant, created_at, flag, data)
    except InvalidEvent as exc:
        _fail("$", str(exc))
