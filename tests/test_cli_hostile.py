"""The command line facing hostile input and surroundings (issue 18): terminal escape sequences in
messages that `tail` prints, a URL password with '/', '?' or '#', a closed standard output or input,
a line far larger than any event, and a --failed file that exists or has a symlink planted beside it.
Every command runs as a subprocess against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import nats
from helpers import broker_env, envelope, run_cli

from edupulse_events import encode
from edupulse_events.testing import NatsServer

CLI = [sys.executable, "-m", "edupulse_events"]
#: Characters a terminal acts on (ESC, BEL, C1 CSI, DEL, a bidi override): none may reach it raw.
RAW_CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202e"


def hostile_wire(tenant: str, title: str) -> bytes:
    """A LessonPublished wire envelope with ``tenant`` and ``title`` (control characters JSON-escaped)."""
    wire = json.loads(encode(envelope(0)))
    wire["tenant_id"] = tenant
    wire["data"]["payload"]["title"] = title
    return json.dumps(wire).encode()


async def _put(url: str, stream: str, messages: list[tuple[str, bytes]]) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=["hostile.>"])
        for subject, data in messages:
            await js.publish(subject, data, timeout=5.0)
    finally:
        await nc.close()


def test_tail_escapes_control_characters_in_every_human_form(nats_server: NatsServer) -> None:
    """Escape sequences in a tenant, a subject and a text field, and in an undecodable message's
    subject, are shown escaped (\\x1b) by tail's line and --pretty forms and its warnings."""
    subject = "hostile.\x1b]0;x\x07.LessonPublished"
    messages = [(subject, hostile_wire(f"t{ESCAPES}", f"title {ESCAPES}")), (subject, b"not json \x1b[2J")]
    asyncio.run(_put(nats_server.url, "HOSTILE", messages))
    env = broker_env(URL=nats_server.url)
    for form in ([], ["--pretty"]):
        proc = run_cli("tail", "--stream", "HOSTILE", "--timeout", "2", *form, env=env)
        assert proc.returncode == 0, proc.stderr
        assert not RAW_CONTROLS.search(proc.stdout + proc.stderr), ascii(proc.stdout + proc.stderr)
        tenant = '"tenant_id": "t\\u001b]0;pwned' if form else " t\\x1b]0;pwned\\x07"  # JSON's escape, or ours
        assert tenant in proc.stdout, proc.stdout
        assert "\\x9b31m\\u202e" in proc.stdout  # C1 and bidi characters of the title, escaped
        assert "hostile.\\x1b]0;x\\x07.LessonPublished" in proc.stderr  # the undecodable message's subject
    raw = run_cli("tail", "--stream", "HOSTILE", "--timeout", "2", "--json", env=env)
    assert json.loads(raw.stdout.splitlines()[0])["tenant_id"] == f"t{ESCAPES}"  # --json: the wire JSON, unchanged


def test_a_url_password_with_reserved_characters_is_a_usage_error_that_echoes_nothing(tmp_path: Path) -> None:
    """publish and tail with a URL password holding '/', '#' or '?': exit 2 in one line, no traceback
    (run_cli checks), no piece of the password on stdout or stderr."""
    source = tmp_path / "in.jsonl"
    source.write_text(encode(envelope(0)).decode() + "\n")
    for password in ("Alpha7/Bravo8", "Alpha7#Bravo8", "Alpha7?Bravo8"):
        env = broker_env(URL=f"nats://svc:{password}@127.0.0.1:4222", SUBJECT="s.{type}")
        for args in (["publish", str(source)], ["tail", "--timeout", "1"]):
            proc = run_cli(*args, env=env)
            assert proc.returncode == 2, proc.stderr
            assert "not a NATS server URL" in proc.stderr
            assert "Alpha7" not in proc.stdout + proc.stderr
            assert "Bravo8" not in proc.stdout + proc.stderr


def run_with_closed_stdout(*args: str, env: dict[str, str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run the CLI with stdout a pipe whose reading end is already closed (``... | true``)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [*CLI, *args], input=stdin, stdout=write_end, stderr=subprocess.PIPE, env=env, timeout=120, check=False
        )
    finally:
        os.close(write_end)


def test_a_closed_standard_output_ends_every_command_quietly_with_141(nats_server: NatsServer) -> None:
    """schema, bench --list, publish and tail writing to a pipe nobody reads: exit 141 as
    SIGPIPE would, nothing on stderr (no traceback, no "Exception ignored")."""
    env = broker_env(URL=nats_server.url, SUBJECT="closed.{type}", STREAM="CLOSED", CREATE_STREAM="1")
    line = encode(envelope(0)) + b"\n"
    for args, stdin in (
        (["schema", "jsonschema"], b""),
        (["bench", "--list"], b""),
        (["publish"], line),
        (["tail", "--stream", "CLOSED", "--count", "1"], b""),
    ):
        proc = run_with_closed_stdout(*args, env=env, stdin=stdin)
        assert proc.returncode == 141, (args, proc.stderr)
        assert b"Traceback" not in proc.stderr, (args, proc.stderr)
        assert b"Exception ignored" not in proc.stderr, (args, proc.stderr)


def test_publish_with_standard_input_closed_is_a_usage_error(tmp_path: Path) -> None:
    """publish started with descriptor 0 closed (`<&-`): exit 2 saying so, before any broker is tried."""
    env = broker_env(URL="nats://127.0.0.1:1", SUBJECT="s.{type}")
    for args in ([], ["-"]):
        proc = subprocess.run(
            ["sh", "-c", 'exec "$@" <&-', "sh", *CLI, "publish", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "standard input is closed" in proc.stderr


def _peak_rss_of_publish(source: Path, env: dict[str, str], tmp_path: Path) -> tuple[int, str, int]:
    """Exit code, stderr and peak RSS (bytes, from os.wait4) of `publish SOURCE`."""
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        proc = subprocess.Popen([*CLI, "publish", str(source)], stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, (tmp_path / "err").read_text(), usage.ru_maxrss * 1024


def test_a_huge_line_is_refused_as_too_long_without_being_read_whole(nats_server: NatsServer, tmp_path: Path) -> None:
    """A 64 MiB line between two good ones: FILE:2: too long, the others published, and the child's
    peak RSS stays within 16 MiB of a run without it (the line was never held whole)."""
    env = broker_env(URL=nats_server.url, SUBJECT="huge.{type}", STREAM="HUGE", CREATE_STREAM="1")
    good = encode(envelope(0)) + b"\n"
    small = tmp_path / "small.jsonl"
    small.write_bytes(good + good)
    huge = tmp_path / "huge.jsonl"
    with open(huge, "wb") as f:
        f.write(good + b'{"type": "LessonPublished", "payload": {"title": "')
        chunk = b"x" * (1 << 20)
        for _ in range(64):
            f.write(chunk)
        f.write(b'"}}\n' + good)
    code, _, baseline = _peak_rss_of_publish(small, env, tmp_path)
    assert code == 0
    code, stderr, peak = _peak_rss_of_publish(huge, env, tmp_path)
    assert code == 1, stderr
    assert f"{huge}:2: too long" in stderr, stderr
    assert peak < baseline + 16 * 1024 * 1024, (peak, baseline)


def failing_run(nats_server: NatsServer, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """publish one event no stream captures (it fails: EventRejected) with ARGS, in ``cwd``."""
    source = cwd / "in.jsonl"
    source.write_text(encode(envelope(0)).decode() + "\n")
    env = broker_env(URL=nats_server.url, SUBJECT="nowhere.{type}")
    return run_cli("publish", str(source), *args, env=env, cwd=cwd)


def test_the_failed_file_never_follows_a_planted_partial_symlink(nats_server: NatsServer, tmp_path: Path) -> None:
    """A symlink planted at <failed>.partial is not followed: its target is untouched, the failed file
    is a new regular file readable by its owner only, holding the event."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "failed.jsonl.partial").symlink_to(victim)
    proc = failing_run(nats_server, tmp_path, "--failed", "failed.jsonl")
    assert proc.returncode == 1, proc.stderr
    assert victim.read_text() == "precious\n"
    failed = tmp_path / "failed.jsonl"
    assert stat.S_ISREG(failed.lstat().st_mode)
    assert stat.S_IMODE(failed.stat().st_mode) == 0o600
    assert len(failed.read_bytes().splitlines()) == 1
    assert "1 event not acknowledged, written to failed.jsonl" in proc.stderr


def test_an_existing_failed_file_or_symlink_is_never_overwritten(nats_server: NatsServer, tmp_path: Path) -> None:
    """--failed naming an existing file, or a symlink (dangling or not): exit 2 before publishing,
    the file and the symlink's target untouched."""
    existing = tmp_path / "notes.txt"
    existing.write_text("mine\n")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "link.jsonl").symlink_to(victim)
    (tmp_path / "dangling.jsonl").symlink_to(tmp_path / "nowhere")
    for name in ("notes.txt", "link.jsonl", "dangling.jsonl"):
        proc = failing_run(nats_server, tmp_path, "--failed", name)
        assert proc.returncode == 2, proc.stderr
        assert "exists: the failed file is always a new one" in proc.stderr
    assert existing.read_text() == "mine\n"
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "nowhere").exists()


def test_a_closed_standard_output_still_gets_the_failed_file_written(nats_server: NatsServer, tmp_path: Path) -> None:
    """publish with stdout closed and an event that fails: exit 141, the failed file written and named on stderr."""
    env = broker_env(URL=nats_server.url, SUBJECT="nowhere.{type}")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [*CLI, "publish", "--failed", "failed.jsonl"],
            input=encode(envelope(0)) + b"\n",
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=env,
            cwd=tmp_path,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert b"1 event not acknowledged, written to failed.jsonl" in proc.stderr
    assert len((tmp_path / "failed.jsonl").read_bytes().splitlines()) == 1


def test_spool_commands_escape_file_names_and_need_standard_input_to_ask(tmp_path: Path) -> None:
    """A spool file named with escape sequences is shown escaped by inspect and purge; purge without --yes and
    with descriptor 0 closed is exit 2 (nothing to ask), never a traceback, and deletes nothing."""
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    planted = spool / f"spool-{ESCAPES}.db"
    planted.write_bytes(b"not a database")
    inspect = run_cli("spool", "inspect", str(spool))
    purge = subprocess.run(
        ["sh", "-c", 'exec "$@" <&-', "sh", *CLI, "spool", "purge", str(spool)],
        capture_output=True,
        text=True,
        env=broker_env(),
        timeout=120,
        check=False,
    )
    for proc in (inspect, purge):
        assert not RAW_CONTROLS.search(proc.stdout + proc.stderr), proc.stdout + proc.stderr
        assert "\\x1b]0;pwned\\x07" in proc.stdout
    assert inspect.returncode == 0
    assert purge.returncode == 2, purge.stderr
    assert "Traceback" not in purge.stderr
    assert "standard input is closed" in purge.stderr
    assert planted.exists()
