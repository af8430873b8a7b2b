"""Property tests of the codec: round trips, orjson == json.dumps, and hostile input."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

import attrs
import orjson
import pytest
from codec_support import Pairs, at_stack_depth, deep, render
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import edupulse_events._wire._jsontext as _jsontext
from edupulse_events import (
    U32,
    U64,
    BadgeAwarded,
    Codec,
    DecodeError,
    EventEnvelope,
    EventRegistry,
    LessonPublished,
    PaymentProcessed,
    QuizSubmitted,
    Timestamp,
    decode,
    encode,
    register_event,
)
from edupulse_events._frozen import parse_uuid, short_repr
from edupulse_events.codec import format_f64

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEAVY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REFERENCE = Codec()
# The differential tests compare the decoding tiers, which only these private hooks expose one by one.
decode_json_only = REFERENCE._decode_json_only  # noqa: SLF001  # skips the orjson tier
decode_slow = REFERENCE._decode_slow  # noqa: SLF001  # the reference decoder alone


@register_event
@attrs.frozen
class StreakExtended:
    """A custom event registered like the built-ins, with several field types."""

    user_id: uuid.UUID
    days: U32
    best: U64 | None
    note: str
    ratio: float
    flags: list[bool]
    labels: Mapping[str, str]


SPECIAL = [
    "\x00",
    "\x01",
    "\x08",
    "\x1f",
    "\x7f",
    "\x85",
    "\u2028",
    "\u2029",
    "\ufeff",
    "😀",
    "\u200d",
    '"',
    "\\",
    "/",
    "é",
]
texts = st.text(st.one_of(st.characters(codec="utf-8"), st.sampled_from(SPECIAL)), max_size=30)
uuids = st.uuids()
u32s = st.one_of(st.sampled_from([0, 1, 2**32 - 1]), st.integers(0, 2**32 - 1))
timestamps = st.builds(
    Timestamp,
    secs=st.one_of(st.sampled_from([0, 1, 253402300799, 2**63 - 1]), st.integers(0, 2**63 - 1)),
    nanos=st.one_of(st.sampled_from([0, 999_999_999]), st.integers(0, 999_999_999)),
)
finite = st.floats(allow_nan=False, allow_infinity=False)
events = st.one_of(
    st.builds(LessonPublished, uuids, uuids, texts),
    st.builds(QuizSubmitted, uuids, uuids, st.dictionaries(texts, texts, max_size=6)),
    st.builds(BadgeAwarded, uuids, uuids, texts),
    st.builds(PaymentProcessed, uuids, uuids, u32s),
    st.builds(
        StreakExtended,
        uuids,
        u32s,
        st.none() | st.integers(0, 2**64 - 1),
        texts,
        finite,
        st.lists(st.booleans(), max_size=4),
        st.dictionaries(texts, texts, max_size=3),
    ),
)
envelopes = st.builds(
    EventEnvelope, uuids, st.none() | uuids, st.none() | uuids, st.none() | texts, timestamps, st.booleans(), events
)


def dumps(obj: Any) -> bytes:
    """The stdlib rendering WIRE.md says serde's output equals."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


@FUZZ
@given(envelopes)
def test_round_trip(env: EventEnvelope) -> None:
    """decode(encode(e)) == e for every event type, unicode, extreme numbers and timestamps."""
    raw = encode(env)
    assert decode(raw) == env
    assert decode(raw.decode("utf-8")) == env


@FUZZ
@given(envelopes)
def test_encoding_is_canonical_json(env: EventEnvelope) -> None:
    """The encoder's bytes equal json.dumps(ensure_ascii=False, compact) of the same JSON value."""
    raw = encode(env)
    value = json.loads(raw)
    if not isinstance(env.data, StreakExtended):  # floats: serde (ryu) style, not Python's repr
        assert dumps(value) == raw
    assert b"\n" not in raw
    assert json.loads(dumps(value)) == value


@FUZZ
@given(st.text(st.one_of(st.characters(codec="utf-8"), st.sampled_from(SPECIAL))))
@example("".join(chr(c) for c in range(0x80)))
@example("\u2028\u2029\ufeff\x7f\x80\x9f\U0010ffff")
def test_orjson_matches_json_dumps_for_strings(text: str) -> None:
    """For any valid string (controls, DEL, U+2028, BOM, astral), orjson and json.dumps agree byte for byte."""
    assert orjson.dumps(text) == dumps(text)
    assert orjson.dumps({text: [text, None, True, 4294967295]}) == dumps({text: [text, None, True, 4294967295]})


@FUZZ
@given(finite)
@example(1e16)
@example(1e-5)
@example(-0.0)
def test_format_f64_round_trips(value: float) -> None:
    """format_f64 writes valid JSON numbers that read back to exactly the same float."""
    text = format_f64(value)
    assert json.loads(text) == value
    assert float(text) == value
    assert "+" not in text
    assert "e" in text or "." in text


@FUZZ
@given(uuids)
def test_uuid_forms(u: uuid.UUID) -> None:
    """Every form the Rust uuid crate accepts parses to the same UUID; canonical is lowercase hyphenated."""
    for form in (str(u), str(u).upper(), u.hex, u.hex.upper(), "{" + str(u) + "}", "urn:uuid:" + str(u)):
        assert parse_uuid(form) == u
    for form in (
        " " + str(u),
        str(u) + "\n",
        "URN:UUID:" + str(u),
        "{" + u.hex + "}",
        str(u)[:-1],
        "urn:uuid:" + u.hex,
    ):
        assert parse_uuid(form) is None


@FUZZ
@given(st.text(st.sampled_from("0123456789abcdefABCDEF-{}urn:id x_+"), max_size=46))
def test_uuid_parser_never_looser_than_python(text: str) -> None:
    """Whatever the strict parser accepts, Python's lenient uuid.UUID reads the same way."""
    parsed = parse_uuid(text)
    if parsed is not None:
        assert parsed == uuid.UUID(text)


def outcome(codec_decode: Any, data: bytes | str) -> Any:
    """The decoded envelope, or the string "DecodeError"; any other exception propagates."""
    try:
        return codec_decode(data)
    except DecodeError:
        return "DecodeError"


@HEAVY
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    """Arbitrary bytes give an envelope or DecodeError, never another exception."""
    result = outcome(decode, data)
    assert result == "DecodeError" or isinstance(result, EventEnvelope)


SNIPPETS = [
    "-0",
    "0",
    "1e2",
    "100.0",
    "1e400",
    "-1",
    "4294967296",
    "18446744073709551616",
    "NaN",
    "null",
    "true",
    '"\\ud800"',
    '"\\udc00"',
    '"\\ud83d\\ude00"',
    '"x"',
    "[]",
    "{}",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    '"',
    " ",
    '"type":"LessonPublished",',
    '"amount_cents":1,',
    '"secs_since_epoch":1,',
    '"zzz":1,',
    '"tenant_id":null,',
    '"payload":{},',
    '"PaymentProcessed"',
    "\ufeff",
    "\x01",
    "\\",
    "urn:uuid:",
    "{",
    "1000000000",
]


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    """A valid encoded envelope, structurally and then textually mutated."""
    doc = json.loads(encode(draw(envelopes)))
    for _ in range(draw(st.integers(0, 3))):
        doc = mutate_value(draw, doc)
    text = dumps(doc).decode()
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        span = draw(st.integers(1, 12))
        if op == "insert":
            text = text[:at] + draw(st.sampled_from(SNIPPETS)) + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + span :]
        elif op == "replace":
            text = text[:at] + draw(st.sampled_from(SNIPPETS)) + text[at + span :]
        else:
            text = text[:at] + text[at : at + span] + text[at:]
    return text


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**65), 2**65),
    finite,
    texts,
    st.sampled_from([0, -1, 2**32, 2**63, 2**64, 1.5, 100.0, "", "LessonPublished", str(uuid.UUID(int=7))]),
)


def mutate_value(draw: st.DrawFn, value: Any) -> Any:
    """Return ``value`` with one random structural change somewhere inside it."""
    if isinstance(value, dict) and value and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(value)))
        return {k: (mutate_value(draw, v) if k == key else v) for k, v in value.items()}
    if isinstance(value, list) and value and draw(st.booleans()):
        i = draw(st.integers(0, len(value) - 1))
        return [mutate_value(draw, v) if j == i else v for j, v in enumerate(value)]
    op = draw(st.sampled_from(["leaf", "drop", "add", "reorder", "to_array", "rename"]))
    if isinstance(value, dict) and value:
        keys = list(value)
        if op == "drop":
            return {k: v for k, v in value.items() if k != draw(st.sampled_from(keys))}
        if op == "add":
            return {**value, draw(st.sampled_from(["extra", "Type", "payload", "type", "nanos"])): draw(json_leaves)}
        if op == "reorder":
            return dict(reversed(value.items()))
        if op == "to_array":
            return list(value.values())
        if op == "rename":
            old = draw(st.sampled_from(keys))
            return {(k.upper() if k == old else k): v for k, v in value.items()}
    return draw(json_leaves)


@HEAVY
@given(mutated_text())
def test_mutated_envelopes_all_paths_agree(text: str) -> None:
    """Mutated envelopes give an envelope or DecodeError only, identical on all three decode paths."""
    result = outcome(decode, text)
    assert result == outcome(decode_json_only, text) == outcome(decode_slow, text)
    assert outcome(decode, text.encode("utf-8", "surrogatepass")) == result
    if result != "DecodeError":  # and whatever decodes re-encodes to the same envelope
        assert decode(encode(result)) == result


# --- serde's last two disagreements (issue 18): repeated map keys, and nesting under ignored keys ---

MAPS = EventRegistry()


@register_event(registry=MAPS)
@attrs.frozen
class MapsEverywhere:
    """Every place a map can sit in an event: plain, immutable, optional, in a list, in a fixed tuple."""

    plain: dict[str, str]
    frozen: Mapping[str, str]
    maybe: Mapping[str, str] | None
    many: list[dict[str, str]]
    pair: tuple[Mapping[str, str], dict[str, str]]


MAPS_CODEC = Codec(MAPS)
str_maps = st.dictionaries(texts, texts, max_size=3)
maps_events = st.builds(
    MapsEverywhere,
    str_maps,
    str_maps,
    st.none() | str_maps,
    st.lists(str_maps, max_size=3),
    st.tuples(str_maps, str_maps),
)
map_envelopes = st.builds(
    EventEnvelope,
    uuids,
    st.none() | uuids,
    st.none() | uuids,
    st.none() | texts,
    timestamps,
    st.booleans(),
    maps_events,
)
with_maps = st.one_of(
    st.tuples(st.just(REFERENCE), envelopes.filter(lambda e: isinstance(e.data, (QuizSubmitted, StreakExtended)))),
    st.tuples(st.just(MAPS_CODEC), map_envelopes),
)
#: JSON texts that are not a string serde could read (a lone surrogate escape included)
WRONG_TYPED = [
    "[1,2]",
    "5",
    "null",
    "{}",
    '{"a":"b"}',
    "true",
    "-0",
    "1.5",
    '"\\ud800"',
    '"\\udc00x"',
    deep(3_000, "[{"),
]
EARLIER = "\x00earlier\x00"  # where the earlier value's raw text goes


def tiers(codec: Codec) -> list[Any]:
    """The codec's decode paths: the whole decode, the json tier with its fast path, the reference decoder."""
    return [codec.decode, codec._decode_json_only, codec._decode_slow]  # noqa: SLF001


def maps_in(value: Any) -> list[dict[str, Any]]:
    """Every object nested inside a payload (for these events, exactly the map-typed values)."""
    if isinstance(value, list):
        return [m for v in value for m in maps_in(v)]
    if isinstance(value, dict):
        return [value, *(m for v in value.values() for m in maps_in(v))]
    return []


def repeat_key(obj: dict[str, Any], key: str, at: int) -> Pairs:
    """``obj`` as pairs with ``key`` first appearing at position ``at`` holding the EARLIER marker."""
    pairs = Pairs(obj.items())
    pairs.insert(min(at, [k for k, _ in pairs].index(key)), (key, EARLIER))
    return pairs


def replace_in(value: Any, target: dict[str, Any], new: Any) -> Any:
    """``value`` with the object ``target`` (by identity) replaced by ``new``."""
    if value is target:
        return new
    if isinstance(value, list):
        return [replace_in(v, target, new) for v in value]
    if isinstance(value, dict):
        return {k: replace_in(v, target, new) for k, v in value.items()}
    return value


@HEAVY
@given(with_maps, st.sampled_from(WRONG_TYPED), st.data())
def test_repeated_map_key_checks_every_value(
    case: tuple[Codec, EventEnvelope], earlier: str, data: st.DataObject
) -> None:
    """A map key repeated with a wrong-typed earlier value is refused on every tier; an earlier string: last wins."""
    codec, env = case
    doc = json.loads(codec.encode(env))
    payload = doc["data"]["payload"]
    target = data.draw(st.sampled_from(maps_in(payload)[1:]))  # each of these events holds a map
    if not target:
        target["k"] = "v"
    key = data.draw(st.sampled_from(sorted(target)))
    pairs = repeat_key(target, key, data.draw(st.integers(0, len(target))))
    text = render(replace_in(doc, target, pairs))
    marker = render(EARLIER)
    bad, good = text.replace(marker, earlier, 1), text.replace(marker, '"an earlier string"', 1)
    for decode_tier in tiers(codec):
        with pytest.raises(DecodeError, match=re.escape(f"[{short_repr(key)}]")):
            decode_tier(bad)
    with pytest.raises(Exception):  # noqa: B017, PT011  # the orjson tier declines by raising anything
        codec._from_orjson(orjson.loads(bad), bad.count(":"))  # noqa: SLF001
    last_wins = codec.decode(render(doc))
    assert [tier(good) for tier in tiers(codec)] == [last_wins] * 3


@HEAVY
@given(envelopes, st.sampled_from(WRONG_TYPED), st.data())
def test_repeated_envelope_key(env: EventEnvelope, earlier: str, data: st.DataObject) -> None:
    """At the envelope level a repeated known key is refused whatever its values; a repeated unknown one is skipped."""
    doc = json.loads(encode(env))
    key = data.draw(st.sampled_from([*doc, "zz"]))
    if key == "zz":
        doc["zz"] = 1
    text = render(repeat_key(doc, key, data.draw(st.integers(0, len(doc))))).replace(render(EARLIER), earlier, 1)
    for decode_tier in tiers(REFERENCE):
        if key == "zz":
            assert decode_tier(text) == env
        else:
            with pytest.raises(DecodeError):
                decode_tier(text)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    envelopes,
    st.sampled_from(["top", "data", "payload", "buffered payload"]),
    st.one_of(st.sampled_from([100, 124, 125, 1_000, 1_025, 10_000, 100_000]), st.integers(1, 3_000)),
    st.sampled_from(["[", "{", "[{"]),
    st.sampled_from([None, 30, 300]),
)
def test_deep_nesting_under_unknown_keys(
    env: EventEnvelope, where: str, depth: int, kind: str, stack: int | None
) -> None:
    """Nesting under an unknown key is skipped at any depth from any stack (refused in a buffered payload at 128)."""
    doc = json.loads(encode(env))
    tag, payload = doc["data"]["type"], doc["data"]["payload"]
    parent = {"top": doc, "data": doc["data"]}.get(where, payload)
    parent["zz"] = "\x00nested\x00"
    if where == "buffered payload":
        doc["data"] = {"payload": payload, "type": tag}
    text = render(doc).replace(render("\x00nested\x00"), deep(depth, kind))
    refused = where == "buffered payload" and depth >= 125  # the payload sits at depth 3: its "zz" child at 4
    for decode_tier in tiers(REFERENCE):
        for data in (text, text.encode()):

            def attempt() -> Any:
                return outcome(decode_tier, data)  # noqa: B023  # called at once

            got = attempt() if stack is None else at_stack_depth(stack, attempt)
            assert got == ("DecodeError" if refused else env)


LONE = "\\ud800"  # a key that becomes a lone surrogate escape in the text
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["a", "b", LONE]), inner, max_size=4),
    max_leaves=20,
)


def shape(value: Any) -> Any:
    """A parsed value with its exact types (OddObject and its pairs, -0.0) made comparable."""
    if isinstance(value, dict):
        pairs = getattr(value, "pairs", None)
        return (
            type(value).__name__,
            [(k, shape(v)) for k, v in value.items()],
            getattr(value, "bad_key", None),
            None if pairs is None else [(k, shape(v)) for k, v in pairs],
        )
    if isinstance(value, list):
        return [shape(v) for v in value]
    return (type(value).__name__, repr(value))


def parsed(parser: Any, text: str) -> Any:
    """``parser(text)``'s value shape, or the error message."""
    try:
        return shape(parser(text))
    except ValueError as exc:
        return f"{type(exc).__name__}: {exc}"


@FUZZ
@given(json_values, st.lists(st.tuples(st.integers(0, 200), st.sampled_from(SNIPPETS), st.integers(0, 3)), max_size=3))
@example([1, {"a": -0.0, "b": 1e300}], [(20, '"a":[-0]', 0), (0, "[" * 3, 0)])
def test_loop_parser_matches_json(value: Any, edits: list[tuple[int, str, int]]) -> None:
    """The loop parser reads any text (valid or not) as the stdlib json parser does: same values, same messages."""
    text = dumps(value).decode().replace(json.dumps(LONE), '"\\ud800"')
    for at, snippet, cut in edits:
        text = text[:at] + snippet + text[at + cut :]
    for hook, decoder in (
        (_jsontext._pairs, _jsontext._FAST_JSON),  # noqa: SLF001  # the parser's two configurations
        (_jsontext._pairs_checked, _jsontext._CAREFUL_JSON),  # noqa: SLF001
    ):
        flat = parsed(lambda t: _jsontext._decode_flat(t, hook), text)  # noqa: B023, SLF001  # called at once
        assert flat == parsed(decoder.decode, text)
