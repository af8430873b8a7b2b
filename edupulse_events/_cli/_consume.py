"""The ``consume`` command: run a handler function over a JetStream durable until stopped.

This module owns that command: its arguments, importing ``--handler module:function`` (called
with each `ReceivedMessage`: its return acks, an exception naks with backoff, a
`PermanentFailure` dead-letters), the broker settings (the ``EDUPULSE_EVENT_BROKER_*``
variables, as ``tail`` reads them), the progress line on stderr (a tqdm bar on a terminal with
the ``cli`` extra; otherwise a line every ``--progress`` seconds), the summary at the end and
the exit code: 0 after a clean stop (SIGTERM, Ctrl-C, ``--timeout``, ``--idle-timeout``), 1 when
the broker was lost, 2 for a usage or settings problem.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._common import add_import_argument, broker_config, import_codec, printable, progress_bar, redact, seconds

if TYPE_CHECKING:
    from ..consumer import NatsConsumer

__all__ = ["add_consume_command", "load_handler"]

_EPILOG = """\
The handler is called as handler(message) from --concurrency threads: message.envelope is the
decoded event; returning acks it, raising naks it (redelivered after a backoff that grows with
each delivery; past --max-deliver it goes to the dead letter), raising
edupulse_events.PermanentFailure sends it to the dead letter at once. Messages that do not
decode go to the dead letter too (--dead-letter SUBJECT, which a stream must capture; without
it they are terminated and logged).

SIGTERM or Ctrl-C stops it cleanly: nothing more is fetched, handlers finish (or their messages
are nak'ed after --stop-timeout), the rest held is nak'ed, the acks are flushed. Exit 0 then;
1 if the broker was lost; 2 for a usage or settings problem."""


def add_consume_command(commands: Any) -> None:
    """Register ``consume`` on ``commands`` (the ``add_subparsers()`` result)."""
    parser = commands.add_parser(
        "consume",
        help="run a handler over a JetStream durable consumer until stopped",
        description="Run HANDLER for every event of a durable pull consumer, acking what it handled.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", help="NATS server URL(s) (default: $EDUPULSE_EVENT_BROKER_URL)")
    parser.add_argument("--stream", help="the JetStream stream (default: $EDUPULSE_EVENT_BROKER_STREAM)")
    parser.add_argument("--durable", required=True, help="the durable consumer's name (created if missing)")
    parser.add_argument(
        "--handler", dest="handler_spec", required=True, metavar="MODULE:FUNCTION", help="called with each message"
    )
    parser.add_argument("--filter", metavar="SUBJECT", help="only subjects matching this filter (a new durable)")
    parser.add_argument("--concurrency", type=int, default=1, metavar="N", help="handler threads (default 1)")
    parser.add_argument("--dead-letter", metavar="SUBJECT", help="where undecodable and failed messages go")
    parser.add_argument("--max-deliver", type=int, default=5, metavar="N", help="deliveries at most (default 5)")
    parser.add_argument("--timeout", type=seconds, metavar="SECONDS", help="stop after this long (default: never)")
    parser.add_argument(
        "--idle-timeout",
        type=seconds,
        metavar="SECONDS",
        help="stop once nothing came and no handler was busy for this long (default: never)",
    )
    parser.add_argument("--stop-timeout", type=seconds, default=10.0, metavar="SECONDS", help="(default 10)")
    parser.add_argument("--progress", type=seconds, default=5.0, metavar="SECONDS", help="progress line interval")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    add_import_argument(parser)
    parser.set_defaults(handler=_consume)


def load_handler(spec: str) -> Callable[[Any], object]:
    """The function ``module:function`` names; `ValueError` saying why it is not one."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--handler {spec!r}: expected MODULE:FUNCTION")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"cannot import {module_name!r}: {type(exc).__name__}: {' '.join(str(exc).split())}") from exc
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
    if not callable(target):
        raise ValueError(f"--handler {spec!r}: {module_name}.{attribute} is not a function")
    return target  # type: ignore[no-any-return]


def _line(consumer: NatsConsumer, started: float) -> str:
    s = consumer.stats()
    rate = s.acknowledged / max(1e-9, time.monotonic() - started)
    return (
        f"edupulse-events consume: {s.received:,} received, {s.acknowledged:,} acked, {s.nacked:,} nak'ed, "
        f"{s.dead_lettered:,} dead-lettered, {s.handler_errors:,} handler errors ({rate:,.0f}/s)"
    )


def _consume(args: argparse.Namespace) -> int:
    from ..config import ConsumerConfig
    from ..consumer import NatsConsumer
    from ..errors import ConfigError, EventsError

    codec, problem = import_codec(args.imports)
    try:
        handler = load_handler(args.handler_spec)
    except ValueError as exc:
        problem = problem or str(exc)
    try:
        broker = broker_config(args.url, None, subject_required=False, spool_dir=None, create_stream=False)
        stream = args.stream or broker.stream
        if stream is None:
            raise ConfigError("no stream: pass --stream or set EDUPULSE_EVENT_BROKER_STREAM")
        if args.concurrency < 1:
            raise ConfigError(f"--concurrency must be >= 1, got {args.concurrency}")
        config = ConsumerConfig(
            servers=broker.servers,
            stream=stream,
            durable=args.durable,
            filter_subject=args.filter,
            max_deliver=args.max_deliver,
            dead_letter_subject=args.dead_letter,
            codec=codec,
            auth_token=broker.auth_token,
            user=broker.user,
            password=broker.password,
            nkey_seed=broker.nkey_seed,
            creds_file=broker.creds_file,
            inbox_prefix=broker.inbox_prefix,
            client_name="edupulse-events consume",
        )
    except ConfigError as exc:
        problem = problem or " ".join(str(exc).split())
    if problem is not None:
        print(f"edupulse-events consume: {printable(problem)}", file=sys.stderr)
        return 2
    bar = progress_bar(None, quiet=args.quiet, unit="event", desc="consumed")
    lock = threading.Lock()

    def handle(message: Any) -> object:
        result = handler(message)
        if bar is not None:
            with lock:
                bar.update(1)
        return result

    done = threading.Event()
    try:
        consumer = NatsConsumer(config).start()
    except EventsError as exc:
        print(f"edupulse-events consume: {printable(redact(str(exc), broker))}", file=sys.stderr)
        return 2
    started = time.monotonic()
    if bar is None and not args.quiet:

        def report() -> None:
            while not done.wait(args.progress):
                print(_line(consumer, started), file=sys.stderr, flush=True)

        threading.Thread(target=report, name="edupulse-consume-progress", daemon=True).start()
    print(f"edupulse-events consume: {stream}/{args.durable} on {broker.redacted_servers}", file=sys.stderr, flush=True)
    code = 0
    try:
        consumer.run(
            handle,
            concurrency=args.concurrency,
            timeout=args.timeout,
            idle_timeout=args.idle_timeout,
            stop_timeout=args.stop_timeout,
        )
    except KeyboardInterrupt:
        code = 0
    except EventsError as exc:
        print(f"edupulse-events consume: {printable(redact(str(exc), broker))}", file=sys.stderr)
        code = 1
    finally:
        done.set()
        if bar is not None:
            bar.close()
        consumer.close(args.stop_timeout)
        if not args.quiet:
            print(_line(consumer, started), file=sys.stderr, flush=True)
    return code
