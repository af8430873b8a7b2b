"""The publisher thread: tenacity backoff schedule, batching, resilience to failing callbacks."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable

import pytest
from helpers import LogWatcher, envelope, envelopes, read_stream

from edupulse_events import BrokerError, BrokerUnavailable, EventRejected, NatsPublisher, PublishAck, RetryPolicy
from edupulse_events._engine._retry import Backoff
from edupulse_events.testing import NatsServer


def backoff(policy: RetryPolicy, attempt: int) -> float | None:
    return Backoff(policy).delay(attempt, BrokerUnavailable("probe"))


def test_backoff_is_exponential_and_capped() -> None:
    """Without jitter the waits double from `initial` and stop growing at `maximum`."""
    policy = RetryPolicy(initial=0.05, maximum=0.4, multiplier=2.0, jitter=0.0)
    assert [backoff(policy, n) for n in range(1, 7)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.4, 0.4])


def test_backoff_jitter_stays_within_bounds() -> None:
    """Jitter adds a random 0..jitter seconds on top of the exponential wait."""
    policy = RetryPolicy(initial=0.1, maximum=1.0, multiplier=3.0, jitter=0.05)
    waits = [backoff(policy, 2) for _ in range(200)]
    assert all(w is not None and 0.3 <= w <= 0.35 for w in waits)
    assert len(set(waits)) > 1


def test_only_transient_failures_are_retried() -> None:
    """tenacity's verdict: a retryable BrokerError gets a wait, a permanent one or another error gets none."""
    backoff = Backoff(RetryPolicy(jitter=0.0))
    assert backoff.delay(1, BrokerUnavailable("timeout")) == pytest.approx(0.05)
    assert backoff.delay(1, EventRejected("no stream")) is None
    assert backoff.delay(1, BrokerError("bad credentials")) is None
    assert backoff.delay(1, ValueError("bug")) is None


def test_retry_after_lost_ack_reuses_msg_id(nats_server: NatsServer) -> None:
    """An attempt whose ack does not come (server paused) is retried with the same Nats-Msg-Id: stored once."""
    with (
        LogWatcher() as logs,
        NatsPublisher.connect(
            nats_server.url, "edupulse.events", stream="S", create_stream=True, retry=RetryPolicy(attempt_timeout=0.3)
        ) as pub,
    ):
        nats_server.pause()
        try:
            future = pub.publish(envelope())
            assert logs.wait_for(r"attempt 1 failed .*retrying", timeout=10)
        finally:
            nats_server.resume()
        ack = future.result(timeout=20)
    stored = read_stream(nats_server.url, "S")
    assert len(stored) == 1
    assert ack.broker_sequence == 1


def test_worker_takes_batches_not_single_events(nats_server: NatsServer) -> None:
    """Publishing 5,000 events in a tight loop takes far fewer wake-ups than events."""
    with NatsPublisher.connect(nats_server.url, "edupulse.events", stream="S", create_stream=True) as pub:
        for env in envelopes(5000):
            pub.publish(env)
        assert pub.flush(timeout=60)
        stats = pub.stats()
    assert stats.acknowledged == 5000
    assert stats.batches < 5000 / 5


def test_failing_done_callback_does_not_stop_the_thread(nats_server: NatsServer) -> None:
    """A done-callback that raises is logged by concurrent.futures; later events are still delivered."""
    with NatsPublisher.connect(nats_server.url, "edupulse.events", stream="S", create_stream=True) as pub:
        called = threading.Event()

        def boom(_f: concurrent.futures.Future[PublishAck]) -> None:
            called.set()
            raise RuntimeError("callback bug")

        pub.publish(envelope(1)).add_done_callback(boom)
        assert called.wait(10)
        assert pub.publish(envelope(2)).result(timeout=10).broker_sequence == 2


def test_permanent_failure_fails_fast_not_at_deadline(nats_server: NatsServer) -> None:
    """A stream rejecting an event (here: full, with discard=new) fails its future with BrokerError at once."""
    import asyncio

    import nats
    from nats.js.api import DiscardPolicy

    async def make_stream() -> None:
        nc = await nats.connect(nats_server.url)
        await nc.jetstream().add_stream(name="TINY", subjects=["tiny"], max_msgs=1, discard=DiscardPolicy.NEW)
        await nc.close()

    asyncio.run(make_stream())
    with NatsPublisher.connect(nats_server.url, "tiny", delivery_timeout=60.0) as pub:
        assert pub.publish(envelope(1)).result(timeout=10).broker_sequence == 1
        with pytest.raises(BrokerError, match=r"JetStream rejected event .*maximum messages"):
            pub.publish(envelope(2)).result(timeout=10)


def test_connection_closed_by_nats_py_is_rebuilt(nats_server: NatsServer) -> None:
    """nats-py closed its client for good (server -ERR): the publisher builds a new connection and keeps delivering."""
    import asyncio

    with (
        LogWatcher() as logs,
        NatsPublisher.connect(nats_server.url, "edupulse.events", stream="S", create_stream=True) as pub,
    ):
        assert pub.publish(envelope(1)).result(timeout=10).broker_sequence == 1
        worker = pub._worker  # noqa: SLF001  # the running thread, whose connection is made to fail
        assert worker is not None
        old = worker.transport
        # What the parser does on "-ERR 'Unknown Protocol Operation'": a real nats-py code path.
        nc = old._nc  # noqa: SLF001  # the thread's nats-py client, made to close itself for good
        loop = worker._loop  # noqa: SLF001  # the publisher thread's loop, where the client runs
        process_err = nc._process_err("'Unknown Protocol Operation'")  # noqa: SLF001  # nats-py's -ERR handler
        asyncio.run_coroutine_threadsafe(process_err, loop).result(timeout=5)
        assert logs.wait_for(r"was closed by the client library", timeout=10)
        assert pub.publish(envelope(2)).result(timeout=20).broker_sequence == 2
        assert worker.transport is not old


def test_futures_wake_waiters_of_wait_as_completed_and_result(make_server: Callable[..., NatsServer]) -> None:
    """Threads blocked in futures.wait, as_completed and result() on pending events all wake when acks settle them."""
    server = make_server(start=False)
    with NatsPublisher.connect(
        server.url, "edupulse.events", stream="S", create_stream=True, start_without_broker=True
    ) as pub:
        futures = [pub.publish(e) for e in envelopes(300)]
        assert not any(f.done() for f in futures)
        outcomes: dict[str, object] = {}
        started = threading.Barrier(4)

        def waiter() -> None:
            started.wait()
            done, pending = concurrent.futures.wait(futures, timeout=30)
            outcomes["wait"] = (len(done), len(pending))

        def completer() -> None:
            started.wait()
            sequences = [f.result().broker_sequence for f in concurrent.futures.as_completed(futures, timeout=30)]
            # compared with all 300 below: a None would leave one missing
            outcomes["as_completed"] = sorted(seq for seq in sequences if seq is not None)

        def blocker() -> None:
            started.wait()
            outcomes["result"] = futures[-1].result(timeout=30).broker_sequence

        threads = [threading.Thread(target=t) for t in (waiter, completer, blocker)]
        for t in threads:
            t.start()
        started.wait()
        server.start()
        for t in threads:
            t.join(40)
    assert outcomes == {"wait": (300, 0), "as_completed": list(range(1, 301)), "result": 300}
