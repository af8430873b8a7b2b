"""What a publisher reports and refuses around its thread's life: ids of events that failed before
close() in the closing log, a thread that cannot start or cannot run, and no OpenTelemetry import
an application did not ask for."""

from __future__ import annotations

import subprocess
import sys
import threading
import types
from collections.abc import Callable

import pytest
from helpers import LogWatcher, envelope, envelopes

from edupulse_events import ConfigError, NatsPublisher, PublisherConfig, PublisherCrashed, PublishTimeout, RetryPolicy
from edupulse_events.testing import NatsServer


def test_events_that_failed_before_close_are_logged_by_id_at_close(make_server: Callable[..., NatsServer]) -> None:
    """Fire-and-forget events that timed out before close() are listed by id in the closing log."""
    server = make_server(start=False)
    envs = envelopes(3)
    with LogWatcher() as logs:
        pub = NatsPublisher.connect(
            server.url,
            "life.events",
            start_without_broker=True,
            delivery_timeout=0.3,
            retry=RetryPolicy(attempt_timeout=0.1),
        )
        futures = [pub.publish(e) for e in envs]
        assert pub.flush(timeout=10)
        assert all(isinstance(f.exception(timeout=0), PublishTimeout) for f in futures)
        pub.close(1.0)
    line = next(r.getMessage() for r in logs.records if "failed before close" in r.getMessage())
    assert line.startswith("3 events failed before close and were not confirmed: possibly stored")
    assert "duplicate window" in line
    assert all(str(e.event_id) in line for e in envs)


def test_a_thread_that_cannot_start_fails_publish_saying_so(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No thread can be started: publish() raises PublisherCrashed saying why, queues nothing; later it works."""
    pub = NatsPublisher(
        PublisherConfig(servers=nats_server.url, subject="life.events", stream="LIFE", create_stream=True)
    )
    original = threading.Thread.start

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    with pytest.raises(PublisherCrashed, match="could not start the publisher thread"):
        pub.publish(envelope())
    assert pub.stats().accepted == 0
    monkeypatch.setattr(threading.Thread, "start", original)
    with pub:
        assert pub.publish(envelope()).result(timeout=10).broker_sequence == 1


def test_uwsgi_without_threads_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a uWSGI that runs no Python threads, publish() raises ConfigError naming --enable-threads."""
    monkeypatch.setitem(sys.modules, "uwsgi", types.SimpleNamespace(has_threads=False))
    pub = NatsPublisher(PublisherConfig(servers="nats://127.0.0.1:1", subject="life.events"))
    with pytest.raises(ConfigError, match="--enable-threads"):
        pub.publish(envelope())
    assert pub.stats().accepted == 0
    pub.close(0)


def test_opentelemetry_is_not_imported_unless_the_application_did() -> None:
    """Building and using a publisher does not import opentelemetry when the application has not."""
    code = (
        "import sys\n"
        "from edupulse_events import NatsPublisher, PublisherConfig\n"
        "pub = NatsPublisher(PublisherConfig(servers='nats://127.0.0.1:1', subject='a.b'))\n"
        "print('opentelemetry' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
