"""Shared pieces of the benchmark scripts: envelopes, a fresh stream per run, statistics, output."""

from __future__ import annotations

import contextlib
import json
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import nats
from nats.js.api import StorageType, StreamConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edupulse_events import EventEnvelope, QuizSubmitted
from edupulse_events._pipeline._routing import tenant_token

SUBJECT = "bench.events"
STREAM = "BENCH"


def typical_envelope() -> EventEnvelope:
    """A ~440-byte envelope (about 450 bytes): a quiz with a few answers, tenant and correlation id set."""
    return EventEnvelope.new(
        QuizSubmitted(uuid.uuid4(), uuid.uuid4(), {"q1": "a", "q2": "c", "q3": "b"}),
        correlation_id=uuid.uuid4(),
        tenant_id="school-district-42",
        personally_identifiable=True,
    )


def make_envelopes(n: int) -> list[EventEnvelope]:
    return [typical_envelope() for _ in range(n)]


def headers_dict(env: EventEnvelope) -> dict[str, str]:
    """The same routing headers the library sends, as a dict for nats-py's own API."""
    h = {"Nats-Msg-Id": str(env.event_id), "Edupulse-Event-Type": type(env.data).__name__}
    if env.tenant_id is not None:
        h["Edupulse-Tenant"] = tenant_token(env.tenant_id)
    h["Edupulse-Pii"] = "true" if env.personally_identifiable else "false"
    if env.correlation_id is not None:
        h["Edupulse-Correlation-Id"] = str(env.correlation_id)
    return h


async def fresh_stream(url: str, batches: bool = False) -> None:
    """Delete and re-create the benchmark stream (file storage), so every run starts empty;
    ``batches``: allowing atomic and fast-ingest batches (nats-server 2.14+)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        with contextlib.suppress(Exception):  # best effort: there may be no stream yet
            await js.delete_stream(STREAM)
        config = StreamConfig(name=STREAM, subjects=[SUBJECT], storage=StorageType.FILE)
        if batches:
            config.allow_atomic = config.allow_batched = True
        await js.add_stream(config)
    finally:
        await nc.close()


async def stream_count(url: str) -> int:
    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info(STREAM)).state.messages
    finally:
        await nc.close()


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def machine() -> str:
    import os

    return (
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, "
        f"{platform.machine()}, {time.strftime('%Y-%m-%d')}"
    )


def write_json(path: str | None, payload: Mapping[str, object]) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True))
        print(f"wrote {path}")
