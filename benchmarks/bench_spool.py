"""What the durable spool costs: JetStream throughput and publish() latency with and without it.

Usage: python benchmarks/bench_spool.py [--events 30000] [--rounds 5] [--json PATH]

Starts its own nats-server (JetStream, file storage) and alternates, round by round (the order
rotating), the same publisher publishing N typical ~440-byte envelopes and flushing:

  none           no spool (the baseline)
  write-ahead    every event committed to SQLite (WAL, synchronous=NORMAL: survives a killed
                 process) before publish() returns, deleted once acknowledged
  overflow       spool configured, broker up: nothing goes to disk (should match "none")
  write-ahead+fsync  synchronous=FULL, survives power loss (N/10 events: an fsync per commit)

each with 1 caller thread, none / write-ahead with 4 (group commit: one transaction for
the publishes that arrive together), and none / write-ahead through ``publish_many()`` in
batches of 1,000 (one transaction per batch). Prints msgs/s as median (min - max), each scenario's ratio
to "none" with as many threads, round by round, and publish()'s own latency (p50/p99, one
thread) with and without the write-ahead spool.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from _common import SUBJECT, fresh_stream, machine, make_envelopes, percentile, stream_count, summary, write_json

from edupulse_events import EventEnvelope, NatsPublisher, PublishAck
from edupulse_events.testing import NatsServer

Scenario = Callable[[str, list[EventEnvelope], list[float]], float]


def scenario(threads: int, batch: int = 0, **spool: Any) -> Scenario:
    def run(url: str, envs: list[EventEnvelope], latencies: list[float]) -> float:
        with tempfile.TemporaryDirectory(prefix="bench-spool-") as directory:
            options = {"spool_dir": directory, **spool} if spool else {}
            pub = NatsPublisher.connect(url, SUBJECT, max_queue=20_000, **options)
            chunks = [envs[i::threads] for i in range(threads)]
            results: list[list[Future[PublishAck]]] = [[] for _ in range(threads)]

            def work(i: int) -> None:
                publish, clock, out = pub.publish, time.perf_counter, results[i]
                if batch:
                    for start in range(0, len(chunks[i]), batch):
                        out += pub.publish_many(chunks[i][start : start + batch])
                elif threads == 1:  # publish()'s own latency, one caller
                    for env in chunks[i]:
                        t = clock()
                        out.append(publish(env))
                        latencies.append(clock() - t)
                else:
                    results[i] = [publish(env) for env in chunks[i]]

            t0 = time.perf_counter()
            if threads == 1:
                work(0)
            else:
                workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
            assert pub.flush(timeout=120), "flush timed out"
            elapsed = time.perf_counter() - t0
            stats = pub.stats()
            pub.close(timeout=10)
            failed = sum(1 for fs in results for f in fs if f.exception() is not None)
            assert failed == 0, f"{failed} futures failed"
            assert stats.spooled == 0, f"{stats.spooled} events spooled with the broker up"
            return elapsed

    return run


SCENARIOS: dict[str, tuple[Scenario, int]] = {  # scenario, events divisor
    "none, 1 thread": (scenario(1), 1),
    "write-ahead, 1 thread": (scenario(1, spool_mode="write-ahead"), 1),
    "overflow, 1 thread": (scenario(1, spool_mode="overflow"), 1),
    "write-ahead+fsync, 1 thread": (scenario(1, spool_mode="write-ahead", spool_fsync=True), 10),
    "none, 4 threads": (scenario(4), 1),
    "write-ahead, 4 threads": (scenario(4, spool_mode="write-ahead"), 1),
    "none, publish_many": (scenario(1, 1000), 1),
    "write-ahead, publish_many": (scenario(1, 1000, spool_mode="write-ahead"), 1),
}
RATIOS = [
    ("write-ahead, 1 thread", "none, 1 thread", 0.4),
    ("overflow, 1 thread", "none, 1 thread", None),
    ("write-ahead+fsync, 1 thread", "none, 1 thread", None),
    ("write-ahead, 4 threads", "none, 4 threads", 0.4),
    ("write-ahead, publish_many", "none, publish_many", 0.7),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    names = list(SCENARIOS)
    rates: dict[str, list[float]] = {n: [] for n in names}
    latencies: dict[str, list[float]] = {n: [] for n in names}
    print(f"{machine()}; N={args.events} (fsync: N/10); {args.rounds} rounds")
    with NatsServer() as server:
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                run, divisor = SCENARIOS[name]
                n = args.events // divisor
                envs = make_envelopes(n)
                asyncio.run(fresh_stream(server.url))
                gc.collect()
                elapsed = run(server.url, envs, latencies[name])
                stored = asyncio.run(stream_count(server.url))
                assert stored == n, f"{name}: stream holds {stored}, expected {n}"
                rates[name].append(n / elapsed)
            print(f"round {r + 1}: " + ", ".join(f"{n}={rates[n][-1]:,.0f}" for n in names), flush=True)
    print(f"\n{'scenario':30} {'msgs/s median':>14}  (min - max)   publish() p50 / p99")
    for name in names:
        s = summary(rates[name])
        lat = sorted(latencies[name])
        timing = f"{percentile(lat, 50) * 1e6:.1f} / {percentile(lat, 99) * 1e6:.1f} us" if lat else ""
        print(f"{name:30} {s['median']:>14,.0f}  ({s['min']:,.0f} - {s['max']:,.0f})   {timing}")
    ratios: dict[str, dict[str, float | None]] = {}
    print("\nratios to no spool (per round, median (min - max)):")
    for name, base, target in RATIOS:
        per_round = [a / b for a, b in zip(rates[name], rates[base], strict=True)]
        s = summary(per_round)
        ratios[f"{name} / {base}"] = {**s, "target": target}
        verdict = "" if target is None else f"; target >= {target}x: {'meets' if s['median'] >= target else 'BELOW'}"
        print(f"  {name} / {base}: {s['median']:.2f}x ({s['min']:.2f} - {s['max']:.2f}){verdict}")
    write_json(
        args.json,
        {
            "machine": machine(),
            "events": args.events,
            "rounds": args.rounds,
            "rates": {n: {**summary(v), "all": v} for n, v in rates.items()},
            "publish_latency_us": {
                n: {"p50": percentile(sorted(v), 50) * 1e6, "p99": percentile(sorted(v), 99) * 1e6}
                for n, v in latencies.items()
                if v
            },
            "ratios": ratios,
        },
    )


if __name__ == "__main__":
    main()
