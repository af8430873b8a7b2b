"""The ``publish [FILE...]`` command: JSON lines from files or standard input to the broker.

This module owns that command: its arguments, reading and checking each line (`parse_line`: a
wire envelope, decoded as the Rust service would, or ``{"type": ..., "payload": {...}}`` wrapped
in a fresh envelope; both with the codec over the registries ``--import MODULE:NAME`` names,
if any: `_common.import_codec`), reading each line with a bound (`_lines`: a line longer than the largest event
the server takes is refused as too long without ever being held whole), reporting a bad line as
``FILE:LINE: what is wrong`` (control characters escaped: `printable`; a line that is not JSON
quoted shortened: `excerpt`), the publisher's advice on a missing stream said as this command's
options and variables (`shell_words`), the progress bar, the
summary, and the file of failed events (`_write_failed`: a new file, never one that exists, never
through a symlink). Publishing itself is `NatsPublisher`'s; the broker
settings and the bar are `_common`'s. Exit codes: ``_EPILOG`` (the end of ``publish --help``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ._common import (
    add_broker_arguments,
    add_import_argument,
    broker_config,
    count_lines,
    import_codec,
    plural,
    printable,
    progress_bar,
    redact,
    seconds,
    uuid_argument,
)

if TYPE_CHECKING:
    from ..codec import Codec
    from ..config import PublisherConfig
    from ..envelope import EventEnvelope

__all__ = ["BadLine", "add_publish_command", "excerpt", "parse_line", "shell_words"]

_EXCERPT_CHARS = 60
# the engine's advice to Python callers on a missing stream (_engine/_sending.py, _nats/_streams.py),
# longest first, and how this command says it
_SHELL_ADVICE = (
    (
        "pass create_stream=True with stream=<name>",
        "pass --stream NAME --create-stream (or set EDUPULSE_EVENT_BROKER_STREAM=NAME and "
        "EDUPULSE_EVENT_BROKER_CREATE_STREAM=true)",
    ),
    ("pass create_stream=True", "pass --create-stream (or set EDUPULSE_EVENT_BROKER_CREATE_STREAM=true)"),
)

STDIN = "-"
#: nats-server's default max_payload: the line bound until the server has said its own (at connect).
DEFAULT_MAX_PAYLOAD = 1024 * 1024
_DESCRIPTION = """\
Publish events, one JSON line each, from FILEs or standard input. Each non-blank line is a JSON
object: an envelope in the wire format (as `tail --json` prints and the Rust service reads;
published as it is, same event_id) or an event {"type": "QuizSubmitted", "payload": {...}},
wrapped in a new envelope (new event_id, created now) with --tenant, --correlation-id and --pii."""
_EPILOG = """\
A bad line is reported on stderr as FILE:LINE: what is wrong and skipped (--on-error skip, the
default) or ends the run (--on-error stop); it is never published nor written to the failed file.
A line longer than the server's max_payload (1 MiB unless the server sets another) cannot be sent:
it is reported as FILE:LINE: too long, and skipped without being read into memory.
Events the broker did not acknowledge (refused, not delivered within --delivery-timeout, left
when --timeout ran out) are written, if any, as wire JSON lines to --failed (default:
edupulse-failed-<UTC time>.jsonl here): `publish` it again to retry them (same event ids).
The failed file is always a new file, readable by you only (0600): an existing --failed FILE (or a
symlink there) is a usage error found before anything is published, never overwritten or followed.
Control characters in what is reported (a line's text in an error) are shown escaped (\x1b).

The broker: --url/--subject/--stream or EDUPULSE_EVENT_BROKER_URL, _SUBJECT, _STREAM,
_CREATE_STREAM and the credentials _TOKEN, _NKEY_SEED or _CREDS (or in the URL; never printed).

Exit codes: 0 every event acknowledged; 1 some failed or a bad line was skipped or stopped the
run; 2 bad usage, unreadable input, missing or invalid broker settings, or the broker
unreachable at the start (nothing published), standard input closed; 130 interrupted; 141 the
reader of the output went away (`publish ... | head`; the failed file is still written)."""


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
    parser.add_argument(
        "--failed", metavar="FILE", help="a new file for the events that failed; must not exist (see below)"
    )
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


def excerpt(raw: bytes, limit: int = _EXCERPT_CHARS) -> str:
    """What a line looked like, for a message: its first ``limit`` characters (newline aside) as a
    quoted Python literal, so control characters and quotes show escaped; ``…`` when cut short."""
    text = raw.rstrip(b"\r\n").decode("utf-8", "backslashreplace")
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


def shell_words(message: str) -> str:
    """A publisher's message as a shell user acts on it: the Python advice on a missing stream
    (``pass create_stream=True``) said as this command's options and the variables."""
    for python, shell in _SHELL_ADVICE:
        message = message.replace(python, shell)
    return message


def parse_line(
    raw: bytes,
    *,
    tenant: str | None = None,
    correlation_id: uuid.UUID | None = None,
    pii: bool = False,
    codec: Codec | None = None,
) -> EventEnvelope:
    """The envelope a line holds or describes, read with ``codec`` (None: the default codec);
    `BadLine` saying what is wrong otherwise."""
    from ..codec import decode
    from ..errors import DecodeError

    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadLine(f"not JSON at character {exc.pos + 1} ({exc.msg}): the line reads {excerpt(raw)}") from None
    if isinstance(obj, list) or (isinstance(obj, dict) and "data" in obj):
        try:
            return decode(raw) if codec is None else codec.decode(raw)
        except DecodeError as exc:
            raise BadLine(f"not a valid envelope: {exc}") from None
    if isinstance(obj, dict) and "type" in obj:
        return _event(obj, tenant, correlation_id, pii, codec)
    raise BadLine(
        'expected an envelope in the wire format (with "event_id", "data", ...) '
        'or an event {"type": ..., "payload": {...}}'
    )


def _event(
    obj: dict[str, Any], tenant: str | None, correlation_id: uuid.UUID | None, pii: bool, codec: Codec | None
) -> EventEnvelope:
    from .._wire._reference import slow_event
    from ..envelope import EventEnvelope
    from ..errors import DecodeError, InvalidEvent
    from ..events import default_registry

    registry = default_registry if codec is None else codec.registry

    unknown = [key for key in obj if key not in ("type", "payload")]
    if unknown:
        raise BadLine(f'unknown key {unknown[0]!r}: an event line holds only "type" and "payload"')
    tag = obj["type"]
    entry = registry.get(tag) if isinstance(tag, str) else None
    if entry is None:
        known = ", ".join(registry.names)
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
        #: The longest line read: the largest event the server takes (its max_payload).
        self.limit = _largest_event(publisher)
        #: Standard output or error was closed by its reader: exit 141 once the failed file is written.
        self.output_closed = False

    def say(self, message: str) -> None:
        """A line on stderr (control characters escaped), above the bar if there is one."""
        (print if self.bar is None else self.bar.write)(printable(message), file=sys.stderr)

    def line(self, where: str, raw: bytes | None) -> bool:
        """Handle one input line (None: longer than `limit`); False when the run must stop (a bad
        line with --on-error stop)."""
        from ..errors import EventsError, InvalidEvent

        self.done += 1
        if raw is None:
            self.read += 1
            return self.bad(where, ValueError(f"too long: over {self.limit:,} bytes, the server's max_payload"))
        if not raw.strip():
            return True
        self.read += 1
        args = self.args
        try:
            env = parse_line(
                raw, tenant=args.tenant, correlation_id=args.correlation_id, pii=args.pii, codec=args.codec
            )
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


def _largest_event(publisher: Any) -> int:
    """The server's max_payload, learnt when the publisher connected (`DEFAULT_MAX_PAYLOAD` before)."""
    worker = getattr(publisher, "_worker", None)  # the connection's settings live on its worker
    value = getattr(worker, "max_payload", None)
    return value if isinstance(value, int) and value > 0 else DEFAULT_MAX_PAYLOAD


def _lines(sources: list[str], limit: int) -> Iterator[tuple[str, bytes | None]]:
    """``(FILE:LINE, line)`` for every line of every source, in order; the line is None when it is
    longer than ``limit`` bytes (its newline aside). No more than ``limit`` + 1 bytes of a line are
    held at once: the rest of a long line is read and dropped in pieces of that size."""
    for source in sources:
        name = "<stdin>" if source == STDIN else source
        stream = sys.stdin.buffer if source == STDIN else open(source, "rb")  # noqa: SIM115 - closed below
        try:
            number = 0
            while raw := stream.readline(limit + 1):
                number += 1
                if len(raw) > limit and raw[-1:] != b"\n":
                    while (rest := stream.readline(limit + 1)) and rest[-1:] != b"\n":
                        pass
                    yield f"{name}:{number}", None
                    continue
                yield f"{name}:{number}", raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw
        finally:
            if source != STDIN:
                stream.close()


def _check_sources(sources: list[str], failed: str | None) -> str | None:
    """Why the inputs cannot be read (standard input closed, a file missing), or --failed names a
    file that exists (it is never overwritten), or None."""
    if STDIN in sources and sys.stdin is None:  # started with descriptor 0 closed (`<&-`)
        return "standard input is closed: give the events' FILEs, or open standard input"
    files = [source for source in sources if source != STDIN]
    unreadable = [path for path in files if not (os.path.isfile(path) and os.access(path, os.R_OK))]
    if unreadable:
        return f"{unreadable[0]!r} is not a readable file"
    if failed is not None and os.path.exists(failed) and any(os.path.samefile(path, failed) for path in files):
        return f"--failed {failed!r} is one of the input files"
    if failed is not None and os.path.lexists(failed):
        return f"--failed {failed!r} exists: the failed file is always a new one (remove it or name another)"
    return None


def _publish(args: argparse.Namespace) -> int:
    try:
        return _publish_lines(args)
    except KeyboardInterrupt:  # before the lines are read (counting them, connecting): nothing published
        print("edupulse-events publish: interrupted", file=sys.stderr)
        return 130


def _publish_lines(args: argparse.Namespace) -> int:
    from ..errors import ConfigError, EventsError
    from ..nats_publisher import NatsPublisher

    sources = args.files or [STDIN]
    args.codec, problem = import_codec(args.imports)
    problem = problem or _check_sources(sources, args.failed)
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
        print(
            f"edupulse-events publish: {shell_words(redact(str(exc), config))}; nothing was published", file=sys.stderr
        )
        return 2
    total = None if STDIN in sources else sum(count_lines(source) for source in sources)
    if STDIN in sources and sys.stdin is not None and sys.stdin.isatty() and not args.quiet:
        print("reading events from standard input (Ctrl-D ends)", file=sys.stderr)
    run = _Run(args, publisher, progress_bar(total, quiet=args.quiet, unit="line", desc="publish"))
    stopped_at, interrupted = None, False
    try:
        for where, raw in _lines(sources, run.limit):
            if not run.line(where, raw):
                stopped_at = where
                break
        run.wait()
    except KeyboardInterrupt:
        interrupted = True
    except BrokenPipeError:  # stderr's reader went away: stop reading, as SIGPIPE would; still report below
        run.output_closed = True
    except OSError as exc:
        run.say(f"edupulse-events publish: cannot read: {exc.strerror or exc}")
        stopped_at = "an unreadable input"
    finally:
        _close(publisher)
        if run.bar is not None:
            run.bar.close()
    return _report(run, config, stopped_at, interrupted)


def _config(args: argparse.Namespace) -> PublisherConfig:
    from ..config import RetryPolicy

    overrides: dict[str, Any] = {
        "jetstream": not args.core,
        "spool_dir": None,  # failures go to --failed, not to a spool
        "delivery_timeout": args.delivery_timeout,
        "retry": RetryPolicy(attempt_timeout=min(2.0, args.delivery_timeout)),
        "codec": args.codec,
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
    """The summary, the failures' reasons and file; returns the exit code. A closed output does not
    keep the failed file from being written: `BrokenPipeError` is raised after it (exit 141)."""
    args, elapsed = run.args, max(time.monotonic() - run.started, 1e-9)
    acked = run.publisher.stats().acknowledged
    failures = list(run.failures)

    closed: set[bool] = set()  # which of stderr (True) and stdout (False) lost their reader

    def show(message: str, *, error: bool = True) -> None:
        if error in closed:
            return
        try:
            print(printable(message), file=sys.stderr if error else sys.stdout, flush=True)
        except BrokenPipeError:
            closed.add(error)
            run.output_closed = True

    if not args.quiet:
        show(
            f"read {run.read:,}, published {run.published:,}, acknowledged {acked:,}, failed {len(failures):,}, "
            f"skipped {run.skipped:,} in {elapsed:.2f} s ({acked / elapsed:,.0f} events/s)",
            error=False,
        )
    if stopped_at is not None or interrupted:
        where = "interrupted" if interrupted else f"stopped at {stopped_at}; the lines after it were not read"
        show(f"edupulse-events publish: {where}")
    if failures:
        _write_failed(failures, args.failed, config, show)
    if run.output_closed:
        raise BrokenPipeError("standard output or error was closed by its reader")
    return 130 if interrupted else 0 if not failures and not run.skipped and stopped_at is None else 1


def _write_failed(
    failures: list[tuple[EventEnvelope, BaseException]],
    path: str | None,
    config: PublisherConfig,
    show: Callable[[str], None],
) -> None:
    """Write the failed events to a new file: a temporary one created 0600 with O_EXCL and
    O_NOFOLLOW (`tempfile.mkstemp`) beside it, linked to its name only if nothing is there (a
    hard link never replaces an existing file or symlink, nor follows one). The default name gets
    a ``-N`` suffix when taken; a given --failed that appeared during the run is left alone and the
    events stay in the temporary file, whose name is printed."""
    from ..codec import encode

    if config.codec is not None:
        encode = config.codec.encode
    reasons: dict[str, str] = {}
    for _, error in failures:
        reasons.setdefault(type(error).__name__, str(error) or type(error).__name__)
    for kind, example in list(reasons.items())[:3]:
        show(f"edupulse-events publish: failed: {kind}: {shell_words(redact(example, config))}")
    target = Path(path or f"edupulse-failed-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.jsonl")
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    except OSError as exc:
        show(f"edupulse-events publish: cannot write {str(target)!r}: {exc.strerror or exc}")
        return
    try:
        with os.fdopen(fd, "wb") as out:
            for env, _ in failures:
                out.write(encode(env) + b"\n")
        written = _link_new(temporary, target, numbered=path is None)
    except OSError as exc:
        show(
            f"edupulse-events publish: cannot write {str(target)!r}: {exc.strerror or exc}; "
            f"the events are in {temporary}"
        )
        return
    if written is None:
        show(
            f"edupulse-events publish: {str(target)!r} was created by someone else during the run: not "
            f"overwritten; the {plural(len(failures), 'event')} not acknowledged are in {temporary}"
        )
        return
    show(
        f"edupulse-events publish: {plural(len(failures), 'event')} not acknowledged, written to {written} "
        f"(retry with: edupulse-events publish {written})"
    )


def _link_new(temporary: str, target: Path, *, numbered: bool) -> Path | None:
    """Give ``temporary`` the name ``target`` (``numbered``: or the first free ``target-N``) if
    nothing has it, and drop the temporary name; None when the name is taken."""
    for n in range(1, 1000 if numbered else 2):
        name = target if n == 1 else target.with_name(f"{target.stem}-{n}{target.suffix}")
        try:
            os.link(temporary, name)
        except FileExistsError:
            continue
        os.unlink(temporary)
        return name
    return None
