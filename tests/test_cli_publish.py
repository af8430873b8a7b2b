"""`edupulse-events publish [FILE...]` run as a subprocess against a real nats-server: wire lines and
{"type", "payload"} lines reach the stream, bad lines are reported by line number, events the broker
refuses go to a failed file that `publish` takes again, exit codes, and no credential or traceback
in any output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import broker_env, envelope, read_stream, run_cli

from edupulse_events import decode, encode
from edupulse_events.testing import NatsServer

STREAM = "CLI_PUBLISH"
SUBJECT = "edupulse.{tenant}.{type}"
SUMMARY = re.compile(
    r"read (\d+), published (\d+), acknowledged (\d+), failed (\d+), skipped (\d+) in [\d.]+ s \([\d,]+ events/s\)"
)


OLD_NATS_PY = "publishing through nats-py's public API"


def publish(
    *args: str, env: dict[str, str], stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    proc = run_cli("publish", *args, env=env, stdin=stdin, cwd=cwd)
    # the one warning nats-py before 2.10 adds (the slower public path: tests/test_nats_py_matrix.py)
    proc.stderr = "".join(line for line in proc.stderr.splitlines(keepends=True) if OLD_NATS_PY not in line)
    return proc


def counts(proc: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The summary line's figures."""
    [match] = [m for m in map(SUMMARY.fullmatch, proc.stdout.splitlines()) if m]
    return dict(zip(("read", "published", "acknowledged", "failed", "skipped"), map(int, match.groups()), strict=True))


def event_line(i: int) -> str:
    """A {"type", "payload"} line (a QuizSubmitted) for the CLI to wrap."""
    payload = {"quiz_id": str(uuid.uuid4()), "student_id": str(uuid.uuid4()), "answers": {"q1": f"answer {i}"}}
    return json.dumps({"type": "QuizSubmitted", "payload": payload})


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def env(nats_server: NatsServer) -> dict[str, str]:
    """The broker settings in the environment: the test server, SUBJECT, and a stream created on first use."""
    return broker_env(URL=nats_server.url, SUBJECT=SUBJECT, STREAM=STREAM, CREATE_STREAM="1")


def test_wire_lines_and_event_lines_reach_the_stream(
    nats_server: NatsServer, env: dict[str, str], tmp_path: Path
) -> None:
    """Wire envelopes keep their ids; event lines get a new envelope with --tenant, --correlation-id and --pii."""
    wire = [envelope(i) for i in range(20)]
    correlation = uuid.uuid4()
    source = write_lines(tmp_path / "in.jsonl", [encode(e).decode() for e in wire] + ["", *map(event_line, range(5))])
    proc = publish(str(source), "--tenant", "school-9", "--correlation-id", str(correlation), "--pii", env=env)
    assert proc.returncode == 0, proc.stderr
    assert counts(proc) == {"read": 25, "published": 25, "acknowledged": 25, "failed": 0, "skipped": 0}
    assert proc.stderr == ""  # not a terminal: no progress bar
    stored = [decode(m.data) for m in read_stream(nats_server.url, STREAM)]
    assert len(stored) == 25
    assert [e.event_id for e in stored[:20]] == [e.event_id for e in wire]
    assert stored[:20] == wire
    made = stored[20:]
    assert {e.event_type for e in made} == {"QuizSubmitted"}
    assert {(e.tenant_id, e.correlation_id, e.personally_identifiable) for e in made} == {
        ("school-9", correlation, True)
    }
    assert len({e.event_id for e in stored}) == 25
    assert not list(tmp_path.glob("edupulse-failed-*"))


def test_standard_input_is_read_with_no_file_or_dash(nats_server: NatsServer, env: dict[str, str]) -> None:
    """No FILE, or '-', reads standard input; --quiet prints nothing when all went well."""
    lines = "".join(encode(envelope(i)).decode() + "\n" for i in range(6))
    assert counts(publish(env=env, stdin=lines[: len(lines) // 2]))["acknowledged"] == 3
    proc = publish("-", "--quiet", env=env, stdin=lines[len(lines) // 2 :])
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert len(read_stream(nats_server.url, STREAM)) == 6


def test_bad_lines_are_reported_by_line_number_and_skipped(
    nats_server: NatsServer, env: dict[str, str], tmp_path: Path
) -> None:
    """--on-error skip (the default): each bad line is one FILE:LINE: line on stderr, the rest published; exit 1."""
    good = [encode(envelope(i)).decode() for i in range(4)]
    bad_payload = json.dumps({"type": "PaymentProcessed", "payload": {"payment_id": "nope"}})
    lines = [good[0], "{not json", good[1], json.dumps({"type": "Nope", "payload": {}}), good[2], bad_payload]
    lines += ['{"event_id": 1, "data": {}}', "[1, 2]", good[3], event_line(0)]
    source = write_lines(tmp_path / "mixed.jsonl", lines)
    proc = publish(str(source), env=env)
    assert proc.returncode == 1, proc.stderr
    assert counts(proc) == {"read": 10, "published": 5, "acknowledged": 5, "failed": 0, "skipped": 5}
    errors = proc.stderr.splitlines()
    assert [line.split(": ")[0] for line in errors] == [f"{source}:{n}" for n in (2, 4, 6, 7, 8)]
    assert errors[0].startswith(f"{source}:2: not JSON at character 2 (")
    assert errors[0].endswith("): the line reads '{not json'")
    assert "unknown event type 'Nope'" in errors[1]
    assert "$.payload.payment_id" in errors[2]
    assert errors[3].startswith(f"{source}:7: not a valid envelope: $.event_id")
    assert len(read_stream(nats_server.url, STREAM)) == 5
    assert not list(tmp_path.glob("edupulse-failed-*"))  # bad lines are reported, never written


def test_on_error_stop_ends_the_run_at_the_first_bad_line(
    nats_server: NatsServer, env: dict[str, str], tmp_path: Path
) -> None:
    """--on-error stop: the lines before the bad one are published, none after it is read; exit 1."""
    lines = [encode(envelope(i)).decode() for i in range(3)] + ['{"type": "QuizSubmitted"}'] + [event_line(1)]
    source = write_lines(tmp_path / "stop.jsonl", lines)
    proc = publish(str(source), "--on-error", "stop", env=env)
    assert proc.returncode == 1, proc.stderr
    assert counts(proc) == {"read": 4, "published": 3, "acknowledged": 3, "failed": 0, "skipped": 1}
    assert proc.stderr.splitlines() == [
        f'{source}:4: missing "payload"',
        f"edupulse-events publish: stopped at {source}:4; the lines after it were not read",
    ]
    assert len(read_stream(nats_server.url, STREAM)) == 3


def test_refused_events_go_to_a_failed_file_that_publish_takes_again(nats_server: NatsServer, tmp_path: Path) -> None:
    """Events no stream captures fail: written (wire JSON, same ids) to the failed file, exit 1; once a stream
    captures them, publishing that file delivers each once, and again only duplicates."""
    env = broker_env(URL=nats_server.url, SUBJECT="{tenant}.{type}")
    assert publish("--stream", "KEPT", "--create-stream", "--subject", "school-1.{type}", env=env).returncode == 0
    kept = [envelope(i, "school-1") for i in range(6)]
    lost = [envelope(i, "school-2") for i in range(4)]
    source = write_lines(
        tmp_path / "in.jsonl", [encode(e).decode() for pair in zip(kept, lost + lost[:2], strict=True) for e in pair]
    )
    work = tmp_path / "cwd"
    work.mkdir()
    proc = publish(str(source), env=env, cwd=work)  # lost[:2] twice: six of the twelve lines fail
    assert proc.returncode == 1, proc.stderr
    assert counts(proc) == {"read": 12, "published": 12, "acknowledged": 6, "failed": 6, "skipped": 0}
    [failed] = work.glob("edupulse-failed-*.jsonl")  # the default name, in the current directory
    assert re.fullmatch(r"edupulse-failed-\d{8}T\d{6}Z\.jsonl", failed.name)
    assert "EventRejected: no JetStream stream captures subject 'school-2." in proc.stderr
    assert f"6 events not acknowledged, written to {failed.name}" in proc.stderr
    retried = [decode(line) for line in failed.read_bytes().splitlines()]
    assert sorted(e.event_id.hex for e in retried) == sorted([e.event_id.hex for e in lost + lost[:2]])
    assert set(retried) == set(lost)

    assert publish("--stream", "LATE", "--create-stream", "--subject", "school-2.{type}", env=env).returncode == 0
    for _ in range(2):  # the second time JetStream sees the same Nats-Msg-Id: acknowledged as duplicates
        again = publish(str(failed), "--failed", str(tmp_path / "again.jsonl"), env=env)
        assert again.returncode == 0, again.stderr
        assert counts(again)["acknowledged"] == 6
    stored = read_stream(nats_server.url, "LATE")
    assert sorted(m.headers["Nats-Msg-Id"] for m in stored) == sorted(str(e.event_id) for e in lost)
    assert not (tmp_path / "again.jsonl").exists()  # written only when something failed


def test_an_unreachable_broker_exits_2_without_echoing_the_token(
    make_server: Callable[..., NatsServer], tmp_path: Path
) -> None:
    """Nothing listens: exit 2 with one line naming the redacted URL, no failed file, no token anywhere."""
    nowhere = make_server(start=False).url
    secret_url = nowhere.replace("nats://", "nats://s3cr3t-user:pa55w0rd@")
    env = broker_env(URL=secret_url, SUBJECT=SUBJECT, TOKEN="t0k3n-s3cr3t")
    source = write_lines(tmp_path / "in.jsonl", [encode(envelope(0)).decode()])
    proc = publish(str(source), env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "could not connect to nats://***@127.0.0.1:" in proc.stderr
    assert "nothing was published" in proc.stderr
    for secret in ("s3cr3t", "pa55w0rd", "t0k3n"):
        assert secret not in proc.stdout + proc.stderr
    assert not list(tmp_path.glob("edupulse-failed-*"))


def test_a_token_the_server_refuses_is_never_echoed(make_server: Callable[..., NatsServer]) -> None:
    """Bad credentials: exit 2, the reason given, the token never printed."""
    server = make_server(token="right-token")
    proc = publish(env=broker_env(URL=server.url, SUBJECT=SUBJECT, TOKEN="wr0ng-t0ken"), stdin="{}\n")
    assert proc.returncode == 2, proc.stderr
    assert "authentication failed" in proc.stderr
    assert "wr0ng" not in proc.stdout + proc.stderr
    assert "right-token" not in proc.stdout + proc.stderr


def test_usage_errors_exit_2_in_one_line(env: dict[str, str], tmp_path: Path) -> None:
    """A missing file, missing broker settings, a --failed that is an input, a bad option: exit 2, no traceback."""
    source = write_lines(tmp_path / "in.jsonl", [event_line(0)])
    cases = [
        ([str(tmp_path / "missing.jsonl")], env, "is not a readable file"),
        ([str(source)], broker_env(SUBJECT=SUBJECT), "no broker url: pass --url or set EDUPULSE_EVENT_BROKER_URL"),
        ([str(source), "--failed", str(source)], env, "is one of the input files"),
        ([str(source), "--import", "no_such_module_here"], env, "cannot import 'no_such_module_here'"),
        ([str(source), "--correlation-id", "not-a-uuid"], env, "not a UUID"),
        ([str(source), "--on-error", "maybe"], env, "invalid choice"),
    ]
    for args, environ, message in cases:
        proc = publish(*args, env=environ)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert proc.stdout == ""


def test_not_a_terminal_means_no_progress_bar(env: dict[str, str], tmp_path: Path) -> None:
    """With stderr a pipe there is no bar, however many lines: stderr holds nothing but errors."""
    source = write_lines(tmp_path / "many.jsonl", [encode(envelope(i)).decode() for i in range(300)])
    proc = publish(str(source), env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "\r" not in proc.stdout
    assert counts(proc)["acknowledged"] == 300


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux pseudo-terminal")
def test_a_terminal_gets_a_progress_bar_with_rate(env: dict[str, str], tmp_path: Path) -> None:
    """With stderr a terminal (a pseudo-terminal here) a tqdm bar shows the lines done of the total and the rate."""
    import fcntl
    import pty
    import struct
    import termios

    source = write_lines(tmp_path / "in.jsonl", [encode(envelope(i)).decode() for i in range(200)])
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    shown: list[bytes] = []

    def read() -> None:  # ends when the terminal side is closed (EIO) below
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            shown.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edupulse_events", "publish", str(source)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=terminal,
            env=env,
            timeout=120,
            check=False,
            text=True,
        )
    finally:
        os.close(terminal)
        reader.join(10.0)
        os.close(master)
    assert proc.returncode == 0
    assert counts(proc)["acknowledged"] == 200
    bar = b"".join(shown).decode("utf-8", "replace")
    assert "publish: 100%|" in bar
    assert "200/200" in bar
    assert "line/s]" in bar
    assert "Traceback" not in bar


def test_missing_stream_advice_is_given_as_options_and_variables(nats_server: NatsServer, tmp_path: Path) -> None:
    """A missing stream is explained in the shell's words (--stream NAME --create-stream, variables), not Python's."""
    source = write_lines(tmp_path / "one.jsonl", [event_line(0)])
    env = broker_env(URL=nats_server.url, SUBJECT=SUBJECT)
    named = publish(str(source), "--stream", "MISSING", env=env)
    assert named.returncode == 2, named.stderr
    assert named.stderr.strip() == (
        "edupulse-events publish: JetStream stream 'MISSING' does not exist: create it, or pass --create-stream "
        "(or set EDUPULSE_EVENT_BROKER_CREATE_STREAM=true); nothing was published"
    )
    work = tmp_path / "cwd"
    work.mkdir()
    unnamed = publish(str(source), env=env, cwd=work)  # no stream configured, none captures the subject
    assert unnamed.returncode == 1, unnamed.stderr
    assert (
        "no JetStream stream captures subject 'edupulse._.QuizSubmitted': create one, or pass --stream NAME "
        "--create-stream (or set EDUPULSE_EVENT_BROKER_STREAM=NAME and EDUPULSE_EVENT_BROKER_CREATE_STREAM=true)"
    ) in unnamed.stderr
    assert "create_stream=True" not in named.stderr + unnamed.stderr


def test_a_line_that_is_not_json_is_shown_escaped_and_shortened(env: dict[str, str], tmp_path: Path) -> None:
    """`not JSON` says where parsing stopped and what the line looked like: quoted, control characters escaped, cut."""
    lines = ["tru story", "{'single': 'quotes'} \x1b[31m", "x" * 100]
    source = write_lines(tmp_path / "bad.jsonl", lines)
    proc = publish(str(source), env=env)
    assert proc.returncode == 1, proc.stderr
    first, second, third = proc.stderr.splitlines()
    reason = "invalid literal, expected 'true'"
    assert first == f"{source}:1: not JSON at character 1 ({reason}): the line reads 'tru story'"
    assert second.startswith(f"{source}:2: not JSON at character 2 (")  # the reason's words are orjson's
    assert second.endswith("): the line reads \"{'single': 'quotes'} \\x1b[31m\"")
    assert third.startswith(f"{source}:3: not JSON at character 1 (")
    assert third.endswith(f"): the line reads '{'x' * 60}'…")
