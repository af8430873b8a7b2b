"""Shared pieces of the codec tests: the golden files of WIRE.md, the decoding tiers, document builders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edupulse_events import (
    Codec,
)

__all__ = [
    "BASE",
    "CREATED",
    "ENVELOPE_ARRAY",
    "GOLDEN",
    "MANIFEST",
    "PAYLOAD",
    "QUIZ",
    "REFERENCE",
    "WIRE",
    "U",
    "decode_json_only",
    "decode_slow",
    "dumps",
    "from_orjson",
    "golden",
    "sub",
]

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


# --- documents for the decoding rules (WIRE.md "Decoding") ---

BASE = golden("options_all_some")
QUIZ = golden("variant_quiz_submitted")
CREATED = '{"secs_since_epoch":1700000000,"nanos_since_epoch":123456789}'
PAYLOAD = '{"payment_id":"' + U + '","from_user":"00000000-0000-0000-0000-000000000000","amount_cents":100}'


def sub(old: str, new: str, doc: str = BASE) -> str:
    """``doc`` with the first ``old`` replaced by ``new`` (which must be present)."""
    assert old in doc, old
    return doc.replace(old, new, 1)


#: The envelope as serde_json may also read it: an array of its fields in order.
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
