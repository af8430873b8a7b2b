"""What OpenTelemetry costs the publisher: absent, installed without an SDK, and with an SDK tracing and metering.

Usage: python benchmarks/bench_otel.py [--events 30000] [--rounds 5] [--json PATH]

Starts its own nats-server; each round runs three scenarios, each in a fresh process, in a
rotating order: one caller thread publishes N typical envelopes to JetStream and flushes.
Reported: CPU per event (``time.process_time`` of the whole process, µs) and msgs/s, as median
(min - max), and each scenario's CPU ratio to "absent", round by round.

  absent   opentelemetry cannot be imported (blocked in sys.modules): the publish path's one check
  no-sdk   opentelemetry-api importable, no SDK configured (what most installs look like)
  sdk      opentelemetry-sdk providers given to the publisher: a span per event (a processor that
           drops them) and metrics (an in-memory reader) - the cost of having it on
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("absent", "no-sdk", "sdk")

CHILD = """
import sys, time, uuid
scenario, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if scenario == "absent":
    sys.modules["opentelemetry"] = None
from edupulse_events import EventEnvelope, NatsPublisher, QuizSubmitted
options = {}
if scenario == "sdk":
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(Drop()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    options = {"tracer_provider": tracer_provider, "meter_provider": meter_provider}
pub = NatsPublisher.connect(url, "bench.otel", stream="OTEL", create_stream=True, **options)
envs = [
    EventEnvelope.new(
        QuizSubmitted(uuid.uuid4(), uuid.uuid4(), {"q1": "a", "q2": "c", "q3": "b"}),
        correlation_id=uuid.uuid4(), tenant_id="school-district-42", personally_identifiable=True,
    )
    for _ in range(n)
]
pub.publish(envs[0]).result(timeout=10)
import gc; gc.collect()
cpu, wall = time.process_time(), time.perf_counter()
for env in envs[1:]:
    pub.publish(env)
assert pub.flush(timeout=120)
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
assert pub.stats().failed == 0
pub.close(10)
print((n - 1) / wall, cpu / (n - 1) * 1e6)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from _common import machine, summary, write_json

    from edupulse_events.testing import NatsServer

    rates: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    cpus: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    print(f"{machine()}; N={args.events}, {args.rounds} rounds")
    with NatsServer() as server:
        for r in range(args.rounds):
            order = SCENARIOS[r % 3 :] + SCENARIOS[: r % 3]
            for name in order:
                proc = subprocess.run(
                    [sys.executable, "-c", CHILD, name, server.url, str(args.events)],
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=True,
                )
                rate, cpu = (float(x) for x in proc.stdout.split()[-2:])
                rates[name].append(rate)
                cpus[name].append(cpu)
            print(f"round {r + 1}: " + ", ".join(f"{s}={cpus[s][-1]:.2f} us/event" for s in SCENARIOS), flush=True)
    print(f"\n{'scenario':10} {'CPU us/event':>13}  (min - max)   {'msgs/s':>9}   CPU ratio to absent, per round")
    for name in SCENARIOS:
        c, m = summary(cpus[name]), summary(rates[name])
        ratio = summary([a / b for a, b in zip(cpus[name], cpus["absent"], strict=True)])
        print(
            f"{name:10} {c['median']:>13.2f}  ({c['min']:.2f} - {c['max']:.2f})   {m['median']:>9,.0f}"
            f"   {ratio['median']:.3f}x ({ratio['min']:.3f} - {ratio['max']:.3f})"
        )
    write_json(
        args.json,
        {
            "machine": machine(),
            "events": args.events,
            "cpu_us_per_event": {s: summary(v) for s, v in cpus.items()},
            "msgs_per_s": {s: summary(v) for s, v in rates.items()},
            "cpu_ratio_to_absent": {
                s: statistics.median(a / b for a, b in zip(cpus[s], cpus["absent"], strict=True)) for s in SCENARIOS
            },
        },
    )


if __name__ == "__main__":
    main()
