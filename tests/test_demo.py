"""The README's main job, `python -m edupulse_events demo`, run as written: a real embedded nats-server,
events from several threads, every one read back exactly once."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edupulse_events", *args], capture_output=True, text=True, timeout=180, check=False
    )


def test_demo_as_the_readme_runs_it() -> None:
    """The default demo (JetStream, 4,000 events from 4 threads) reads back every event once and exits 0."""
    proc = run("demo")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "sent:      4000 events from 4 threads (JetStream)" in lines
    assert "acked:     4000" in lines
    assert "read back: 4000 messages, 4000 distinct event ids" in lines
    assert lines[-1] == "OK"


def test_demo_over_core_nats() -> None:
    """The demo over core NATS (a stream captures the subject) also reads back every event once."""
    proc = run("demo", "--core", "--events", "1000", "--threads", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "read back: 1000 messages, 1000 distinct event ids" in proc.stdout.splitlines()


def test_help_names_the_demo() -> None:
    """`--help` lists the demo command and exits 0."""
    proc = run("--help")
    assert proc.returncode == 0
    assert "demo" in proc.stdout
