"""The command line as a whole: --help on every command, `bench` (listing and running the repository's
benchmark scripts), and the pieces of `publish` and `tail` that need no broker: the progress bar
(tqdm on a terminal only, and optional), line parsing, `--since` times."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import envelope, run_cli

from edupulse_events import QuizSubmitted, encode
from edupulse_events._cli._common import progress_bar
from edupulse_events._cli._publish import BadLine, parse_line
from edupulse_events._cli._tail import since_time

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=ROOT)


@pytest.mark.parametrize(
    "command",
    [[], ["publish"], ["tail"], ["bench"], ["demo"], ["spool"], ["spool", "inspect"], ["spool", "replay"]],
    ids=lambda c: " ".join(c) or "top",
)
def test_help_on_every_command(command: list[str]) -> None:
    """`--help` on the program and each command prints a usage naming it and exits 0."""
    proc = cli(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python -m edupulse_events {' '.join(command)}".rstrip())
    for name in ("publish", "tail", "bench", "demo", "spool") if not command else ():
        assert name in proc.stdout


def test_bench_lists_the_benchmarks_with_what_each_measures() -> None:
    """bench --list: one line per benchmarks/bench_*.py, named without the prefix, with its docstring's first line."""
    proc = cli("bench", "--list")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert {"throughput", "latency", "codec"} <= set(lines)
    assert "_common" not in lines
    assert "Codec speed" in lines["codec"]


def test_bench_runs_the_named_script_with_its_arguments(tmp_path: Path) -> None:
    """bench NAME ARGS runs benchmarks/bench_NAME.py with this Python, ARGS passed (after -- too), its code returned."""
    (tmp_path / "bench_echo.py").write_text(
        '"""Echoes its arguments."""\nimport sys\nprint(sys.argv[1:], sys.executable)\nsys.exit(3)\n',
        encoding="utf-8",
    )
    for extra in (["--events", "10"], ["--", "--events", "10"]):
        proc = cli("bench", "--dir", str(tmp_path), "echo", *extra)
        assert proc.returncode == 3, proc.stderr
        assert proc.stdout == f"['--events', '10'] {sys.executable}\n"
    real = cli("bench", "codec", "--", "--help")  # the real script, only asked for its options
    assert real.returncode == 0, real.stderr
    assert "--rounds" in real.stdout


def test_bench_without_a_benchmark_to_run_exits_2(tmp_path: Path) -> None:
    """No such directory, no NAME, or an unknown NAME: a clear message on stderr and exit 2."""
    missing = cli("bench", "--dir", str(tmp_path / "nowhere"), "codec")
    assert missing.returncode == 2
    assert "no benchmarks directory" in missing.stderr
    unnamed = cli("bench")
    assert unnamed.returncode == 2
    assert "give a NAME" in unnamed.stderr
    assert "throughput" in unnamed.stdout
    unknown = cli("bench", "no-such-bench")
    assert unknown.returncode == 2
    assert "no benchmark 'no-such-bench'" in unknown.stderr


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_is_made_on_a_terminal_only() -> None:
    """A tqdm bar with rate and ETA on a terminal; none when --quiet or when the stream is not a terminal."""
    terminal = _Terminal()
    bar = progress_bar(10, quiet=False, unit="line", desc="publish", stream=terminal)
    assert bar is not None
    assert type(bar).__module__.startswith("tqdm")
    bar.update(10)
    bar.close()
    shown = terminal.getvalue()
    assert "publish" in shown
    assert "10/10" in shown
    assert "line/s" in shown
    assert progress_bar(10, quiet=True, unit="line", desc="publish", stream=_Terminal()) is None
    assert progress_bar(10, quiet=False, unit="line", desc="publish", stream=io.StringIO()) is None


def test_without_tqdm_there_is_no_bar_and_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """tqdm is an optional extra: when it cannot be imported, no bar (the command runs as when quiet)."""
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now raises ImportError
    assert progress_bar(None, quiet=False, unit="line", desc="publish", stream=_Terminal()) is None


def test_parse_line_takes_envelopes_and_events() -> None:
    """A wire envelope decodes as it is; an event line gets a new envelope with the given fields."""
    env = envelope(3)
    assert parse_line(encode(env)) == env
    quiz, student, correlation = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    line = (
        f'{{"type": "QuizSubmitted", "payload": {{"quiz_id": "{quiz}", "student_id": "{student}", "answers": {{}}}}}}'
    )
    made = parse_line(line.encode(), tenant="t", correlation_id=correlation, pii=True)
    assert made.data == QuizSubmitted(quiz, student, {})
    assert (made.tenant_id, made.correlation_id, made.causation_id, made.personally_identifiable) == (
        "t",
        correlation,
        None,
        True,
    )
    for bad, message in [
        (b"42", "expected an envelope in the wire format"),
        (b'{"type": "QuizSubmitted", "payload": {}, "tenant": "x"}', "unknown key 'tenant'"),
        (b'{"type": "QuizSubmitted", "payload": []}', "$.payload: invalid type: sequence"),
    ]:
        with pytest.raises(BadLine, match=message.replace("$", r"\$")):
            parse_line(bad)


def test_since_takes_iso_times_and_ages() -> None:
    """--since: ISO 8601 with or without a zone (none: UTC), or an age like 10m or 1h30m before now."""
    now = datetime(2025, 1, 31, 12, 0, tzinfo=timezone.utc)
    assert since_time("10m", now) == now - timedelta(minutes=10)
    assert since_time("1h30m", now) == now - timedelta(hours=1, minutes=30)
    assert since_time("2d", now) == now - timedelta(days=2)
    assert since_time("2025-01-31T08:00:00Z") == datetime(2025, 1, 31, 8, tzinfo=timezone.utc)
    assert since_time("2025-01-31T08:00:00") == datetime(2025, 1, 31, 8, tzinfo=timezone.utc)
    assert since_time("2025-01-31T09:00:00+01:00") == datetime(2025, 1, 31, 8, tzinfo=timezone.utc)
    with pytest.raises(argparse.ArgumentTypeError, match="expected an ISO 8601 time"):
        since_time("last tuesday")
