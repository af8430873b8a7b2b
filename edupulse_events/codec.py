"""The wire codec: ``EventEnvelope`` <-> the JSON bytes Rust's serde writes and reads (WIRE.md).

Owns the public API (:class:`Codec`, :func:`encode`, :func:`decode`, :func:`make_converter`,
and :func:`format_f64` from ``_encoding``) and the cattrs converter that ties the private
modules together; it also passes on ``_encoding``'s :data:`ENVELOPE_LAYOUT` (where the ids sit
in the encoded bytes) to the routers that copy them into headers:

- ``_encoding``: the envelope and payload unstructure hooks; orjson serializes their dict, and
  its bytes equal ``json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()`` for
  everything an envelope holds (the tests check it). A value the wire cannot carry raises
  ``InvalidEvent`` naming the field.
- ``_fastdecode``: the fast path for canonical documents (cattrs-generated payload hooks);
- ``_jsontext``: JSON text -> Python values as serde_json reads it;
- ``_reference``: the reference implementation of serde's rules, with the JSON path in every
  ``DecodeError``, e.g. ``$.data.payload.amount_cents``.

Decoding has three tiers, each returning only what the next would:

1. orjson + the fast path, for canonical documents only: orjson silently keeps the last of
   repeated keys and reads ``-0`` as ``0``, so this tier proves neither happened and
   otherwise declines;
2. ``_jsontext.parse`` (the stdlib ``json`` parser with hooks that mark repeated keys and keep
   ``-0`` a float as serde_json does; a loop instead when the nesting is deeper than the stack
   allows) + the same fast path;
3. the reference decoder, which decides everything the fast path declines.

The tests check all three agree on every accepted and rejected input they try. No tier recurses
per nesting level of the document, so the result does not depend on how deep the caller's stack
is; only a caller already within a few frames of Python's recursion limit gets ``DecodeError``
(never ``RecursionError``) whatever the document.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple
from uuid import UUID

import cattrs
import orjson
from cattrs.gen import make_dict_unstructure_fn

from ._wire._encoding import ENVELOPE_LAYOUT, encode_error, format_f64, make_unstructure_envelope, unstructure_hook
from ._wire._fastdecode import fast_payload, make_fast_envelope, structure_hook
from ._wire._jsontext import STACK_TOO_DEEP, Data, parse
from ._wire._reference import slow_envelope, slow_event, slow_timestamp
from .envelope import EventEnvelope, Timestamp
from .errors import DecodeError, InvalidEvent
from .events import I32, I64, U32, U64, EventRegistry, default_registry, wire_type

__all__ = ["ENVELOPE_LAYOUT", "Codec", "decode", "encode", "format_f64", "make_converter"]


def make_converter(registry: EventRegistry | None = None) -> cattrs.Converter:
    """A new cattrs converter (never the global one) whose hooks structure and unstructure
    ``EventEnvelope``, ``Timestamp``, the events registered in ``registry`` and the wire field
    types exactly as the codec does. Structuring takes parsed JSON and raises ``DecodeError``."""
    return _build(default_registry if registry is None else registry).converter


class _Built(NamedTuple):
    converter: cattrs.Converter
    structure: Callable[[Any, Any], EventEnvelope]  # the converter's EventEnvelope hooks
    unstructure: Callable[[EventEnvelope], dict[str, Any]]
    from_orjson: Callable[[Any, int], EventEnvelope]  # the fast path for orjson's documents
    warm: Callable[[], int]


def _build(reg: EventRegistry) -> _Built:
    """A converter with every hook installed, and direct references to the envelope hooks."""
    conv = cattrs.Converter(detailed_validation=False, forbid_extra_keys=False)

    def is_wire(t: Any) -> bool:
        try:
            wire_type(t)
        except (InvalidEvent, TypeError):
            return False
        return True

    conv.register_structure_hook_factory(is_wire, lambda t: structure_hook(wire_type(t)))
    conv.register_unstructure_hook_factory(is_wire, lambda t: unstructure_hook(wire_type(t)))
    for t in (UUID, str, bool, int, float, U32, U64, I32, I64):  # override cattrs' primitives
        conv.register_structure_hook(t, structure_hook(wire_type(t)))
        conv.register_unstructure_hook(t, unstructure_hook(wire_type(t)))

    def is_event(t: Any) -> bool:
        return isinstance(t, type) and reg.lookup(t) is not None

    def event_structure_hook(t: type) -> Callable[[Any, Any], Any]:
        entry = reg.lookup(t)
        assert entry is not None
        fast = fast_payload(conv, entry).structure

        def structure_event(o: Any, _: Any = None) -> Any:
            try:
                return fast(o)
            except Exception:  # noqa: BLE001  # the fast path declines by raising anything
                return slow_event(entry, o, "$")

        return structure_event

    conv.register_structure_hook_factory(is_event, event_structure_hook)
    conv.register_unstructure_hook_factory(is_event, lambda t: make_dict_unstructure_fn(t, conv))
    conv.register_structure_hook(Timestamp, lambda o, _: slow_timestamp(o, "$"))
    conv.register_unstructure_hook(Timestamp, lambda ts: {"secs_since_epoch": ts.secs, "nanos_since_epoch": ts.nanos})

    fast_envelope = make_fast_envelope(conv, reg)

    def structure_envelope(o: Any, _: Any = None) -> EventEnvelope:
        try:
            return fast_envelope(o)
        except Exception:  # noqa: BLE001  # the fast path declines by raising anything
            pass
        try:
            return slow_envelope(o, reg)
        except DecodeError:
            raise
        except RecursionError:  # the decoders recurse only as deep as the event types: the caller is deep
            raise DecodeError(STACK_TOO_DEEP) from None
        except Exception as exc:  # a bug here must still surface as a DecodeError
            raise DecodeError(f"$: cannot decode the envelope ({type(exc).__name__})") from exc

    unstructure_envelope, warm = make_unstructure_envelope(conv, reg)
    conv.register_structure_hook(EventEnvelope, structure_envelope)
    conv.register_unstructure_hook(EventEnvelope, unstructure_envelope)
    return _Built(conv, structure_envelope, unstructure_envelope, fast_envelope, warm)


_dumps = orjson.dumps
_loads = orjson.loads


class Codec:
    """Encodes and decodes envelopes for one :class:`EventRegistry` (default: the default one).

    Thread-safe: its caches only ever gain entries. ``edupulse_events.encode``/``decode`` use
    a Codec over :data:`default_registry`.
    """

    def __init__(self, registry: EventRegistry | None = None) -> None:
        self.registry = default_registry if registry is None else registry
        self.converter, self._structure, self._unstructure, self._from_orjson, self._warm = _build(self.registry)

    def encode(self, envelope: EventEnvelope) -> bytes:
        """The envelope as the JSON bytes serde writes; ``InvalidEvent`` if it cannot be sent."""
        try:
            return _dumps(self._unstructure(envelope))
        except Exception as exc:
            raise encode_error(envelope, exc, self.registry) from exc

    def warm(self) -> int:
        """Build now the encoders of the event types registered so far (returns how many were
        missing). Each is otherwise built at its type's first encode, which costs most in a newly
        forked worker (docs/performance.md). Publishers call it on the default codec before a ``fork()``, so
        that a pre-fork server's workers inherit the encoders instead of each building them."""
        return self._warm()

    def decode(self, data: Data) -> EventEnvelope:
        """The envelope in ``data`` (UTF-8 bytes or str); ``DecodeError`` where serde would refuse.

        First try: orjson and the fast path, for canonical documents; anything else is parsed
        again with ``json`` and goes through the general paths."""
        try:
            if type(data) is bytes:
                return self._from_orjson(_loads(data), data.count(b":"))
            if type(data) is str:
                return self._from_orjson(_loads(data), data.count(":"))
        except Exception:  # noqa: BLE001  # orjson or the fast path declined: the general path decides
            pass
        try:
            return self._structure(parse(data), EventEnvelope)
        except RecursionError:  # no RecursionError leaves decode(); see STACK_TOO_DEEP
            raise DecodeError(STACK_TOO_DEEP) from None

    def unstructure(self, envelope: EventEnvelope) -> dict[str, Any]:
        """The JSON-ready dict ``encode`` serializes (UUIDs still ``UUID`` objects)."""
        try:
            return self._unstructure(envelope)
        except Exception as exc:
            raise encode_error(envelope, exc, self.registry) from exc

    def structure(self, obj: Any) -> EventEnvelope:
        """An envelope from already-parsed JSON (dicts, lists, str, int, float, bool, None)."""
        return self._structure(obj, EventEnvelope)

    def _decode_json_only(self, data: Data) -> EventEnvelope:
        """``decode`` without the orjson tier: for differential tests."""
        return self._structure(parse(data), EventEnvelope)

    def _decode_slow(self, data: Data) -> EventEnvelope:
        """``decode`` through the slow (reference) path only: for differential tests."""
        return slow_envelope(parse(data), self.registry)

    def __repr__(self) -> str:
        return f"Codec({self.registry!r})"


_DEFAULT = Codec()


def encode(envelope: EventEnvelope) -> bytes:
    """Encode with the default registry: the JSON bytes serde writes for this envelope."""
    return _DEFAULT.encode(envelope)


def warm() -> int:
    """`Codec.warm` for the default registry: build the encoders of its event types now."""
    return _DEFAULT.warm()


def decode(data: Data) -> EventEnvelope:
    """Decode with the default registry; ``DecodeError`` (naming the path) where serde would refuse."""
    try:
        return _DEFAULT.decode(data)
    except RecursionError:  # called with too little of the recursion limit left even to start
        raise DecodeError(STACK_TOO_DEEP) from None
