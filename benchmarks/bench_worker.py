"""What publishing adds to one pre-fork worker's life: its first publish, its acks and its exit.

Usage: python benchmarks/bench_worker.py [--workers 20] [--rounds 3] [--library PATH ...] [--json PATH]

A recycled gunicorn/uWSGI worker pays, once per life, what a long-lived one pays once: connecting
(and, without ``--preload``, ``build_from_env()``'s broker check at import), and closing at exit.
`bench_recycle.py` measures that through real gunicorn, where HTTP and scheduling noise are
larger than the effect; this script measures the worker itself, with no server around it:

  no preload  a fresh interpreter imports ``examples/wsgi_app.py`` (as a worker does), serves 10
              requests (each waiting for its ack, called in-process) and exits normally
  preload     a master imports the app once and forks the workers, which serve 10 requests and
              exit normally (``sys.exit``: atexit hooks run, as in gunicorn)

each once publishing and once with ``EDUPULSE_EXAMPLE_NO_PUBLISH=1`` (the same app, the library
imported, nothing published), interleaved worker by worker (pairs of adjacent runs, every setting
and library in turn, so that the machine's slow moments hit all alike). Per worker: wall time from
spawn to reaped and CPU (user + system, from ``wait4``). Reported: medians, and what publishing
adds (the median of the pairs' differences), per library given with ``--library`` (default: this
checkout), and the floor: the same worker publishing with nats-py alone (a thread with an event
loop connects on the first publish, each publish awaits its JetStream ack, the connection is
closed at exit; no start-up check), paired with a baseline of its own. Then, in one warm process
per library, what ``check()`` and a publisher's connection (``start()``) take: the part of a
worker's life the library controls beyond the first-time costs of a thread, a loop and a socket
in a new process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _common import machine, write_json

from edupulse_events.testing import NatsServer

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = 10

# The floor: what the same worker pays with nats-py alone and nothing of this library's publisher
# (the app's envelopes, encoded with its codec): on the first publish a thread with an event loop
# connects and takes JetStream; each publish awaits its ack; at exit the connection is closed.
FLOOR = """
import asyncio, atexit, threading, types
import nats
from edupulse_events import encode

class NatsPyAlone:
    def __init__(self, url):
        self.url, self.loop, self.js = url, None, None

    def publish(self, envelope):
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
            threading.Thread(target=self.loop.run_forever, daemon=True).start()
            self.nc = asyncio.run_coroutine_threadsafe(nats.connect(self.url), self.loop).result(10)
            self.js = self.nc.jetstream()
            atexit.register(self.close)
        return asyncio.run_coroutine_threadsafe(self._publish(envelope), self.loop)

    async def _publish(self, envelope):
        subject = "edupulse." + envelope.tenant_id + ".LessonPublished"
        ack = await self.js.publish(subject, encode(envelope), headers={"Nats-Msg-Id": str(envelope.event_id)})
        return types.SimpleNamespace(broker_sequence=ack.seq)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.nc.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
"""

SERVE = f"""
import os, sys
sys.path.insert(0, {str(ROOT / "examples")!r})
import wsgi_app
if os.environ.get("BENCH_WORKER_FLOOR") == "1":
    exec(compile({FLOOR!r}, "floor", "exec"))
    wsgi_app.publisher = NatsPyAlone(os.environ["EDUPULSE_EVENT_BROKER_URL"])
import resource, time
FIRST = []  # the first request: wall s, CPU s (both threads), page faults, system CPU s
def serve():
    for i in range({REQUESTS}):
        status = []
        if i == 0:
            t, c, u = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
        wsgi_app.application(
            {{"PATH_INFO": "/publish", "REQUEST_METHOD": "POST", "QUERY_STRING": "wait=1"}},
            lambda s, h: status.append(s),
        )
        if i == 0:
            w, p, v = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
            FIRST[:] = [w - t, p - c, v.ru_minflt - u.ru_minflt, v.ru_stime - u.ru_stime]
        assert status[0][:3] in ("201", "202"), status
"""

FRESH = SERVE + "serve()\n"

MASTER = (
    SERVE
    + """
import json, os, time
n = int(sys.argv[1])
results = []
for _ in range(n):
    read, write = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        serve()
        os.write(write, json.dumps(FIRST).encode())
        raise SystemExit(0)  # unwinds to the top: atexit hooks run, as in a gunicorn worker
    os.close(write)
    _, status, usage = os.wait4(pid, 0)
    assert status == 0, status
    first = json.loads(os.read(read, 4096))
    os.close(read)
    results.append((time.perf_counter() - start, usage.ru_utime + usage.ru_stime, *first))
print(json.dumps(results))
"""
)


CONNECT = """
import json, statistics, sys, time
from edupulse_events import NatsPublisher, PublisherConfig
subject = "edupulse.{tenant}.{type}"
cfg = PublisherConfig(servers=sys.argv[1], subject=subject, stream="BENCH_WORKER", create_stream=True)  # as the app
samples = []
for i in range(33):
    pub = NatsPublisher(cfg)
    c, t = time.process_time(), time.perf_counter()
    pub.check()
    c1, t1 = time.process_time(), time.perf_counter()
    pub.start()
    c2, t2 = time.process_time(), time.perf_counter()
    pub.close(5)
    if i >= 3:  # warm: what a process pays beyond its first-time costs
        samples.append((t1 - t, c1 - c, t2 - t1, c2 - c1))
print(json.dumps([statistics.median(s[k] for s in samples) * 1e3 for k in range(4)]))
"""


def run_connect(env: dict[str, str], url: str) -> list[float] | None:
    """None for a library without ``check()`` (before 0.3.0)."""
    out = subprocess.run(
        [sys.executable, "-c", CONNECT, url], env=env, cwd=env["PYTHONPATH"], capture_output=True, text=True
    )
    if out.returncode != 0:
        print(f"{env['PYTHONPATH']}: connection set-up not measured ({out.stderr.strip().splitlines()[-1]})")
        return None
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


Sample = tuple[float, ...]  # wall s and CPU s of a worker's life (preload: then its first request's, and faults)


def run_fresh(env: dict[str, str], n: int) -> list[Sample]:
    results: list[Sample] = []
    for _ in range(n):
        start = time.perf_counter()
        library = env["PYTHONPATH"]  # python -c puts the working directory first: it must be the library's
        proc = subprocess.Popen([sys.executable, "-c", FRESH], env=env, cwd=library, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = status
        assert status == 0, f"worker exited with {status}"
        results.append((time.perf_counter() - start, usage.ru_utime + usage.ru_stime))
    return results


def run_preload(env: dict[str, str], n: int) -> list[Sample]:
    out = subprocess.run(
        [sys.executable, "-c", MASTER, str(n)],
        env=env,
        cwd=env["PYTHONPATH"],  # python -c puts the working directory first: it must be the library's
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return [tuple(pair) for pair in json.loads(out.stdout.strip().splitlines()[-1])]


FLOOR_ROW = "nats-py alone (the floor)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=20, help="workers per setting and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--library", action="append", default=None, help="a checkout to take edupulse_events from")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    libraries = [str(Path(p).resolve()) for p in (args.library or [str(ROOT)])]
    settings = {"no preload": run_fresh, "preload": run_preload}
    # per row (a library, or the floor) and setting: its workers, and its pairs' differences
    samples: dict[tuple[str, str], list[Sample]] = {}
    bases: dict[tuple[str, str], list[Sample]] = {}
    added: dict[tuple[str, str], list[Sample]] = {}
    print(f"{machine()}; {args.workers} workers x {args.rounds} rounds per setting; {REQUESTS} requests each")
    with NatsServer() as nats:

        def worker(run: Callable[[dict[str, str], int], list[Sample]], library: str, kind: str) -> Sample:
            env = {
                **os.environ,
                "PYTHONPATH": library,
                "EDUPULSE_EVENT_BROKER_URL": nats.url,
                "EDUPULSE_EVENT_BROKER_SUBJECT": "edupulse.{tenant}.{type}",
                "EDUPULSE_EXAMPLE_STREAM": "BENCH_WORKER",
            }
            if kind != "publish":
                env["EDUPULSE_EXAMPLE_NO_PUBLISH"] = "1"
            if kind == "floor":
                env["BENCH_WORKER_FLOOR"] = "1"
            [one] = run(env, 1)
            return one

        def record(row: str, setting: str, one: Sample, base: Sample) -> None:
            samples.setdefault((row, setting), []).append(one)
            bases.setdefault((row, setting), []).append(base)
            added.setdefault((row, setting), []).append((one[0] - base[0], one[1] - base[1]))

        for r in range(args.rounds):
            for _ in range(args.workers):  # interleaved worker by worker: a slow moment hits every cell alike
                for setting, run in settings.items():
                    for library in libraries:
                        record(library, setting, worker(run, library, "publish"), worker(run, library, "base"))
                    # the floor, paired with a baseline of its own (the last library's app, publishing nothing)
                    floor = worker(run, libraries[-1], "floor")
                    record(FLOOR_ROW, setting, floor, worker(run, libraries[-1], "base"))
            print(f"round {r + 1} done", flush=True)
        connects = {library: run_connect({**os.environ, "PYTHONPATH": library}, nats.url) for library in libraries}
    figures: dict[str, dict[str, float]] = {}
    print(f"\n{'library':40} {'setting':11} {'wall ms: pub / base / added':>28} {'CPU ms: pub / base / added':>28}")
    for row in [*libraries, FLOOR_ROW]:
        for setting in settings:
            pub, base = samples[(row, setting)], bases[(row, setting)]
            wall = [statistics.median(one[0] for one in s) * 1e3 for s in (pub, base)]
            cpu = [statistics.median(one[1] for one in s) * 1e3 for s in (pub, base)]
            pairs = added[(row, setting)]
            wall_added = statistics.median(w for w, _ in pairs) * 1e3
            cpu_added = statistics.median(c for _, c in pairs) * 1e3
            figures[f"{row} {setting}"] = {"wall_added_ms": wall_added, "cpu_added_ms": cpu_added}
            print(
                f"{row[-40:]:40} {setting:11} {wall[0]:>9.1f} / {wall[1]:6.1f} / {wall_added:+6.1f}"
                f"    {cpu[0]:>9.1f} / {cpu[1]:6.1f} / {cpu_added:+6.1f}"
            )
    print("(added: the median of the differences of adjacent publishing/baseline pairs)")
    print("\nthe first request (publish + ack) inside a forked worker (preload), median: wall / CPU (system) / faults")
    for row in [*libraries, FLOOR_ROW]:
        firsts = [one[2:] for one in samples[(row, "preload")]]
        first_wall, first_cpu, faults, system = (statistics.median(f[k] for f in firsts) for k in range(4))
        figures[f"{row} first publish"] = {
            "wall_ms": first_wall * 1e3,
            "cpu_ms": first_cpu * 1e3,
            "system_cpu_ms": system * 1e3,
            "faults": faults,
        }
        ms = f"{first_wall * 1e3:6.2f} ms / {first_cpu * 1e3:6.2f} ms ({system * 1e3:5.2f})"
        print(f"{row[-40:]:40} {ms} / {faults:5.0f}")
    print("\nconnection set-up in a warm process (median of 30): check() and the first connect (start())")
    for library, measured in connects.items():
        if measured is None:
            continue
        check_wall, check_cpu, start_wall, start_cpu = measured
        figures[f"{library} connect"] = {"check_ms": check_wall, "start_ms": start_wall}
        print(
            f"{library[-40:]:40} check() {check_wall:.2f} ms wall / {check_cpu:.2f} ms CPU;"
            f"  start() {start_wall:.2f} ms wall / {start_cpu:.2f} ms CPU"
        )
    write_json(args.json, {"machine": machine(), "requests": REQUESTS, "added": figures})


if __name__ == "__main__":
    main()
