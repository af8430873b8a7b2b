"""Decoding as serde does (WIRE.md "Decoding"): what it accepts, through every decoding tier, and bad input types."""

from __future__ import annotations

import json
import traceback
import uuid
from typing import Any

import orjson
import pytest
from codec_support import (
    BASE,
    CREATED,
    ENVELOPE_ARRAY,
    GOLDEN,
    PAYLOAD,
    QUIZ,
    WIRE,
    U,
    at_stack_depth,
    decode_json_only,
    decode_slow,
    deep,
    from_orjson,
    sub,
)

from edupulse_events import (
    DecodeError,
    Timestamp,
    decode,
    make_converter,
)
from edupulse_events._wire._jsontext import STACK_TOO_DEEP, parse

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
    (
        "repeated unknown key, earlier values of any type (serde skips them)",
        sub('"event_id"', '"zz":[1,2],"zz":{"a":null},"zz":"\\ud800","zz":1,"event_id"'),
        None,
    ),
    (
        "repeated unknown payload key, earlier value nested 10,000 deep",
        sub('"amount_cents":100', '"x":' + deep(10_000) + ',"x":1,"amount_cents":100'),
        None,
    ),
    *[  # serde_json skips ignored values with a loop, at any depth (de.rs ignore_value)
        (
            f"unknown {where} key holding {kind} nested {n:,} deep",
            sub(at, '"x":' + deep(n, kind) + "," + at),
            lambda e: e.data.amount_cents == 100,
        )
        for n, kinds in ((100, "[ { [{"), (1_000, "[ { [{"), (10_000, "[ { [{"), (100_000, "[{"))
        for kind in kinds.split()
        for where, at in (("top-level", '"event_id"'), ("data", '"type"'), ("payload", '"amount_cents"'))
    ],
]


@pytest.mark.parametrize(("text", "check"), [(t, c) for _, t, c in ACCEPTED], ids=[n for n, _, _ in ACCEPTED])
def test_decode_accepts(text: str, check: Any) -> None:
    """Inputs serde accepts decode, and all three paths (orjson tier, json tier, reference) agree."""
    env = decode(text)
    assert env == decode_json_only(text) == decode_slow(text) == decode(text.encode())
    if check is not None:
        assert check(env)


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


def outcome(fn: Any, data: bytes | str) -> Any:
    """What ``fn(data)`` gives: the envelope, or the DecodeError's message."""
    try:
        return fn(data)
    except DecodeError as exc:
        return f"DecodeError: {exc}"


STACK_CASES = {
    "canonical": BASE,
    "unknown keys": sub('"event_id"', '"x":{"a":[1,{"b":null}]},"event_id"'),
    "repeated answers key": sub('"q1":"b"', '"q1":[1],"q1":"b"', QUIZ),
    **{f"nested {n:,} deep": sub('"type"', '"x":' + deep(n, "[{") + ',"type"') for n in (100, 1_000, 10_000, 100_000)},
    "nested 100,000 deep, left open": sub('"type"', '"x":' + deep(100_000)[:-1] + ',"type"'),
    "buffered payload nested 1,000 deep": sub(
        '{"type":"PaymentProcessed","payload":' + PAYLOAD,
        '{"payload":' + PAYLOAD[:-1] + ',"x":' + deep(1_000) + '},"type":"PaymentProcessed"',
    ),
}


@pytest.mark.parametrize("text", STACK_CASES.values(), ids=STACK_CASES.keys())
def test_result_does_not_depend_on_the_callers_stack(text: str) -> None:
    """Decoding from deep inside a recursion gives what it gives from a shallow stack, on every tier."""
    for fn, data in ((decode, text), (decode, text.encode()), (decode_json_only, text), (decode_slow, text)):
        expected = outcome(fn, data)
        for remaining in (30, 200, 600):
            assert at_stack_depth(remaining, lambda: outcome(fn, data)) == expected, (fn, remaining)  # noqa: B023


NEAR_LIMIT = ("canonical", "repeated answers key", "nested 1,000 deep", "buffered payload nested 1,000 deep")


@pytest.mark.parametrize("name", NEAR_LIMIT)
def test_no_recursion_error_escapes_near_the_limit(name: str) -> None:
    """Within a few frames of the recursion limit, decode() gives its usual result or a DecodeError saying so."""
    text = STACK_CASES[name]
    expected, too_deep = outcome(decode, text), f"DecodeError: {STACK_TOO_DEEP}"
    seen = set()
    for remaining in range(1, 40):
        try:
            got = at_stack_depth(remaining, lambda: outcome(decode, text))
        except RecursionError as exc:
            # only where decode() could not even start, or had no room left to build its DecodeError
            inside = [f.name for f in traceback.extract_tb(exc.__traceback__) if "edupulse_events" in f.filename]
            assert len(inside) <= 1, (remaining, inside)
            continue
        assert got in (expected, too_deep), remaining
        seen.add("expected" if got == expected else "too deep")
    assert seen == {"expected", "too deep"}  # the scan did reach the limit


@pytest.mark.parametrize("earlier", ["[1]", "5", "null", "{}", '"\\ud800"'])
def test_converter_map_hook_checks_repeated_keys(earlier: str) -> None:
    """make_converter's map hook refuses a repeated key whose earlier value is not a string, as serde does."""
    conv = make_converter()
    with pytest.raises(DecodeError):
        conv.structure(parse('{"a":' + earlier + ',"a":"x"}'), dict[str, str])
    assert conv.structure(parse('{"a":"w","b":"y","a":"x"}'), dict[str, str]) == {"a": "x", "b": "y"}
