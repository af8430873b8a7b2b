"""The README's Python examples run as written (against a real nats-server where they need a broker)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import read_stream

from edupulse_events.testing import NatsServer

ROOT = Path(__file__).resolve().parents[1]
BLOCKS: list[str] = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)
README_URL = "nats://127.0.0.1:4222"


def block(containing: str) -> str:
    [found] = [b for b in BLOCKS if containing in b]
    return found


def run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_codec_example() -> None:
    """The events-and-codec example runs (its assertions included)."""
    proc = run(block("decode(wire) == env"))
    assert proc.returncode == 0, proc.stderr


def test_the_batch_script_example(nats_server: NatsServer) -> None:
    """The batch script publishes its events to the stream it creates and reports no failure."""
    code = block("for i in range(1000)").replace(README_URL, nats_server.url) + "\nprint(len(futures), len(failed))\n"
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
    proc = run(block("def application") + driver, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("201 Created stored as #1"), proc.stdout
    assert len(read_stream(nats_server.url, "EDUPULSE")) == 1


def test_the_spool_example(nats_server: NatsServer, tmp_path: Path) -> None:
    """The spool example connects with a write-ahead spool in the given directory, which publishes."""
    code = block("spool_dir=").replace(README_URL, nats_server.url).replace("/var/spool/edupulse", str(tmp_path))
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
