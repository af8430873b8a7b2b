"""Codec speed: microseconds per encode/decode of a typical envelope, next to plain json.

Measures, in the same run and in alternating rounds, ``edupulse_events.encode`` /
``decode`` of a ~440-byte envelope (correlation id, tenant, a QuizSubmitted with three
answers) against ``json.dumps(ensure_ascii=False, separators=(",", ":"))`` / ``json.loads``
of the same JSON value, and prints median (min-max) per operation and the ratios.

    python benchmarks/bench_codec.py [--rounds 9] [--number 20000] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edupulse_events import EventEnvelope, QuizSubmitted, Timestamp, decode, encode


def typical_envelope() -> EventEnvelope:
    """A fixed ~440-byte envelope: correlation id, tenant and PII flag set, a quiz with three answers."""
    return EventEnvelope(
        event_id=uuid.UUID("0191f3c2-7a4b-4c1d-8e2f-a1b2c3d4e5f6"),
        causation_id=None,
        correlation_id=uuid.UUID("c0ffee00-dead-4bef-8bad-f00dbaadcafe"),
        tenant_id="tenant-42",
        created_at=Timestamp(1_700_000_000, 123_456_789),
        personally_identifiable=True,
        data=QuizSubmitted(
            uuid.UUID("0f0e0d0c-0b0a-4908-8706-050403020100"),
            uuid.UUID("fedcba98-7654-4321-8fed-cba987654321"),
            {"q1": "a", "q2": "c", "q3": "b, d"},
        ),
    )


def per_call_us(fn: Callable[[], Any], number: int) -> float:
    """Mean microseconds per call over ``number`` calls (GC off, like timeit)."""
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in range(number):
            fn()
        return (time.perf_counter_ns() - start) / number / 1000
    finally:
        if gc_was_on:
            gc.enable()


def summary(values: list[float]) -> dict[str, float]:
    """median, min and max of the per-round figures."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="alternating measurement rounds")
    parser.add_argument("--number", type=int, default=20_000, help="calls per operation per round")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)

    env = typical_envelope()
    raw = encode(env)
    value = json.loads(raw)
    assert decode(raw) == env
    assert json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode() == raw
    ops: dict[str, Callable[[], Any]] = {
        "encode": lambda: encode(env),
        "json.dumps": lambda: json.dumps(value, ensure_ascii=False, separators=(",", ":")),
        "decode": lambda: decode(raw),
        "json.loads": lambda: json.loads(raw),
    }
    for fn in ops.values():  # warm up caches and the interpreter
        per_call_us(fn, max(1, args.number // 10))
    results: dict[str, list[float]] = {name: [] for name in ops}
    for i in range(args.rounds):
        order = list(ops) if i % 2 == 0 else list(reversed(ops))  # alternate to spread drift
        for name in order:
            results[name].append(per_call_us(ops[name], args.number))

    figures = {name: summary(values) for name, values in results.items()}
    ratios = {
        "encode/json.dumps": figures["encode"]["median"] / figures["json.dumps"]["median"],
        "decode/json.loads": figures["decode"]["median"] / figures["json.loads"]["median"],
    }
    print(f"envelope: {type(env.data).__name__}, {len(raw)} bytes; {args.rounds} rounds x {args.number} calls")
    print(f"python {platform.python_version()} on {platform.machine()} ({platform.platform()})")
    print(f"{'operation':<12} {'median us':>10}   (min-max)")
    for name, fig in figures.items():
        print(f"{name:<12} {fig['median']:>10.2f}   ({fig['min']:.2f}-{fig['max']:.2f})")
    for name, ratio in ratios.items():
        print(f"{name:<18} {ratio:.2f}x")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "envelope_bytes": len(raw),
                    "rounds": args.rounds,
                    "number": args.number,
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                    "us_per_op": figures,
                    "ratios": ratios,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
