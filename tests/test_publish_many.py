"""publish_many() against real nats-server processes: order, validation before queueing,
back-pressure (waiting for room, QueueFull with the queued prefix), and the spool modes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import pytest
from faults_support import sized
from helpers import add_stream, envelope, envelopes, read_stream

from edupulse_events import InvalidEvent, NatsPublisher, PublishAck, QueueFull, SpoolFull, encode
from edupulse_events.testing import NatsServer

STREAM = "MANY"
SUBJECT = "edupulse.events"


def connect(server: NatsServer, **options: object) -> NatsPublisher:
    """A publisher whose batches get an ack per event (fast ingest: tests/test_fast_ingest.py)."""
    options.setdefault("fast_ingest", False)
    return NatsPublisher.connect(server.url, SUBJECT, stream=STREAM, create_stream=True, **options)  # type: ignore[arg-type]


def test_a_batch_is_stored_in_order_with_one_ack_each(nats_server: NatsServer) -> None:
    """JetStream: every envelope of a batch is stored once, in the batch's order; each future has its sequence."""
    batch = envelopes(500)
    with connect(nats_server) as pub:
        futures = pub.publish_many(batch)
        assert len(futures) == len(batch)
        assert [f.result(timeout=30).broker_sequence for f in futures] == list(range(1, 501))
    assert [m.data for m in read_stream(nats_server.url, STREAM)] == [encode(e) for e in batch]


def test_core_batch_reaches_a_subscriber_in_order(nats_server: NatsServer) -> None:
    """Core NATS: the futures resolve once the server has the batch; a subscriber gets it whole, in order."""
    received: list[bytes] = []
    ready, done = threading.Event(), threading.Event()
    batch = envelopes(500)

    async def subscriber() -> None:
        nc = await nats.connect(nats_server.url)
        sub = await nc.subscribe(SUBJECT)
        await nc.flush()
        ready.set()
        async for msg in sub.messages:
            received.append(msg.data)
            if len(received) == len(batch):
                break
        await nc.close()
        done.set()

    thread = threading.Thread(target=asyncio.run, args=(subscriber(),))
    thread.start()
    try:
        assert ready.wait(10)
        with NatsPublisher.connect(nats_server.url, SUBJECT, jetstream=False) as pub:
            acks = [f.result(timeout=30) for f in pub.publish_many(batch)]
        assert all(a == PublishAck(None, None) for a in acks)
        assert done.wait(10)
    finally:
        thread.join(10)
    assert received == [encode(e) for e in batch]


def test_a_bad_envelope_names_its_index_and_nothing_is_queued(nats_server: NatsServer) -> None:
    """One invalid item raises InvalidEvent naming its index before anything is queued; the publisher goes on."""
    batch: list[object] = [*envelopes(3), "not an envelope", envelope(4)]
    with connect(nats_server) as pub:
        with pytest.raises(InvalidEvent, match=r"^envelopes\[3\]: publish\(\) takes an EventEnvelope, got str"):
            pub.publish_many(batch)  # type: ignore[arg-type]  # deliberately not all envelopes
        assert pub.stats().accepted == 0
        assert pub.publish_many(envelopes(2))[1].result(timeout=10).broker_sequence == 2
    assert len(read_stream(nats_server.url, STREAM)) == 2


def test_any_iterable_and_an_empty_batch(nats_server: NatsServer) -> None:
    """A generator is taken as a list would be; an empty batch returns no futures and queues nothing."""

    def generate() -> Iterator[object]:
        yield from envelopes(5)

    with connect(nats_server) as pub:
        assert pub.publish_many([]) == []
        futures = pub.publish_many(generate())  # type: ignore[arg-type]
        assert [f.result(timeout=10).broker_sequence for f in futures] == [1, 2, 3, 4, 5]
        assert pub.stats().accepted == 5


def test_a_batch_larger_than_the_queue_waits_for_room_and_is_all_delivered(nats_server: NatsServer) -> None:
    """A batch 30x the queue bound is queued as room opens (the publisher thread woken each time), all stored."""
    batch = envelopes(3000)
    with connect(nats_server, max_queue=100, window=64) as pub:
        futures = pub.publish_many(batch, timeout=30)
        assert [f.result(timeout=30).broker_sequence for f in futures] == list(range(1, 3001))
        assert pub.stats().blocked_publishes >= 1
    assert len(read_stream(nats_server.url, STREAM)) == 3000


def test_queue_full_carries_the_futures_of_the_queued_prefix(make_server: Callable[..., NatsServer]) -> None:
    """Broker away, queue of 20: a batch of 50 raises QueueFull whose futures are the first 20, delivered later."""
    server = make_server(start=False)
    pub = NatsPublisher.connect(
        server.url,
        SUBJECT,
        stream=STREAM,
        create_stream=True,
        start_without_broker=True,
        max_queue=20,
        fast_ingest=False,
    )
    batch = envelopes(50)
    try:
        with pytest.raises(QueueFull, match="20 of 50 events queued") as caught:
            pub.publish_many(batch, timeout=0.2)
        assert len(caught.value.futures) == 20
        assert pub.stats().accepted == 20
        server.start()
        assert [f.result(timeout=30).broker_sequence for f in caught.value.futures] == list(range(1, 21))
    finally:
        pub.close(timeout=5)
    assert [m.data for m in read_stream(server.url, STREAM)] == [encode(e) for e in batch[:20]]


def test_write_ahead_spool_takes_a_batch_in_one_go_or_not_at_all(nats_server: NatsServer, tmp_path: Path) -> None:
    """Write-ahead: a batch is on disk before publish_many returns and then acknowledged; one that does not
    fit the spool raises SpoolFull with nothing written or queued."""
    with connect(nats_server, spool_dir=str(tmp_path), spool_max_bytes=64 * 1024) as pub:
        futures = pub.publish_many(envelopes(20))
        assert [f.result(timeout=10).broker_sequence for f in futures] == list(range(1, 21))
        with pytest.raises(SpoolFull, match="no room for these 400 events"):
            pub.publish_many(envelopes(400))
        assert pub.stats().accepted == 20
        assert pub.drain_spool(timeout=10)
        assert pub.stats().spool_events == 0
    assert len(read_stream(nats_server.url, STREAM)) == 20


def test_overflow_spool_keeps_what_the_queue_cannot_take(
    make_server: Callable[..., NatsServer], tmp_path: Path
) -> None:
    """Overflow with the broker away: what does not fit the queue is spooled at once (resolved spooled=True);
    everything reaches the stream once the broker is up."""
    server = make_server(start=False)
    pub = NatsPublisher.connect(
        server.url,
        SUBJECT,
        stream=STREAM,
        create_stream=True,
        fast_ingest=False,
        start_without_broker=True,
        max_queue=10,
        spool_dir=str(tmp_path),
        spool_mode="overflow",
    )
    batch = envelopes(30)
    try:
        futures = pub.publish_many(batch, timeout=5)
        assert all(f.result(timeout=0).spooled for f in futures[10:])
        assert not any(f.done() for f in futures[:10])
        server.start()
        assert all(not f.result(timeout=30).spooled for f in futures[:10])
        assert pub.drain_spool(timeout=30)
    finally:
        pub.close(timeout=5)
    assert sorted(m.data for m in read_stream(server.url, STREAM)) == sorted(encode(e) for e in batch)


@pytest.mark.batch_streams
def test_an_atomic_batch_with_an_event_the_stream_refuses_fails_at_once_naming_it(nats_server: NatsServer) -> None:
    """An event over max_msg_size mid-batch: the server drops the batch (10176); the resend asks every
    event and the batch fails with that event's refusal (EventRejected naming it), nothing stored."""
    add_stream(nats_server.url, "SMALL", ["edupulse.small"], max_msg_size=4_000, allow_atomic=True)
    batch = [*envelopes(5), sized(6_000), *envelopes(5)]
    with NatsPublisher.connect(nats_server.url, "edupulse.small", stream="SMALL", delivery_timeout=20.0) as pub:
        errors = [f.exception(timeout=10) for f in pub.publish_many(batch, atomic=True)]
        fine = pub.publish_many(envelopes(3), atomic=True)
        assert [f.result(timeout=10).broker_sequence for f in fine] == [1, 2, 3]  # the publisher goes on
    assert {type(e).__name__ for e in errors} == {"EventRejected"}
    assert f"its event {batch[5].event_id}" in str(errors[0])
    assert "10054" in str(errors[0])
