"""Latency and memory: publish() call time, JetStream enqueue-to-ack time, peak RSS for 1M events.

Usage: python benchmarks/bench_latency.py [--events 20000] [--rounds 5] [--rss-events 1000000] [--json PATH]

- publish() latency: each call timed with perf_counter_ns while the queue has room
  (the publisher paces itself: the caller waits for a batch's acks every 1,000 events).
- enqueue-to-ack: from just before publish() to the future's done-callback (run on the
  publisher thread when the ack is processed), at the default window, at a steady offered
  load (batches of 200 events, then wait for them).
- peak RSS: a child process pushes N events through the core publisher, building each
  envelope on the fly and dropping its future; ru_maxrss is reported for N/5 and N events,
  so growth with N shows as a difference.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

from _common import SUBJECT, fresh_stream, machine, make_envelopes, percentile, summary, write_json

from edupulse_events import NatsPublisher
from edupulse_events.testing import NatsServer

RSS_CHILD = r"""
import resource, sys, uuid
sys.path.insert(0, {root!r})
from edupulse_events import EventEnvelope, NatsPublisher, QuizSubmitted
pub = NatsPublisher.connect({url!r}, "bench.rss", jetstream=False)
answers = {{"q1": "a", "q2": "c", "q3": "b"}}
for i in range({n}):
    pub.publish(EventEnvelope.new(QuizSubmitted(uuid.uuid4(), uuid.uuid4(), answers), correlation_id=uuid.uuid4(),
                                  tenant_id="school-district-42", personally_identifiable=True))
assert pub.flush(timeout=120)
pub.close(timeout=10)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def publish_latency(url: str, n: int) -> list[float]:
    envs = make_envelopes(n)
    out: list[float] = []
    with NatsPublisher.connect(url, SUBJECT) as pub:
        clock = time.perf_counter_ns
        for start in range(0, n, 1000):
            for env in envs[start : start + 1000]:
                t0 = clock()
                pub.publish(env)
                out.append((clock() - t0) / 1000)
            pub.flush(timeout=30)
    return out


def ack_latency(url: str, n: int) -> list[float]:
    envs = make_envelopes(n)
    out: list[float] = []
    with NatsPublisher.connect(url, SUBJECT) as pub:
        clock = time.perf_counter_ns
        for start in range(0, n, 200):
            for env in envs[start : start + 200]:
                t0 = clock()
                future = pub.publish(env)

                def record(_f: object, t0: int = t0) -> None:
                    out.append((clock() - t0) / 1e6)

                future.add_done_callback(record)
            pub.flush(timeout=30)
    return out


def peak_rss_mb(url: str, n: int) -> float:
    root = str(Path(__file__).resolve().parent.parent)
    res = subprocess.run(
        [sys.executable, "-c", RSS_CHILD.format(root=root, url=url, n=n)], capture_output=True, text=True, timeout=900
    )
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return int(res.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rss-events", type=int, default=1_000_000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    print(f"{machine()}; {args.events} events x {args.rounds} rounds")
    p50s, p99s, a50s, a99s = [], [], [], []
    with NatsServer() as server:
        for r in range(args.rounds):
            asyncio.run(fresh_stream(server.url))
            lat = sorted(publish_latency(server.url, args.events))
            asyncio.run(fresh_stream(server.url))
            ack = sorted(ack_latency(server.url, args.events))
            p50s.append(percentile(lat, 50))
            p99s.append(percentile(lat, 99))
            a50s.append(percentile(ack, 50))
            a99s.append(percentile(ack, 99))
            print(
                f"round {r + 1}: publish() p50 {p50s[-1]:.1f} us p99 {p99s[-1]:.1f} us; "
                f"enqueue-to-ack p50 {a50s[-1]:.2f} ms p99 {a99s[-1]:.2f} ms"
            )
        rss_small = peak_rss_mb(server.url, args.rss_events // 5)
        rss_big = peak_rss_mb(server.url, args.rss_events)
    fig = {
        "publish_p50_us": summary(p50s),
        "publish_p99_us": summary(p99s),
        "ack_p50_ms": summary(a50s),
        "ack_p99_ms": summary(a99s),
        "rss_mb": {str(args.rss_events // 5): rss_small, str(args.rss_events): rss_big},
    }
    print(
        f"\npublish() latency, queue not full: p50 {fig['publish_p50_us']['median']:.1f} us, "
        f"p99 {fig['publish_p99_us']['median']:.1f} us (median of rounds; target p99 <= 50 us)"
    )
    print(
        f"JetStream enqueue-to-ack, default window: p50 {fig['ack_p50_ms']['median']:.2f} ms, "
        f"p99 {fig['ack_p99_ms']['median']:.2f} ms (target p99 <= 25 ms)"
    )
    print(
        f"peak RSS, core publisher: {rss_small:.0f} MB for {args.rss_events // 5:,} events, "
        f"{rss_big:.0f} MB for {args.rss_events:,} (target <= 200 MB, not growing with N)"
    )
    write_json(args.json, {"machine": machine(), **fig})


if __name__ == "__main__":
    main()
