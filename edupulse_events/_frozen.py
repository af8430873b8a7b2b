"""Immutable values and the scalar checks shared by events, envelope and codec.

Owns :class:`FrozenMap` (the immutable ``str -> str`` mapping events store), the strict UUID
parser that follows the Rust ``uuid`` crate (1.2) instead of Python's lenient ``uuid.UUID``,
the lone-surrogate check for strings, and :func:`describe`, which renders a bad value for an
error message without dumping whole payloads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn
from uuid import UUID, SafeUUID

__all__ = [
    "FrozenMap",
    "describe",
    "is_str_map",
    "is_utf8",
    "make_uuid",
    "mark_str_map",
    "parse_uuid",
    "short_repr",
    "surrogate_index",
]

_HEX = "[0-9a-fA-F]"
_HYPHENATED = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
# uuid 1.2 `try_parse`: 32 hex digits, or the hyphenated form, bare, `{braced}` or after a
# lowercase `urn:uuid:` prefix. Any letter case in the digits; nothing around it.
_CANONICAL_RE = re.compile(_HYPHENATED)
_ANY_FORM_RE = re.compile(f"({_HYPHENATED})|\\{{({_HYPHENATED})\\}}|urn:uuid:({_HYPHENATED})|({_HEX}{{32}})")

_new = object.__new__
_set_int = UUID.int.__set__  # type: ignore[attr-defined,misc]  # the slot's descriptor
_set_safe = UUID.is_safe.__set__  # type: ignore[attr-defined,misc]
_SAFE_UNKNOWN = SafeUUID.unknown


def make_uuid(value: int) -> UUID:
    """Build a ``UUID`` from its 128-bit int without ``UUID.__init__``'s argument parsing."""
    u = _new(UUID)
    _set_int(u, value)
    _set_safe(u, _SAFE_UNKNOWN)
    return u


def parse_uuid(text: str) -> UUID | None:
    """Parse a UUID string the way the Rust ``uuid`` crate does; ``None`` when it would refuse."""
    if len(text) == 36 and _CANONICAL_RE.fullmatch(text) is not None:
        u = _new(UUID)  # make_uuid inlined: this is the decoder's hottest line
        _set_int(u, int(text.replace("-", ""), 16))
        _set_safe(u, _SAFE_UNKNOWN)
        return u
    m = _ANY_FORM_RE.fullmatch(text)
    if m is None:
        return None
    digits = next(g for g in m.groups() if g is not None)
    return make_uuid(int(digits.replace("-", ""), 16))


def is_utf8(text: str) -> bool:
    """True when ``text`` has no lone UTF-16 surrogate, i.e. can be sent as UTF-8."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def surrogate_index(text: str) -> int:
    """Index of the first lone surrogate in ``text`` (call only when :func:`is_utf8` is False)."""
    for i, ch in enumerate(text):
        if "\ud800" <= ch <= "\udfff":
            return i
    return -1


def short_repr(value: object, limit: int = 40) -> str:
    """``repr`` of a scalar, strings cut to ``limit`` characters."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + "..."
    if isinstance(value, int) and value.bit_length() > 128:
        return f"<{'-' if value < 0 else ''}{value.bit_length()}-bit int>"
    return repr(value)


def describe(value: Any) -> str:
    """Short "type value" text for error messages: bounded, never a whole container."""
    kind = type(value).__name__
    if value is None or isinstance(value, (bool, int, float, str)):
        return f"{kind} {short_repr(value)}"
    if isinstance(value, (Mapping, list, tuple, set, frozenset)):
        return f"{kind} of {len(value)} item(s)"
    return kind


class FrozenMap(dict[str, str]):
    """An immutable, hashable dict: insertion order kept, equal to any dict with the same items.

    It stays a real ``dict`` subclass so that orjson and ``json`` serialize it natively; every
    mutator raises ``TypeError``. The hash is over ``frozenset(items())``, so values must be
    hashable (events only store ``str -> str``).
    """

    __slots__ = ("_hash", "_strs")
    _hash: int
    #: Set by `mark_str_map` once every key and value was checked to be a str: the map is
    #: immutable, so encoding it need not check again.
    _strs: bool

    def __new__(cls, items: Mapping[Any, Any] | Iterable[tuple[Any, Any]] = (), /) -> FrozenMap:
        self = dict.__new__(cls)
        dict.update(self, items)
        self._hash = -1
        self._strs = False
        return self

    def __init__(self, *args: object, **kwargs: object) -> None:
        """Filled by ``__new__``; calling ``__init__`` again does nothing."""

    def __hash__(self) -> int:  # type: ignore[override]  # dict declares __hash__ None; this one is hashable
        h = self._hash
        if h == -1:
            h = self._hash = hash(frozenset(self.items()))
        return h

    def _immutable(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(f"{type(self).__name__} is immutable")

    __setitem__ = __delitem__ = __ior__ = _immutable
    clear = pop = popitem = setdefault = update = _immutable

    def __reduce__(self) -> tuple[type[FrozenMap], tuple[dict[Any, Any]]]:
        return (type(self), (dict(self),))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict.__repr__(self)})"

    def __copy__(self) -> FrozenMap:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenMap:
        return self


def mark_str_map(value: FrozenMap) -> FrozenMap:
    """Record that every key and value of ``value`` is a str (the caller checked); returns it."""
    value._strs = True  # noqa: SLF001 - this module's own class
    return value


def is_str_map(value: object) -> bool:
    """Whether ``value`` is a `FrozenMap` that `mark_str_map` vouched for."""
    return type(value) is FrozenMap and value._strs  # noqa: SLF001 - this module's own class
