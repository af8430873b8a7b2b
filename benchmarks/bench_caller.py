"""The caller's share of publishing: CPU per event in the thread that calls publish_many() or publish().

Usage: python benchmarks/bench_caller.py [--rounds 5] [--events 20000] [--library PATH ...] [--json PATH]

``publish()`` and ``publish_many()`` validate and encode in the caller's thread; in one process
that thread shares the GIL with the publisher thread, so its CPU per event bounds what the process
can send (docs/performance.md). On one real nats-server, for each library given with ``--library``
(a checkout to take ``edupulse_events`` from; default: this one), a fresh process per run, runs
alternating library by library:

  publish_many   batches of 1,000 to a stream with ``allow_batched`` (fast ingest where the
                 library has it)
  publish        one call per event

each measuring the caller thread's CPU per event while it calls (``time.thread_time``), the
process's CPU per event until ``flush()`` (work moved into the publisher thread shows there), and
events/s. Reported: medians over the runs, and each library's ratio to the first one's, paired run
by run (the machine is shared: only ratios of neighbouring runs mean much).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import STREAM, SUBJECT, machine, summary, write_json

from edupulse_events.testing import NatsServer

ROOT = Path(__file__).resolve().parent.parent
MODES = ("publish_many", "publish")

# One run, in a fresh interpreter that takes edupulse_events from the library under test.
RUN = """
import asyncio, gc, json, sys, time, uuid
import nats
from nats.js.api import StorageType, StreamConfig
from edupulse_events import EventEnvelope, NatsPublisher, QuizSubmitted

url, subject, stream, mode, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])


async def fresh() -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            await js.delete_stream(stream)
        except Exception:
            pass
        config = StreamConfig(name=stream, subjects=[subject], storage=StorageType.FILE)
        config.allow_atomic = config.allow_batched = True
        await js.add_stream(config)
    finally:
        await nc.close()


asyncio.run(fresh())
envelopes = [
    EventEnvelope.new(
        QuizSubmitted(uuid.uuid4(), uuid.uuid4(), {"q1": "a", "q2": "c", "q3": "b"}),
        correlation_id=uuid.uuid4(),
        tenant_id="school-district-42",
        personally_identifiable=True,
    )
    for _ in range(n)
]
publisher = NatsPublisher.connect(url, subject, stream=stream, max_queue=2 * n)
publisher.publish(envelopes[0]).result(timeout=10)  # connected, encoders built
gc.collect()
process0, wall0, caller0 = time.process_time(), time.perf_counter(), time.thread_time()
if mode == "publish_many":
    futures = [f for start in range(1, n, 1000) for f in publisher.publish_many(envelopes[start : start + 1000])]
else:
    futures = [publisher.publish(envelope) for envelope in envelopes[1:]]
caller = time.thread_time() - caller0
assert publisher.flush(timeout=120)
wall, process = time.perf_counter() - wall0, time.process_time() - process0
publisher.close(timeout=10)
assert all(f.exception(timeout=0) is None for f in futures)
sent = n - 1
print(json.dumps({"caller_us": caller / sent * 1e6, "process_us": process / sent * 1e6, "rate": sent / wall}))
"""


def one_run(library: str, url: str, mode: str, events: int) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", RUN, url, SUBJECT, STREAM, mode, str(events)],
        env={**os.environ, "PYTHONPATH": library},
        cwd=library,  # python -c puts the working directory first: it must be the library's
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"a run with {library} failed:\n{proc.stderr[-2000:]}")
    result: dict[str, float] = json.loads(proc.stdout.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--library", action="append", default=None, help="a checkout to take edupulse_events from")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    libraries = [str(Path(p).resolve()) for p in (args.library or [str(ROOT)])]
    runs: dict[tuple[str, str], list[dict[str, float]]] = {(lib, m): [] for lib in libraries for m in MODES}
    with NatsServer() as server:
        for round_ in range(args.rounds):
            for mode in MODES:
                order = libraries if round_ % 2 == 0 else libraries[::-1]
                for library in order:
                    runs[library, mode].append(one_run(library, server.url, mode, args.events))
    print(f"{machine()}; {args.events:,} events per run, {args.rounds} runs per library and mode")
    print(f"{'library':<32} {'mode':<13} {'caller us/ev':>13} {'process us/ev':>14} {'events/s':>10}")
    figures: dict[str, object] = {}
    first = libraries[0]
    for mode in MODES:
        for library in libraries:
            rows = runs[library, mode]
            caller = summary([r["caller_us"] for r in rows])
            process = summary([r["process_us"] for r in rows])
            rate = summary([r["rate"] for r in rows])
            print(
                f"{Path(library).name:<32} {mode:<13} {caller['median']:13.2f} {process['median']:14.2f}"
                f" {rate['median']:10,.0f}"
            )
            entry: dict[str, object] = {"caller_us": caller, "process_us": process, "rate": rate}
            if library != first:
                for key in ("caller_us", "process_us", "rate"):
                    pairs = [r[key] / b[key] for r, b in zip(rows, runs[first, mode], strict=True)]
                    entry[f"{key}_ratio"] = summary(pairs)
                    print(
                        f"{'':<32} {'':<13} {key} / {Path(first).name}: {statistics.median(pairs):.3f}"
                        f" ({min(pairs):.3f}-{max(pairs):.3f})"
                    )
            figures[f"{library} {mode}"] = entry
    write_json(args.json, {"machine": machine(), "events": args.events, "rounds": args.rounds, "figures": figures})


if __name__ == "__main__":
    main()
