"""Issue 4's broker faults against real nats-server processes (JetStream, file storage).

Crash and restart, cluster failover, broker down at start, an outage longer than the delivery
deadline, a hung (SIGSTOPped) broker, events too large for the server, and many threads on a
small queue. Faults are triggered at points defined by progress (futures resolved, log lines
seen), never after a sleep.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence

import nats
import nats.js.errors
import pytest
from helpers import LogWatcher, envelope, envelopes, read_stream

from edupulse_events import (
    EventEnvelope,
    InvalidEvent,
    LessonPublished,
    NatsPublisher,
    PublisherClosed,
    PublishTimeout,
    QueueFull,
    RetryPolicy,
)
from edupulse_events.publisher import Router
from edupulse_events.testing import NatsCluster, NatsServer

STREAM = "FAULTS"
SUBJECT = "edupulse.faults"
#: Short deadlines so outage tests finish in seconds; attempts are retried after 0.3 s without an ack.
SHORT = {"delivery_timeout": 1.5, "retry": RetryPolicy(attempt_timeout=0.3)}


def connect(url: str, **kwargs: object) -> NatsPublisher:
    """A publisher on SUBJECT that creates the FAULTS stream (file storage) when missing."""
    kwargs.setdefault("stream", STREAM)
    kwargs.setdefault("create_stream", True)
    return NatsPublisher.connect(url, SUBJECT, **kwargs)  # type: ignore[arg-type]


class Progress:
    """Counts resolved futures from their done-callbacks; ``mark(n)`` is set once ``n`` resolved."""

    def __init__(self, *marks: int) -> None:
        self._lock = threading.Lock()
        self.resolved = 0
        self._marks = {n: threading.Event() for n in marks}

    def track(self, future: concurrent.futures.Future) -> concurrent.futures.Future:
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: concurrent.futures.Future) -> None:
        with self._lock:
            self.resolved += 1
            n = self.resolved
        for mark, event in self._marks.items():
            if n >= mark:
                event.set()

    def mark(self, n: int) -> threading.Event:
        return self._marks[n]


def stored_ids(url: str, *, timeout: float = 30.0, attempts: int = 1) -> collections.Counter[str]:
    """How many times each Nats-Msg-Id is stored in the FAULTS stream.

    ``attempts`` > 1 reads again after a 503 (no responders): right after a failover the read
    helper's new consumer may not answer its first fetch yet.
    """
    for attempt in range(1, attempts + 1):
        try:
            messages = read_stream(url, STREAM, timeout=timeout)
        except nats.js.errors.ServiceUnavailableError:
            if attempt == attempts:
                raise
            continue
        return collections.Counter(m.headers.get("Nats-Msg-Id", "") for m in messages)
    raise AssertionError("unreachable")


def ids(envs: Iterable[EventEnvelope]) -> set[str]:
    return {str(e.event_id) for e in envs}


def large(size: int) -> EventEnvelope:
    """A valid envelope whose encoded body is a little over ``size`` bytes."""
    return EventEnvelope.new(LessonPublished(uuid.uuid4(), uuid.uuid4(), "x" * size), tenant_id="school-1")


def sized(total: int) -> EventEnvelope:
    """An envelope of exactly ``total`` bytes on the wire (routing headers + body), as max_payload counts them."""
    env = large(total)
    pad = total - Router(SUBJECT).prepare(env, 0.0, None).size
    env = EventEnvelope.new(LessonPublished(uuid.uuid4(), uuid.uuid4(), "x" * (total + pad)), tenant_id="school-1")
    assert Router(SUBJECT).prepare(env, 0.0, None).size == total
    return env


def oversized(limit: int) -> EventEnvelope:
    """A valid envelope whose encoded body alone is larger than ``limit`` bytes."""
    return large(limit + 100)


def publish_from_threads(pub: NatsPublisher, batches: Sequence[Sequence[EventEnvelope]], progress: Progress | None = None,
                         timeout: float | None = None) -> tuple[list[threading.Thread], list[list[concurrent.futures.Future]], list[BaseException]]:
    """Start one thread per batch publishing it in order; returns (threads, futures per thread, errors)."""
    futures: list[list[concurrent.futures.Future]] = [[] for _ in batches]
    errors: list[BaseException] = []
    go = threading.Barrier(len(batches))

    def run(i: int) -> None:
        go.wait()
        try:
            for env in batches[i]:
                f = pub.publish(env, timeout=timeout)
                futures[i].append(progress.track(f) if progress else f)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"caller-{i}") for i in range(len(batches))]
    for th in threads:
        th.start()
    return threads, futures, errors


def join_all(threads: Iterable[threading.Thread], timeout: float) -> None:
    end = time.monotonic() + timeout
    for th in threads:
        th.join(max(0.0, end - time.monotonic()))
    stuck = [th.name for th in threads if th.is_alive()]
    assert not stuck, f"caller threads still blocked after {timeout} s: {stuck}"


# --------------------------------------------------------------------------- 1. crash and restart


@pytest.mark.slow
def test_crash_and_restart_twice_loses_and_doubles_nothing(nats_server: NatsServer) -> None:
    """3 threads x 5,000 events survive two SIGKILL+restarts of the server: every future succeeds, the stream holds each event exactly once."""
    batches = [envelopes(5000, tenant=f"t{t}") for t in range(3)]
    total = sum(map(len, batches))
    marks = (total // 5, total * 3 // 5)
    progress = Progress(*marks)
    # publish_timeout: callers may wait out an outage on a full queue rather than get QueueFull.
    pub = connect(nats_server.url, publish_timeout=60.0)
    try:
        threads, futures, errors = publish_from_threads(pub, batches, progress)
        for mark in marks:
            assert progress.mark(mark).wait(60), f"only {progress.resolved} of {total} resolved"
            with LogWatcher() as logs:
                nats_server.kill()
                assert progress.resolved < total, "the crash must happen while events are in flight"
                nats_server.restart()
                assert logs.wait_for("reconnected", 15), logs.text
        join_all(threads, 60)
        assert not errors, errors
        assert pub.flush(timeout=60), pub.stats()
        for per_thread in futures:
            for f in per_thread:
                assert f.exception(timeout=0) is None, f.exception(timeout=0)
        stats = pub.stats()
    finally:
        pub.close(5)
    assert (stats.acknowledged, stats.failed) == (total, 0)
    stored = stored_ids(nats_server.url)
    assert sum(stored.values()) == total
    assert set(stored) == set().union(*map(ids, batches))


# --------------------------------------------------------------------------- 2. cluster failover


def connected_node(cluster: NatsCluster) -> int:
    """Index of the node the (only) edupulse_events client is connected to."""
    nodes = [
        i for i, node in enumerate(cluster.nodes)
        if any(c.get("name") == "edupulse_events" for c in (node.monitor("/connz") or {}).get("connections", []))
    ]
    assert len(nodes) == 1, nodes
    return nodes[0]


def move_stream_leader(cluster: NatsCluster, to: int) -> None:
    """Make node ``to`` lead STREAM (leader step-down with a preferred node), waiting for the election advisory."""

    async def run() -> None:
        nc = await nats.connect(servers=cluster.urls, connect_timeout=2)
        try:
            elected = await nc.subscribe(f"$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{STREAM}")
            await nc.flush()
            body = json.dumps({"placement": {"preferred": cluster.node(to).server_name}}).encode()
            reply = json.loads((await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{STREAM}", body, timeout=5)).data)
            assert reply.get("success"), reply
            while json.loads((await elected.next_msg(timeout=15)).data).get("leader") != cluster.node(to).server_name:
                pass
        finally:
            await nc.close()

    asyncio.run(run())
    cluster.wait_ready()
    assert cluster.stream_leader(STREAM) == to


@pytest.mark.slow
@pytest.mark.parametrize("publisher_on", ["leader", "follower"])
def test_cluster_failover_of_stream_leader(nats_cluster: NatsCluster, publisher_on: str) -> None:
    """With an R3 stream and all three URLs, killing the stream leader while publishing (publisher connected to it, or to a follower) loses no event and stores none twice."""
    pub = connect(nats_cluster.url, stream_replicas=3)
    try:
        nats_cluster.wait_ready()
        mine = connected_node(nats_cluster)
        leader = nats_cluster.stream_leader(STREAM)
        if publisher_on == "leader" and leader != mine:
            move_stream_leader(nats_cluster, mine)
        elif publisher_on == "follower" and leader == mine:
            move_stream_leader(nats_cluster, (mine + 1) % 3)
        leader = nats_cluster.stream_leader(STREAM)
        assert (leader == mine) == (publisher_on == "leader")
        batches = [envelopes(2000, tenant=f"t{t}") for t in range(2)]
        total = sum(map(len, batches))
        progress = Progress(total // 5)
        threads, futures, errors = publish_from_threads(pub, batches, progress, timeout=60)
        assert progress.mark(total // 5).wait(60)
        nats_cluster.kill(leader)
        assert progress.resolved < total, "the failover must happen while events are in flight"
        join_all(threads, 60)
        assert not errors, errors
        assert pub.flush(timeout=60), pub.stats()
        for f in (f for per_thread in futures for f in per_thread):
            assert f.exception(timeout=0) is None, f.exception(timeout=0)
        assert nats_cluster.stream_leader(STREAM) != leader
    finally:
        pub.close(5)
    # Reading back needs the JetStream meta leader (consumer create): when the killed node led
    # the meta group too, its re-election can take several seconds longer than the stream's.
    nats_cluster.wait_ready(timeout=30)
    survivors = ",".join(node.url for node in nats_cluster.nodes if node.running)
    stored = stored_ids(survivors, attempts=3)
    assert sum(stored.values()) == total
    assert set(stored) == set().union(*map(ids, batches))


# --------------------------------------------------------------------------- 3. broker down at start


def test_broker_down_at_start_fills_queue_then_delivers_everything(make_server: Callable[..., NatsServer]) -> None:
    """Without a broker, publish() accepts up to max_queue, then raises QueueFull (timeout=0) or blocks; once the server starts, every accepted event is stored once."""
    server = make_server(start=False)
    pub = connect(server.url, start_without_broker=True, max_queue=50)
    try:
        accepted = envelopes(50)
        futures = [pub.publish(e, timeout=0) for e in accepted]
        with pytest.raises(QueueFull):
            pub.publish(envelope(), timeout=0)
        started = time.monotonic()
        with pytest.raises(QueueFull, match="stayed full for 0.3 s"):
            pub.publish(envelope(), timeout=0.3)
        assert 0.25 <= time.monotonic() - started < 5
        late = envelope(1)
        late_future: list[concurrent.futures.Future] = []
        blocked = threading.Thread(target=lambda: late_future.append(pub.publish(late, timeout=60)))
        blocked.start()
        blocked.join(0.3)
        assert blocked.is_alive(), "publish() with a timeout must wait for room"
        assert not pub.flush(timeout=0.1)
        server.start()
        join_all([blocked], 30)
        assert pub.flush(timeout=30)
        assert [f.result(timeout=0).broker_sequence for f in futures] == list(range(1, 51))
        assert late_future[0].result(timeout=0).broker_sequence == 51
        stats = pub.stats()
        assert (stats.accepted, stats.acknowledged, stats.failed) == (51, 51, 0)
        assert stats.blocked_publishes >= 2
    finally:
        pub.close(5)
    stored = stored_ids(server.url)
    assert stored == collections.Counter(ids([*accepted, late]))


# --------------------------------------------------------------------------- 4. outage past the deadline


@pytest.mark.slow
def test_outage_longer_than_deadline_fails_futures_then_recovers(nats_server: NatsServer) -> None:
    """Events not acked before their deadline fail with PublishTimeout during an outage (no hang, no false success); after restart publishing and republishing work, each event stored once."""
    pub = connect(nats_server.url, **SHORT)
    try:
        warmup = envelopes(20)
        for f in [pub.publish(e) for e in warmup]:
            f.result(timeout=5)
        # A burst in flight when the server dies: some acked, the rest must time out.
        burst = envelopes(2000)
        progress = Progress(100)
        burst_futures = [progress.track(pub.publish(e)) for e in burst]
        assert progress.mark(100).wait(10)
        with LogWatcher() as logs:
            nats_server.kill()
            assert logs.wait_for("disconnected", 10), logs.text
        outage = envelopes(30)
        started = time.monotonic()
        outage_futures = [pub.publish(e) for e in outage]
        assert pub.flush(timeout=10), "futures must resolve at their deadline, not hang"
        waited = time.monotonic() - started
        assert 1.0 <= waited < 4.0, waited
        for f in outage_futures:
            exc = f.exception(timeout=0)
            assert isinstance(exc, PublishTimeout), exc
            assert "delivery deadline of 1.5 s" in str(exc)
        for f in burst_futures:
            assert f.exception(timeout=0) is None or isinstance(f.exception(timeout=0), PublishTimeout), f.exception(timeout=0)
        burst_failed = [e for e, f in zip(burst, burst_futures) if f.exception(timeout=0) is not None]
        succeeded = [e for e, f in zip(burst, burst_futures) if f.exception(timeout=0) is None]
        assert len(succeeded) >= 100
        with LogWatcher() as logs:
            nats_server.restart()
            assert logs.wait_for("reconnected", 15), logs.text
        after = envelopes(20)
        failed = outage + burst_failed
        retried = [pub.publish(e) for e in [*after, *failed]]
        for f in retried:
            f.result(timeout=10)
        stats = pub.stats()
    finally:
        pub.close(5)
    assert stats.failed == len(failed)
    stored = stored_ids(nats_server.url)
    assert ids(warmup) | ids(succeeded) <= set(stored), "a future succeeded for an event that is not stored"
    assert set(stored) == ids([*warmup, *burst, *outage, *after])
    assert set(stored.values()) == {1}, "republishing must not store an event twice"


# --------------------------------------------------------------------------- 5. hung broker


@pytest.mark.slow
def test_hung_broker_deadlines_fire_and_close_returns(nats_server: NatsServer) -> None:
    """With a SIGSTOPped server nothing deadlocks: deadlines fire, flush() and close() return within their timeouts, and publishing recovers after SIGCONT."""
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
    """In core mode a batch waiting for the PING round trip to a SIGSTOPped server does not hold close(0.5) up to attempt_timeout: close returns on time and fails it with PublisherClosed."""
    pub = NatsPublisher.connect(nats_server.url, "core.faults", jetstream=False, delivery_timeout=10.0, retry=RetryPolicy(attempt_timeout=3.0))
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
    """Attempts retried for lack of an ack keep their window slot: with a hung broker no more events leave the queue, so publish() waits and raises QueueFull; all are delivered after SIGCONT."""
    pub = connect(nats_server.url, window=8, max_queue=8, delivery_timeout=10.0, retry=RetryPolicy(attempt_timeout=0.2))
    try:
        pub.publish(envelope()).result(timeout=5)
        nats_server.pause()
        try:
            accepted = []
            with LogWatcher() as logs:
                with pytest.raises(QueueFull):
                    for e in envelopes(100):
                        accepted.append(pub.publish(e, timeout=0.2))
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
    """With max_payload known, an envelope one byte over it raises InvalidEvent naming max_payload at publish(); one of exactly max_payload and the events right before and after are stored."""
    server = make_server(max_payload=8 * 1024)
    with LogWatcher() as logs, connect(server.url) as pub:
        before = envelope(1)
        first = pub.publish(before)
        with pytest.raises(InvalidEvent, match="is 8193 bytes with headers, more than the server's max_payload of 8192 bytes"):
            pub.publish(sized(8 * 1024 + 1))
        with pytest.raises(InvalidEvent, match="max_payload of 8192 bytes"):
            pub.publish(oversized(64 * 1024))
        at_limit, after = sized(8 * 1024), envelope(3)
        futures = [first, pub.publish(at_limit), pub.publish(after)]
        assert [f.result(timeout=10).broker_sequence for f in futures] == [1, 2, 3]
    assert "disconnected" not in logs.text
    assert stored_ids(server.url) == collections.Counter(ids([before, at_limit, after]))


def test_oversized_event_with_limit_unknown_fails_on_its_future_only(make_server: Callable[..., NatsServer]) -> None:
    """Accepted before max_payload was known, an oversized event fails on its future with InvalidEvent; neighbours in the same batch are stored and the server never drops the connection."""
    server = make_server(max_payload=8 * 1024, start=False)
    with LogWatcher() as logs:
        pub = connect(server.url, start_without_broker=True)
        try:
            neighbours = envelopes(4)
            big = oversized(8 * 1024)
            futures = [pub.publish(e) for e in (*neighbours[:2], big, *neighbours[2:])]
            server.start()
            assert pub.flush(timeout=15)
            with pytest.raises(InvalidEvent, match=rf"event {big.event_id} is \d+ bytes with headers, more than the server's max_payload of 8192 bytes"):
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
    """16 threads x 2,000 events through a 64-event queue: no deadlock, back-pressure applied, every event acked and stored once."""
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
