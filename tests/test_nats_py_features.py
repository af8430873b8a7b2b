"""What needs which nats-py: on one too old for a feature, a clear error or a warning instead (the
``matrix`` run has nats-py 2.6; the main run's nats-py has both, and these tests say so)."""

from __future__ import annotations

import pytest
from helpers import LogWatcher, envelopes
from nats_py_support import BATCH_FIELDS, PULL_HEARTBEAT

from edupulse_events import ConfigError, ConsumerConfig, EventRejected, NatsConsumer, NatsPublisher
from edupulse_events.testing import NatsServer


@pytest.mark.skipif(
    PULL_HEARTBEAT, reason="this nats-py pulls with heartbeats: NatsConsumer works (tests/test_consumer.py)"
)
def test_the_consumer_says_which_nats_py_it_needs() -> None:
    """On a nats-py without pull heartbeats, NatsConsumer is a ConfigError naming the version it needs."""
    config = ConsumerConfig(servers="nats://127.0.0.1:4222", stream="EVENTS", durable="d")
    with pytest.raises(ConfigError, match=r"needs nats-py 2\.9 or later"):
        NatsConsumer(config)


@pytest.mark.skipif(BATCH_FIELDS, reason="this nats-py sets allow_atomic/allow_batched (tests/test_atomic_batches.py)")
def test_create_stream_on_an_old_nats_py_warns_and_atomic_batches_are_refused(nats_server: NatsServer) -> None:
    """On a nats-py that cannot set the batch flags, create_stream says so, and an atomic batch fails
    with the stream's clear refusal (10174, naming allow_atomic): nothing hangs, nothing is stored."""
    with LogWatcher() as logs:
        with NatsPublisher.connect(nats_server.url, "old.nats", stream="OLD", create_stream=True) as pub:
            errors = [f.exception(timeout=10) for f in pub.publish_many(envelopes(3), atomic=True)]
            acks = [f.result(timeout=10) for f in pub.publish_many(envelopes(3))]
        assert "cannot set allow_atomic and allow_batched" in logs.text
    assert all(isinstance(e, EventRejected) and e.err_code == 10174 for e in errors)
    assert "allow_atomic" in str(errors[0])
    assert [ack.broker_sequence for ack in acks] == [1, 2, 3]  # an ack per event, as before
