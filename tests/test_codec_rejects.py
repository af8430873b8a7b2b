"""Decoding as serde does (WIRE.md "Decoding"): what it rejects, with the JSON path in the message."""

from __future__ import annotations

from typing import Any

import pytest
from codec_support import (
    BASE,
    CREATED,
    ENVELOPE_ARRAY,
    PAYLOAD,
    QUIZ,
    U,
    decode_json_only,
    decode_slow,
    deep,
    sub,
)

from edupulse_events import (
    DecodeError,
    decode,
)

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
    (
        "payload as an array (serde: a struct variant is never read from a sequence)",
        sub(PAYLOAD, '["' + U + '","00000000-0000-0000-0000-000000000000",100]'),
        "$.data.payload: invalid type: sequence, expected struct variant",
    ),
    (
        "payload as an array inside data as an array",
        sub(
            '{"type":"PaymentProcessed","payload":' + PAYLOAD + "}",
            '["PaymentProcessed",["' + U + '","00000000-0000-0000-0000-000000000000",100]]',
        ),
        "$.data.payload: invalid type: sequence, expected struct variant",
    ),
    ("empty payload array", sub(PAYLOAD, "[]"), "$.data.payload: invalid type: sequence, expected struct variant"),
    ("top level null", "null", "$: expected EventEnvelope object, got null"),
    ("top level string", '"x"', "$: expected EventEnvelope object, got string 'x'"),
    ("envelope array too short", "[]", "$: EventEnvelope as an array needs exactly 7 elements, got 0"),
    (
        "envelope array too long",
        ENVELOPE_ARRAY[:-1] + ",1]",
        "$: EventEnvelope as an array needs exactly 7 elements, got 8",
    ),
    ("empty document", "", "$: not JSON as serde reads it: Expecting value"),
    # serde_json deserializes every value of a map's repeated key (the last one wins), so each must be a string
    (
        "repeated answers key, earlier value an array",
        sub('"q1":"b"', '"q1":[1,2],"q1":"b"', QUIZ),
        "$.data.payload.answers['q1']: expected a string, got array",
    ),
    (
        "repeated answers key, earlier value a number",
        sub('"q1":"b"', '"q1":5,"q1":"b"', QUIZ),
        "$.data.payload.answers['q1']: expected a string, got integer 5",
    ),
    (
        "repeated answers key, earlier value null",
        sub('"q1":"b"', '"q1":null,"q1":"b"', QUIZ),
        "$.data.payload.answers['q1']: expected a string, got null",
    ),
    (
        "repeated answers key, earlier value an object",
        sub('"q1":"b"', '"q1":{"a":"b"},"q1":"b"', QUIZ),
        "$.data.payload.answers['q1']: expected a string, got object",
    ),
    (
        "repeated answers key, earlier value a lone surrogate",
        sub('"q1":"b"', '"q1":"\\ud800","q1":"b"', QUIZ),
        "$.data.payload.answers['q1']: the string holds a lone surrogate escape",
    ),
    (
        "repeated answers key, earlier value nested 100,000 deep",
        sub('"q1":"b"', '"q1":' + deep(100_000) + ',"q1":"b"', QUIZ),
        "$.data.payload.answers['q1']: expected a string, got array",
    ),
    (
        "the first bad value in document order is named",
        sub('"q1":"b"', '"q1":[],"q2":1,"q1":"b"', QUIZ),
        "$.data.payload.answers['q1']: expected a string, got array",
    ),
    (
        "buffered payload: an earlier value of a repeated unknown key is buffered too",
        sub(
            '{"type":"PaymentProcessed","payload":' + PAYLOAD,
            '{"payload":' + PAYLOAD[:-1] + ',"x":"\\udc00","x":1},"type":"PaymentProcessed"',
        ),
        "$.data.payload['x']: the string holds a lone surrogate",
    ),
    (
        "buffered payload: an earlier value of a repeated unknown key too deep",
        sub(
            '{"type":"PaymentProcessed","payload":' + PAYLOAD,
            '{"payload":' + PAYLOAD[:-1] + ',"x":' + deep(125) + ',"x":1},"type":"PaymentProcessed"',
        ),
        "$.data.payload: nested too deeply: a container at depth 128",
    ),
    # deep nesting: refused where serde reads the value, whatever the depth, never by the parser's stack
    (
        "buffered payload nested 100,000 deep",
        sub(
            '{"type":"PaymentProcessed","payload":' + PAYLOAD,
            '{"payload":' + PAYLOAD[:-1] + ',"x":' + deep(100_000, "[{") + '},"type":"PaymentProcessed"',
        ),
        "$.data.payload: nested too deeply: a container at depth 128",
    ),
    ("known field nested 100,000 deep", sub('"tenant-42"', deep(100_000)), "$.tenant_id: expected a string, got array"),
    (
        "deep nesting under an unknown key, left open",
        sub('"event_id"', '"x":' + deep(100_000)[:-1] + ',"event_id"'),
        "$: not JSON as serde reads it: Expecting ',' delimiter",
    ),
    (
        "deep nesting under an unknown key, with a trailing value",
        BASE[:-1] + ',"x":' + deep(100_000, "{") + "} 1",
        "$: not JSON as serde reads it: Extra data",
    ),
    (
        "deep nesting under an unknown key, NaN inside",
        sub('"event_id"', '"x":' + deep(5_000).replace("[]", "[NaN]") + ',"event_id"'),
        "$: not JSON as serde reads it: NaN is not JSON",
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
