"""JSON text -> Python values as serde_json reads it, and how decode messages name a value.

Owns the codec's second decoding tier's parser (:func:`parse`): the input must be UTF-8 (bytes)
or text without lone surrogates; the stdlib ``json`` parser runs with hooks that mark objects
with a repeated key or a key holding a lone surrogate escape (:class:`OddObject`, which
struct positions reject), keep ``-0`` a float (serde_json reads it as -0.0, which no integer
field takes), read integers beyond 64 bits as floats, and refuse ``NaN``/``Infinity``.
Parse failures raise ``DecodeError`` at path ``$``. :func:`jdesc` renders a parsed JSON
value for the decoders' messages.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from ._frozen import describe, is_utf8, short_repr
from .errors import DecodeError

__all__ = ["Data", "OddObject", "jdesc", "parse"]

Data = bytes | bytearray | memoryview | str  # what decode() reads: UTF-8 bytes or text


class OddObject(dict[str, Any]):
    """A JSON object with a repeated key (``dups``; last value kept at the first position) or
    a key holding a lone surrogate escape (``bad_key``). Struct positions reject it."""

    __slots__ = ("bad_key", "dups")
    bad_key: str | None
    dups: frozenset[str]


def _odd(pairs: list[tuple[str, Any]], merged: dict[str, Any], bad_key: str | None) -> OddObject:
    out = OddObject(merged)
    seen: set[str] = set()
    dups: set[str] = set()
    for key, _ in pairs:
        (dups if key in seen else seen).add(key)
    out.dups, out.bad_key = frozenset(dups), bad_key
    return out


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    merged = dict(pairs)
    return merged if len(merged) == len(pairs) else _odd(pairs, merged, None)


def _pairs_checked(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    merged = dict(pairs)
    bad = next((k for k in merged if not is_utf8(k)), None)
    return merged if bad is None and len(merged) == len(pairs) else _odd(pairs, merged, bad)


def _parse_int(text: str) -> int | float:
    if text == "-0":
        return -0.0  # serde_json reads `-0` as the float -0.0, which no integer field takes
    # beyond 64 bits serde reads a float too (and int() of thousands of digits would refuse)
    return float(text) if len(text) > 40 else int(text)


def _no_constant(text: str) -> NoReturn:
    raise ValueError(f"{text} is not JSON")


# parse_int always: finding `-0` in the text first costs more than the three int calls.
_FAST_JSON = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_no_constant, parse_int=_parse_int)
# with surrogate escapes in the text, keys must be checked too (serde rejects lone ones in keys)
_CAREFUL_JSON = json.JSONDecoder(object_pairs_hook=_pairs_checked, parse_constant=_no_constant, parse_int=_parse_int)


def _text(data: Data) -> str:
    if isinstance(data, str):
        if not is_utf8(data):
            raise DecodeError("$: the text holds a lone surrogate, so it is not UTF-8 the Rust side could read")
        return data
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"decode() needs bytes or str, got {describe(data)}")
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"$: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def parse(data: Data) -> Any:
    """The JSON value in ``data`` as serde_json reads it; ``DecodeError`` where it would not."""
    text = _text(data)
    careful = "\\u" in text and ("\\ud" in text or "\\uD" in text)
    try:
        return (_CAREFUL_JSON if careful else _FAST_JSON).decode(text)
    except RecursionError:
        raise DecodeError("$: nested too deeply to parse") from None
    except ValueError as exc:
        if text.startswith("\ufeff"):
            reason = "a leading byte order mark (BOM)"
        elif isinstance(exc, json.JSONDecodeError):
            reason = f"{exc.msg} (char {exc.pos})"
        else:
            reason = str(exc)
        raise DecodeError(f"$: not JSON as serde reads it: {reason}") from None


def jdesc(value: object) -> str:
    """A JSON value's kind (and scalar value) for decode messages."""
    if value is None:
        return "null"
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) is int:
        return f"integer {short_repr(value)}"
    if type(value) is float:
        return f"number {value!r}"
    if type(value) is str:
        return f"string {short_repr(value)}"
    return "array" if type(value) is list else "object"
