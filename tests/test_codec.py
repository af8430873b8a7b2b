"""The wire codec against WIRE.md: golden files both ways, serde's decoding rules, encode errors."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cattrs
import orjson
import pytest

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

WIRE = Path(__file__).parent / "fixtures" / "wire"
MANIFEST = [json.loads(line) for line in (WIRE / "manifest.jsonl").read_text().splitlines() if line.strip()]
GOLDEN = [m for m in MANIFEST if m["status"] == "ok"]
U = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"  # payment_id in the payment golden files
REFERENCE = Codec()
# The differential tests compare the decoding tiers, which only these private hooks expose one by one.
decode_json_only = REFERENCE._decode_json_only  # noqa: SLF001  # skips the orjson tier
decode_slow = REFERENCE._decode_slow  # noqa: SLF001  # the reference decoder alone
from_orjson = REFERENCE._from_orjson  # noqa: SLF001  # the orjson tier alone


def golden(name: str) -> str:
    """The text of golden file ``name``."""
    return (WIRE / f"{name}.json").read_text(encoding="utf-8")


def dumps(obj: Any) -> bytes:
    """The stdlib rendering WIRE.md says serde's output equals."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


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


# --- decoding rules (WIRE.md "Decoding") ---

BASE = golden("options_all_some")
QUIZ = golden("variant_quiz_submitted")
CREATED = '{"secs_since_epoch":1700000000,"nanos_since_epoch":123456789}'
PAYLOAD = '{"payment_id":"' + U + '","from_user":"00000000-0000-0000-0000-000000000000","amount_cents":100}'


def sub(old: str, new: str, doc: str = BASE) -> str:
    """``doc`` with the first ``old`` replaced by ``new`` (which must be present)."""
    assert old in doc, old
    return doc.replace(old, new, 1)


ACCEPTED: list[tuple[str, str, Any]] = [
    (
        "unknown top-level field",
        sub('{"event_id"', '{"zzz":[1,{"a":null}],"event_id"'),
        lambda e: e.tenant_id == "tenant-42",
    ),
    ("unknown data field", sub('"type":', '"extra":1,"type":'), None),
    ("unknown payload field", sub('"amount_cents"', '"x":{},"amount_cents"'), None),
    (
        "missing causation_id",
        sub('"causation_id":"5d8e3b7a-1c2f-4e6d-9a0b-c3d4e5f60718",', ""),
        lambda e: e.causation_id is None,
    ),
    (
        "missing correlation_id",
        sub('"correlation_id":"c0ffee00-dead-4bef-8bad-f00dbaadcafe",', ""),
        lambda e: e.correlation_id is None,
    ),
    ("missing tenant_id", sub('"tenant_id":"tenant-42",', ""), lambda e: e.tenant_id is None),
    (
        "nanos carry into secs",
        sub("123456789", "2123456789"),
        lambda e: e.created_at == Timestamp(1_700_000_002, 123_456_789),
    ),
    (
        "nanos u32::MAX",
        sub("1700000000,", "0,").replace("123456789", "4294967295"),
        lambda e: e.created_at == Timestamp(4, 294_967_295),
    ),
    ("secs i64::MAX", sub("1700000000", str(2**63 - 1)), lambda e: e.created_at.secs == 2**63 - 1),
    ("uppercase uuid", sub(U, U.upper()), lambda e: e.data.payment_id == uuid.UUID(U)),
    ("simple uuid", sub(U, U.replace("-", "")), lambda e: e.data.payment_id == uuid.UUID(U)),
    ("braced uuid", sub(U, "{" + U + "}"), lambda e: e.data.payment_id == uuid.UUID(U)),
    ("urn uuid", sub(U, "urn:uuid:" + U.upper()), lambda e: e.data.payment_id == uuid.UUID(U)),
    (
        "duplicate answer key: last wins, order kept",
        sub('"q1":"b"', '"q1":"a","q2":"x","q1":"b"', QUIZ),
        lambda e: list(e.data.answers.items()) == [("q1", "b"), ("q2", "x")],
    ),
    ("duplicate unknown key (serde skips unknown keys unchecked)", sub('"event_id"', '"zz":1,"zz":2,"event_id"'), None),
    ("surrounding whitespace", " \n\t" + BASE + "\r\n ", None),
    ("lone surrogate in an unknown field's value", sub('"event_id"', '"x":"\\ud800","event_id"'), None),
    ("surrogate pair in tenant", sub('"tenant-42"', '"\\ud83d\\ude00"'), lambda e: e.tenant_id == "😀"),
    ("escaped tenant", sub('"tenant-42"', '"\\u0041\\/"'), lambda e: e.tenant_id == "A/"),
    ("created_at as array (serde_json reads structs from arrays)", sub(CREATED, "[1700000000,123456789]"), None),
    (
        "data as [type, payload] array",
        sub('{"type":"PaymentProcessed","payload":' + PAYLOAD + "}", '["PaymentProcessed",' + PAYLOAD + "]"),
        None,
    ),
    (
        "payload before type",
        sub('{"type":"PaymentProcessed","payload":' + PAYLOAD, '{"payload":' + PAYLOAD + ',"type":"PaymentProcessed"'),
        None,
    ),
    ("huge integer in an unknown field", sub('"event_id"', '"x":' + "9" * 5000 + ',"event_id"'), None),
    ("-0 and 1e400 in an unknown field", sub('"event_id"', '"x":[-0,1e400],"event_id"'), None),
    ("amount 0", sub('"amount_cents":100', '"amount_cents":0'), lambda e: e.data.amount_cents == 0),
]


@pytest.mark.parametrize(("text", "check"), [(t, c) for _, t, c in ACCEPTED], ids=[n for n, _, _ in ACCEPTED])
def test_decode_accepts(text: str, check: Any) -> None:
    """Inputs serde accepts decode, and all three paths (orjson tier, json tier, reference) agree."""
    env = decode(text)
    assert env == decode_json_only(text) == decode_slow(text) == decode(text.encode())
    if check is not None:
        assert check(env)


ENVELOPE_ARRAY = (
    "["
    + ",".join(
        [
            '"' + U + '"',
            "null",
            "null",
            '"t"',
            CREATED,
            "false",
            '{"type":"PaymentProcessed","payload":' + PAYLOAD + "}",
        ]
    )
    + "]"
)


@pytest.mark.parametrize(
    "text",
    [
        sub('"amount_cents":100', '"amount_cents":100,"amount_cents":100'),  # orjson keeps the last one
        sub('"q1":"b"', '"q1":"a","q1":"b"', QUIZ),
        sub('"amount_cents":100', '"amount_cents":-0'),  # orjson reads an int 0
        sub('"amount_cents":100', '"amount_cents":0'),  # could have been -0
        sub("123456789", "0"),
        sub('"tenant-42"', '"a:b"'),  # a colon in a string: the key count proves nothing
        sub('"event_id"', '"x":1,"event_id"'),  # unknown keys
        sub('{"type":"PaymentProcessed","payload":' + PAYLOAD, '{"payload":' + PAYLOAD + ',"type":"PaymentProcessed"'),
        sub('"event_id"', '"tenant_id" :null,"event_id"'),
    ],
)
def test_orjson_tier_refuses_what_it_cannot_see(text: str) -> None:
    """The orjson tier declines documents where orjson's reading could differ from serde's."""
    with pytest.raises(Exception):  # noqa: B017, PT011  # the tier declines by raising anything
        from_orjson(orjson.loads(text), text.count(":"))


@pytest.mark.parametrize("case", GOLDEN, ids=[m["name"] for m in GOLDEN])
def test_orjson_tier_takes_canonical_documents(case: dict[str, Any]) -> None:
    """Canonical golden documents go through the orjson tier (those with a 0 or a colon: by design not)."""
    raw = (WIRE / case["file"]).read_bytes()
    value = json.loads(raw)
    zero = 0 in (
        value["created_at"]["secs_since_epoch"],
        value["created_at"]["nanos_since_epoch"],
        value["data"]["payload"].get("amount_cents"),
    )
    answers = value["data"]["payload"].get("answers", {})
    colon = ":" in "".join(answers) + "".join(answers.values()) + str(value["tenant_id"])
    if zero or colon:
        with pytest.raises(Exception):  # noqa: B017, PT011  # the tier declines by raising anything
            from_orjson(orjson.loads(raw), raw.count(b":"))
    else:
        assert from_orjson(orjson.loads(raw), raw.count(b":")) == decode(raw)


def test_envelope_as_array() -> None:
    """serde_json reads a struct from a JSON array of its fields in order, so the envelope too."""
    env = decode(ENVELOPE_ARRAY)
    assert env.tenant_id == "t"
    assert env.data.amount_cents == 100


REJECTED: list[tuple[str, str, str]] = [
    (
        "unknown key in created_at",
        sub('"nanos_since_epoch"', '"zone":0,"nanos_since_epoch"'),
        "$.created_at: unknown key 'zone'",
    ),
    ("missing event_id", sub('"event_id":"0191f3c2-7a4b-4c1d-8e2f-a1b2c3d4e5f6",', ""), "$.event_id: missing field"),
    ("missing created_at", sub('"created_at":' + CREATED + ",", ""), "$.created_at: missing field"),
    (
        "missing personally_identifiable",
        sub('"personally_identifiable":true,', ""),
        "$.personally_identifiable: missing field",
    ),
    ("missing data", sub(',"data":{"type":"PaymentProcessed","payload":' + PAYLOAD + "}", ""), "$.data: missing field"),
    ("missing type", sub('"type":"PaymentProcessed",', ""), "$.data.type: missing field"),
    ("missing payload", sub(',"payload":' + PAYLOAD, ""), "$.data.payload: missing field"),
    ("missing amount_cents", sub(',"amount_cents":100', ""), "$.data.payload.amount_cents: missing field"),
    ("missing secs", sub('"secs_since_epoch":1700000000,', ""), "$.created_at.secs_since_epoch: missing field"),
    ("missing nanos", sub(',"nanos_since_epoch":123456789', ""), "$.created_at.nanos_since_epoch: missing field"),
    (
        "unknown type tag",
        sub('"PaymentProcessed"', '"PaymentRefunded"'),
        "$.data.type: unknown event type 'PaymentRefunded'",
    ),
    ("type tag in wrong case", sub('"PaymentProcessed"', '"paymentProcessed"'), "$.data.type: unknown event type"),
    ("type tag not a string", sub('"PaymentProcessed"', "3"), "$.data.type: expected a string, got integer 3"),
    (
        "amount 100.0",
        sub('"amount_cents":100', '"amount_cents":100.0'),
        "$.data.payload.amount_cents: expected an integer in 0..=4294967295, got number 100.0",
    ),
    ("amount 1e2", sub('"amount_cents":100', '"amount_cents":1e2'), "$.data.payload.amount_cents: expected an integer"),
    (
        "amount -0",
        sub('"amount_cents":100', '"amount_cents":-0'),
        "$.data.payload.amount_cents: expected an integer in 0..=4294967295, got number -0.0",
    ),
    ("amount -0 with spaces", sub('"amount_cents":100', '"amount_cents" : \n-0 '), "$.data.payload.amount_cents"),
    (
        'amount "100"',
        sub('"amount_cents":100', '"amount_cents":"100"'),
        "$.data.payload.amount_cents: expected an integer in 0..=4294967295, got string '100'",
    ),
    (
        "amount -1",
        sub('"amount_cents":100', '"amount_cents":-1'),
        "$.data.payload.amount_cents: expected an integer in 0..=4294967295, got integer -1",
    ),
    (
        "amount 2**32",
        sub('"amount_cents":100', '"amount_cents":4294967296'),
        "$.data.payload.amount_cents: expected an integer in 0..=4294967295, got integer 4294967296",
    ),
    ("amount true", sub('"amount_cents":100', '"amount_cents":true'), "$.data.payload.amount_cents"),
    ("amount null", sub('"amount_cents":100', '"amount_cents":null'), "$.data.payload.amount_cents"),
    ("secs negative", sub("1700000000", "-1"), "$.created_at.secs_since_epoch: expected an integer in 0..="),
    ("secs float", sub("1700000000", "1700000000.0"), "$.created_at.secs_since_epoch"),
    ("nanos above u32", sub("123456789", "4294967296"), "$.created_at.nanos_since_epoch"),
    ("secs past i64::MAX", sub("1700000000", str(2**63)), "$.created_at: 9223372036854775808 seconds"),
    (
        "carry past i64::MAX",
        sub("1700000000", str(2**63 - 1)).replace("123456789", "1000000000"),
        "$.created_at: 9223372036854775808",
    ),
    (
        "personally_identifiable 0",
        sub('"personally_identifiable":true', '"personally_identifiable":0'),
        "$.personally_identifiable: expected true or false, got integer 0",
    ),
    (
        'personally_identifiable "true"',
        sub('"personally_identifiable":true', '"personally_identifiable":"true"'),
        "$.personally_identifiable: expected true or false, got string 'true'",
    ),
    ("uuid with leading space", sub(U, " " + U), "$.data.payload.payment_id: invalid UUID ' " + U),
    ("uuid with trailing newline", sub(U, U + "\\n"), "$.data.payload.payment_id: invalid UUID"),
    ("uuid with uppercase URN prefix", sub(U, "URN:UUID:" + U), "$.data.payload.payment_id: invalid UUID 'URN:UUID:"),
    ("uuid braced simple", sub(U, "{" + U.replace("-", "") + "}"), "$.data.payload.payment_id: invalid UUID"),
    ("uuid half braced", sub(U, "{" + U), "$.data.payload.payment_id: invalid UUID"),
    ("uuid 0x prefix", sub(U, "0x" + U.replace("-", "")[2:]), "$.data.payload.payment_id: invalid UUID"),
    (
        "event_id not a string",
        sub('"0191f3c2-7a4b-4c1d-8e2f-a1b2c3d4e5f6"', "5"),
        "$.event_id: expected a UUID string, got integer 5",
    ),
    (
        "bad causation_id",
        sub('"5d8e3b7a-1c2f-4e6d-9a0b-c3d4e5f60718"', '"nope"'),
        "$.causation_id: invalid UUID 'nope'",
    ),
    ("tenant_id a number", sub('"tenant-42"', "42"), "$.tenant_id: expected a string, got integer 42"),
    ("duplicate envelope key", sub('"event_id"', '"tenant_id":"x","event_id"'), "$.tenant_id: duplicate key"),
    (
        "duplicate created_at key",
        sub('"nanos_since_epoch"', '"secs_since_epoch":1,"nanos_since_epoch"'),
        "$.created_at.secs_since_epoch: duplicate key",
    ),
    ("duplicate unknown created_at key", sub('"nanos_since_epoch"', '"x":1,"x":1,"nanos_since_epoch"'), "$.created_at"),
    (
        "duplicate data key",
        sub('"type":"PaymentProcessed"', '"type":"PaymentProcessed","type":"PaymentProcessed"'),
        "$.data.type: duplicate key",
    ),
    (
        "duplicate payload key",
        sub('"amount_cents":100', '"amount_cents":100,"amount_cents":100'),
        "$.data.payload.amount_cents: duplicate key",
    ),
    ("NaN", sub('"amount_cents":100', '"amount_cents":NaN'), "$: not JSON as serde reads it: NaN"),
    (
        "Infinity in an unknown field",
        sub('"event_id"', '"x":-Infinity,"event_id"'),
        "$: not JSON as serde reads it: -Infinity",
    ),
    ("leading BOM", "\ufeff" + BASE, "$: not JSON as serde reads it: a leading byte order mark"),
    ("trailing comma", sub('"amount_cents":100}', '"amount_cents":100,}'), "$: not JSON as serde reads it"),
    ("trailing comma in array", sub(CREATED, "[1,2,]"), "$: not JSON as serde reads it"),
    ("trailing data", BASE + " {}", "$: not JSON as serde reads it: Extra data"),
    (
        "lone surrogate escape in tenant",
        sub('"tenant-42"', '"\\ud800"'),
        "$.tenant_id: the string holds a lone surrogate escape",
    ),
    (
        "lone low surrogate in answers",
        sub('"q1":"b"', '"q1":"\\udc00x"', QUIZ),
        "$.data.payload.answers['q1']: the string holds a lone surrogate",
    ),
    (
        "lone surrogate in an answers key",
        sub('"q1":"b"', '"\\ud800":"b"', QUIZ),
        "$.data.payload.answers: a key holds a lone surrogate",
    ),
    (
        "lone surrogate in an unknown key",
        sub('"event_id"', '"\\ud800":1,"event_id"'),
        "$: an object key holds a lone surrogate",
    ),
    (
        "raw control character in a string",
        sub('"tenant-42"', '"a\x01b"'),
        "$: not JSON as serde reads it: Invalid control character",
    ),
    ("raw tab in a string", sub('"tenant-42"', '"a\tb"'), "$: not JSON as serde reads it: Invalid control character"),
    (
        "created_at as ISO string",
        sub(CREATED, '"2023-11-14T22:13:20.123456789Z"'),
        "$.created_at: expected created_at {secs_since_epoch, nanos_since_epoch} object, got string",
    ),
    (
        "created_at as number",
        sub(CREATED, "1700000000"),
        "$.created_at: expected created_at {secs_since_epoch, nanos_since_epoch} object, got integer",
    ),
    (
        "created_at null",
        sub(CREATED, "null"),
        "$.created_at: expected created_at {secs_since_epoch, nanos_since_epoch} object, got null",
    ),
    (
        "created_at array too short",
        sub(CREATED, "[1700000000]"),
        "$.created_at: created_at {secs_since_epoch, nanos_since_epoch} as an array needs exactly 2",
    ),
    (
        "answers null value",
        sub('"q1":"b"', '"q1":null', QUIZ),
        "$.data.payload.answers['q1']: expected a string, got null",
    ),
    (
        "answers as array",
        sub('{"q1":"b"}', '[["q1","b"]]', QUIZ),
        "$.data.payload.answers: expected an object of strings, got array",
    ),
    (
        "payload null",
        sub('"payload":' + PAYLOAD, '"payload":null'),
        "$.data.payload: expected PaymentProcessed object, got null",
    ),
    (
        "payload before type is buffered strictly",
        sub(
            '{"type":"PaymentProcessed","payload":' + PAYLOAD,
            '{"payload":' + PAYLOAD[:-1] + ',"x":"\\udc00"},"type":"PaymentProcessed"',
        ),
        "$.data.payload['x']: the string holds a lone surrogate",
    ),
    (
        "buffered payload too deep",
        sub(
            '{"type":"PaymentProcessed","payload":' + PAYLOAD,
            '{"payload":' + PAYLOAD[:-1] + ',"x":' + "[" * 125 + "]" * 125 + '},"type":"PaymentProcessed"',
        ),
        "$.data.payload: nested too deeply: a container at depth 128",
    ),
    (
        "buffered payload number out of range",
        sub(
            '{"type":"PaymentProcessed","payload":' + PAYLOAD,
            '{"payload":' + PAYLOAD[:-1] + ',"x":1e400},"type":"PaymentProcessed"',
        ),
        "$.data.payload['x']: number out of range",
    ),
    ("top level null", "null", "$: expected EventEnvelope object, got null"),
    ("top level string", '"x"', "$: expected EventEnvelope object, got string 'x'"),
    ("envelope array too short", "[]", "$: EventEnvelope as an array needs exactly 7 elements, got 0"),
    (
        "envelope array too long",
        ENVELOPE_ARRAY[:-1] + ",1]",
        "$: EventEnvelope as an array needs exactly 7 elements, got 8",
    ),
    ("empty document", "", "$: not JSON as serde reads it: Expecting value"),
    (
        "nesting beyond the parser",
        sub('"event_id"', '"x":' + "[" * 100_000 + "]" * 100_000 + ',"event_id"'),
        "$: nested too deeply",
    ),
]


@pytest.mark.parametrize(("text", "message"), [(t, m) for _, t, m in REJECTED], ids=[n for n, _, _ in REJECTED])
def test_decode_rejects(text: str, message: str) -> None:
    """Inputs serde rejects raise DecodeError whose message names the JSON path (and only that)."""
    calls: list[tuple[Any, bytes | str]] = [
        (decode, text),
        (decode, text.encode()),
        (decode_json_only, text),
        (decode_slow, text),
    ]
    for fn, data in calls:
        with pytest.raises(DecodeError) as info:
            fn(data)
        assert str(info.value).startswith(message)
        assert info.value.__cause__ is None or isinstance(info.value.__cause__, DecodeError)


def test_buffered_payload_at_depth_limit_is_fine() -> None:
    """A container at depth 127 (one above serde's limit) inside a payload-first data is accepted."""
    nested = "[" * 124 + "]" * 124  # payload is at depth 3, so its deepest child sits at 127
    text = sub(
        '{"type":"PaymentProcessed","payload":' + PAYLOAD,
        '{"payload":' + PAYLOAD[:-1] + ',"x":' + nested + '},"type":"PaymentProcessed"',
    )
    assert decode(text).data.amount_cents == 100


@pytest.mark.parametrize(
    "data",
    [b"\xff", b'{"a":"\xc3"}', b'{"a":"\xed\xa0\x80"}', "\ufeff".encode("utf-16"), b"\xef\xbb\xbf" + BASE.encode()],
)
def test_invalid_utf8_bytes(data: bytes) -> None:
    """Bytes that are not UTF-8 (including encoded surrogates and UTF-16) raise DecodeError."""
    with pytest.raises(DecodeError, match=r"^\$: not"):
        decode(data)


def test_decode_str_with_raw_surrogate() -> None:
    """A str holding a raw lone surrogate is not UTF-8 the Rust side could get: DecodeError."""
    with pytest.raises(DecodeError, match="lone surrogate"):
        decode(sub('"tenant-42"', '"\ud800"'))


@pytest.mark.parametrize("data", [None, 5, {"event_id": U}, ["x"]])
def test_decode_wrong_argument_type(data: Any) -> None:
    """decode() of something that is not bytes or str raises DecodeError, not TypeError."""
    with pytest.raises(DecodeError, match="decode\\(\\) needs bytes or str"):
        decode(data)


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
