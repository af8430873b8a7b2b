"""The seam to nats-py: the fast path where its internals are as expected, nats-py's public API otherwise,
both against a real nats-server (CI also runs the whole suite on nats-py 2.6, where the public path is taken)."""

from __future__ import annotations

import collections
import importlib.metadata
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from faults_support import STREAM, SUBJECT, connect, stored_ids
from helpers import LogWatcher, envelope, envelopes
from nats.aio.client import Client

from edupulse_events import BrokerError, EventRejected, NatsPublisher
from edupulse_events._nats import PATH_ENV, _paths
from edupulse_events._nats._fast import FastPath, check_internals
from edupulse_events._nats._paths import nats_py_version
from edupulse_events.testing import NatsServer

NATS_PY = tuple(int(p) for p in importlib.metadata.version("nats-py").split(".")[:2])


@pytest.fixture
def public_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force nats-py's public API, as an older nats-py would."""
    monkeypatch.setenv(PATH_ENV, "public")


@pytest.fixture
def path_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[LogWatcher]:
    """Logs, with the once-per-process record of the path choice forgotten."""
    monkeypatch.setattr(_paths, "_logged_paths", set())
    with LogWatcher() as logs:
        yield logs


def path_of(pub: NatsPublisher) -> str | None:
    return pub.stats().nats_path


@pytest.mark.skipif(NATS_PY < (2, 10), reason="the fast path is built for nats-py 2.10 and later")
def test_newest_nats_py_takes_the_fast_path_and_logs_it(nats_server: NatsServer, path_logs: LogWatcher) -> None:
    """With the nats-py this suite installs, publishers take the fast path and show it in stats, repr and logs."""
    with connect(nats_server.url) as one, connect(nats_server.url) as two:
        assert one.publish(envelope()).result(timeout=10).broker_sequence == 1
        assert path_of(one) == "fast"
        assert path_of(two) == "fast"
        assert "path=fast" in repr(one)
    assert path_logs.text.count(f"(nats-py {nats_py_version()}, fast path)") == 2
    assert "public API" not in path_logs.text


def test_public_path_publishes_acks_and_dedups(
    nats_server: NatsServer, public_path: None, path_logs: LogWatcher
) -> None:
    """Forced public path: 600 events from 3 threads acked in per-thread order, stored once; a repeat is a duplicate."""
    batches = [envelopes(200) for _ in range(3)]
    acks: list[list[Any]] = [[] for _ in batches]
    with connect(nats_server.url) as pub:

        def run(i: int) -> None:
            acks[i] = [pub.publish(e) for e in batches[i]]

        threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        seqs = [[f.result(timeout=20).broker_sequence for f in fs] for fs in acks]
        again = pub.publish(batches[0][0]).result(timeout=10)
        assert path_of(pub) == "public"
        assert "path=public" in repr(pub)
    for thread_seqs in seqs:
        assert thread_seqs == sorted(thread_seqs)
    assert again.duplicate
    assert again.broker_sequence == seqs[0][0]
    stored = stored_ids(nats_server.url)
    assert len(stored) == 600
    assert set(stored.values()) == {1}
    assert "publishing through nats-py's public API" in path_logs.text
    assert f"{PATH_ENV}=public" in path_logs.text


def test_public_path_core_mode(nats_server: NatsServer, public_path: None) -> None:
    """Forced public path, core NATS: every event resolves once the server has read it (a stream captures them all)."""
    with connect(nats_server.url) as setup:  # creates the FAULTS stream on the subject
        setup.publish(envelope()).result(timeout=10)
    with connect(nats_server.url, jetstream=False, create_stream=False, stream=None) as pub:
        futures = [pub.publish(e) for e in envelopes(300)]
        acks = [f.result(timeout=20) for f in futures]
        assert path_of(pub) == "public"
    assert all(a.broker_sequence is None for a in acks)
    stored = stored_ids(nats_server.url)
    assert len(stored) == 301


def test_public_path_missing_stream_is_rejected(nats_server: NatsServer, public_path: None) -> None:
    """Forced public path: "no responders" for a subject no stream captures fails fast with EventRejected."""
    with NatsPublisher.connect(nats_server.url, "nobody.listens", delivery_timeout=30.0) as pub:
        error = pub.publish(envelope()).exception(timeout=10)
    assert isinstance(error, EventRejected)
    assert "no JetStream stream captures subject 'nobody.listens'" in str(error)


@pytest.mark.slow
def test_public_path_survives_a_broker_restart(nats_server: NatsServer, public_path: None) -> None:
    """Forced public path: events published across a SIGKILL and restart of the server are all stored, once."""
    with connect(nats_server.url) as pub:
        before = [pub.publish(e) for e in envelopes(100)]
        assert all(f.result(timeout=20) for f in before)
        nats_server.kill()
        during = [pub.publish(e) for e in envelopes(50)]
        nats_server.restart()
        after = [pub.publish(e) for e in envelopes(50)]
        kinds = collections.Counter(f.exception(timeout=30) is None for f in during + after)
        assert kinds == {True: 100}
    stored = stored_ids(nats_server.url)
    assert len(stored) == 200
    assert set(stored.values()) == {1}


@pytest.mark.skipif(NATS_PY < (2, 10), reason="nats-py before 2.10 never gets to the probe")
def test_a_failed_probe_falls_back_to_the_public_path(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch, path_logs: LogWatcher
) -> None:
    """When nats-py's internals do not behave (the probe's round trip fails), the connection uses the public API."""

    async def probe_fails(self: FastPath, timeout: float) -> bool:
        return False

    monkeypatch.setattr(FastPath, "probe", probe_fails)
    with connect(nats_server.url) as pub:
        assert pub.publish(envelope()).result(timeout=10).broker_sequence == 1
        assert path_of(pub) == "public"
        worker = pub._last_worker  # noqa: SLF001  # the parser must be nats-py's own again
        assert worker is not None
        parser: Any = worker.transport._nc._ps  # noqa: SLF001
        assert parser.parse.__qualname__.startswith("Parser.")
    assert "the fast path's probe failed" in path_logs.text


def test_internals_check_rejects_the_pre_2_10_client_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client whose _process_info is a plain function (nats-py before 2.10) is refused by the fast path's check."""

    def process_info(self: Client, info: dict[str, Any], initial_connection: bool = False) -> None:
        return None

    assert check_internals() is None or NATS_PY < (2, 10)
    monkeypatch.setattr(Client, "_process_info", process_info)
    reason = check_internals()
    assert reason is not None
    assert "2.10" in reason


def test_tls_guard_refuses_when_it_cannot_be_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """If nats-py's INFO handler is not the shape the TLS guard wraps, a tls:// publisher refuses to connect."""

    async def other(self: Client, server_info: dict[str, Any]) -> None:
        return None

    monkeypatch.setattr(Client, "_process_info", other)
    with pytest.raises(BrokerError, match="TLS could not be enforced"):
        NatsPublisher.connect("tls://127.0.0.1:1", SUBJECT, connect_timeout=1.0)


def test_stream_name_is_read_back_on_both_paths(nats_server: NatsServer, public_path: None) -> None:
    """Acks on the public path carry the stream's name, like the fast path's."""
    with connect(nats_server.url) as pub:
        ack = pub.publish(envelope()).result(timeout=10)
    assert ack.stream == STREAM
