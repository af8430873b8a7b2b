"""The ``outbox`` command group of the command line: ``outbox relay|inspect|retry-dead --db URL``.

This module owns those commands (arguments, output, exit codes); the relay itself is
`edupulse_events.outbox.OutboxRelay`, the table's reading `_outbox._stores`. ``--db`` takes a
SQLAlchemy-style URL (``sqlite:///path/app.db``, ``postgresql://user@host/db``; the ``outbox``
extra), its password never printed. ``relay`` takes the broker from ``--url/--subject/--stream``
or the ``EDUPULSE_EVENT_BROKER_*`` variables, as ``publish`` does, and runs until SIGTERM or
Ctrl-C (finishing its pass), or with ``--once`` delivers what is committed and exits.

Exit codes: 0 done; 1 the broker or the database failed (what was not delivered waits in the
table); 2 bad usage (a URL or broker setting that cannot work).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from typing import Any

from ._common import add_import_argument, broker_config, import_codec, plural, printable, redact, seconds
from ._spool import age

__all__ = ["add_outbox_commands"]


def add_outbox_commands(commands: Any) -> None:
    """Register ``outbox relay|inspect|retry-dead`` on ``commands`` (the ``add_subparsers()`` result)."""
    outbox = commands.add_parser(
        "outbox",
        help="relay, inspect or retry a transactional outbox table",
        description="Work on the outbox table (edupulse_events.outbox) of an application's database.",
    )
    sub = outbox.add_subparsers(dest="outbox_command", required=True, metavar="{relay,inspect,retry-dead}")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--db", required=True, help="the database URL: sqlite:///path/app.db or postgresql://user@host/db"
        )
        parser.add_argument("--table", default="edupulse_outbox", help="the outbox table (default edupulse_outbox)")

    relay = sub.add_parser(
        "relay",
        help="deliver committed outbox rows to the broker",
        description="Deliver the outbox's committed transactions to the broker, each as one atomic batch, until "
        "SIGTERM or Ctrl-C (or, with --once, what is committed now). The broker comes from --url/--subject/--stream "
        "or the EDUPULSE_EVENT_BROKER_* variables (credentials: _TOKEN, _NKEY_SEED, _CREDS or in the URL; never "
        "printed). Exit 0 when done, 1 if the broker or the database failed (the rows wait), 2 on bad settings.",
    )
    common(relay)
    relay.add_argument("--url", help="NATS server URL(s) (default: $EDUPULSE_EVENT_BROKER_URL)")
    relay.add_argument("--subject", help="subject template (default: $EDUPULSE_EVENT_BROKER_SUBJECT)")
    relay.add_argument("--stream", help="JetStream stream (default: $EDUPULSE_EVENT_BROKER_STREAM)")
    relay.add_argument("--once", action="store_true", help="deliver what is committed now, then exit")
    relay.add_argument("--timeout", type=seconds, default=60.0, help="with --once: seconds at most (default 60)")
    relay.add_argument("--poll", type=seconds, default=0.5, help="seconds between looks when idle (default 0.5)")
    add_import_argument(relay)
    relay.set_defaults(handler=_relay)
    inspect = sub.add_parser(
        "inspect",
        help="pending rows, the oldest one's age, and the dead letters",
        description="How many rows wait, how long the oldest has, and the dead-lettered rows with their reasons.",
    )
    common(inspect)
    inspect.add_argument("--limit", type=int, default=20, help="dead rows listed at most (default 20)")
    inspect.add_argument("--json", action="store_true", help="print one JSON object instead")
    inspect.set_defaults(handler=_inspect)
    retry = sub.add_parser(
        "retry-dead",
        help="move dead-lettered rows back into the outbox",
        description="Move dead-lettered rows (--id, repeatable, as inspect lists them; or --all) back into the "
        "outbox, each with its transaction, for the relay to deliver again.",
    )
    common(retry)
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, action="append", dest="ids", help="a dead row's id (repeatable)")
    which.add_argument("--all", action="store_true", help="every dead row")
    retry.set_defaults(handler=_retry_dead)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    print(f"edupulse-events outbox {args.outbox_command}: {' '.join(message.split())}", file=sys.stderr)
    return code


def _shown(db: str) -> str:
    """``db`` as printed: its password hidden."""
    try:
        from sqlalchemy.engine import make_url

        return str(make_url(db).render_as_string(hide_password=True))
    except Exception:  # noqa: BLE001 - a URL that does not parse is reported by the command itself
        return "<the --db URL>"


def _store(args: argparse.Namespace) -> Any:
    from .._outbox._connections import relay_connector
    from .._outbox._stores import store_for

    family, connect, path = relay_connector(args.db, timeout=10.0)
    return store_for(family, args.table, connect, path)


def _relay(args: argparse.Namespace) -> int:
    from ..errors import BrokerError, ConfigError, EventsError, OutboxDatabaseError
    from ..nats_publisher import NatsPublisher
    from ..outbox import OutboxRelay

    codec, problem = import_codec(args.imports)
    if problem is not None:
        return _fail(args, problem, 2)
    try:
        overrides: dict[str, Any] = {} if codec is None else {"codec": codec}
        if args.once:  # connecting is part of delivering: an unreachable broker fails within --timeout
            overrides["connect_timeout"] = min(5.0, args.timeout)
        if args.stream:
            overrides["stream"] = args.stream
        config = broker_config(args.url, args.subject, **overrides)
    except ConfigError as exc:
        return _fail(args, str(exc), 2)
    publisher = NatsPublisher(config)
    try:
        publisher.start()
        relay = OutboxRelay(args.db, publisher, table=args.table, poll_interval=args.poll)
    except ConfigError as exc:
        publisher.close(1.0)
        return _fail(args, redact(str(exc), config), 2)
    except EventsError as exc:
        publisher.close(1.0)
        return _fail(args, redact(str(exc), config), 1)
    print(f"outbox relay: {_shown(args.db)} table {args.table} -> {config.redacted_servers}", flush=True)
    started = time.monotonic()
    try:
        if args.once:
            delivered = relay.run_once(timeout=args.timeout)
        else:
            _run_until_signalled(relay)
            delivered = relay.stats().delivered
    except (BrokerError, OutboxDatabaseError) as exc:
        print(f"delivered: {plural(relay.stats().delivered, 'event')}")
        return _fail(args, redact(str(exc), config), 1)
    finally:
        relay.close()
        publisher.close(10.0)
    print(f"delivered: {plural(delivered, 'event')} in {time.monotonic() - started:.1f} s")
    return 0


def _run_until_signalled(relay: Any) -> None:
    """`OutboxRelay.run` until SIGTERM or SIGINT (the pass under way ends first)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        relay.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _inspect(args: argparse.Namespace) -> int:
    from ..errors import ConfigError, OutboxDatabaseError

    try:
        store = _store(args)
    except ConfigError as exc:
        return _fail(args, str(exc), 2)
    try:
        counts = store.counts()
        dead = store.dead(max(0, args.limit))
    except OutboxDatabaseError as exc:
        return _fail(args, str(exc), 1)
    finally:
        store.close()
    now = time.time()
    if args.json:
        print(
            json.dumps(
                {
                    "pending": counts.pending,
                    "oldest_age": None if counts.oldest is None else round(now - counts.oldest, 3),
                    "dead": counts.dead,
                    "dead_rows": [row._asdict() for row in dead],
                }
            )
        )
        return 0
    print(f"pending: {plural(counts.pending, 'event')}, oldest {age(counts.oldest, now)}")
    print(f"dead:    {plural(counts.dead, 'event')}")
    for row in dead:
        print(
            f"  #{row.id} {row.event_id} {printable(row.subject)} failed {age(row.failed_at, now)} ago: "
            f"{printable(row.reason)}"
        )
    if counts.dead > len(dead):
        print(f"  ... {counts.dead - len(dead)} more (--limit)")
    return 0


def _retry_dead(args: argparse.Namespace) -> int:
    from ..errors import ConfigError, OutboxDatabaseError

    try:
        store = _store(args)
    except ConfigError as exc:
        return _fail(args, str(exc), 2)
    try:
        moved = store.retry_dead(None if args.all else args.ids)
    except OutboxDatabaseError as exc:
        return _fail(args, str(exc), 1)
    finally:
        store.close()
    print(f"moved back: {plural(moved, 'event')}")
    return 0
