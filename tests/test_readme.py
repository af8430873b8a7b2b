"""The Python examples of the README and of the docs pages run as written (against a real
nats-server where they need a broker): each is claimed by a test below, and a newcomer's path —
the README's examples, then examples/, in that order, on one broker — works end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import broker_env, read_stream, run_cli

from edupulse_events.testing import NatsServer

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# a block shown on two pages (the README's batch script and WSGI app, again in docs/publishing.md)
# is one block: the same text, run once
BLOCKS: list[str] = list(
    dict.fromkeys(
        found
        for page in PAGES
        for found in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
    )
)
README = (ROOT / "README.md").read_text(encoding="utf-8")
README_URL = "nats://127.0.0.1:4222"
# what identifies each Python block of the README and the docs: the tests below run every one
CLAIMS = {
    "codec": "decode(wire) == env",
    "batch": "for i in range(1000)",
    "wsgi": "def application",
    "spool": "spool_dir=",
    "registry": "class CourseArchived",
    "atomic": "atomic=True)  # all three",
    "outbox": 'OutboxRelay("sqlite:///app.db"',
    "consume": "inbox.handle(db",
    "prune": "inbox.prune(db",
}


def block(name: str) -> str:
    [found] = [b for b in BLOCKS if CLAIMS[name] in b]
    return found


def readme_env(url: str) -> dict[str, str]:
    """The broker variables the README's shell blocks export (its URL replaced by ``url``), in a
    clean environment."""
    exported = re.findall(r"^export (.+)$", README, flags=re.M)
    assert exported, "the README exports no broker variable"
    env = broker_env()
    for line in exported:
        for name, value in re.findall(r"(\w+)=('[^']*'|\S+)", line):
            env[name] = value.strip("'").replace(README_URL, url)
    return env


def test_every_python_block_is_run_by_a_test() -> None:
    """Each Python block of the README and the docs pages is claimed by exactly one test here."""
    unclaimed = [b[:80] for b in BLOCKS if sum(claim in b for claim in CLAIMS.values()) != 1]
    assert not unclaimed, f"Python blocks no test runs (add a test and a CLAIMS entry): {unclaimed}"
    assert len(BLOCKS) == len(CLAIMS)


def run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_codec_example() -> None:
    """The events-and-codec example runs (its assertions included)."""
    proc = run(block("codec"))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.batch_streams
def test_the_atomic_batch_example() -> None:
    """The atomic-batch example stores its three events contiguously on its own embedded server."""
    proc = run(block("atomic"))
    assert proc.returncode == 0, proc.stderr


def test_the_custom_registry_example() -> None:
    """The custom-registry example publishes an event of its own registry (its assertion included)."""
    proc = run(block("registry"))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.pull_consumer
def test_the_consuming_example(nats_server: NatsServer, tmp_path: Path) -> None:
    """The consuming example (docs/consuming.md) grants one badge per event of the batch script, via its
    inbox; the pruning example then forgets none of those fresh ids."""
    assert run(block("batch").replace(README_URL, nats_server.url)).returncode == 0
    code = block("consume").replace(README_URL, nats_server.url).replace("badges.db", str(tmp_path / "b.db"))
    proc = run(code + "\nprint(db.execute('SELECT COUNT(DISTINCT event_id), COUNT(*) FROM badges').fetchone())\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "(1000, 1000)"
    code = block("prune").replace("badges.db", str(tmp_path / "b.db"))
    proc = run(code + "\nprint(db.execute('SELECT COUNT(*) FROM edupulse_inbox').fetchone())\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-2:] == ["0 event ids older than a week forgotten", "(1000,)"]


def test_the_batch_script_example(nats_server: NatsServer) -> None:
    """The batch script publishes its events to the stream it creates and reports no failure."""
    code = block("batch").replace(README_URL, nats_server.url) + "\nprint(len(futures), len(failed))\n"
    proc = run(code)
    assert proc.returncode == 0, proc.stderr
    sent, failed = (int(n) for n in proc.stdout.split()[-2:])
    assert failed == 0
    assert len(read_stream(nats_server.url, "EDUPULSE")) == sent


def test_the_wsgi_example(nats_server: NatsServer) -> None:
    """The WSGI app answers a request with 201 and the event is stored (build_from_env from the variables)."""
    driver = textwrap.dedent(
        """
        import wsgiref.util
        environ = {}
        wsgiref.util.setup_testing_defaults(environ)
        seen = []
        body = b"".join(application(environ, lambda status, headers: seen.append(status)))
        print(seen[0], body.decode())
        """
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "EDUPULSE_EVENT_BROKER_URL": nats_server.url,
        "EDUPULSE_EVENT_BROKER_SUBJECT": "edupulse.{tenant}.{type}",
        "EDUPULSE_EVENT_BROKER_STREAM": "EDUPULSE",
        "EDUPULSE_EVENT_BROKER_CREATE_STREAM": "true",
    }
    proc = run(block("wsgi") + driver, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("201 Created stored as #1"), proc.stdout
    assert len(read_stream(nats_server.url, "EDUPULSE")) == 1


def test_the_spool_example(nats_server: NatsServer, tmp_path: Path) -> None:
    """The spool example connects with a write-ahead spool in the given directory, which publishes."""
    code = block("spool").replace(README_URL, nats_server.url).replace("/var/spool/edupulse", str(tmp_path))
    code += textwrap.dedent(
        """
        from edupulse_events import EventEnvelope, LessonPublished
        import uuid
        ack = publisher.publish(EventEnvelope.new(LessonPublished(uuid.uuid4(), uuid.uuid4(), "x"))).result(10)
        publisher.close()
        print(ack.spooled, publisher.config.spool_mode)
        """
    )
    proc = run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-2:] == ["False", "write-ahead"]
    assert len(read_stream(nats_server.url, "EDUPULSE")) == 1
    assert not list(tmp_path.glob("*.db"))


WSGI_DRIVER = textwrap.dedent(
    """
    import wsgiref.util
    environ = {}
    wsgiref.util.setup_testing_defaults(environ)
    environ.update(REQUEST_METHOD="POST", PATH_INFO="/publish", QUERY_STRING="wait=1")
    seen = []
    body = b"".join(application(environ, lambda status, headers: seen.append(status)))
    print(seen[0], body.decode().strip())
    """
)
WEB_DRIVER = textwrap.dedent(
    """
    answer = client.post("/lessons", data='{"title": "Fractions"}', content_type="application/json",
                         headers={"X-Tenant-Id": "school-42"})
    import json
    body = answer.get_data() if hasattr(answer, "get_data") else answer.content  # Flask's or Django's
    print(answer.status_code, json.loads(body)["broker_sequence"])
    """
)


@pytest.mark.batch_streams
def test_the_outbox_example(nats_server: NatsServer, tmp_path: Path) -> None:
    """The outbox example commits a lesson with its event, and its relay stores that event."""
    code = block("outbox").replace(README_URL, nats_server.url) + "\nprint(delivered)\n"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "1"
    [stored] = read_stream(nats_server.url, "EDUPULSE")
    assert stored.headers["Edupulse-Event-Type"] == "LessonPublished"


def test_a_newcomers_path_readme_then_examples_on_one_broker(nats_server: NatsServer) -> None:
    """The README's batch script, WSGI app and tail, then examples/ (WSGI, Flask, Django), in order on one broker."""
    pytest.importorskip("flask")
    pytest.importorskip("django")
    env = readme_env(nats_server.url)
    steps = [
        ("README batch script", block("batch").replace(README_URL, nats_server.url) + "\nprint(len(failed))\n", "0"),
        ("README WSGI app", block("wsgi") + WSGI_DRIVER, "201 Created stored as #1001"),
        ("examples/wsgi_app.py", "from wsgi_app import application\n" + WSGI_DRIVER, "201 Created stored as #1002"),
        (
            "examples/flask_app.py",
            "from flask_app import app\nclient = app.test_client()\n"
            + WEB_DRIVER.replace(", content_type=", ", content_type="),
            "201 1003",
        ),
        (
            "examples/django_app",
            "import os\nos.environ['DJANGO_SETTINGS_MODULE'] = 'django_app.settings'\nimport django\ndjango.setup()\n"
            'from django.test import Client\nclient = Client(HTTP_HOST="localhost")\n' + WEB_DRIVER,
            "201 1004",
        ),
    ]
    for name, code, expected in steps:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT / "examples",
            env={**env, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'examples'}"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
        assert proc.stdout.strip().splitlines()[-1] == expected, f"{name}: {proc.stdout} {proc.stderr}"
    [tail] = re.findall(r"^\.venv/bin/edupulse-events (tail .+)$", README, flags=re.M)
    ended = run_cli(*tail.split(), env=env)  # --count 20 with more stored: the first 20
    assert ended.returncode == 0, ended.stderr
    assert len(ended.stdout.splitlines()) == 20
    assert len(read_stream(nats_server.url, "EDUPULSE")) == 1004
