"""Consuming: events/s handled (decode + ack, a trivial handler) by `NatsConsumer.run()` from 1 and
4 handler threads, beside nats-py's own asyncio pull consumer in the same run, and fetch-to-ack
latency.

Usage: python benchmarks/bench_consume.py [--events 30000] [--rounds 5] [--json PATH]

- The stream is filled once (file storage, the typical ~450-byte envelope); each scenario of each
  round reads all of it through a new durable consumer (deliver all, explicit acks).
- B (baseline): asyncio + nats-py, ``psub.fetch(100)``, then for each message
  ``codec.decode(msg.data)`` and ``await msg.ack()`` — what a user writes with nats-py alone.
- lib: ``NatsConsumer.run(handler, concurrency=1|4)`` (batch 100, the handler only counts).
- Both are timed from the first fetch request to the last message's ack being queued (the acks
  then reach the server in the next write; both libraries buffer them the same way).
- Latency: from the moment a fetched batch is in the process (nats-py's ``fetch()`` returned;
  the library's pump got it) to each message's ack, p50/p99 over all events of a round.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from typing import Any

import nats
from _common import SUBJECT, fresh_stream, machine, make_envelopes, percentile, summary, write_json

from edupulse_events import NatsConsumer, NatsPublisher, ReceivedMessage, decode
from edupulse_events._consumer import _loop
from edupulse_events.testing import NatsServer

STREAM = "BENCH"


def fill(url: str, n: int) -> None:
    asyncio.run(fresh_stream(url))
    with NatsPublisher.connect(url, SUBJECT, stream=STREAM) as pub:
        for start in range(0, n, 5000):
            pub.publish_many(make_envelopes(min(5000, n - start)))
        assert pub.flush(120)


async def nats_py(url: str, n: int, durable: str, latency: list[float] | None) -> float:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        psub = await js.pull_subscribe(SUBJECT, durable=durable, stream=STREAM)
        done = 0
        clock = time.perf_counter
        t0 = clock()
        while done < n:
            try:
                msgs = await psub.fetch(100, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            got = clock()
            for msg in msgs:
                decode(msg.data)
                await msg.ack()
                if latency is not None:
                    latency.append(clock() - got)
            done += len(msgs)
        elapsed = clock() - t0
        await nc.flush()
        return elapsed
    finally:
        await nc.close()


def library(url: str, n: int, durable: str, threads: int, latency: list[float] | None) -> float:
    stop = threading.Event()
    lock = threading.Lock()
    count = [0]
    end = [0.0]
    arrived: dict[str, float] = {}
    clock = time.perf_counter
    if latency is not None:  # stamp each batch as the pump gets it (bench-only instrumentation)
        took = _loop.ConsumerLoop._took  # noqa: SLF001 - bench-only instrumentation

        def stamped(self: Any, got: list[Any]) -> None:
            now = clock()
            for d in got:
                arrived[d.reply] = now
            took(self, got)

        _loop.ConsumerLoop._took = stamped  # type: ignore[method-assign]  # noqa: SLF001

    def handle(message: ReceivedMessage) -> None:
        message.ack()
        if latency is not None:
            latency.append(clock() - arrived.pop(message._delivery.reply))  # noqa: SLF001
        with lock:
            count[0] += 1
            if count[0] == n:
                end[0] = clock()
                stop.set()

    try:
        with NatsConsumer.connect(url, stream=STREAM, durable=durable, batch=100, max_buffered=400) as consumer:
            t0 = clock()
            consumer.run(handle, concurrency=threads, stop=stop, timeout=300.0)
    finally:
        if latency is not None:
            _loop.ConsumerLoop._took = took  # type: ignore[method-assign]  # noqa: SLF001
    return end[0] - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    n = args.events
    rates: dict[str, list[float]] = {"B": [], "lib 1 thread": [], "lib 4 threads": []}
    ratios: dict[str, list[float]] = {"lib 1 thread": [], "lib 4 threads": []}
    lat: dict[str, list[list[float]]] = {"B": [], "lib 1 thread": [], "lib 4 threads": []}
    names = iter(range(1, 1 << 30))
    with NatsServer() as server:
        fill(server.url, n)
        for _ in range(args.rounds):
            base = n / asyncio.run(nats_py(server.url, n, f"b{next(names)}", None))
            rates["B"].append(base)
            for threads in (1, 4):
                key = f"lib {threads} thread" + ("s" if threads > 1 else "")
                rate = n / library(server.url, n, f"l{next(names)}", threads, None)
                rates[key].append(rate)
                ratios[key].append(rate / base)
        for _ in range(max(1, args.rounds // 2)):
            samples: list[float] = []
            asyncio.run(nats_py(server.url, n, f"b{next(names)}", samples))
            lat["B"].append(sorted(samples))
            for threads in (1, 4):
                key = f"lib {threads} thread" + ("s" if threads > 1 else "")
                samples = []
                library(server.url, n, f"l{next(names)}", threads, samples)
                lat[key].append(sorted(samples))
    print(f"{machine()}; {n} events, {args.rounds} rounds")
    out: dict[str, Any] = {"machine": machine(), "events": n, "rounds": args.rounds}
    for key, values in rates.items():
        s = summary(values)
        p50 = statistics.median(percentile(v, 50) * 1e3 for v in lat[key])
        p99 = statistics.median(percentile(v, 99) * 1e3 for v in lat[key])
        line = f"{key:14s} {s['median']:9,.0f} events/s ({s['min']:,.0f}-{s['max']:,.0f})"
        if key in ratios:
            r = summary(ratios[key])
            line += f"  {r['median']:.2f}x B per round ({r['min']:.2f}-{r['max']:.2f})"
            out[key + " ratio"] = r
        line += f"  fetch-to-ack p50 {p50:.2f} ms p99 {p99:.2f} ms"
        print(line)
        out[key] = {**s, "p50_ms": p50, "p99_ms": p99}
    write_json(args.json, out)


if __name__ == "__main__":
    main()
