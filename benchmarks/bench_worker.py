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
checkout). Then, in one warm process per library, what ``check()`` and a publisher's connection
(``start()``) take: the part of a worker's life the library controls beyond the first-time costs
of a thread, a loop and a socket in a new process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import machine, write_json

from edupulse_events.testing import NatsServer

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = 10

SERVE = f"""
import sys
sys.path.insert(0, {str(ROOT / "examples")!r})
import wsgi_app
def serve():
    for _ in range({REQUESTS}):
        status = []
        wsgi_app.application(
            {{"PATH_INFO": "/publish", "REQUEST_METHOD": "POST", "QUERY_STRING": "wait=1"}},
            lambda s, h: status.append(s),
        )
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
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        serve()
        raise SystemExit(0)  # unwinds to the top: atexit hooks run, as in a gunicorn worker
    _, status, usage = os.wait4(pid, 0)
    assert status == 0, status
    results.append((time.perf_counter() - start, usage.ru_utime + usage.ru_stime))
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


def run_fresh(env: dict[str, str], n: int) -> list[tuple[float, float]]:
    results = []
    for _ in range(n):
        start = time.perf_counter()
        library = env["PYTHONPATH"]  # python -c puts the working directory first: it must be the library's
        proc = subprocess.Popen([sys.executable, "-c", FRESH], env=env, cwd=library, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = status
        assert status == 0, f"worker exited with {status}"
        results.append((time.perf_counter() - start, usage.ru_utime + usage.ru_stime))
    return results


def run_preload(env: dict[str, str], n: int) -> list[tuple[float, float]]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=20, help="workers per setting and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--library", action="append", default=None, help="a checkout to take edupulse_events from")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    libraries = [str(Path(p).resolve()) for p in (args.library or [str(ROOT)])]
    settings = {"no preload": run_fresh, "preload": run_preload}
    samples: dict[tuple[str, str, bool], list[tuple[float, float]]] = {}
    added: dict[tuple[str, str], list[tuple[float, float]]] = {}
    print(f"{machine()}; {args.workers} workers x {args.rounds} rounds per setting; {REQUESTS} requests each")
    with NatsServer() as nats:
        for r in range(args.rounds):
            for _ in range(args.workers):  # interleaved worker by worker: a slow moment hits every cell alike
                for library in libraries:
                    for setting, run in settings.items():
                        pair = []
                        for publish in (True, False):
                            env = {
                                **os.environ,
                                "PYTHONPATH": library,
                                "EDUPULSE_EVENT_BROKER_URL": nats.url,
                                "EDUPULSE_EVENT_BROKER_SUBJECT": "edupulse.{tenant}.{type}",
                                "EDUPULSE_EXAMPLE_STREAM": "BENCH_WORKER",
                            }
                            if not publish:
                                env["EDUPULSE_EXAMPLE_NO_PUBLISH"] = "1"
                            [one] = run(env, 1)
                            samples.setdefault((library, setting, publish), []).append(one)
                            pair.append(one)
                        added.setdefault((library, setting), []).append(
                            (pair[0][0] - pair[1][0], pair[0][1] - pair[1][1])
                        )
            print(f"round {r + 1} done", flush=True)
        connects = {library: run_connect({**os.environ, "PYTHONPATH": library}, nats.url) for library in libraries}
    figures: dict[str, dict[str, float]] = {}
    print(f"\n{'library':40} {'setting':11} {'wall ms: pub / base / added':>28} {'CPU ms: pub / base / added':>28}")
    for library in libraries:
        for setting in settings:
            pub, base = samples[(library, setting, True)], samples[(library, setting, False)]
            wall = [statistics.median(w for w, _ in s) * 1e3 for s in (pub, base)]
            cpu = [statistics.median(c for _, c in s) * 1e3 for s in (pub, base)]
            pairs = added[(library, setting)]
            wall_added = statistics.median(w for w, _ in pairs) * 1e3
            cpu_added = statistics.median(c for _, c in pairs) * 1e3
            figures[f"{library} {setting}"] = {"wall_added_ms": wall_added, "cpu_added_ms": cpu_added}
            print(
                f"{library[-40:]:40} {setting:11} {wall[0]:>9.1f} / {wall[1]:6.1f} / {wall_added:+6.1f}"
                f"    {cpu[0]:>9.1f} / {cpu[1]:6.1f} / {cpu_added:+6.1f}"
            )
    print("(added: the median of the differences of adjacent publishing/baseline pairs)")
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
