"""Property tests of the codec: round trips, orjson == json.dumps, and hostile input."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

import attrs
import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edupulse_events import (
    U32,
    U64,
    BadgeAwarded,
    Codec,
    DecodeError,
    EventEnvelope,
    LessonPublished,
    PaymentProcessed,
    QuizSubmitted,
    Timestamp,
    decode,
    encode,
    register_event,
)
from edupulse_events._frozen import parse_uuid
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
