"""`edupulse-events outbox relay|inspect|retry-dead --db URL` run as a subprocess, on a real
SQLite database, delivering to a real nats-server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import broker_env, envelopes, run_cli
from outbox_support import STREAM, SUBJECT, Database, atomic_stream, stored_ids

from edupulse_events.testing import NatsServer, free_port

pytestmark = pytest.mark.batch_streams


def _database(tmp_path: Path) -> Database:
    database = Database("sqlite", f"sqlite:///{tmp_path / 'app.db'}")
    database.create()
    return database


def _broker(server: NatsServer) -> dict[str, str]:
    return broker_env(URL=server.url, SUBJECT=SUBJECT, STREAM=STREAM)


def test_relay_once_delivers_what_is_committed(tmp_path: Path, nats_server: NatsServer) -> None:
    """``outbox relay --once`` delivers the committed rows, says how many, and exits 0."""
    with atomic_stream(nats_server):
        pass
    database = _database(tmp_path)
    committed = envelopes(3)
    database.commit(committed)
    database.commit(envelopes(2), rollback=True)
    proc = run_cli("outbox", "relay", "--db", database.url, "--once", env=_broker(nats_server))
    assert proc.returncode == 0, proc.stderr
    assert "delivered: 3 events" in proc.stdout
    assert stored_ids(nats_server, 3) == [str(e.event_id) for e in committed]
    assert database.count() == 0
    database.close()


def test_relay_runs_until_sigterm(tmp_path: Path, nats_server: NatsServer) -> None:
    """``outbox relay`` keeps delivering new commits until SIGTERM, then exits 0 saying how many."""
    with atomic_stream(nats_server):
        pass
    database = _database(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edupulse_events", "outbox", "relay", "--db", database.url, "--poll", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_broker(nats_server),
    )
    try:
        assert proc.stdout is not None
        assert "outbox relay:" in proc.stdout.readline()
        committed = envelopes(2)
        database.commit(committed)
        assert stored_ids(nats_server, 2) == [str(e.event_id) for e in committed]
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 0, err
    assert "delivered: 2 events" in out
    database.close()


def test_inspect_and_retry_dead(tmp_path: Path) -> None:
    """``inspect`` shows pending rows and the dead letters with their reasons (text and JSON);
    ``retry-dead`` moves them back."""
    database = _database(tmp_path)
    database.commit(envelopes(2))
    conn = database.connect()
    conn.execute(
        "INSERT INTO edupulse_outbox_dead (original_id, txid, event_id, subject, headers, body, created_at, "
        "failed_at, reason) VALUES (1, 7, 'e-1', 'edupulse.x', x'', x'', 0, 0, 'EventRejected: too \x1b[31mlarge')"
    )
    conn.commit()
    text = run_cli("outbox", "inspect", "--db", database.url)
    assert text.returncode == 0, text.stderr
    assert "pending: 2 events" in text.stdout
    assert "dead:    1 event" in text.stdout
    assert "e-1" in text.stdout
    assert "too \\x1b[31mlarge" in text.stdout  # no terminal escapes
    report = json.loads(run_cli("outbox", "inspect", "--db", database.url, "--json").stdout)
    assert (report["pending"], report["dead"]) == (2, 1)
    assert report["dead_rows"][0]["event_id"] == "e-1"
    moved = run_cli("outbox", "retry-dead", "--db", database.url, "--all")
    assert moved.returncode == 0, moved.stderr
    assert "moved back: 1 event" in moved.stdout
    assert database.count() == 3
    assert database.count("edupulse_outbox_dead") == 0
    database.close()


def test_bad_settings_and_an_unreachable_broker(tmp_path: Path) -> None:
    """A URL that cannot work exits 2 (its password never printed); an unreachable broker exits 1."""
    bad = run_cli("outbox", "inspect", "--db", "mysql://me:s3cret@host/db")
    assert bad.returncode == 2
    assert "mysql" in bad.stderr
    assert "s3cret" not in bad.stderr + bad.stdout
    database = _database(tmp_path)
    env = broker_env(URL=f"nats://127.0.0.1:{free_port()}", SUBJECT=SUBJECT)
    gone = run_cli("outbox", "relay", "--db", database.url, "--once", "--timeout", "0.5", env=env)
    assert gone.returncode == 1
    assert "edupulse-events outbox relay:" in gone.stderr
    database.close()
