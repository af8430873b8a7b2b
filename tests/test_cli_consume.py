"""`edupulse-events consume` as a subprocess against a real nats-server: a handler named
module:function handles every event and the durable remembers it, failures go to the dead letter,
SIGTERM stops it cleanly with exit 0 and a summary, and usage problems exit 2."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from consumer_support import dead_letters, fill
from helpers import broker_env, envelopes, run_cli

from edupulse_events import NatsConsumer, ReceivedMessage
from edupulse_events.testing import NatsServer

pytestmark = pytest.mark.pull_consumer

HANDLER = """
import os
from edupulse_events import PermanentFailure

def handle(message):
    data = message.envelope.data
    if os.environ.get("FAIL") and getattr(data, "amount_cents", None) == 3:
        raise PermanentFailure("refund the payment by hand")
    with open(os.environ["OUT"], "a") as out:
        out.write(f"{message.envelope.event_id}\\n")
    if os.environ.get("ANNOUNCE") and message.stream_sequence == 1:
        print("handled-first", flush=True)
"""


def _env(server: NatsServer, tmp_path: Path, **extra: str) -> dict[str, str]:
    (tmp_path / "handlers.py").write_text(HANDLER)
    env = broker_env(URL=server.url, STREAM="CC")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(Path(__file__).parent.parent), env.get("PYTHONPATH", "")])
    env["OUT"] = str(tmp_path / "out")
    env.update(extra)
    return env


def test_consume_runs_the_handler_and_dead_letters_failures(nats_server: NatsServer, tmp_path: Path) -> None:
    """--handler module:function handles each event once; a PermanentFailure lands in --dead-letter; exit 0
    once idle (--idle-timeout), and again after --timeout with nothing left."""
    events = envelopes(8)
    fill(nats_server.url, "CC", "cc", events)
    dead_letters(nats_server.url, "CCDL", "cc-dead")
    env = _env(nats_server, tmp_path, FAIL="1")
    args = ("consume", "--durable", "w", "--handler", "handlers:handle", "--dead-letter", "cc-dead")
    proc = run_cli(*args, "--concurrency", "2", "--idle-timeout", "2", "--timeout", "60", env=env)
    assert proc.returncode == 0, proc.stderr
    handled = (tmp_path / "out").read_text().split()
    assert sorted(handled) == sorted(str(e.event_id) for i, e in enumerate(events) if i != 3)
    assert "8 received, 7 acked, 0 nak'ed, 1 dead-lettered, 1 handler errors" in proc.stderr.splitlines()[-1]
    [(_, headers)] = dead_letters(nats_server.url, "CCDL", "cc-dead")
    assert headers["Edupulse-Dead-Letter-Reason"] == "PermanentFailure: refund the payment by hand"
    again = run_cli(*args, "--timeout", "1", env=env)  # the durable remembers: nothing more to handle
    assert again.returncode == 0, again.stderr
    assert len((tmp_path / "out").read_text().split()) == 7


def test_consume_stops_cleanly_on_sigterm(nats_server: NatsServer, tmp_path: Path) -> None:
    """SIGTERM while it runs: exit 0, and the summary shows every message received was acked or nak'ed."""
    fill(nats_server.url, "CC", "cc", envelopes(20))
    env = _env(nats_server, tmp_path, ANNOUNCE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edupulse_events", "consume", "--durable", "w", "--handler", "handlers:handle"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "handled-first"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    summary = re.match(r"edupulse-events consume: (\d+) received, (\d+) acked, (\d+) nak'ed", err.splitlines()[-1])
    assert summary is not None, err
    received, acked, nacked = map(int, summary.groups())
    assert acked >= 1
    handled = (tmp_path / "out").read_text().split()
    rest: list[ReceivedMessage] = []
    with NatsConsumer.connect(nats_server.url, stream="CC", durable="w") as consumer:
        # ack_wait is 30 s: only nak'ed ones come back now (a fetch returns what is there when it is
        # answered: the server may not have taken every nak in yet)
        while len(rest) < 20 - len(set(handled)) and (got := consumer.fetch(20, timeout=3.0)):
            rest += got
    assert len(rest) == 20 - len(set(handled)), (received, acked, nacked)


def test_consume_usage_problems_exit_2(tmp_path: Path) -> None:
    """A handler that cannot be imported, or no stream: exit 2 saying why."""
    env = broker_env(URL="nats://127.0.0.1:1")
    proc = run_cli("consume", "--durable", "w", "--handler", "nowhere_module:handle", "--stream", "S", env=env)
    assert proc.returncode == 2
    assert "cannot import 'nowhere_module'" in proc.stderr
    proc = run_cli("consume", "--durable", "w", "--handler", "os:getcwd", env=env)
    assert proc.returncode == 2
    assert "no stream" in proc.stderr
