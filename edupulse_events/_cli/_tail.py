"""The ``tail`` command: print the events arriving on a subject, or stored in a stream.

This module owns that command: its arguments, the subject it listens on by default, where in a
stream it starts (``--since-seq``, ``--since``), decoding each message as the Rust service would
(with the codec over the registries ``--import MODULE:NAME`` names, if any), the
``--type``/``--tenant`` filters, the three output forms (one line, ``--pretty``, ``--json``: the
wire JSON as received), keeping terminal control characters of messages (subjects, tenants,
text fields, decode errors) out of the human forms and warnings (`printable`), stopping
(``--count``, ``--timeout``) and the exit code. The NATS side (connecting, the subscription or
stream consumer) is `_nats._tail`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import orjson

from ._common import (
    add_broker_arguments,
    add_import_argument,
    broker_config,
    import_codec,
    printable,
    redact,
    seconds,
)

if TYPE_CHECKING:
    from .._nats._tail import TailMessage
    from ..codec import Codec
    from ..config import PublisherConfig
    from ..envelope import EventEnvelope

__all__ = ["add_tail_command", "format_line", "since_time"]

_PAYLOAD_CHARS = 100
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_EPILOG = """\
Without --stream it subscribes to --subject (wildcards allowed; default: the subject template
$EDUPULSE_EVENT_BROKER_SUBJECT with {type} and {tenant} as '*', or '>' without one) and prints
what arrives from now on. With --stream (or --since/--since-seq/--new, then the stream defaults
to $EDUPULSE_EVENT_BROKER_STREAM) it reads the stream through an ephemeral consumer from its
first message, --since-seq, --since or only new ones, --subject filtering it.

With --count N, reading a stream ends after N events or at the stream's end as it was when tail
started, whichever comes first (like `nats stream view`): a stream holding fewer matches ends
the command at once, exit 0. Without --count it keeps following what the stream stores next, and
so does --new --count N (new events are what was asked for): add --timeout SECONDS to end it.

Each event: CREATED_AT TYPE TENANT EVENT_ID PAYLOAD (shortened); --pretty: the envelope as
indented JSON; --json: the wire JSON line as received (what `publish` takes). In the first two,
control characters of the messages (terminal escape sequences in a tenant, a subject or a text
field) are shown escaped (\x1b), never sent to the terminal. A message that is not an envelope is
reported on stderr with its subject, never fatal.

Credentials come from EDUPULSE_EVENT_BROKER_TOKEN, _NKEY_SEED, _CREDS or the URL (never printed).
Exit codes: 0 done (--count events printed, the stream's end reached with --count, or --timeout
ended it without --count); 1 --timeout ended it before --count events; 2 bad usage, broker
settings or the broker failed; 130 interrupted; 141 the reader of the output went away
(`tail | head`)."""


def add_tail_command(commands: Any) -> None:
    """Register ``tail`` on ``commands`` (the ``add_subparsers()`` result)."""
    parser = commands.add_parser(
        "tail",
        help="print the events arriving on a subject or stored in a stream",
        description="Print decoded events as they arrive on a subject, or as stored in a JetStream stream.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_broker_arguments(
        parser,
        subject="subject to listen on, wildcards allowed (default: see below); with a stream, a filter",
        stream="read this JetStream stream instead of subscribing",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--since-seq", type=_sequence, metavar="N", help="read the stream from its sequence N")
    start.add_argument(
        "--since",
        type=since_time,
        metavar="TIME",
        help="read the stream from TIME: ISO 8601 (UTC if no zone) or an age such as 90s, 10m, 1h30m, 2d",
    )
    start.add_argument("--new", action="store_true", help="read only what the stream stores from now on")
    parser.add_argument("--type", action="append", default=[], metavar="TYPE", help="only this event type (repeatable)")
    parser.add_argument("--tenant", action="append", default=[], metavar="TENANT", help="only this tenant (repeatable)")
    parser.add_argument(
        "--count",
        type=_sequence,
        metavar="N",
        help="stop after printing N events; reading a stream (not --new), also at its end as of the start",
    )
    parser.add_argument("--timeout", type=seconds, metavar="SECONDS", help="stop after SECONDS with no message")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print each event's wire JSON, one per line")
    form.add_argument("--pretty", action="store_true", help="print each envelope as indented JSON")
    add_import_argument(parser)
    parser.set_defaults(handler=_tail)


def _sequence(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def since_time(text: str, now: datetime | None = None) -> datetime:
    """An argparse type: ISO 8601 (no zone: UTC) or an age before ``now`` (``90s``, ``1h30m``)."""
    text = text.strip()
    if _DURATION.fullmatch(text):
        age = sum(float(n) * _UNITS[unit] for n, unit in re.findall(r"(\d+(?:\.\d+)?)([smhd])", text))
        return (now or datetime.now(timezone.utc)) - timedelta(seconds=age)
    try:
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time (2025-01-31T08:00:00Z) or an age (10m, 1h30m), got {text!r}"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def format_line(env: EventEnvelope, codec: Codec | None = None) -> str:
    """One line: created_at (ms, UTC), type, tenant (``-`` if none), event id, payload (shortened)."""
    from ..codec import encode

    if codec is not None:
        encode = codec.encode

    created = env.created_at
    try:
        when = f"{created.to_datetime():%Y-%m-%dT%H:%M:%S}.{created.nanos // 1_000_000:03d}Z"
    except ValueError:  # InvalidEvent: after year 9999
        when = str(created)
    payload = orjson.dumps(orjson.loads(encode(env))["data"]["payload"]).decode()
    if len(payload) > _PAYLOAD_CHARS:
        payload = payload[: _PAYLOAD_CHARS - 1] + "…"
    return f"{when} {env.event_type} {env.tenant_id or '-'} {env.event_id} {payload}"


class _Printer:
    """Decodes, filters and prints messages; counts what it printed; says when to stop."""

    def __init__(self, args: argparse.Namespace, codec: Codec | None) -> None:
        self.args = args
        self.codec = codec
        self.types, self.tenants = set(args.type), set(args.tenant)
        self.printed = 0

    def __call__(self, msg: TailMessage) -> bool:
        from ..codec import decode, encode
        from ..errors import DecodeError

        if self.codec is not None:
            decode, encode = self.codec.decode, self.codec.encode

        where = msg.subject + ("" if msg.sequence is None else f" (stream sequence {msg.sequence})")
        try:
            env = decode(msg.data)
        except DecodeError as exc:
            print(printable(f"warning: undecodable message on {where}: {' '.join(str(exc).split())}"), file=sys.stderr)
            return True
        if (self.types and env.event_type not in self.types) or (self.tenants and env.tenant_id not in self.tenants):
            return True
        if self.args.json:
            text = (msg.data if b"\n" not in msg.data else encode(env)).decode()
        elif self.args.pretty:
            pretty = json.dumps(orjson.loads(encode(env)), indent=2, ensure_ascii=False)
            text = printable(f"# {where}") + "\n" + printable(pretty, newlines=True)
        else:
            text = printable(format_line(env, self.codec))
        print(text, flush=True)
        self.printed += 1
        return self.args.count is None or self.printed < self.args.count


def _tail(args: argparse.Namespace) -> int:
    from .._nats._tail import StartAt, tail_messages
    from ..config import ENV_PREFIX
    from ..errors import ConfigError, EventsError
    from ..events import default_registry

    codec, problem = import_codec(args.imports)
    registry = default_registry if codec is None else codec.registry
    unknown = [name for name in args.type if name not in registry]
    if problem is None and unknown:
        problem = f"unknown event type {unknown[0]!r} (known: {', '.join(registry.names)})"
    try:
        config = broker_config(args.url, None, subject_required=False, spool_dir=None, create_stream=False)
    except ConfigError as exc:
        problem = problem or " ".join(str(exc).split())
    from_stream = args.since_seq is not None or args.since is not None or args.new
    stream = args.stream or (config.stream if problem is None and from_stream else None)
    if problem is None and from_stream and stream is None:
        problem = f"--since, --since-seq and --new read a stream: pass --stream or set {ENV_PREFIX}STREAM"
    if problem is not None:
        print(f"edupulse-events tail: {problem}", file=sys.stderr)
        return 2
    if args.subject:
        subject = args.subject
    elif stream is not None:
        subject = ""  # the whole stream
    else:
        subject = config.stream_subject if os.environ.get(ENV_PREFIX + "SUBJECT", "").strip() else ">"
    printer = _Printer(args, codec)
    start = StartAt(args.since_seq, args.since, args.new)
    try:
        finished = tail_messages(
            config,
            subject,
            printer,
            stream=stream,
            start=start,
            idle_timeout=args.timeout,
            until_end=stream is not None and args.count is not None and not args.new,
            on_ready=lambda: _ready(config, stream, subject),
        )
    except EventsError as exc:
        print(f"edupulse-events tail: {printable(redact(str(exc) or type(exc).__name__, config))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    # BrokenPipeError (`tail | head`: the reader is gone) goes up to __main__: a quiet exit 141
    return 0 if finished or args.count is None else 1


def _ready(config: PublisherConfig, stream: str | None, subject: str) -> None:
    what = f"stream {stream}" + (f" ({subject})" if subject else "") if stream is not None else subject
    print(printable(f"edupulse-events tail: reading {what} on {config.redacted_servers}"), file=sys.stderr, flush=True)
