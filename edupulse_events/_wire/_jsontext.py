"""JSON text -> Python values as serde_json reads it, and how decode messages name a value.

Owns the codec's second decoding tier's parser (:func:`parse`): the input must be UTF-8 (bytes)
or text without lone surrogates; the stdlib ``json`` parser runs with hooks that mark objects
with a repeated key or a key holding a lone surrogate escape (:class:`OddObject`, which keeps
every pair: struct positions reject it, maps check every value as serde does), keep ``-0`` a
float (serde_json reads it as -0.0, which no integer field takes), read integers beyond 64 bits
as floats, and refuse ``NaN``/``Infinity``. Parse failures raise ``DecodeError`` at path ``$``.

The stdlib parser recurses once per nesting level, so how deep it gets depends on how much of
Python's recursion limit the caller has already used; serde_json skips ignored values without
recursing, at any depth. When the stdlib parser runs out of stack, :func:`parse` reads the
same text again with a loop (:func:`_parse_flat`, built from the stdlib's own string scanner,
with the same values and the same error messages), so the result never depends on the caller's
stack. :func:`jdesc` renders a parsed JSON value for the decoders' messages.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from .._frozen import describe, is_utf8, short_repr
from ..errors import DecodeError

__all__ = ["STACK_TOO_DEEP", "Data", "OddObject", "jdesc", "parse"]

Data = bytes | bytearray | memoryview | str  # what decode() reads: UTF-8 bytes or text
#: The DecodeError message when decoding itself (a few frames, whatever the document) finds no room below
#: Python's recursion limit: it is about the caller, not the document.
STACK_TOO_DEEP = "$: the caller's stack is too deep to decode (too close to Python's recursion limit)"


class OddObject(dict[str, Any]):
    """A JSON object with a repeated key (``dups``; last value kept at the first position) or
    a key holding a lone surrogate escape (``bad_key``). Struct positions reject it; ``pairs``
    keeps every key and value in document order, for the positions that read them all (a map
    type-checks every value of a repeated key, and a buffered payload checks them too)."""

    __slots__ = ("bad_key", "dups", "pairs")
    bad_key: str | None
    dups: frozenset[str]
    pairs: tuple[tuple[str, Any], ...]


def _odd(pairs: list[tuple[str, Any]], merged: dict[str, Any], bad_key: str | None) -> OddObject:
    out = OddObject(merged)
    seen: set[str] = set()
    dups: set[str] = set()
    for key, _ in pairs:
        (dups if key in seen else seen).add(key)
    out.dups, out.bad_key, out.pairs = frozenset(dups), bad_key, tuple(pairs)
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


_scanstring: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # json's WHITESPACE
# json's NUMBER_RE, but with ASCII digits only, as its C scanner reads them (`\d` takes any digit)
_number = re.compile(r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?").match
_CONSTANTS = (("null", None), ("true", True), ("false", False))
_TRAILING_COMMA_MESSAGE = sys.version_info >= (3, 13)  # json's own message for `[1,]` since 3.13


def _skip(text: str, at: int) -> int:
    """Where the whitespace starting at ``at`` ends."""
    m = _WHITESPACE.match(text, at)
    return at if m is None else m.end()  # never None: the pattern matches the empty string


def _parse_flat(text: str, pairs_hook: Callable[[list[tuple[str, Any]]], dict[str, Any]]) -> tuple[Any, int]:
    """The first JSON value in ``text`` and where it ends, read as the codec's json decoders
    read it, step for step as the stdlib's C scanner goes (same values, same error messages and
    positions), but with a loop and a list of open containers instead of recursion."""
    err = json.JSONDecodeError
    # open containers, innermost last: [pairs, key] for an object, [items] for an array
    stack: list[list[Any]] = []
    end = _skip(text, 0)
    while True:
        # a value starts at `end`
        ch = text[end : end + 1]
        value: Any
        if ch == '"':
            value, end = _scanstring(text, end + 1, True)
        elif ch == "{" or ch == "[":
            end = _skip(text, end + 1)
            if text[end : end + 1] == ("}" if ch == "{" else "]"):
                value, end = (pairs_hook([]) if ch == "{" else []), end + 1
            elif ch == "[":
                stack.append([[]])
                continue
            else:
                key, end = _key(text, end)
                stack.append([[], key])
                continue
        else:
            for name, constant in _CONSTANTS:
                if text.startswith(name, end):
                    value, end = constant, end + len(name)
                    break
            else:
                for name in ("NaN", "Infinity", "-Infinity"):
                    if text.startswith(name, end):
                        _no_constant(name)
                m = _number(text, end)
                if m is None:
                    raise err("Expecting value", text, end)
                integer, frac, exp = m.groups()
                value = float(m.group()) if frac or exp else _parse_int(integer)
                end = m.end()
        # the value is complete: add it to its container, closing those that end here
        while True:
            if not stack:
                return value, end
            frame = stack[-1]
            end = _skip(text, end)
            closing = text[end : end + 1]
            if len(frame) == 2:  # an object: the value belongs to the pending key
                frame[0].append((frame[1], value))
                if closing == "}":
                    stack.pop()
                    value, end = pairs_hook(frame[0]), end + 1
                    continue
                if closing != ",":
                    raise err("Expecting ',' delimiter", text, end)
                comma, end = end, _skip(text, end + 1)
                if _TRAILING_COMMA_MESSAGE and text[end : end + 1] == "}":
                    raise err("Illegal trailing comma before end of object", text, comma)
                frame[1], end = _key(text, end)
                break
            frame[0].append(value)
            if closing == "]":
                stack.pop()
                value, end = frame[0], end + 1
                continue
            if closing != ",":
                raise err("Expecting ',' delimiter", text, end)
            comma, end = end, _skip(text, end + 1)
            if _TRAILING_COMMA_MESSAGE and text[end : end + 1] == "]":
                raise err("Illegal trailing comma before end of array", text, comma)
            break


def _key(text: str, end: int) -> tuple[str, int]:
    """An object's key at ``end`` and its ``:``, as json reads them; returns (key, where its value starts)."""
    if text[end : end + 1] != '"':
        raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, end)
    key, end = _scanstring(text, end + 1, True)
    end = _skip(text, end)
    if text[end : end + 1] != ":":
        raise json.JSONDecodeError("Expecting ':' delimiter", text, end)
    return key, _skip(text, end + 1)


def _decode_flat(text: str, pairs_hook: Callable[[list[tuple[str, Any]]], dict[str, Any]]) -> Any:
    """What ``JSONDecoder.decode`` returns, read by :func:`_parse_flat`: one value, then only whitespace."""
    value, end = _parse_flat(text, pairs_hook)
    end = _skip(text, end)
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def parse(data: Data) -> Any:
    """The JSON value in ``data`` as serde_json reads it; ``DecodeError`` where it would not."""
    text = _text(data)
    careful = "\\u" in text and ("\\ud" in text or "\\uD" in text)
    try:
        try:
            return (_CAREFUL_JSON if careful else _FAST_JSON).decode(text)
        except RecursionError:  # deep nesting, or a deep caller: read it again without recursion
            return _decode_flat(text, _pairs_checked if careful else _pairs)
    except RecursionError:  # not the document: even the loop needs a few frames
        raise DecodeError(STACK_TOO_DEEP) from None
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
