"""The ``publish [FILE...]`` command: JSON lines from files or standard input to the broker.

This module owns that command: its arguments, reading and checking each line (`parse_line`: a
wire envelope, decoded as the Rust service would, or ``{"type": ..., "payload": {...}}`` wrapped
in a fresh envelope), reporting a bad line as ``FILE:LINE: what is wrong``, the progress bar, the
summary, and the file of failed events. Publishing itself is `NatsPublisher`'s; the broker
settings and the bar are `_cli_common`'s. Exit codes: ``_EPILOG`` (the end of ``publish --help``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ._cli_common import (
    add_broker_arguments,
    add_import_argument,
    broker_config,
    count_lines,
    import_modules,
    plural,
    progress_bar,
    redact,
    seconds,
    uuid_argument,
)

if TYPE_CHECKING:
    from .config import PublisherConfig
    from .envelope import EventEnvelope

__all__ = ["BadLine", "add_publish_command", "parse_line"]

STDIN = "-"
_DESCRIPTION = """\
Publish events, one JSON line each, from FILEs or standard input. Each non-blank line is a JSON
object: an envelope in the wire format (as `tail --json` prints and the Rust service reads;
published as it is, same event_id) or an event {"type": "QuizSubmitted", "payload": {...}},
wrapped in a new envelope (new event_id, created now) with --tenant, --correlation-id and --pii."""
_EPILOG = """\
A bad line is reported on stderr as FILE:LINE: what is wrong and skipped (--on-error skip, the
default) or ends the run (--on-error stop); it is never published nor written to the failed file.
Events the broker did not acknowledge (refused, not delivered within --delivery-timeout, left
when --timeout ran out) are written, if any, as wire JSON lines to --failed (default:
edupulse-failed-<UTC time>.jsonl here): `publish` it again to retry them (same event ids).

The broker: --url/--subject/--stream or EDUPULSE_EVENT_BROKER_URL, _SUBJECT, _STREAM,
_CREATE_STREAM and the credentials _TOKEN, _NKEY_SEED or _CREDS (or in the URL; never printed).

Exit codes: 0 every event acknowledged; 1 some failed or a bad line was skipped or stopped the
run; 2 bad usage, unreadable input, missing or invalid broker settings, or the broker
unreachable at the start (nothing published); 130 interrupted."""


class BadLine(ValueError):
    """A line that is not an event this command can publish; the message says why."""


def add_publish_command(commands: Any) -> None:
    """Register ``publish`` on ``commands`` (the ``add_subparsers()`` result)."""
    parser = commands.add_parser(
        "publish",
        help="publish JSON-lines events from files or standard input",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="*", metavar="FILE", help="JSON-lines files ('-' or none: standard input)")
    add_broker_arguments(
        parser,
        subject="subject template, may use {type} and {tenant} (default: $EDUPULSE_EVENT_BROKER_SUBJECT)",
        stream="JetStream stream that must capture the subject (default: $EDUPULSE_EVENT_BROKER_STREAM)",
    )
    parser.add_argument("--create-stream", action="store_true", help="create --stream when it does not exist")
    parser.add_argument("--core", action="store_true", help="core NATS instead of JetStream (no stream, no dedup)")
    parser.add_argument("--tenant", help='tenant_id of the envelopes made for {"type", "payload"} lines')
    parser.add_argument(
        "--correlation-id",
        type=uuid_argument,
        metavar="UUID",
        help="correlation_id of the envelopes made for event lines",
    )
    parser.add_argument("--pii", action="store_true", help="mark the envelopes made for event lines as personal data")
    parser.add_argument(
        "--on-error",
        choices=("skip", "stop"),
        default="skip",
        help="a bad line: report it and go on (skip, the default) or report it and stop reading (stop)",
    )
    parser.add_argument("--failed", metavar="FILE", help="where to write the events that failed (see below)")
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=60.0,
        metavar="SECONDS",
        help="seconds to wait for the last acks after reading (default 60)",
    )
    parser.add_argument(
        "--delivery-timeout",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="seconds each event may take to be acked (default 30)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary (errors only)")
    add_import_argument(parser)
    parser.set_defaults(handler=_publish)


def parse_line(
    raw: bytes, *, tenant: str | None = None, correlation_id: uuid.UUID | None = None, pii: bool = False
) -> EventEnvelope:
    """The envelope a line holds or describes; `BadLine` saying what is wrong otherwise."""
    from .codec import decode
    from .errors import DecodeError

    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadLine(f"not JSON: {exc}") from None
    if isinstance(obj, list) or (isinstance(obj, dict) and "data" in obj):
        try:
            return decode(raw)
        except DecodeError as exc:
            raise BadLine(f"not a valid envelope: {exc}") from None
    if isinstance(obj, dict) and "type" in obj:
        return _event(obj, tenant, correlation_id, pii)
    raise BadLine(
        'expected an envelope in the wire format (with "event_id", "data", ...) '
        'or an event {"type": ..., "payload": {...}}'
    )


def _event(obj: dict[str, Any], tenant: str | None, correlation_id: uuid.UUID | None, pii: bool) -> EventEnvelope:
    from ._reference import slow_event
    from .envelope import EventEnvelope
    from .errors import DecodeError, InvalidEvent
    from .events import default_registry

    unknown = [key for key in obj if key not in ("type", "payload")]
    if unknown:
        raise BadLine(f'unknown key {unknown[0]!r}: an event line holds only "type" and "payload"')
    tag = obj["type"]
    entry = default_registry.get(tag) if isinstance(tag, str) else None
    if entry is None:
        known = ", ".join(default_registry.names)
        raise BadLine(f"unknown event type {str(tag)[:80]!r} (known: {known}; --import registers others)")
    if "payload" not in obj:
        raise BadLine('missing "payload"')
    try:
        data = slow_event(entry, obj["payload"], "$.payload")
        return EventEnvelope.new(
            data, correlation_id=correlation_id, causation_id=None, tenant_id=tenant, personally_identifiable=pii
        )
    except (DecodeError, InvalidEvent) as exc:
        raise BadLine(str(exc)) from None


class _Run:
    """One run's counters, failures and bar; lines flow through `line`, the end through `finish`."""

    def __init__(self, args: argparse.Namespace, publisher: Any, bar: Any | None) -> None:
        self.args, self.publisher, self.bar = args, publisher, bar
        self.skip_bad: bool = args.on_error == "skip"
        self.read = self.published = self.skipped = self.done = 0
        #: Events the broker did not acknowledge, with why; appended by the publisher's thread.
        self.failures: list[tuple[EventEnvelope, BaseException]] = []
        self.started = self.shown_at = time.monotonic()

    def say(self, message: str) -> None:
        """A line on stderr, above the bar if there is one."""
        (print if self.bar is None else self.bar.write)(message, file=sys.stderr)

    def line(self, where: str, raw: bytes) -> bool:
        """Handle one input line; False when the run must stop (a bad line with --on-error stop)."""
        from .errors import EventsError, InvalidEvent

        self.done += 1
        if not raw.strip():
            return True
        self.read += 1
        args = self.args
        try:
            env = parse_line(raw, tenant=args.tenant, correlation_id=args.correlation_id, pii=args.pii)
        except BadLine as exc:
            return self.bad(where, exc)
        try:
            future = self.publisher.publish(env)
        except InvalidEvent as exc:  # too large for the broker, a subject too long: a bad line too
            return self.bad(where, exc)
        except EventsError as exc:  # the queue stayed full, the publisher thread crashed: failed, not bad
            self.failures.append((env, exc))
            return True
        self.published += 1
        future.add_done_callback(partial(_record, self.failures, env))
        self.tick()
        return True

    def bad(self, where: str, error: Exception) -> bool:
        """Report a bad line; False when it stops the run."""
        self.skipped += 1
        self.say(f"{where}: {' '.join(str(error).split())}")
        return self.skip_bad

    def tick(self, force: bool = False) -> None:
        """Move the bar to the lines done: read, less the events still waiting for the broker."""
        now = time.monotonic()
        if self.bar is None or (not force and now - self.shown_at < 0.1):
            return
        self.shown_at = now
        stats = self.publisher.stats()
        waiting = self.published - stats.acknowledged - stats.failed
        self.bar.update(max(0, self.done - waiting - self.bar.n))

    def wait(self) -> None:
        """Wait up to --timeout for the events published to resolve, moving the bar meanwhile."""
        deadline = time.monotonic() + self.args.timeout
        while not self.publisher.flush(min(0.2, max(0.0, deadline - time.monotonic()))):
            self.tick(force=True)
            if time.monotonic() >= deadline:
                self.say(f"edupulse-events publish: not all acks came within --timeout {self.args.timeout:g} s")
                return
        self.tick(force=True)


def _record(failures: list[tuple[EventEnvelope, BaseException]], env: EventEnvelope, future: Any) -> None:
    error = future.exception()
    if error is not None:
        failures.append((env, error))


def _lines(sources: list[str]) -> Iterator[tuple[str, bytes]]:
    """``(FILE:LINE, line)`` for every line of every source, in order."""
    for source in sources:
        name = "<stdin>" if source == STDIN else source
        stream = sys.stdin.buffer if source == STDIN else open(source, "rb")  # noqa: SIM115 - closed below
        try:
            for number, raw in enumerate(stream, 1):
                yield f"{name}:{number}", raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw
        finally:
            if source != STDIN:
                stream.close()


def _check_sources(sources: list[str], failed: str | None) -> str | None:
    """Why the inputs cannot be read (or would be overwritten by --failed), or None."""
    files = [source for source in sources if source != STDIN]
    unreadable = [path for path in files if not (os.path.isfile(path) and os.access(path, os.R_OK))]
    if unreadable:
        return f"{unreadable[0]!r} is not a readable file"
    if failed is not None and os.path.exists(failed) and any(os.path.samefile(path, failed) for path in files):
        return f"--failed {failed!r} is one of the input files"
    return None


def _publish(args: argparse.Namespace) -> int:
    try:
        return _publish_lines(args)
    except KeyboardInterrupt:  # before the lines are read (counting them, connecting): nothing published
        print("edupulse-events publish: interrupted", file=sys.stderr)
        return 130


def _publish_lines(args: argparse.Namespace) -> int:
    from .errors import ConfigError, EventsError
    from .nats_publisher import NatsPublisher

    sources = args.files or [STDIN]
    problem = import_modules(args.imports) or _check_sources(sources, args.failed)
    if problem is None:
        try:
            config = _config(args)
        except ConfigError as exc:
            problem = " ".join(str(exc).split())
    if problem is not None:
        print(f"edupulse-events publish: {problem}", file=sys.stderr)
        return 2
    publisher = NatsPublisher(config)
    try:
        publisher.start()
    except EventsError as exc:
        publisher.close(0.0)
        print(f"edupulse-events publish: {redact(str(exc), config)}; nothing was published", file=sys.stderr)
        return 2
    total = None if STDIN in sources else sum(count_lines(source) for source in sources)
    if STDIN in sources and sys.stdin.isatty() and not args.quiet:
        print("reading events from standard input (Ctrl-D ends)", file=sys.stderr)
    run = _Run(args, publisher, progress_bar(total, quiet=args.quiet, unit="line", desc="publish"))
    stopped_at, interrupted = None, False
    try:
        for where, raw in _lines(sources):
            if not run.line(where, raw):
                stopped_at = where
                break
        run.wait()
    except KeyboardInterrupt:
        interrupted = True
    except OSError as exc:
        run.say(f"edupulse-events publish: cannot read: {exc.strerror or exc}")
        stopped_at = "an unreadable input"
    finally:
        _close(publisher)
        if run.bar is not None:
            run.bar.close()
    return _report(run, config, stopped_at, interrupted)


def _config(args: argparse.Namespace) -> PublisherConfig:
    from .config import RetryPolicy

    overrides: dict[str, Any] = {
        "jetstream": not args.core,
        "spool_dir": None,  # failures go to --failed, not to a spool
        "delivery_timeout": args.delivery_timeout,
        "retry": RetryPolicy(attempt_timeout=min(2.0, args.delivery_timeout)),
    }
    if args.core:
        overrides.update(stream=None, create_stream=False)
    else:
        if args.stream:
            overrides["stream"] = args.stream
        if args.create_stream:
            overrides["create_stream"] = True
    return broker_config(args.url, args.subject, **overrides)


def _close(publisher: Any) -> None:
    """Close the publisher; what is still unresolved fails (and so goes to the failed file). Its
    closing report (counts, undelivered ids) is left out of the log: this command reports them."""

    def not_closing_report(record: logging.LogRecord) -> bool:
        return record.module != "_closing"

    log = logging.getLogger("edupulse_events")
    log.addFilter(not_closing_report)
    try:
        publisher.close(5.0)
    finally:
        log.removeFilter(not_closing_report)


def _report(run: _Run, config: PublisherConfig, stopped_at: str | None, interrupted: bool) -> int:
    """The summary, the failures' reasons and file; returns the exit code."""
    args, elapsed = run.args, max(time.monotonic() - run.started, 1e-9)
    acked = run.publisher.stats().acknowledged
    failures = list(run.failures)
    if not args.quiet:
        print(
            f"read {run.read:,}, published {run.published:,}, acknowledged {acked:,}, failed {len(failures):,}, "
            f"skipped {run.skipped:,} in {elapsed:.2f} s ({acked / elapsed:,.0f} events/s)"
        )
    if stopped_at is not None or interrupted:
        where = "interrupted" if interrupted else f"stopped at {stopped_at}; the lines after it were not read"
        print(f"edupulse-events publish: {where}", file=sys.stderr)
    if failures:
        _write_failed(failures, args.failed, config)
    return 130 if interrupted else 0 if not failures and not run.skipped and stopped_at is None else 1


def _write_failed(
    failures: list[tuple[EventEnvelope, BaseException]], path: str | None, config: PublisherConfig
) -> None:
    from .codec import encode

    reasons: dict[str, str] = {}
    for _, error in failures:
        reasons.setdefault(type(error).__name__, str(error) or type(error).__name__)
    for kind, example in list(reasons.items())[:3]:
        print(f"edupulse-events publish: failed: {kind}: {redact(example, config)}", file=sys.stderr)
    if path is None:
        path = f"edupulse-failed-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.jsonl"
    target = Path(path)
    partial_path = target.with_name(target.name + ".partial")
    try:
        with open(partial_path, "wb") as out:
            for env, _ in failures:
                out.write(encode(env) + b"\n")
        os.replace(partial_path, target)
    except OSError as exc:
        print(f"edupulse-events publish: cannot write {path!r}: {exc.strerror or exc}", file=sys.stderr)
        return
    print(
        f"edupulse-events publish: {plural(len(failures), 'event')} not acknowledged, written to {path} "
        f"(retry with: edupulse-events publish {path})",
        file=sys.stderr,
    )
