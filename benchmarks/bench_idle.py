"""What idle publishers cost: CPU used by 100 connected publishers with nothing to send.

Usage: python benchmarks/bench_idle.py [--publishers 100] [--seconds 10] [--rounds 3] [--json PATH]
       [--library PATH]   (import edupulse_events from another checkout, e.g. an older version)

Starts its own nats-server, then alternates two scenarios round by round, each measured as the
process's CPU time (all threads, ``time.process_time``) over ``--seconds`` of wall time:

  baseline  N idle nats-py clients, each on its own thread and event loop, with the same ping
            settings as the library's connections (what N connections cost at the least)
  library   N idle NatsPublishers (each connected, one event published and acknowledged first)

Prints the CPU used (ms per second of wall time) as median (min - max) and the ratio to the
baseline per round. A gunicorn with 32 workers runs 32 publishers, one per process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

PING_INTERVAL = 5  # the library's connections ping every 5 s (and so do the baseline's)


class IdleClient:
    """One nats-py connection on its own thread and loop, doing nothing."""

    def __init__(self, url: str) -> None:
        import nats

        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._nats = nats
        self._url = url
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("baseline client did not connect")

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        nc = await self._nats.connect(self._url, ping_interval=PING_INTERVAL, max_outstanding_pings=2)
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await nc.close()

    def close(self) -> None:
        stop = self._stop
        if stop is not None:
            self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(10)


def cpu_per_second(seconds: float) -> float:
    """CPU milliseconds the whole process uses per second of wall time, over ``seconds``."""
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(seconds)  # the measurement itself: the process idles while we watch
    return (time.process_time() - cpu0) * 1000 / (time.monotonic() - wall0)


def baseline(url: str, n: int, seconds: float) -> float:
    clients = [IdleClient(url) for _ in range(n)]
    try:
        return cpu_per_second(seconds)
    finally:
        for client in clients:
            client.close()


def library(url: str, n: int, seconds: float) -> float:
    import uuid

    from edupulse_events import EventEnvelope, NatsPublisher, QuizSubmitted

    publishers = [NatsPublisher.connect(url, "bench.idle", stream="IDLE", create_stream=True) for _ in range(n)]
    try:
        for pub in publishers:
            event = QuizSubmitted(uuid.uuid4(), uuid.uuid4(), {"q1": "a"})
            pub.publish(EventEnvelope.new(event, tenant_id="school-1")).result(timeout=30)
        for pub in publishers:
            pub.flush(timeout=30)
        time.sleep(0.5)  # let the last sweeps and reports run out before measuring
        return cpu_per_second(seconds)
    finally:
        for pub in publishers:
            pub.close(timeout=10)


def in_child(scenario: str, url: str, n: int, seconds: float, library_path: Path) -> float:
    """Run one scenario in a fresh process importing edupulse_events from ``library_path``."""
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--scenario",
            scenario,
            "--url",
            url,
            "--publishers",
            str(n),
            "--seconds",
            str(seconds),
        ],
        env={**os.environ, "PYTHONPATH": str(library_path)},
        capture_output=True,
        text=True,
        timeout=seconds * 10 + 120,
        check=True,
    )
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--publishers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--library", default=None, help="a checkout to import edupulse_events from")
    parser.add_argument("--scenario", choices=["baseline", "library"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scenario:  # a child: measure one scenario, print the figure
        fn = baseline if args.scenario == "baseline" else library
        print(fn(args.url, args.publishers, args.seconds))
        return
    sys.path.insert(0, str(ROOT))
    from _common import machine, summary, write_json

    from edupulse_events.testing import NatsServer

    where = Path(args.library).resolve() if args.library else ROOT
    print(
        f"{machine()}; {args.publishers} idle publishers, {args.seconds} s x {args.rounds} rounds; library at {where}"
    )
    results: dict[str, list[float]] = {"baseline": [], "library": []}
    with NatsServer() as server:
        for r in range(args.rounds):
            order = ["baseline", "library"] if r % 2 == 0 else ["library", "baseline"]
            for name in order:
                results[name].append(in_child(name, server.url, args.publishers, args.seconds, where))
            print(f"round {r + 1}: " + ", ".join(f"{k}={v[-1]:.1f} ms/s" for k, v in results.items()), flush=True)
    ratios = [lib / base for lib, base in zip(results["library"], results["baseline"], strict=True)]
    print(f"\n{'scenario':44} {'CPU ms per s':>12}  (min - max)")
    for name, label in (("baseline", "nats-py clients, idle"), ("library", "NatsPublishers, idle")):
        s = summary(results[name])
        print(f"{args.publishers} {label:40} {s['median']:>12.1f}  ({s['min']:.1f} - {s['max']:.1f})")
    ratio = summary(ratios)
    print(f"\nratio library / baseline per round: {ratio['median']:.2f}x ({ratio['min']:.2f} - {ratio['max']:.2f})")
    payload: dict[str, Any] = {
        "machine": machine(),
        "publishers": args.publishers,
        "seconds": args.seconds,
        "cpu_ms_per_s": {k: summary(v) for k, v in results.items()},
        "ratio": summary(ratios),
        "median_per_publisher_ms_per_s": statistics.median(results["library"]) / args.publishers,
    }
    write_json(args.json, payload)


if __name__ == "__main__":
    main()
