"""Shared pieces of the codec tests: the golden files of WIRE.md, the decoding tiers, document builders."""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from edupulse_events import (
    Codec,
)
from edupulse_events._frozen import is_utf8

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
    "Pairs",
    "U",
    "at_stack_depth",
    "decode_json_only",
    "decode_slow",
    "deep",
    "dumps",
    "from_orjson",
    "golden",
    "render",
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


def deep(depth: int, kind: str = "[") -> str:
    """``depth`` nested containers: arrays (``[``), objects (``{``, each under key "k") or both in turn."""
    opens = {"[": ["["], "{": ['{"k":'], "[{": ["[", '{"k":']}[kind]
    chain = [opens[i % len(opens)] for i in range(depth)]
    leaf = "" if chain and chain[-1] == "[" else "1"
    return "".join(chain) + leaf + "".join("]" if o == "[" else "}" for o in reversed(chain))


T = TypeVar("T")


def _frames() -> int:
    frame = inspect.currentframe()
    n = 0
    while frame is not None:
        frame, n = frame.f_back, n + 1
    return n


def at_stack_depth(remaining: int, fn: Callable[[], T]) -> T:
    """``fn()`` called from a recursion that leaves only ``remaining`` frames below Python's limit."""

    def down(n: int) -> T:
        return fn() if n <= 0 else down(n - 1)

    return down(sys.getrecursionlimit() - remaining - _frames())


class Pairs(list[tuple[str, Any]]):
    """A JSON object as its key-value pairs in order, so that a key can repeat."""


def render(value: Any) -> str:
    """JSON text as serde writes it, where a ``Pairs`` value becomes an object that may repeat keys."""
    if isinstance(value, Pairs):
        return "{" + ",".join(render(k) + ":" + render(v) for k, v in value) + "}"
    if isinstance(value, dict):
        return render(Pairs(value.items()))
    if isinstance(value, list):
        return "[" + ",".join(render(v) for v in value) + "]"
    text = json.dumps(value, ensure_ascii=False)
    return text if text.isascii() or is_utf8(text) else json.dumps(value)  # a lone surrogate as an escape
