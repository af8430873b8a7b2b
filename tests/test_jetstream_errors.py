"""JetStream's publish errors, classified by err_code: transient ones are retried with the same
Nats-Msg-Id, permanent ones fail the event at once with EventRejected — each class shown
against a real nats-server (a 3-node cluster for 10158)."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
from faults_support import STREAM, SUBJECT, connect, large, stored_ids
from helpers import LogWatcher, envelope, envelopes
from nats.js.api import StorageType, StreamConfig

from edupulse_events import (
    BrokerUnavailable,
    EventRejected,
    NatsPublisher,
    PublishTimeout,
    RetryPolicy,
)
from edupulse_events._engine._retry import JS_PUBLISH_ERRORS, refusal
from edupulse_events.testing import NatsCluster, NatsServer

TRANSIENT = {10023, 10063, 10158, 10163, 10167, 10210, 10211}


@pytest.mark.parametrize("err_code", sorted(JS_PUBLISH_ERRORS))
def test_every_known_err_code_is_classified(err_code: int) -> None:
    """Each err_code a publish can get back (nats-server's table) maps to BrokerUnavailable or EventRejected."""
    error = refusal("event e-1", {"code": 400, "err_code": err_code, "description": "some text"})
    assert isinstance(error, BrokerUnavailable if err_code in TRANSIENT else EventRejected)
    assert error.retryable is (err_code in TRANSIENT)
    assert "e-1" in str(error)
    assert str(err_code) in str(error)
    assert JS_PUBLISH_ERRORS[err_code][0] in str(error)


def test_store_failure_is_permanent_unless_the_store_is_closed() -> None:
    """10077 (the store refused the message) is permanent, except "store is closed" (the stream is stopping)."""
    full = refusal("event e", {"code": 503, "err_code": 10077, "description": "maximum messages exceeded"})
    closed = refusal("event e", {"code": 503, "err_code": 10077, "description": "store is closed"})
    assert isinstance(full, EventRejected)
    assert full.err_code == 10077
    assert full.code == 503
    assert isinstance(closed, BrokerUnavailable)


@pytest.mark.parametrize(("code", "transient"), [(503, True), (429, True), (400, False), (500, False), (None, False)])
def test_unknown_err_codes_fall_back_to_the_status(code: int | None, transient: bool) -> None:
    """An err_code the table does not know is transient only with a 429 or 503 status."""
    error = refusal("event e", {"code": code, "err_code": 99999, "description": "new in a later server"})
    assert error.retryable is transient


# --------------------------------------------------------------------------- transient, on a cluster


@pytest.mark.slow
def test_duplicate_in_process_10158_is_retried_not_reported_as_rejected(nats_cluster: NatsCluster) -> None:
    """Two copies of one event back to back on an R3 stream: the second gets 10158 while the first is
    replicated; it is retried with the same Msg-Id and acked as a duplicate — stored once, no error."""
    with LogWatcher() as logs, connect(nats_cluster.url, stream_replicas=3, retry=RetryPolicy(jitter=0.0)) as pub:
        nats_cluster.wait_ready()
        assert pub.publish(envelope()).result(timeout=20).broker_sequence == 1
        pairs = []
        for env in envelopes(10):
            pairs.append((pub.publish(env), pub.publish(env)))  # one batch: pipelined back to back
        acks = [(a.result(timeout=20), b.result(timeout=20)) for a, b in pairs]
    for first, second in acks:
        assert first.broker_sequence == second.broker_sequence
        assert [first.duplicate, second.duplicate].count(True) == 1
    assert "err_code 10158" in logs.text  # the server did answer 10158: the retry is what made it a success
    stored = stored_ids(nats_cluster.url, attempts=3)
    assert len(stored) == 11
    assert set(stored.values()) == {1}


# --------------------------------------------------------------------------- transient, single server


@pytest.mark.slow
def test_insufficient_resources_10023_is_retried_until_the_deadline(
    make_server: Callable[..., NatsServer], tmp_path: Path
) -> None:
    """A full memory store answers 10023: retried (not rejected), then PublishTimeout at the deadline naming it."""
    store = tmp_path / "js"
    server = make_server(jetstream=False, extra_config=f'jetstream {{ store_dir: "{store}", max_memory_store: 1MB }}')

    async def make_stream() -> None:
        nc = await nats.connect(server.url)
        await nc.jetstream().add_stream(StreamConfig(name="MEM", subjects=["mem"], storage=StorageType.MEMORY))
        await nc.close()

    asyncio.run(make_stream())
    with NatsPublisher.connect(server.url, "mem", delivery_timeout=1.5, retry=RetryPolicy(attempt_timeout=0.5)) as pub:
        started = time.monotonic()
        futures = [pub.publish(large(60_000)) for _ in range(25)]
        assert pub.flush(timeout=10)
    kinds = collections.Counter(type(f.exception(timeout=0)).__name__ for f in futures)
    assert kinds["NoneType"] >= 10  # what fitted in 1 MB was stored
    assert kinds["PublishTimeout"] >= 1
    assert set(kinds) == {"NoneType", "PublishTimeout"}
    timed_out = [f.exception(timeout=0) for f in futures if isinstance(f.exception(timeout=0), PublishTimeout)]
    assert all("insufficient resources" in str(e) and "10023" in str(e) for e in timed_out), timed_out[0]
    assert time.monotonic() - started >= 1.5  # retried until the deadline, not failed at once


# --------------------------------------------------------------------------- permanent


async def _stream(url: str, config: StreamConfig, seal: bool = False) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(config)
    if seal:
        config.sealed = True
        await js.update_stream(config)
    await nc.close()


@pytest.mark.parametrize(
    ("err_code", "config", "seal"),
    [
        (10054, StreamConfig(name=STREAM, subjects=[SUBJECT], max_msg_size=100), False),
        (10109, StreamConfig(name=STREAM, subjects=[SUBJECT]), True),
    ],
    ids=["message too large for the stream", "sealed stream"],
)
def test_permanent_refusals_fail_at_once_with_event_rejected(
    nats_server: NatsServer, err_code: int, config: StreamConfig, seal: bool
) -> None:
    """A refusal that retrying cannot cure fails the event at once: EventRejected with the err_code."""
    asyncio.run(_stream(nats_server.url, config, seal))
    with NatsPublisher.connect(nats_server.url, SUBJECT, delivery_timeout=30.0) as pub:
        started = time.monotonic()
        future = pub.publish(envelope(1, tenant=str(uuid.uuid4())))
        error = future.exception(timeout=10)
        elapsed = time.monotonic() - started
        assert pub.publish(envelope(2)).exception(timeout=10) is not None  # the next one is answered too
    assert isinstance(error, EventRejected), error
    assert error.err_code == err_code
    assert f"err_code {err_code}" in str(error)
    assert elapsed < 5.0
