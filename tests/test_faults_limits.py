"""A hung (SIGSTOPped) broker, events too large for the server, and many threads on a small queue,
against real nats-server processes (JetStream, file storage)."""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable

import pytest
from faults_support import SHORT, connect, ids, join_all, large, oversized, publish_from_threads, sized, stored_ids
from helpers import LogWatcher, envelope, envelopes

from edupulse_events import (
    InvalidEvent,
    NatsPublisher,
    PublishAck,
    PublisherClosed,
    PublishTimeout,
    QueueFull,
    RetryPolicy,
)
from edupulse_events.testing import NatsServer

# --------------------------------------------------------------------------- 5. hung broker


@pytest.mark.slow
def test_hung_broker_deadlines_fire_and_close_returns(nats_server: NatsServer) -> None:
    """SIGSTOPped server: no deadlock; deadlines fire, flush()/close() keep timeouts, publishing recovers on SIGCONT."""
    survivor = connect(nats_server.url, **SHORT)
    before = set(threading.enumerate())
    doomed = connect(nats_server.url, window=64, **SHORT)
    [doomed_thread] = [t for t in threading.enumerate() if t not in before and t.name.startswith("edupulse-publisher")]
    try:
        survivor.publish(envelope()).result(timeout=5)
        doomed.publish(envelope()).result(timeout=5)
        nats_server.pause()
        try:
            hung = [survivor.publish(e) for e in envelopes(50)]
            started = time.monotonic()
            assert not survivor.flush(timeout=0.2)
            assert time.monotonic() - started < 2.0
            assert survivor.flush(timeout=10)
            assert time.monotonic() - started < 5.0
            for f in hung:
                assert isinstance(f.exception(timeout=0), PublishTimeout), f.exception(timeout=0)
            # Large events fill the socket buffers, so the connection cannot even be flushed.
            pending = [doomed.publish(large(64 * 1024)) for _ in range(300)]
            assert not doomed.flush(timeout=0.5)
            started = time.monotonic()
            doomed.close(timeout=1.0)
            assert time.monotonic() - started < 5.0, "close(1.0) hung on a paused broker"
            assert not doomed_thread.is_alive(), "the closed publisher's thread is still running"
            for f in pending:
                assert isinstance(f.exception(timeout=0), (PublisherClosed, PublishTimeout)), f.exception(timeout=0)
            with pytest.raises(PublisherClosed):
                doomed.publish(envelope())
        finally:
            nats_server.resume()
        # The same publisher recovers, and a new one connects and publishes.
        assert survivor.publish(envelope()).result(timeout=10).broker_sequence is not None
        with connect(nats_server.url) as fresh:
            assert fresh.publish(envelope()).result(timeout=10).broker_sequence is not None
    finally:
        for pub in (survivor, doomed):
            pub.close(5)


def test_hung_broker_core_mode_close_returns_at_its_timeout(nats_server: NatsServer) -> None:
    """Core, paused server: close(0.5) is on time, not at attempt_timeout; the PING-bound batch gets PublisherClosed."""
    pub = NatsPublisher.connect(
        nats_server.url, "core.faults", jetstream=False, delivery_timeout=10.0, retry=RetryPolicy(attempt_timeout=3.0)
    )
    try:
        pub.publish(envelope()).result(timeout=5)
        nats_server.pause()
        try:
            futures = [pub.publish(e) for e in envelopes(50)]
            started = time.monotonic()
            pub.close(timeout=0.5)
            assert time.monotonic() - started < 2.0, "close(0.5) waited for the PING's attempt_timeout"
            for f in futures:
                assert isinstance(f.exception(timeout=0), PublisherClosed), f.exception(timeout=0)
        finally:
            nats_server.resume()
    finally:
        pub.close(5)


@pytest.mark.slow
def test_hung_broker_keeps_window_full_and_applies_back_pressure(nats_server: NatsServer) -> None:
    """Hung broker: unacked retries keep their window slots, publish() raises QueueFull; all delivered after SIGCONT."""
    pub = connect(nats_server.url, window=8, max_queue=8, delivery_timeout=10.0, retry=RetryPolicy(attempt_timeout=0.2))
    try:
        pub.publish(envelope()).result(timeout=5)
        nats_server.pause()
        try:
            accepted: list[concurrent.futures.Future[PublishAck]] = []

            def publish_until_full() -> None:
                for e in envelopes(100):
                    accepted.append(pub.publish(e, timeout=0.2))

            with LogWatcher() as logs:
                with pytest.raises(QueueFull):
                    publish_until_full()
                assert logs.wait_for("retrying", 5), "attempts without an ack must be retried"
            assert len(accepted) <= 8 + 8
            with pytest.raises(QueueFull):
                pub.publish(envelope(), timeout=1.0)
        finally:
            nats_server.resume()
        assert pub.flush(timeout=15)
        assert all(f.exception(timeout=0) is None for f in accepted)
    finally:
        pub.close(5)


# --------------------------------------------------------------------------- 6. too large


def test_oversized_event_fails_at_publish_and_neighbours_are_stored(make_server: Callable[..., NatsServer]) -> None:
    """max_payload known: 1 byte over: InvalidEvent at publish(); exactly max_payload and the neighbours are stored."""
    server = make_server(max_payload=8 * 1024)
    with LogWatcher() as logs, connect(server.url) as pub:
        before = envelope(1)
        first = pub.publish(before)
        with pytest.raises(
            InvalidEvent, match="is 8193 bytes with headers, more than the server's max_payload of 8192 bytes"
        ):
            pub.publish(sized(8 * 1024 + 1))
        with pytest.raises(InvalidEvent, match="max_payload of 8192 bytes"):
            pub.publish(oversized(64 * 1024))
        at_limit, after = sized(8 * 1024), envelope(3)
        futures = [first, pub.publish(at_limit), pub.publish(after)]
        assert [f.result(timeout=10).broker_sequence for f in futures] == [1, 2, 3]
    assert "disconnected" not in logs.text
    assert stored_ids(server.url) == collections.Counter(ids([before, at_limit, after]))


def test_oversized_event_with_limit_unknown_fails_on_its_future_only(make_server: Callable[..., NatsServer]) -> None:
    """Oversized, accepted before max_payload known: InvalidEvent on its future; neighbours stored, no disconnect."""
    server = make_server(max_payload=8 * 1024, start=False)
    with LogWatcher() as logs:
        pub = connect(server.url, start_without_broker=True)
        try:
            neighbours = envelopes(4)
            big = oversized(8 * 1024)
            futures = [pub.publish(e) for e in (*neighbours[:2], big, *neighbours[2:])]
            server.start()
            assert pub.flush(timeout=15)
            with pytest.raises(
                InvalidEvent,
                match=rf"event {big.event_id} is \d+ bytes with headers, "
                r"more than the server's max_payload of 8192 bytes",
            ):
                futures[2].result(timeout=0)
            good = [f for i, f in enumerate(futures) if i != 2]
            assert [f.result(timeout=0).broker_sequence for f in good] == [1, 2, 3, 4]
            fifth = envelope(5)
            assert pub.publish(fifth).result(timeout=10).broker_sequence == 5
        finally:
            pub.close(5)
    assert "disconnected" not in logs.text
    assert "Maximum Payload" not in server.log_text()
    assert stored_ids(server.url) == collections.Counter(ids([*neighbours, fifth]))


# --------------------------------------------------------------------------- 7. many threads


@pytest.mark.slow
def test_many_threads_on_a_small_queue(nats_server: NatsServer) -> None:
    """16 threads x 2,000 events, 64-event queue: no deadlock, back-pressure, each event acked and stored once."""
    batches = [envelopes(2000, tenant=f"t{t}") for t in range(16)]
    total = sum(map(len, batches))
    with connect(nats_server.url, max_queue=64) as pub:
        threads, futures, errors = publish_from_threads(pub, batches)
        join_all(threads, 120)
        assert not errors, errors
        assert pub.flush(timeout=60)
        stats = pub.stats()
    assert (stats.accepted, stats.acknowledged, stats.failed) == (total, total, 0)
    assert stats.blocked_publishes > 0
    assert all(f.exception(timeout=0) is None for per_thread in futures for f in per_thread)
    stored = stored_ids(nats_server.url, timeout=60)
    assert sum(stored.values()) == total
    assert set(stored) == set().union(*map(ids, batches))


@pytest.mark.slow
def test_core_batches_to_a_hung_broker_time_out_retry_and_meet_their_deadline(nats_server: NatsServer) -> None:
    """Core NATS, SIGSTOPped server: batches get no PONG, are retried, then fail by their deadline; later ones land."""
    with connect(nats_server.url, jetstream=False, **SHORT) as pub:
        assert pub.publish(envelope()).result(timeout=10).broker_sequence is None
        with LogWatcher() as logs:
            nats_server.pause()
            try:
                started = time.monotonic()
                hung = [pub.publish(e) for e in envelopes(20)]
                assert pub.flush(timeout=10)
                assert time.monotonic() - started < SHORT["delivery_timeout"] + 1.0  # type: ignore[operator]
            finally:
                nats_server.resume()
        for f in hung:
            assert isinstance(f.exception(timeout=0), PublishTimeout), f.exception(timeout=0)
        assert "no answer from the broker" in logs.text
        later = [pub.publish(e) for e in envelopes(10)]
        assert all(f.result(timeout=20).broker_sequence is None for f in later)
