"""Fast ingest: publish_many() through JetStream fast-ingest batches where the stream allows it."""

from __future__ import annotations

import asyncio
import threading

import nats
import pytest
from faults_support import SHORT, STREAM, connect, sized, stored_ids
from helpers import LogWatcher, add_stream, envelope, envelopes, read_stream

from edupulse_events import EventEnvelope, NatsPublisher, PublishAck, encode
from edupulse_events._nats import PATH_ENV
from edupulse_events.testing import NatsCluster, NatsServer

pytestmark = pytest.mark.batch_streams


@pytest.fixture(params=["fast", "public"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of talking to nats-py: its internals (fast path) and its public API."""
    if request.param == "public":
        monkeypatch.setenv(PATH_ENV, "public")
    return str(request.param)


def test_publish_many_goes_through_fast_ingest_in_order_once(nats_server: NatsServer, path: str) -> None:
    """A stream made by create_stream allows fast ingest: a batch is stored once, in order, acked without sequences."""
    batch = envelopes(1_200)
    with connect(nats_server.url) as pub:
        futures = pub.publish_many(batch)
        acks = [f.result(timeout=30) for f in futures]
        single = pub.publish(envelope()).result(timeout=10)
        assert pub.stats().nats_path == path
    stats = pub.stats()  # after close(): every resolution counted
    assert set(acks) == {PublishAck(None, STREAM, False)}
    assert single.broker_sequence == 1_201  # publish() keeps an ack of its own, with its sequence
    assert (stats.acknowledged_fast, stats.acknowledged) == (1_200, 1_201)
    assert [m.data for m in read_stream(nats_server.url, STREAM)][:1_200] == [encode(e) for e in batch]


def test_a_stream_without_allow_batched_gets_an_ack_per_event_logged_once(nats_server: NatsServer) -> None:
    """Without allow_batched, publish_many() gets per-event acks (with sequences) and says so once."""
    add_stream(nats_server.url, "PLAIN", ["edupulse.plain"])
    with LogWatcher() as logs, NatsPublisher.connect(nats_server.url, "edupulse.plain", stream="PLAIN") as pub:
        acks = [f.result(timeout=30) for f in pub.publish_many(envelopes(300))]
        stats = pub.stats()
    assert [ack.broker_sequence for ack in acks] == list(range(1, 301))
    assert stats.acknowledged_fast == 0
    assert logs.text.count("does not allow fast-ingest batches") == 1


def test_fast_ingest_events_survive_a_server_killed_and_restarted(make_server: object) -> None:
    """The server SIGKILLed mid-run and restarted: every accepted event ends stored exactly once or failed."""
    server: NatsServer = make_server()  # type: ignore[operator]
    batches = [envelopes(500) for _ in range(12)]
    futures: list[tuple[EventEnvelope, object]] = []
    half = threading.Event()
    with connect(server.url, delivery_timeout=20.0) as pub:

        def publish() -> None:
            for i, batch in enumerate(batches):
                futures.extend(zip(batch, pub.publish_many(batch), strict=True))
                if i == 3:
                    half.set()

        thread = threading.Thread(target=publish)
        thread.start()
        assert half.wait(30)
        server.kill()
        server.restart()
        thread.join(60)
        assert pub.flush(40)
    stored = stored_ids(server.url, attempts=3)
    assert max(stored.values()) == 1
    for env, future in futures:
        if future.exception() is None:  # type: ignore[attr-defined]
            assert stored[str(env.event_id)] == 1


@pytest.mark.slow
def test_fast_ingest_across_an_r3_leader_change(nats_cluster: NatsCluster) -> None:
    """An R3 stream's leader killed mid-run: every event acked is stored once, none twice."""
    with connect(nats_cluster.url, stream_replicas=3, delivery_timeout=25.0) as pub:
        first = [f.result(timeout=30) for f in pub.publish_many(envelopes(500))]
        assert all(ack.stream == STREAM for ack in first)
        batches = [envelopes(500) for _ in range(6)]
        futures = []
        for i, batch in enumerate(batches):
            futures += list(zip(batch, pub.publish_many(batch), strict=True))
            if i == 1:
                nats_cluster.kill(nats_cluster.stream_leader(STREAM))
        assert pub.flush(40)
    stored = stored_ids(nats_cluster.url, attempts=5)  # any live node answers
    assert max(stored.values()) == 1
    acked = [env for env, f in futures if f.exception() is None]
    assert acked
    assert all(stored[str(env.event_id)] == 1 for env in acked)


def test_a_short_deadline_still_resolves_every_fast_ingest_future(nats_server: NatsServer) -> None:
    """Paused broker: fast-ingest events fail at their deadline (PublishTimeout), never hang."""
    with connect(nats_server.url, **SHORT) as pub:
        pub.publish_many(envelopes(10)).pop().result(timeout=10)  # connected and fast ingest ready
        nats_server.pause()
        try:
            futures = pub.publish_many(envelopes(200))
            errors = {type(f.exception(timeout=10)).__name__ for f in futures}
        finally:
            nats_server.resume()
    assert errors == {"PublishTimeout"}


def _update_stream(url: str, **changes: object) -> None:
    """Change the FAULTS stream's config on the server (as an operator would)."""

    async def update() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            config = (await js.stream_info(STREAM)).config
            for name, value in changes.items():
                setattr(config, name, value)
            await js.update_stream(config)
        finally:
            await nc.close()

    asyncio.run(update())


def test_an_event_the_stream_refuses_fails_alone_in_a_fast_ingest_batch(nats_server: NatsServer) -> None:
    """One event over the stream's max_msg_size fails with EventRejected; the rest of its batch is stored once."""
    with connect(nats_server.url) as pub:
        pub.publish_many(envelopes(2)).pop().result(timeout=10)
        _update_stream(nats_server.url, max_msg_size=4_000)
        batch = [*envelopes(100), sized(6_000), *envelopes(100)]
        futures = pub.publish_many(batch)
        outcomes = [f.exception(timeout=30) for f in futures]
    assert [type(e).__name__ for e in outcomes if e is not None] == ["EventRejected"]
    assert outcomes[100] is not None
    assert "10054" in str(outcomes[100])
    stored = stored_ids(nats_server.url)
    assert all(stored[str(env.event_id)] == 1 for i, env in enumerate(batch) if i != 100)
    assert stored[str(batch[100].event_id)] == 0


def test_a_stream_that_stops_allowing_fast_ingest_falls_back_to_an_ack_per_event(nats_server: NatsServer) -> None:
    """allow_batched turned off under a running publisher: its batches get acks per event, all stored once."""
    with LogWatcher() as logs, connect(nats_server.url) as pub:
        pub.publish_many(envelopes(2)).pop().result(timeout=10)
        _update_stream(nats_server.url, allow_batched=False)
        batch = envelopes(300)
        acks = [f.result(timeout=30) for f in pub.publish_many(batch)]
        assert logs.wait_for("does not allow fast-ingest batches")
    assert all(ack.broker_sequence is not None for ack in acks)
    assert set(stored_ids(nats_server.url).values()) == {1}
