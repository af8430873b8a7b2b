"""`edupulse-events tail` run as a subprocess against a real nats-server: reading a stream from its
start, a sequence or a time, following a subject live, the --type/--tenant filters, --count,
--timeout, the three output forms, undecodable messages as warnings, and its exit codes."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import nats
import pytest
from helpers import broker_env, envelope, run_cli

from edupulse_events import EventEnvelope, decode, encode
from edupulse_events.testing import NatsServer

STREAM = "CLI_TAIL"
SUBJECT = "edupulse.{tenant}.{type}"
LINE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (?P<type>\w+) (?P<tenant>\S+) (?P<id>[0-9a-f-]{36}) (?P<payload>\{.*)"
)


def cli(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env, stdin=stdin)


@pytest.fixture
def env(nats_server: NatsServer) -> dict[str, str]:
    return broker_env(URL=nats_server.url, SUBJECT=SUBJECT, STREAM=STREAM, CREATE_STREAM="1")


@pytest.fixture
def stored(env: dict[str, str]) -> list[EventEnvelope]:
    """Twelve events in the stream (sequences 1-12): tenants school-1/school-2 alternating by pairs,
    LessonPublished (even i) and PaymentProcessed (odd i)."""
    events = [envelope(i, f"school-{1 + i // 2 % 2}") for i in range(12)]
    proc = cli("publish", "--quiet", env=env, stdin="".join(encode(e).decode() + "\n" for e in events))
    assert proc.returncode == 0, proc.stderr
    return events


def test_tail_reads_the_stream_one_line_per_event(env: dict[str, str], stored: list[EventEnvelope]) -> None:
    """--stream from the start: every event as `time type tenant id payload`; --timeout ends it, exit 0."""
    proc = cli("tail", "--stream", STREAM, "--timeout", "1", env=env)
    assert proc.returncode == 0, proc.stderr
    matches = [LINE.fullmatch(line) for line in proc.stdout.splitlines()]
    assert all(matches), proc.stdout
    got = [(m["type"], m["tenant"], m["id"]) for m in matches if m]
    assert got == [(e.event_type, e.tenant_id, str(e.event_id)) for e in stored]
    first = matches[0]
    assert first is not None
    assert first["payload"].startswith(f'{{"lesson_id":"{stored[0].data.lesson_id}",')
    assert len(first["payload"]) == 100  # shortened, ending in "…"
    assert proc.stderr.splitlines() == [
        f"edupulse-events tail: reading stream {STREAM} on {env['EDUPULSE_EVENT_BROKER_URL']}"
    ]


def test_filters_and_count(env: dict[str, str], stored: list[EventEnvelope]) -> None:
    """--type and --tenant keep only matching events; --count N stops after N printed, exit 0."""
    proc = cli(
        "tail", "--stream", STREAM, "--type", "PaymentProcessed", "--tenant", "school-2", "--timeout", "1", env=env
    )
    assert proc.returncode == 0, proc.stderr
    ids = [m["id"] for m in map(LINE.fullmatch, proc.stdout.splitlines()) if m]
    wanted = [e for e in stored if e.event_type == "PaymentProcessed" and e.tenant_id == "school-2"]
    assert ids == [str(e.event_id) for e in wanted]
    assert len(ids) == 3
    counted = cli("tail", "--stream", STREAM, "--tenant", "school-1", "--count", "2", "--timeout", "30", env=env)
    assert counted.returncode == 0, counted.stderr
    assert [line.split()[3] for line in counted.stdout.splitlines()] == [str(e.event_id) for e in stored[:2]]


def test_json_lines_round_trip_through_decode(env: dict[str, str], stored: list[EventEnvelope]) -> None:
    """--json prints the wire JSON as stored: each line decodes to the published envelope, byte for byte."""
    proc = cli("tail", "--stream", STREAM, "--json", "--count", "12", "--timeout", "30", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [decode(line) for line in lines] == stored
    assert [line.encode() for line in lines] == [encode(e) for e in stored]


def test_pretty_prints_indented_envelopes(env: dict[str, str], stored: list[EventEnvelope]) -> None:
    """--pretty: a `# subject (stream sequence N)` line, then the envelope as indented JSON."""
    proc = cli("tail", "--stream", STREAM, "--pretty", "--count", "1", env=env)
    assert proc.returncode == 0, proc.stderr
    head, body = proc.stdout.split("\n", 1)
    assert head == "# edupulse.school-1.LessonPublished (stream sequence 1)"
    assert body.startswith('{\n  "event_id": ')
    assert decode(json.dumps(json.loads(body))) == stored[0]


def test_since_sequence_and_since_time(env: dict[str, str], stored: list[EventEnvelope]) -> None:
    """--since-seq N starts at sequence N; --since an age or an ISO time starts at that time (a future one: none)."""
    proc = cli("tail", "--stream", STREAM, "--since-seq", "9", "--timeout", "1", "--json", env=env)
    assert [decode(line) for line in proc.stdout.splitlines()] == stored[8:]
    recent = cli("tail", "--since", "1h", "--count", "12", "--timeout", "30", env=env)  # the stream from $..._STREAM
    assert recent.returncode == 0, recent.stderr
    assert len(recent.stdout.splitlines()) == 12
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    future = cli("tail", "--since", later, "--timeout", "0.5", env=env)
    assert (future.returncode, future.stdout) == (0, "")


def test_timeout_with_nothing_to_read(env: dict[str, str], stored: list[EventEnvelope]) -> None:
    """Nothing arrives: --timeout ends the run, exit 0 without --count and 1 when --count was not reached."""
    idle = cli("tail", "--subject", "nobody.publishes.here", "--timeout", "0.5", env=env)
    assert (idle.returncode, idle.stdout) == (0, "")
    assert idle.stderr.splitlines() == [
        f"edupulse-events tail: reading nobody.publishes.here on {env['EDUPULSE_EVENT_BROKER_URL']}"
    ]
    short = cli("tail", "--stream", STREAM, "--new", "--count", "1", "--timeout", "0.5", env=env)
    assert (short.returncode, short.stdout) == (1, ""), short.stderr


def test_count_on_a_stream_ends_at_its_end_as_of_the_start(env: dict[str, str], stored: list[EventEnvelope]) -> None:
    """The README's `tail --stream S --since 10m --type T --count 20` ends on its own, exit 0, with fewer matches."""
    wanted = [str(e.event_id) for e in stored if e.event_type == "PaymentProcessed"]  # 6 of the 12

    def ends(*args: str) -> subprocess.CompletedProcess[str]:
        try:  # no --timeout: only the stream's end can end it
            return subprocess.run(
                [sys.executable, "-m", "edupulse_events", "tail", "--stream", STREAM, *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"tail {' '.join(args)} did not end within 30 s")

    fewer = ends("--since", "10m", "--type", "PaymentProcessed", "--count", "20")
    assert fewer.returncode == 0, fewer.stderr
    assert [line.split()[3] for line in fewer.stdout.splitlines()] == wanted
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    nothing = ends("--since", later, "--count", "5")  # nothing stored after that time
    assert (nothing.returncode, nothing.stdout) == (0, ""), nothing.stderr
    filtered = ends("--subject", "edupulse.nobody.*", "--count", "5")  # the consumer's filter matches nothing
    assert (filtered.returncode, filtered.stdout) == (0, ""), filtered.stderr
    last = ends("--since-seq", "12", "--count", "3", "--json")
    assert [decode(line) for line in last.stdout.splitlines()] == stored[11:]


def test_follows_a_subject_live(env: dict[str, str]) -> None:
    """Without --stream: subscribes to the template's subjects ('*' for {tenant}/{type}) and prints what arrives."""
    events = [envelope(i, "school-7") for i in range(5)]
    tail = subprocess.Popen(
        [sys.executable, "-m", "edupulse_events", "tail", "--count", "5", "--timeout", "30", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tail.stderr is not None
        ready = tail.stderr.readline()  # printed once subscribed (the process ends within --timeout anyway)
        assert ready.startswith("edupulse-events tail: reading edupulse.*.* on "), ready
        sent = cli("publish", "--core", "--quiet", env=env, stdin="".join(encode(e).decode() + "\n" for e in events))
        assert sent.returncode == 0, sent.stderr
        out, err = tail.communicate(timeout=60)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait(10)
    assert tail.returncode == 0, err
    assert [decode(line) for line in out.splitlines()] == events
    assert "Traceback" not in err


async def _put_garbage(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream(timeout=10)
        await js.publish("edupulse.school-1.LessonPublished", b"not an envelope")
        await js.publish("edupulse.school-1.Odd", b'{"event_id": "x"}')
    finally:
        await nc.close()


def test_undecodable_messages_are_warnings(
    nats_server: NatsServer, env: dict[str, str], stored: list[EventEnvelope]
) -> None:
    """A message that is not an envelope: one warning line on stderr with its subject; the others still print."""
    asyncio.run(_put_garbage(nats_server.url))
    proc = cli("tail", "--stream", STREAM, "--json", "--timeout", "1", env=env)
    assert proc.returncode == 0, proc.stderr
    assert [decode(line) for line in proc.stdout.splitlines()] == stored
    warnings = proc.stderr.splitlines()[1:]
    assert len(warnings) == 2
    assert warnings[0].startswith(
        "warning: undecodable message on edupulse.school-1.LessonPublished (stream sequence 13): "
    )
    assert warnings[1].startswith("warning: undecodable message on edupulse.school-1.Odd (stream sequence 14): $.")


def test_usage_and_broker_errors_exit_2(env: dict[str, str], make_server: Callable[..., NatsServer]) -> None:
    """An unknown stream or type, --since without a stream, no URL, no broker: exit 2, one line, no secret."""
    nowhere = make_server(start=False).url.replace("nats://", "nats://s3cr3t@")
    no_stream = {k: v for k, v in env.items() if k != "EDUPULSE_EVENT_BROKER_STREAM"}
    cases = [
        (["--stream", "MISSING", "--timeout", "1"], env, "JetStream stream 'MISSING' does not exist"),
        (["--type", "Nope"], env, "unknown event type 'Nope'"),
        (["--since-seq", "3"], no_stream, "--since, --since-seq and --new read a stream"),
        (["--since", "yesterday"], env, "expected an ISO 8601 time"),
        (["--timeout", "1"], broker_env(), "no broker url"),
        (["--url", nowhere, "--timeout", "1"], env, "could not connect to nats://***@127.0.0.1:"),
    ]
    for args, environ, message in cases:
        proc = cli("tail", *args, env=environ)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert "s3cr3t" not in proc.stderr + proc.stdout
        assert proc.stdout == ""
