"""publish_many(atomic=True) against real nats-server processes: a batch is stored whole, contiguously and
in order, each future with its own ack, on both nats-py paths and among other publishes; the server's
limits are the caller's (refused at the call, a smaller server limit named, too many batches in flight
retried, a stream without allow_atomic named); create_stream=True allows atomic and batched publishing."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from faults_support import AtomicBatch, check_atomic_batches, sized
from helpers import LogWatcher, add_stream, envelope, envelopes, iter_ids, read_stream

from edupulse_events import (
    EventRejected,
    InvalidBatch,
    InvalidEvent,
    NatsPublisher,
    PublishAck,
)
from edupulse_events.testing import NatsServer

pytestmark = pytest.mark.batch_streams

STREAM = "ATOMIC"
SUBJECT = "edupulse.atomic"


def connect(url: str, **options: Any) -> NatsPublisher:
    """A JetStream publisher on SUBJECT that creates the ATOMIC stream when missing."""
    options.setdefault("stream", STREAM)
    options.setdefault("create_stream", True)
    return NatsPublisher.connect(url, SUBJECT, **options)


def batch_limits(make_server: Callable[..., NatsServer], tmp_path: Path, limits: str) -> NatsServer:
    """A server with ``jetstream { limits { batch { <limits> } } }``. That block replaces the one NatsServer
    writes (nats-server does not merge them), so it names the store as well, or it would be /tmp/nats."""
    store = tmp_path / "store"
    config = f'jetstream {{ store_dir: "{store}", limits {{ batch {{ {limits} }} }} }}'
    server = make_server(store_dir=store, extra_config=config)
    assert str(store) in server.log_text(), server.log_text()
    return server


# --------------------------------------------------------------------------- 1. whole, contiguous, in order


def test_a_batch_is_stored_whole_in_order_each_future_with_its_own_sequence(
    nats_server: NatsServer, nats_path: str
) -> None:
    """Between two plain events, a batch of 50 is stored contiguously in order; each ack has its event's stream
    sequence (not the commit's); stats() counts them as acknowledged_atomic."""
    with connect(nats_server.url) as pub:
        first = pub.publish(envelope())
        batch = AtomicBatch(pub, envelopes(50))
        last = pub.publish(envelope())
        assert batch.wait()
        assert (first.result(timeout=10).broker_sequence, last.result(timeout=10).broker_sequence) == (1, 52)
        assert [f.result(timeout=0) for f in batch.futures] == [PublishAck(n, STREAM) for n in range(2, 52)]
        assert pub.flush(timeout=10)
        stats = pub.stats()
    assert (stats.acknowledged, stats.acknowledged_atomic, stats.nats_path) == (52, 50, nats_path)
    messages = read_stream(nats_server.url, STREAM)
    assert list(iter_ids(messages))[1:51] == batch.ids
    assert check_atomic_batches(messages, [batch]) == {"stored": 1}


def test_batches_stay_contiguous_among_plain_publishes_from_another_thread(
    nats_server: NatsServer, nats_path: str
) -> None:
    """20 batches of 25 while another thread publishes plain events all along (publish(), publish_many()): each
    batch contiguous and in order, plain events stored between batches, never inside one."""
    stop = threading.Event()
    plain: list[str] = []

    with connect(nats_server.url) as pub:

        def publish_plain() -> None:  # one by one, and in plain publish_many() batches (fast ingest)
            while not stop.is_set():
                if len(plain) % 2:
                    envs = [envelope()]
                    futures = [pub.publish(envs[0])]
                else:
                    envs = envelopes(3)
                    futures = pub.publish_many(envs)
                plain.extend(str(env.event_id) for env in envs)
                futures[-1].result(timeout=10)  # one at a time, as the batches go

        thread = threading.Thread(target=publish_plain, name="plain-publisher")
        thread.start()
        try:
            batches = []
            for _ in range(20):
                batches.append(AtomicBatch(pub, envelopes(25)))
                assert batches[-1].wait()
        finally:
            stop.set()
            thread.join(10)
        assert pub.flush(timeout=30)
        stats = pub.stats()
    assert (stats.acknowledged, stats.acknowledged_atomic, stats.failed) == (len(plain) + 500, 500, 0)
    messages = read_stream(nats_server.url, STREAM)
    assert check_atomic_batches(messages, batches) == {"stored": 20}
    order = list(iter_ids(messages))
    assert sorted(order) == sorted(plain + [i for b in batches for i in b.ids])
    spans = [(order.index(b.ids[0]), order.index(b.ids[-1])) for b in batches]
    between = [i for i in map(order.index, plain) if spans[0][0] < i < spans[-1][1]]
    assert between, "no plain event was stored between the batches: the threads never interleaved"


def test_create_stream_allows_atomic_and_batched_publishing(nats_server: NatsServer) -> None:
    """create_stream=True creates the stream with allow_atomic and allow_batched set."""

    async def config() -> Any:
        nc = await nats.connect(nats_server.url)
        try:
            return (await nc.jetstream().stream_info(STREAM)).config
        finally:
            await nc.close()

    with connect(nats_server.url) as pub:
        assert pub.publish_many(envelopes(2), atomic=True)[1].result(timeout=10).broker_sequence == 2
    created = asyncio.run(config())
    assert (created.allow_atomic, created.allow_batched) == (True, True)


# --------------------------------------------------------------------------- 2. the server's limits


def test_a_batch_no_server_could_take_is_refused_at_the_call(nats_server: NatsServer) -> None:
    """Longer than max_batch (default 1,000, or as configured), an event id twice, empty, longer than the
    queue: InvalidBatch at the call, nothing queued; the publisher keeps working."""
    one = envelope()
    cases: list[tuple[dict[str, Any], list[Any], str]] = [
        ({}, envelopes(1001), r"batch of 1001 events is longer than the server allows \(1000"),
        ({"max_batch": 5}, envelopes(6), r"batch of 6 events is longer than the server allows \(5"),
        ({}, [one, envelope(), one], f"event {one.event_id} is twice in one atomic batch"),
        ({}, [], "needs at least one event"),
        ({"max_queue": 10}, envelopes(11), r"never fits the queue \(max_queue=10\)"),
    ]
    for options, batch, why in cases:
        with connect(nats_server.url, **options) as pub:
            with pytest.raises(InvalidBatch, match=why):
                pub.publish_many(batch, atomic=True)
            assert pub.stats().accepted == 0
            assert pub.publish_many(envelopes(2), atomic=True)[1].result(timeout=10).stream == STREAM
    assert len(read_stream(nats_server.url, STREAM)) == 2 * len(cases)


def test_an_atomic_batch_on_core_nats_is_refused_at_the_call(nats_server: NatsServer) -> None:
    """A core NATS publisher has no atomic batches: InvalidBatch, nothing queued, plain publishing goes on."""
    with NatsPublisher.connect(nats_server.url, SUBJECT, jetstream=False) as pub:
        with pytest.raises(InvalidBatch, match="JetStream feature"):
            pub.publish_many(envelopes(3), atomic=True)
        assert pub.stats().accepted == 0
        assert pub.publish_many(envelopes(3))[2].result(timeout=10) == PublishAck(None, None)


def test_an_event_too_large_with_the_batch_headers_is_refused_whole(make_server: Callable[..., NatsServer]) -> None:
    """An event that fits max_payload alone but not with the batch headers: InvalidBatch at the call once the
    limit is known; queued before it was known, the whole batch fails with InvalidEvent, sent to no server."""
    server = make_server(max_payload=4096, start=False)
    pub = connect(server.url, start_without_broker=True, delivery_timeout=20.0)
    try:
        queued = AtomicBatch(pub, [envelope(), sized(4090), envelope()])
        with LogWatcher() as logs:
            server.start()
            assert queued.wait()
        assert "disconnected" not in logs.text, logs.text  # the server never saw it (it drops such a client)
        errors = {str(f.exception(timeout=0)) for f in queued.futures}
        assert len(errors) == 1, errors
        assert "4090 bytes with headers (up to" in errors.pop()
        assert all(isinstance(f.exception(timeout=0), InvalidEvent) for f in queued.futures)
        with pytest.raises(InvalidBatch, match=r"envelopes\[1\]: .* over the server's max_payload of 4096 bytes"):
            pub.publish_many([envelope(), sized(4090)], atomic=True)
        assert pub.publish(sized(4090)).result(timeout=10).broker_sequence == 1  # alone it fits
        assert pub.publish_many(envelopes(2), atomic=True)[1].result(timeout=10).broker_sequence == 3
        stats = pub.stats()
    finally:
        pub.close(5)
    assert stats.failures == {"InvalidEvent": 3}
    assert len(read_stream(server.url, STREAM)) == 3


def test_a_server_with_a_smaller_batch_limit_fails_the_batch_saying_to_set_max_batch(
    make_server: Callable[..., NatsServer], tmp_path: Path
) -> None:
    """A server whose batch limit is 5 while max_batch is 1,000: a batch of 6 fails whole with EventRejected
    (10199) that says to set max_batch, nothing of it stored; a batch of 5 is stored."""
    server = batch_limits(make_server, tmp_path, "max_msgs: 5")
    with connect(server.url) as pub:
        refused = AtomicBatch(pub, envelopes(6))
        assert refused.wait()
        errors = [f.exception(timeout=0) for f in refused.futures]
        assert all(isinstance(e, EventRejected) and e.err_code == 10199 for e in errors), errors
        assert "too large: 5: set PublisherConfig.max_batch to the server's limit" in str(errors[0])
        stored = AtomicBatch(pub, envelopes(5))
        assert stored.wait()
    assert check_atomic_batches(read_stream(server.url, STREAM), [refused, stored]) == {
        "EventRejected": 1,
        "stored": 1,
    }


class HeldBatch:
    """A raw nats-py client holding an atomic batch open on a stream (its first event staged, no commit)
    until `release`, which commits it: one of the stream's batches in flight meanwhile."""

    def __init__(self, url: str, subject: str) -> None:
        self._url, self._subject = url, subject
        self._staged, self._release = threading.Event(), threading.Event()
        self.errors: list[BaseException] = []
        self.commit_ack: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, name="held-batch")

    def __enter__(self) -> HeldBatch:
        self._thread.start()
        assert self._staged.wait(10)
        assert not self.errors, self.errors
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Commit the held batch and wait for its ack."""
        self._release.set()
        self._thread.join(15)
        assert not self._thread.is_alive()
        assert not self.errors, self.errors

    def _run(self) -> None:
        try:
            asyncio.run(self._hold())
        except BaseException as exc:  # noqa: BLE001  # kept for the test to assert on
            self.errors.append(exc)
            self._staged.set()

    async def _hold(self) -> None:
        nc = await nats.connect(self._url)
        try:
            batch = {"Nats-Batch-Id": "held", "Nats-Batch-Sequence": "1", "Nats-Msg-Id": "held-1"}
            staged = await nc.request(self._subject, b"held 1", headers=batch, timeout=5)
            assert staged.data == b"", staged.data  # staged, not stored
            self._staged.set()
            await asyncio.to_thread(self._release.wait, 30)
            commit = {
                "Nats-Batch-Id": "held",
                "Nats-Batch-Sequence": "2",
                "Nats-Batch-Commit": "1",
                "Nats-Msg-Id": "held-2",
            }
            self.commit_ack = json.loads((await nc.request(self._subject, b"held 2", headers=commit, timeout=5)).data)
        finally:
            await nc.close()


def test_too_many_batches_in_flight_is_transient_and_retried_until_stored(
    make_server: Callable[..., NatsServer], tmp_path: Path
) -> None:
    """One batch in flight per stream, held by another client: the publisher's batches are refused (10210 for a
    batch of one; 10176 for a longer one, its start refused unanswered, then 10210 told to its resend, which
    asks every event), retried, and stored once it commits."""
    server = batch_limits(make_server, tmp_path, "max_inflight_per_stream: 1")
    with connect(server.url) as pub:
        assert pub.publish(envelope()).result(timeout=10).broker_sequence == 1
        with HeldBatch(server.url, SUBJECT) as held, LogWatcher() as logs:
            single = AtomicBatch(pub, [envelope()])
            longer = AtomicBatch(pub, envelopes(3))
            assert logs.wait_for(r"attempt 2 failed \(.*err_code 10210", 10), logs.text
            # the longer one: dropped unanswered first (10176), then resent asking every event, which tells why
            assert logs.wait_for(r"attempt 1 failed \(.*err_code 10176", 10), logs.text
            assert logs.wait_for(r"attempt 2 failed \(.*its event .*err_code 10210", 10), logs.text
            assert not single.done, "retried, not failed"
            assert not longer.done, "retried, not failed"
            held.release()
            assert single.wait()
            assert longer.wait()
        stats = pub.stats()
    assert held.commit_ack["count"] == 2
    assert stats.retried >= 2  # each batch retried at least once
    messages = read_stream(server.url, STREAM)
    assert check_atomic_batches(messages, [single, longer]) == {"stored": 2}
    assert len(messages) == 1 + 2 + 4


def test_a_stream_without_allow_atomic_fails_the_batch_naming_the_flag(nats_server: NatsServer) -> None:
    """A stream created without allow_atomic: every future of the batch fails with EventRejected (10174) naming
    the flag, nothing is stored; plain publishing to it goes on."""
    add_stream(nats_server.url, STREAM, [SUBJECT])
    with connect(nats_server.url, create_stream=False) as pub:
        refused = AtomicBatch(pub, envelopes(3))
        assert refused.wait()
        errors = [f.exception(timeout=0) for f in refused.futures]
        assert all(isinstance(e, EventRejected) and e.err_code == 10174 for e in errors), errors
        assert "set allow_atomic on it" in str(errors[0])
        assert pub.publish(envelope()).result(timeout=10).broker_sequence == 1
    assert check_atomic_batches(read_stream(nats_server.url, STREAM), [refused]) == {"EventRejected": 1}


def test_a_batch_published_before_by_another_process_resolves_as_stored_with_resend(nats_server: NatsServer) -> None:
    """The same batch sent again by a new publisher: with resend=True it resolves as stored (duplicate),
    without it the stream's refusal (10201) fails it; either way the stream holds it once."""
    batch = envelopes(4)
    with connect(nats_server.url) as first:
        stored = [f.result(timeout=10).broker_sequence for f in first.publish_many(batch, atomic=True)]
    with connect(nats_server.url) as second:  # a new process: its first attempt of this batch
        again = [f.result(timeout=10) for f in second.publish_many(batch, atomic=True, resend=True)]
        refused = [f.exception(timeout=10) for f in second.publish_many(batch, atomic=True)]
    assert stored == [1, 2, 3, 4]
    assert {(ack.duplicate, ack.broker_sequence) for ack in again} == {(True, None)}
    assert {getattr(e, "err_code", None) for e in refused} == {10201}
    assert list(iter_ids(read_stream(nats_server.url, STREAM))) == [str(e.event_id) for e in batch]
