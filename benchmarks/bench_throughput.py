"""Throughput: this library's publisher against what a user would otherwise write, same run.

Usage: python benchmarks/bench_throughput.py [--events 50000] [--rounds 5] [--json PATH]
       python benchmarks/chart.py PATH --update docs/performance.md   # redraw the page's charts

Starts its own nats-server (JetStream, file storage), then alternates the scenarios round
by round (the order rotates each round), each on a fresh stream, N pre-built typical
~440-byte envelopes; encoding is counted in every scenario. Before each scenario a full
garbage collection clears what building its envelopes left (so no scenario pays for the
setup's garbage; collections during the run are counted). Prints msgs/s as median
(min–max) and each scenario's ratio to the baselines, computed round by round.

  A  asyncio + nats-py core publish (same headers), then flush()
  B  asyncio + nats-py js.publish_async (pipelined JetStream), waiting for all acks
  C  naive sync wrapper: loop thread + run_coroutine_threadsafe(js.publish()).result()
     per event (N/10 events: it is that slow)
  R  the raw ceiling (`_raw.py`): a pre-built byte stream on a plain socket, no per-message
     Python work (JetStream: window 256, acks counted; fast ingest: batches of 1,000, two
     outstanding; atomic: batches of 1,000, four outstanding; core: one PING at the end)

The library's rows: ``publish()`` per event from 1 or 4 caller threads, and ``publish_many()``
in batches of 1,000 from one thread: with an ack per event (a publisher that does not know its
stream), through fast ingest (``stream=`` a stream with ``allow_batched``), and as atomic
batches (``atomic=True``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import nats
from _common import (
    STREAM,
    SUBJECT,
    fresh_stream,
    headers_dict,
    machine,
    make_envelopes,
    stream_count,
    summary,
    write_json,
)
from _raw import raw_atomic, raw_core, raw_fast_ingest, raw_jetstream

from edupulse_events import EventEnvelope, NatsPublisher, PublishAck, encode
from edupulse_events.testing import NatsServer

T = TypeVar("T")
WINDOW: int | None = None  # --window: the library's window (default: PublisherConfig's)


def baseline_a(url: str, envs: list[EventEnvelope]) -> float:
    async def run() -> float:
        nc = await nats.connect(url)
        t0 = time.perf_counter()
        for env in envs:
            await nc.publish(SUBJECT, encode(env), headers=headers_dict(env))
        await nc.flush(timeout=60)
        elapsed = time.perf_counter() - t0
        await nc.close()
        return elapsed

    return asyncio.run(run())


def baseline_b(url: str, envs: list[EventEnvelope]) -> float:
    async def run() -> float:
        nc = await nats.connect(url)
        js = nc.jetstream()
        t0 = time.perf_counter()
        futures = [await js.publish_async(SUBJECT, encode(env), headers=headers_dict(env)) for env in envs]
        await js.publish_async_completed()
        elapsed = time.perf_counter() - t0
        failed = sum(1 for f in futures if f.exception() is not None)
        await nc.close()
        assert failed == 0, f"baseline B: {failed} failed"
        return elapsed

    return asyncio.run(run())


def baseline_c(url: str, envs: list[EventEnvelope]) -> float:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def call(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    nc = call(nats.connect(url))
    js = nc.jetstream()
    t0 = time.perf_counter()
    for env in envs:
        call(js.publish(SUBJECT, encode(env), headers=headers_dict(env)))
    elapsed = time.perf_counter() - t0
    call(nc.close())
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
    return elapsed


def library(
    jetstream: bool, threads: int, batch: int = 0, *, atomic: bool = False, stream: str | None = None
) -> Callable[[str, list[EventEnvelope]], float]:
    """A library scenario; ``stream``: the publisher knows its stream (and so whether it allows
    fast ingest); ``atomic``: ``publish_many(atomic=True)``."""

    def run(url: str, envs: list[EventEnvelope]) -> float:
        options: dict[str, Any] = {} if WINDOW is None else {"window": WINDOW}
        pub = NatsPublisher.connect(url, SUBJECT, jetstream=jetstream, max_queue=20_000, stream=stream, **options)
        chunks = [envs[i::threads] for i in range(threads)]
        results: list[list[Future[PublishAck]]] = [[] for _ in range(threads)]

        def work(i: int) -> None:
            if batch:
                publish_many, mine = pub.publish_many, chunks[i]
                extra = {"atomic": True} if atomic else {}  # (runs against releases before atomic= too)
                for start in range(0, len(mine), batch):
                    results[i] += publish_many(mine[start : start + batch], **extra)
                return
            publish = pub.publish
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
        pub.close(timeout=10)
        failed = sum(1 for fs in results for f in fs if f.exception() is not None)
        assert failed == 0, f"{failed} futures failed"
        return elapsed

    return run


SCENARIOS: dict[str, Callable[[str, list[EventEnvelope]], float]] = {
    "A nats-py core publish+flush": baseline_a,
    "B nats-py js.publish_async": baseline_b,
    "C naive sync js.publish": baseline_c,
    "R raw JetStream ceiling": raw_jetstream,
    "R raw core ceiling": raw_core,
    "R raw fast-ingest ceiling": raw_fast_ingest,
    "R raw atomic ceiling": raw_atomic,
    "lib JetStream, 1 thread": library(True, 1),
    "lib JetStream, 4 threads": library(True, 4),
    "lib JetStream, publish_many": library(True, 1, 1000),
    "lib JetStream, publish_many fast ingest": library(True, 1, 1000, stream=STREAM),
    "lib JetStream, publish_many atomic": library(True, 1, 1000, atomic=True, stream=STREAM),
    "lib core, 1 thread": library(False, 1),
    "lib core, 4 threads": library(False, 4),
    "lib core, publish_many": library(False, 1, 1000),
}
#: Scenarios on a stream that allows atomic and fast-ingest batches (the others: a plain stream).
BATCHES = {
    "R raw atomic ceiling",
    "R raw fast-ingest ceiling",
    "lib JetStream, publish_many fast ingest",
    "lib JetStream, publish_many atomic",
}
RATIOS = [
    ("lib JetStream, 1 thread", "B nats-py js.publish_async", 2.0),
    ("lib JetStream, 4 threads", "B nats-py js.publish_async", 2.0),
    ("lib JetStream, publish_many", "B nats-py js.publish_async", 3.0),
    ("lib JetStream, publish_many", "R raw JetStream ceiling", 0.6),
    ("lib JetStream, 1 thread", "R raw JetStream ceiling", 0.0),
    ("lib JetStream, publish_many fast ingest", "R raw JetStream ceiling", 0.8),
    ("lib JetStream, publish_many fast ingest", "B nats-py js.publish_async", 4.0),
    ("lib JetStream, publish_many fast ingest", "R raw fast-ingest ceiling", 0.0),
    ("lib JetStream, publish_many fast ingest", "lib JetStream, publish_many", 0.0),
    ("lib JetStream, publish_many atomic", "B nats-py js.publish_async", 2.5),
    ("lib JetStream, publish_many atomic", "R raw atomic ceiling", 0.0),
    ("R raw fast-ingest ceiling", "R raw JetStream ceiling", 0.0),
    ("lib core, 1 thread", "A nats-py core publish+flush", 0.6),
    ("lib core, 4 threads", "A nats-py core publish+flush", 0.6),
    ("lib core, publish_many", "A nats-py core publish+flush", 2.0),
    ("lib core, publish_many", "R raw core ceiling", 0.0),
    ("lib JetStream, 1 thread", "C naive sync js.publish", 10.0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None)
    parser.add_argument("--only", default=None, help="comma-separated scenario name prefixes")
    parser.add_argument("--window", type=int, default=None, help="the library's window (default: its default)")
    args = parser.parse_args()
    global WINDOW
    WINDOW = args.window
    names = list(SCENARIOS)
    if args.only:
        names = [n for n in names if any(n.startswith(p) for p in args.only.split(","))]
    rates: dict[str, list[float]] = {n: [] for n in names}
    print(f"{machine()}; N={args.events} (C: {args.events // 10}); {args.rounds} rounds")
    with NatsServer() as server:
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                n = args.events // 10 if name.startswith("C ") else args.events
                envs = make_envelopes(n)
                asyncio.run(fresh_stream(server.url, batches=name in BATCHES))
                gc.collect()  # the garbage of building the envelopes is not the scenario's to collect
                elapsed = SCENARIOS[name](server.url, envs)
                if not name.startswith(("A ", "R raw core", "lib core")):
                    stored = asyncio.run(stream_count(server.url))
                    assert stored == n, f"{name}: stream holds {stored}, expected {n}"
                rates[name].append(n / elapsed)
            print(
                f"round {r + 1}: "
                + ", ".join(f"{n.split()[0] if not n.startswith('lib') else n}={rates[n][-1]:,.0f}" for n in names)
            )
    print(f"\n{'scenario':32} {'msgs/s median':>14}  (min – max)")
    for name in names:
        s = summary(rates[name])
        print(f"{name:32} {s['median']:>14,.0f}  ({s['min']:,.0f} – {s['max']:,.0f})")
    ratios = {}
    print("\nratios (per round, median (min – max)):")
    for lib, base, target in RATIOS:
        if lib in rates and base in rates:
            per_round = [a / b for a, b in zip(rates[lib], rates[base], strict=True)]  # one rate per round each
            s = summary(per_round)
            ratios[f"{lib} / {base}"] = {**s, "target": target}
            verdict = (
                ("; target >= {}x: {}".format(target, "meets" if s["median"] >= target else "BELOW")) if target else ""
            )
            print(f"  {lib} / {base.split()[0]}: {s['median']:.2f}x ({s['min']:.2f} – {s['max']:.2f}){verdict}")
    write_json(
        args.json,
        {
            "machine": machine(),
            "events": args.events,
            "rounds": args.rounds,
            "rates": {n: {**summary(v), "all": v} for n, v in rates.items()},
            "ratios": ratios,
            "median_of_medians": statistics.median([summary(v)["median"] for v in rates.values()]),
        },
    )


if __name__ == "__main__":
    main()
