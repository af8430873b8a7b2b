"""The wire codec against WIRE.md: golden files both ways, the encoded shape, encode errors, float formatting.

Decoding's rules are in ``test_codec_decode.py`` (what serde accepts) and ``test_codec_rejects.py``
(what it rejects).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import cattrs
import pytest
from codec_support import (
    BASE,
    GOLDEN,
    MANIFEST,
    PAYLOAD,
    WIRE,
    U,
    dumps,
    golden,
)

from edupulse_events import (
    Codec,
    DecodeError,
    EventEnvelope,
    FrozenMap,
    InvalidEvent,
    PaymentProcessed,
    QuizSubmitted,
    Timestamp,
    decode,
    encode,
    make_converter,
)
from edupulse_events.codec import format_f64


def test_manifest_lists_every_file() -> None:
    """The copied fixtures hold all 20 ok cases and the 2 serialize errors, each file present."""
    assert len(GOLDEN) == 20
    assert len(MANIFEST) == 22
    assert all((WIRE / m["file"]).is_file() for m in MANIFEST)


@pytest.mark.parametrize("case", GOLDEN, ids=[m["name"] for m in GOLDEN])
def test_golden_decodes_and_reencodes(case: dict[str, Any]) -> None:
    """Every golden file decodes and re-encodes to the same bytes (a map with arbitrary order: same JSON value)."""
    raw = (WIRE / case["file"]).read_bytes()
    assert len(raw) == case["bytes"]
    env = decode(raw)
    out = encode(env)
    if case["roundtrip"] == "identical-bytes":
        assert out == raw
    else:
        assert case["roundtrip"].startswith("equal-as-json-value")
        assert json.loads(out) == json.loads(raw)
        assert list(env.data.answers) == list(json.loads(raw)["data"]["payload"]["answers"])  # order kept
    assert decode(out) == env


@pytest.mark.parametrize("case", GOLDEN, ids=[m["name"] for m in GOLDEN])
def test_golden_orjson_equals_json_dumps(case: dict[str, Any]) -> None:
    """For every golden case, the encoder's bytes equal json.dumps(ensure_ascii=False, compact) of the same value."""
    raw = (WIRE / case["file"]).read_bytes()
    env = decode(raw)
    plain = Codec().unstructure(env)
    as_json = json.loads(json.dumps(plain, default=str))  # UUID objects -> canonical strings
    assert dumps(as_json) == encode(env)
    if case["byte_deterministic"]:
        assert dumps(json.loads(raw)) == raw


@pytest.mark.parametrize("case", GOLDEN, ids=[m["name"] for m in GOLDEN])
def test_decode_str_and_bytes_agree(case: dict[str, Any]) -> None:
    """decode(str), decode(bytes), decode(bytearray) and decode(memoryview) give the same envelope."""
    raw = (WIRE / case["file"]).read_bytes()
    env = decode(raw)
    assert decode(raw.decode("utf-8")) == env == decode(bytearray(raw)) == decode(memoryview(raw))


def test_golden_values_decoded() -> None:
    """Spot checks of decoded values: options, nanoseconds, i64::MAX seconds, u32::MAX, unicode."""
    some = decode(golden("options_all_some"))
    assert some.causation_id == uuid.UUID("5d8e3b7a-1c2f-4e6d-9a0b-c3d4e5f60718")
    assert some.correlation_id == uuid.UUID("c0ffee00-dead-4bef-8bad-f00dbaadcafe")
    assert (some.tenant_id, some.personally_identifiable) == ("tenant-42", True)
    assert some.created_at == Timestamp(1_700_000_000, 123_456_789)
    assert decode(golden("created_at_i64_max_secs")).created_at == Timestamp(2**63 - 1, 999_999_999)
    assert decode(golden("payment_amount_u32_max")).data.amount_cents == 4294967295
    assert decode(golden("tenant_empty_string")).tenant_id == ""
    assert decode(golden("options_all_none")).tenant_id is None
    assert str(decode(golden("tenant_control_chars")).tenant_id).startswith("ctl:\x00|\x01|\x07|\b|\t|\n|\x0b|\x0c|\r")
    quiz = decode(golden("quiz_several_answers")).data
    assert type(quiz.answers) is FrozenMap
    assert quiz.answers["ключ"] == 'значение "кавычки"'


@pytest.mark.parametrize("case", [m for m in MANIFEST if m["status"] == "serialize_error"], ids=lambda m: m["name"])
def test_serialize_error_cases_cannot_be_built(case: dict[str, Any]) -> None:
    """The two golden times before 1970 cannot even be built: InvalidEvent, with serde's wording."""
    serde_error = (WIRE / case["file"]).read_text().strip()
    nanos = int(case["rust_debug_of_created_at"].split("tv_nsec: ")[1].rstrip(" }"))  # tv_sec is -1
    with pytest.raises(InvalidEvent, match=serde_error):
        Timestamp(-1, nanos)
    with pytest.raises(InvalidEvent, match=serde_error):
        Timestamp.from_unix_nanos(-(10**9) + nanos)
    before = datetime(1970, 1, 1, tzinfo=timezone.utc) - timedelta(microseconds=1 if nanos else 10**6)
    with pytest.raises(InvalidEvent, match=serde_error):
        EventEnvelope(U, None, None, None, before, False, PaymentProcessed(U, U, 1))


def test_encoding_shape() -> None:
    """Output is one line, no spaces, keys in Rust order, null for absent options, type before payload."""
    env = EventEnvelope(U, None, None, None, Timestamp(5, 7), False, PaymentProcessed(U, U, 1))
    assert encode(env) == (
        b'{"event_id":"' + U.encode() + b'","causation_id":null,"correlation_id":null,"tenant_id":null,'
        b'"created_at":{"secs_since_epoch":5,"nanos_since_epoch":7},"personally_identifiable":false,'
        b'"data":{"type":"PaymentProcessed","payload":{"payment_id":"'
        + U.encode()
        + b'","from_user":"'
        + U.encode()
        + b'","amount_cents":1}}}'
    )


def test_encoding_escapes_like_serde() -> None:
    """Only quote, backslash and C0 controls are escaped; DEL, C1, U+2028, BOM, '/', astral stay raw."""
    text = '"\\/\x00\x1f\b\t\n\f\r\x7f\x85\u2028\u2029\ufeff😀é'
    raw = encode(EventEnvelope.new(PaymentProcessed(U, U, 1), tenant_id=text))
    assert (
        b'"tenant_id":"\\"\\\\/\\u0000\\u001f\\b\\t\\n\\f\\r\x7f\xc2\x85\xe2\x80\xa8\xe2\x80\xa9\xef\xbb\xbf\xf0\x9f\x98\x80\xc3\xa9"'
        in raw
    )


# --- encode errors, converter, float formatting ---


@pytest.mark.parametrize("obj", [None, "x", {"event_id": U}, PaymentProcessed(U, U, 1)])
def test_encode_non_envelope(obj: Any) -> None:
    """encode() of anything but an EventEnvelope raises InvalidEvent."""
    with pytest.raises(InvalidEvent, match="encode\\(\\) needs an EventEnvelope"):
        encode(obj)


def test_encode_tampered_envelope() -> None:
    """An envelope whose frozen fields were forced to bad values still fails as InvalidEvent, naming the field."""
    env = EventEnvelope.new(PaymentProcessed(U, U, 1))
    object.__setattr__(env.data, "amount_cents", 2**32)
    with pytest.raises(InvalidEvent, match=r"PaymentProcessed\.amount_cents: expected u32, got int 4294967296"):
        encode(env)
    quiz = EventEnvelope.new(QuizSubmitted(U, U, {"q": "a"}))
    object.__setattr__(quiz.data, "answers", {"q": "\ud800"})
    with pytest.raises(InvalidEvent, match=r"QuizSubmitted\.answers: a string holds a lone surrogate"):
        encode(quiz)


@pytest.mark.parametrize(
    ("target", "name", "value", "message"),
    [
        ("envelope", "event_id", 5, "EventEnvelope.event_id: expected UUID, got int 5"),
        ("envelope", "correlation_id", "not-a-uuid", "EventEnvelope.correlation_id: expected UUID or None, got str"),
        ("envelope", "tenant_id", 5, "EventEnvelope.tenant_id: expected str or None, got int 5"),
        ("envelope", "personally_identifiable", 1, "EventEnvelope.personally_identifiable: expected bool, got int 1"),
        ("envelope", "created_at", 0, "EventEnvelope.created_at: expected Timestamp, got int 0"),
        ("timestamp", "secs", -5, "EventEnvelope.created_at: Timestamp.secs must be >= 0"),
        ("timestamp", "nanos", 10**9, "EventEnvelope.created_at: Timestamp.nanos must be an int in 0..=999999999"),
    ],
)
def test_encode_tampered_envelope_fields(target: str, name: str, value: Any, message: str) -> None:
    """Envelope fields forced past the constructor (object.__setattr__) are caught by encode() as InvalidEvent."""
    env = EventEnvelope.new(PaymentProcessed(U, U, 1))
    object.__setattr__(env if target == "envelope" else env.created_at, name, value)
    with pytest.raises(InvalidEvent, match=message):
        encode(env)


def test_make_converter_is_a_fresh_converter() -> None:
    """make_converter() returns a new cattrs converter (never the global one) that handles envelopes."""
    conv = make_converter()
    assert isinstance(conv, cattrs.Converter)
    assert conv is not cattrs.global_converter
    assert conv is not make_converter()
    env = decode(BASE)
    plain = conv.unstructure(env)
    assert plain["created_at"] == {"secs_since_epoch": 1_700_000_000, "nanos_since_epoch": 123_456_789}
    assert conv.structure(json.loads(BASE), EventEnvelope) == env
    assert conv.structure({"secs_since_epoch": 1, "nanos_since_epoch": 2}, Timestamp) == Timestamp(1, 2)
    assert conv.structure(json.loads(PAYLOAD), PaymentProcessed) == env.data
    with pytest.raises(DecodeError, match=r"\$.amount_cents: expected an integer"):
        conv.structure({**json.loads(PAYLOAD), "amount_cents": -1}, PaymentProcessed)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (1.0, "1.0"),
        (0.1, "0.1"),
        (-2.5, "-2.5"),
        (123.456, "123.456"),
        (1e15, "1000000000000000.0"),
        (1e16, "1e16"),
        (1.5e16, "1.5e16"),
        (1.2345678901234568e20, "1.2345678901234568e20"),
        (1e-5, "0.00001"),
        (1.5e-5, "0.000015"),
        (1e-6, "1e-6"),
        (1.234e-7, "1.234e-7"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e308"),
        (123456789012345.6, "123456789012345.6"),
    ],
)
def test_format_f64_like_serde(value: float, text: str) -> None:
    """Floats are written as serde_json (ryu) writes them, and read back exactly."""
    assert format_f64(value) == text
    assert float(text) == value
