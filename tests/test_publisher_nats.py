"""NatsPublisher against a real nats-server: acks, headers, routing, windows, back-pressure, close."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import threading
from collections.abc import Callable
from typing import Any

import nats
import pytest
from helpers import LogWatcher, envelope, envelopes, read_stream

from edupulse_events import (
    BrokerError,
    ConfigError,
    DeadlockError,
    InvalidEvent,
    NatsPublisher,
    PublishAck,
    PublisherClosed,
    PublisherState,
    PublishTimeout,
    QueueFull,
    WaitTimeout,
    encode,
)
from edupulse_events.testing import NatsServer

STREAM = "EVENTS"


def connect(server: NatsServer, subject: str = "edupulse.events", **kwargs: Any) -> NatsPublisher:
    kwargs.setdefault("stream", STREAM)
    kwargs.setdefault("create_stream", kwargs.get("jetstream", True))
    if not kwargs["create_stream"]:
        kwargs.pop("stream")
    return NatsPublisher.connect(server.url, subject, **kwargs)


def test_jetstream_ack_headers_and_body(nats_server: NatsServer) -> None:
    """A JetStream ack carries sequence and stream; the stored message is the encoded envelope with routing headers."""
    env = envelope(
        1, tenant="Société 42", personally_identifiable=True, correlation_id="c0ffee00-dead-4bef-8bad-f00dbaadcafe"
    )
    with connect(nats_server) as pub:
        ack = pub.publish(env).result(timeout=10)
    assert ack == PublishAck(broker_sequence=1, stream=STREAM, duplicate=False)
    [msg] = read_stream(nats_server.url, STREAM)
    assert msg.data == encode(env)
    assert msg.headers["Nats-Msg-Id"] == str(env.event_id)
    assert msg.headers["Edupulse-Event-Type"] == "PaymentProcessed"
    assert msg.headers["Edupulse-Tenant"] == "Soci%C3%A9t%C3%A9%2042"
    assert msg.headers["Edupulse-Pii"] == "true"
    assert msg.headers["Edupulse-Correlation-Id"] == "c0ffee00-dead-4bef-8bad-f00dbaadcafe"


def test_same_event_twice_is_deduplicated(nats_server: NatsServer) -> None:
    """Publishing the same envelope again is acked as a duplicate of the stored message (Nats-Msg-Id)."""
    env = envelope()
    with connect(nats_server) as pub:
        first = pub.publish(env).result(timeout=10)
        second = pub.publish(env).result(timeout=10)
    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.broker_sequence == first.broker_sequence
    assert len(read_stream(nats_server.url, STREAM)) == 1


def test_many_events_pipelined_in_order(nats_server: NatsServer) -> None:
    """Thousands of events from one thread are all acked, stored in publish order, with many in flight at once."""
    envs = envelopes(3000)
    with connect(nats_server, window=128) as pub:
        futures = [pub.publish(e) for e in envs]
        assert pub.flush(timeout=30)
        stats = pub.stats()
    seqs = [f.result(timeout=0).broker_sequence for f in futures]
    assert seqs == list(range(1, 3001))
    assert stats.acknowledged == 3000
    assert stats.failed == 0
    assert 1 < stats.peak_in_flight <= 128
    stored = read_stream(nats_server.url, STREAM)
    assert [m.headers["Nats-Msg-Id"] for m in stored] == [str(e.event_id) for e in envs]


def test_core_mode_resolves_after_server_has_the_bytes(nats_server: NatsServer) -> None:
    """Core mode: futures resolve with broker_sequence=None once the server has the messages; a subscriber gets them."""
    received: list[bytes] = []
    ready = threading.Event()
    done = threading.Event()

    async def subscriber() -> None:
        nc = await nats.connect(nats_server.url)
        sub = await nc.subscribe("core.events")
        await nc.flush()
        ready.set()
        async for msg in sub.messages:
            received.append(msg.data)
            if len(received) == 50:
                break
        await nc.close()
        done.set()

    thread = threading.Thread(target=asyncio.run, args=(subscriber(),))
    thread.start()
    assert ready.wait(10)
    envs = envelopes(50)
    with connect(nats_server, "core.events", jetstream=False, create_stream=False) as pub:
        acks = [f.result(timeout=10) for f in [pub.publish(e) for e in envs]]
    assert all(a == PublishAck(None, None, False) for a in acks)
    assert done.wait(10)
    thread.join(10)
    assert received == [encode(e) for e in envs]


def test_subject_template_uses_tenant_and_type(nats_server: NatsServer) -> None:
    """A subject template routes by tenant (percent-encoded, '_' for none) and event type."""
    envs = [envelope(0, tenant="north"), envelope(1, tenant=None), envelope(2, tenant="a.b c")]
    with connect(nats_server, "edupulse.{tenant}.{type}") as pub:
        for f in [pub.publish(e) for e in envs]:
            f.result(timeout=10)
    subjects = [m.subject for m in read_stream(nats_server.url, STREAM)]
    assert subjects == [
        "edupulse.north.LessonPublished",
        "edupulse._.PaymentProcessed",
        "edupulse.a%2Eb%20c.LessonPublished",
    ]


def test_missing_stream_fails_fast_with_clear_message(nats_server: NatsServer) -> None:
    """No stream for the subject: the future fails fast with BrokerError naming it (no retry until the deadline)."""
    with connect(nats_server, "nowhere.events", create_stream=False, delivery_timeout=30.0) as pub:
        future = pub.publish(envelope())
        with pytest.raises(BrokerError, match=r"no JetStream stream captures subject 'nowhere\.events'"):
            future.result(timeout=10)


def test_bad_input_raises_at_call_site_and_publisher_keeps_working(nats_server: NatsServer) -> None:
    """publish() of something that is not a valid envelope raises InvalidEvent and queues nothing."""
    with connect(nats_server) as pub:
        for bad in (None, "event", {"event_id": "x"}, envelope().data):
            with pytest.raises(InvalidEvent):
                pub.publish(bad)  # type: ignore[arg-type]  # deliberately not an envelope
        assert pub.publish(envelope()).result(timeout=10).broker_sequence == 1
        assert pub.stats().accepted == 1


def test_too_large_for_server_fails_at_publish(make_server: Callable[..., NatsServer]) -> None:
    """An envelope larger than the server's max_payload raises InvalidEvent at publish(); neighbours are stored."""
    server = make_server(max_payload=16 * 1024)
    with connect(server) as pub:
        small = [pub.publish(envelope(i)) for i in range(3)]
        big = envelope(0)
        big = big.follow_up(type(big.data)(big.data.lesson_id, big.data.author_id, "x" * 20_000))
        with pytest.raises(InvalidEvent, match="max_payload of 16384"):
            pub.publish(big)
        small += [pub.publish(envelope(i)) for i in range(3)]
        assert [f.result(timeout=10).broker_sequence for f in small] == [1, 2, 3, 4, 5, 6]


def test_queue_full_without_broker_then_delivered(make_server: Callable[..., NatsServer]) -> None:
    """start_without_broker: accepted up to the queue bound, then QueueFull; all delivered once the server starts."""
    server = make_server(start=False)
    pub = NatsPublisher.connect(
        server.url, "edupulse.events", stream=STREAM, create_stream=True, start_without_broker=True, max_queue=20
    )
    try:
        futures = [pub.publish(e, timeout=0) for e in envelopes(20)]
        with pytest.raises(QueueFull):
            pub.publish(envelope(), timeout=0)
        with pytest.raises(QueueFull):
            pub.publish(envelope(), timeout=0.2)
        assert pub.stats().blocked_publishes >= 1
        assert not pub.flush(timeout=0.2)
        server.start()
        assert pub.flush(timeout=30)
        assert [f.result(timeout=0).broker_sequence for f in futures] == list(range(1, 21))
    finally:
        pub.close(timeout=5)
    assert len(read_stream(server.url, STREAM)) == 20


def test_deadline_fails_futures_with_publish_timeout(make_server: Callable[..., NatsServer]) -> None:
    """With no broker, every accepted event fails with PublishTimeout at its delivery deadline; nothing hangs."""
    server = make_server(start=False)
    from edupulse_events import RetryPolicy

    pub = NatsPublisher.connect(
        server.url,
        "edupulse.events",
        start_without_broker=True,
        delivery_timeout=0.5,
        retry=RetryPolicy(attempt_timeout=0.2),
    )
    with pub:
        futures = [pub.publish(e) for e in envelopes(5)]
        assert pub.flush(timeout=10)
        for f in futures:
            assert isinstance(f.exception(timeout=0), PublishTimeout)
        assert pub.stats().failed == 5


def test_close_is_idempotent_and_refuses_new_events(nats_server: NatsServer) -> None:
    """After close(), publish raises PublisherClosed; close() again is a no-op; the thread is gone."""
    pub = connect(nats_server)
    future = pub.publish(envelope())
    pub.close(timeout=5)
    assert future.result(timeout=0).broker_sequence == 1
    with pytest.raises(PublisherClosed):
        pub.publish(envelope())
    pub.close()
    assert not any(t.name.startswith("edupulse-publisher") and t.is_alive() for t in threading.enumerate())


def test_close_fails_what_it_cannot_deliver(make_server: Callable[..., NatsServer]) -> None:
    """close(timeout) with an unreachable broker fails queued futures with PublisherClosed and logs their ids."""
    server = make_server(start=False)
    pub = NatsPublisher.connect(server.url, "edupulse.events", start_without_broker=True)
    envs = envelopes(3)
    futures = [pub.publish(e) for e in envs]
    with LogWatcher() as logs:
        pub.close(timeout=0.3)
    for f in futures:
        assert isinstance(f.exception(timeout=0), PublisherClosed)
    assert "3 were not confirmed: possibly stored" in logs.text
    assert "republish the same envelopes within the stream's duplicate window" in logs.text
    for e in envs:
        assert str(e.event_id) in logs.text


def test_many_undelivered_ids_are_all_logged_on_bounded_lines(make_server: Callable[..., NatsServer]) -> None:
    """1,200 undelivered events: every id is logged, on lines of at most 500 ids (log pipelines cut long lines)."""
    server = make_server(start=False)
    pub = NatsPublisher.connect(server.url, "edupulse.events", start_without_broker=True)
    envs = envelopes(1200)
    for e in envs:
        pub.publish(e)
    with LogWatcher() as logs:
        pub.close(timeout=0.3)
    lines = [r.getMessage() for r in logs.records if "not confirmed" in r.getMessage()]
    assert len(lines) == 3
    assert "1200 were not confirmed: possibly stored" in lines[0]
    assert "(event ids 500 of 1200" in lines[0]
    assert "(event ids 1001-1200 of 1200)" in lines[2]
    logged = [
        i for line in lines for i in re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", line)
    ]
    assert logged == [str(e.event_id) for e in envs]


def test_waiting_inside_done_callback_raises_instead_of_deadlock(make_server: Callable[..., NatsServer]) -> None:
    """A done-callback (on the publisher thread) waiting on an unresolved future or on flush() gets DeadlockError."""
    from edupulse_events import PublishFuture

    server = make_server(start=False)
    seen: list[BaseException] = []
    called = threading.Event()
    unresolved = PublishFuture()
    with NatsPublisher.connect(
        server.url, "edupulse.events", stream=STREAM, create_stream=True, start_without_broker=True
    ) as pub:

        def callback(_f: concurrent.futures.Future[PublishAck]) -> None:
            for wait in (lambda: unresolved.result(timeout=5), lambda: pub.flush(timeout=5)):
                try:
                    wait()
                except DeadlockError as exc:
                    seen.append(exc)
            called.set()

        pub.publish(envelope()).add_done_callback(callback)  # not connected yet: resolves on the publisher thread
        server.start()
        assert called.wait(10)
    assert len(seen) == 2


def test_many_threads_keep_per_thread_order(nats_server: NatsServer) -> None:
    """8 threads publish at once; everything is acked and each thread's events are stored in its order."""
    per_thread = {t: envelopes(250, tenant=f"t{t}") for t in range(8)}
    with connect(nats_server, max_queue=100) as pub:
        threads = [threading.Thread(target=lambda t=t: [pub.publish(e) for e in per_thread[t]]) for t in per_thread]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert pub.flush(timeout=60)
        assert pub.stats().acknowledged == 2000
    stored = read_stream(nats_server.url, STREAM)
    order = [m.headers["Nats-Msg-Id"] for m in stored]
    for envs in per_thread.values():
        mine = [i for i in order if i in {str(e.event_id) for e in envs}]
        assert mine == [str(e.event_id) for e in envs]


def test_connect_refused_raises_broker_error(make_server: Callable[..., NatsServer]) -> None:
    """connect() to a port with no server raises BrokerError within the connect timeout."""
    server = make_server(start=False)
    with pytest.raises(BrokerError, match="could not connect"):
        NatsPublisher.connect(server.url, "s", connect_timeout=1.0)


def test_thread_is_named_daemon_and_started_lazily(nats_server: NatsServer) -> None:
    """A publisher built from a config starts no thread until the first publish; the thread is a named daemon."""
    from edupulse_events import PublisherConfig

    pub = NatsPublisher(
        PublisherConfig(servers=nats_server.url, subject="edupulse.events", stream=STREAM, create_stream=True)
    )
    try:
        assert not [t for t in threading.enumerate() if t.name.startswith("edupulse-publisher")]
        assert pub.publish(envelope()).result(timeout=10).broker_sequence == 1
        [thread] = [t for t in threading.enumerate() if t.name.startswith("edupulse-publisher")]
        assert thread.daemon
    finally:
        pub.close(5)


@pytest.mark.parametrize("jetstream", [True, False], ids=["jetstream", "core"])
def test_kept_futures_do_not_keep_the_events_bytes(nats_server: NatsServer, jetstream: bool) -> None:
    """A caller holding the futures of acknowledged events does not hold their encoded bodies."""
    import tracemalloc
    import uuid

    from edupulse_events import EventEnvelope, LessonPublished

    envs = [EventEnvelope.new(LessonPublished(uuid.uuid4(), uuid.uuid4(), "x" * 50_000)) for _ in range(200)]
    with connect(nats_server, jetstream=jetstream) as pub:
        tracemalloc.start()
        try:
            futures = [pub.publish(env) for env in envs]
            assert pub.flush(timeout=30)
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert all(f.exception(timeout=0) is None for f in futures)
    assert held < 2_000_000, f"{held:,} bytes still held for 200 acknowledged events of 50 kB (10 MB of bodies)"


def test_result_timeout_raises_wait_timeout_and_the_event_still_arrives(make_server: Callable[..., NatsServer]) -> None:
    """result(timeout) running out raises WaitTimeout (a TimeoutError, not PublishTimeout); the event still lands."""
    server = make_server(start=False)
    with connect(server, start_without_broker=True) as pub:
        future = pub.publish(envelope())
        with pytest.raises(WaitTimeout, match="still on its way") as info:
            future.result(timeout=0.05)
        assert isinstance(info.value, TimeoutError)
        assert isinstance(info.value, concurrent.futures.TimeoutError)
        assert not isinstance(info.value, PublishTimeout)
        with pytest.raises(WaitTimeout):
            future.exception(timeout=0.05)
        server.start()
        assert future.result(timeout=20).broker_sequence == 1


def test_except_timeout_error_catches_a_pending_event_never_a_failed_one(
    make_server: Callable[..., NatsServer],
) -> None:
    """`except TimeoutError` around result(timeout) catches "not resolved yet"; a failed event raises PublishTimeout."""
    from edupulse_events import RetryPolicy

    server = make_server(start=False)  # no broker: the event fails at its deadline
    pub = NatsPublisher.connect(
        server.url,
        "edupulse.events",
        start_without_broker=True,
        delivery_timeout=1.0,
        retry=RetryPolicy(attempt_timeout=0.2),
    )
    with pub:
        future = pub.publish(envelope())
        try:
            future.result(timeout=0)
            pending = False
        except TimeoutError:  # the natural way to wait a little
            pending = True
        assert pending
        assert pub.flush(timeout=10)

        def wait_for_it() -> object:
            try:
                return future.result(timeout=5)
            except TimeoutError:
                pytest.fail("except TimeoutError caught an event that failed at its deadline")

        with pytest.raises(PublishTimeout) as failed:
            wait_for_it()
    assert isinstance(failed.value, BrokerError)
    assert not isinstance(failed.value, (TimeoutError, concurrent.futures.TimeoutError))
    assert not failed.value.retryable


def test_connect_takes_servers_as_config_does(nats_server: NatsServer) -> None:
    """connect(servers=[...], subject=...) works as connect(url, subject); both or neither is a ConfigError."""
    with NatsPublisher.connect(servers=[nats_server.url], subject="edupulse.events", jetstream=False) as pub:
        assert pub.config.servers == (nats_server.url,)
        assert pub.publish(envelope()).result(timeout=10).broker_sequence is None
    with pytest.raises(ConfigError, match="both given"):
        NatsPublisher.connect(nats_server.url, "edupulse.events", servers=nats_server.url)
    with pytest.raises(ConfigError, match="neither given"):
        NatsPublisher.connect(subject="edupulse.events")
    with pytest.raises(ConfigError, match="no subject given"):
        NatsPublisher.connect(nats_server.url)


def test_internal_hooks_are_not_public_and_state_is_one_type(nats_server: NatsServer) -> None:
    """The engine's hooks are private; NatsPublisher.state and PublisherStats.state are the same str enum."""
    for name in ("on_resolved", "on_crash", "on_fork", "pid", "exit_timeout"):
        assert not hasattr(NatsPublisher, name), name
    with connect(nats_server) as pub:
        pub.publish(envelope()).result(timeout=10)
        state = pub.stats().state
        assert state is pub.state is PublisherState.RUNNING
        running: str = "running"
        assert state == running
        assert (str(state), f"{state}") == ("running", "running")
    assert pub.stats().state is PublisherState.CLOSED
