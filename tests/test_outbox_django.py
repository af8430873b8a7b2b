"""The Django example's outbox view under real gunicorn: a lesson and its event saved in one
``transaction.atomic()`` by concurrent requests; the relay then stores exactly the events of the
lessons that committed, and none of those rolled back."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from outbox_support import atomic_stream, stored_ids
from wsgi_servers import EXAMPLES, GUNICORN_WORKERS, HAVE_GUNICORN, HOST, WsgiServer, gunicorn_argv

from edupulse_events import OutboxRelay
from edupulse_events.testing import NatsServer, free_port

pytestmark = [
    pytest.mark.servers,
    pytest.mark.skipif(not HAVE_GUNICORN, reason="gunicorn is not installed (pip install -e '.[test]' installs it)"),
]


def _post(port: int, body: dict[str, object]) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection(HOST, port, timeout=30.0)
    try:
        conn.request("POST", "/lessons/outbox", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_the_django_example_saves_a_lesson_and_its_event_in_one_transaction(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Four workers, four clients, 40 requests of which 8 roll back: the stream holds
    the event of every committed lesson (201) once, and none of the rolled-back ones (409)."""
    import sqlite3

    db = tmp_path / "example.db"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("COVERAGE_", "COV_CORE_", "EDUPULSE_EVENT_"))},
        "EDUPULSE_EXAMPLE_DB": str(db),
        "DJANGO_SETTINGS_MODULE": "django_app.settings",
        "PYTHONPATH": os.pathsep.join([str(EXAMPLES.parent), str(EXAMPLES), os.environ.get("PYTHONPATH", "")]),
    }
    migrate = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--noinput"],
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stderr
    port = free_port()
    argv = [*gunicorn_argv(port)[:-1], "django_app.wsgi:application"]
    server = WsgiServer(argv, env, port, tmp_path / "gunicorn.log", [GUNICORN_WORKERS])
    replies: list[tuple[int, dict[str, str]]] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(10):
            reply = _post(port, {"title": f"lesson {n}-{i}", "rollback": i % 4 == 3})
            with lock:
                replies.append(reply)

    try:
        server.start()
        clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(120)
    finally:
        server.stop()
    committed = [body["event_id"] for status, body in replies if status == 201]
    rolled_back = [body["event_id"] for status, body in replies if status == 409]
    assert (len(committed), len(rolled_back)) == (32, 8), replies
    with atomic_stream(nats_server) as publisher, OutboxRelay(f"sqlite:///{db}", publisher) as relay:
        assert relay.run_once(timeout=60.0) == 32
    assert sorted(stored_ids(nats_server, 32)) == sorted(committed)
    conn = sqlite3.connect(db)
    lessons = conn.execute("SELECT count(*) FROM django_app_lesson").fetchall()[0][0]
    conn.close()
    assert lessons == 32
