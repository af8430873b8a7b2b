"""What publishing adds when gunicorn recycles its workers (``--max-requests``), per recycled worker.

Usage: python benchmarks/bench_recycle.py [--requests 1000] [--rounds 3] [--library PATH] [--json PATH]

Runs ``examples/wsgi_app.py`` under real gunicorn (4 sync workers, 8 client threads, each view
waiting for its ack) against its own nats-server, in four settings — with and without
``--preload``, with and without ``--max-requests 10`` — each once publishing and once with
``EDUPULSE_EXAMPLE_NO_PUBLISH=1`` (the same app, the library imported, nothing published), round
by round. What recycling costs because of publishing, per recycled worker:

    ((publishing - baseline) with --max-requests  -  (publishing - baseline) without) / recycles

(the second difference takes out what publishing costs per request). Medians of the rounds.
``--library`` runs another checkout's edupulse_events in the servers (e.g. an older version).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "no preload": [],
    "--preload": ["--preload"],
}
RECYCLE = ["--max-requests", "10", "--max-requests-jitter", "2"]  # ~90 recycles a run: the noise shrinks per recycle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--library", default=None, help="a checkout to run edupulse_events from in the servers")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import servers_support as clients
    import wsgi_servers as servers
    from _common import machine, write_json

    from edupulse_events.testing import NatsServer, free_port, release_port

    library = Path(args.library).resolve() if args.library else ROOT
    times: dict[tuple[str, bool, bool], list[float]] = {}
    workers: dict[tuple[str, bool, bool], list[int]] = {}
    print(f"{machine()}; {args.requests} requests x {args.rounds} rounds; library: {library}")
    with NatsServer() as nats:
        for r in range(args.rounds):
            for setting, options in SETTINGS.items():
                for recycle in (True, False):
                    for publish in (True, False):
                        env = servers.server_env(nats)
                        env["PYTHONPATH"] = str(library)
                        if not publish:
                            env["EDUPULSE_EXAMPLE_NO_PUBLISH"] = "1"
                        port = free_port()
                        argv = servers.gunicorn_argv(port, *options, *(RECYCLE if recycle else []))
                        log = Path(tempfile.mkdtemp(prefix="bench-recycle-")) / "server.log"
                        server = servers.WsgiServer(argv, env, port, log, [servers.GUNICORN_WORKERS])
                        server.start()
                        try:
                            started = time.perf_counter()
                            load = clients.drive(port, args.requests, wait=True)
                            elapsed = time.perf_counter() - started
                        finally:
                            server.stop()
                            release_port(port)
                        assert len(load.ok) == args.requests, f"{len(load.ok)} of {args.requests} answered"
                        key = (setting, recycle, publish)
                        times.setdefault(key, []).append(elapsed)
                        workers.setdefault(key, []).append(len(load.pids))
            print(f"round {r + 1} done", flush=True)
    figures: dict[str, float] = {}
    print(f"\n{'setting':12} {'recycling':>10} {'publishing':>11} {'baseline':>9} {'workers':>8}")
    for setting in SETTINGS:
        for recycle in (True, False):
            pub, base = (
                statistics.median(times[(setting, recycle, True)]),
                statistics.median(times[(setting, recycle, False)]),
            )
            count = statistics.median(workers[(setting, recycle, True)])
            print(f"{setting:12} {'yes' if recycle else 'no':>10} {pub:>10.2f}s {base:>8.2f}s {count:>8.0f}")
        extra_recycling = [
            (a - b) - (c - d)
            for a, b, c, d in zip(
                times[(setting, True, True)],
                times[(setting, True, False)],
                times[(setting, False, True)],
                times[(setting, False, False)],
                strict=True,
            )
        ]
        recycles = statistics.median(workers[(setting, True, True)]) - 4
        per = statistics.median(extra_recycling) / max(recycles, 1) * 1000
        figures[setting] = per
        print(f"  {setting}: publishing adds {per:.1f} ms per recycled worker ({recycles:.0f} recycles a run)")
    write_json(args.json, {"machine": machine(), "library": str(library), "ms_per_recycle": figures})


if __name__ == "__main__":
    main()
