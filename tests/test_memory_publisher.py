"""InMemoryPublisher: validates like the real one, bounded like a channel, read back in order,
and both publishers satisfy the EventPublisher protocol."""

from __future__ import annotations

import queue
import threading
import time
import uuid

import pytest
from helpers import encoded, envelope, envelopes

from edupulse_events import (
    Codec,
    ConfigError,
    EventEnvelope,
    EventPublisher,
    EventRegistry,
    InMemoryPublisher,
    InvalidBatch,
    InvalidEvent,
    LessonPublished,
    NatsPublisher,
    PublishAck,
    PublisherClosed,
    PublisherConfig,
    PublisherState,
    PublisherStats,
    QueueFull,
)


def test_invalid_input_raises_at_call_site_and_keeps_nothing() -> None:
    """publish() of a non-envelope, or of an envelope the codec cannot encode, raises InvalidEvent
    and stores nothing."""
    pub = InMemoryPublisher()
    good = envelope(1)
    tampered = envelope(1)
    object.__setattr__(tampered.data, "amount_cents", 2**32)  # bypasses construction checks: the encoder catches it
    for bad in (None, "event", {"event_id": str(uuid.uuid4())}, good.data, tampered):
        with pytest.raises(InvalidEvent):
            pub.publish(bad)  # type: ignore[arg-type]  # deliberately not an envelope
    assert len(pub) == 0
    assert pub.publish(good).result(timeout=0) == PublishAck(1, "memory", False)
    assert pub.drain() == [good]


def test_same_encoding_checks_as_nats_publisher() -> None:
    """An event with a lone surrogate is refused when built; the in-memory publisher refuses what the codec refuses."""
    with pytest.raises(InvalidEvent, match="lone surrogate"):
        LessonPublished(uuid.uuid4(), uuid.uuid4(), "bad \ud800 title")
    pub = InMemoryPublisher()
    env = envelope(0)
    object.__setattr__(env.data, "title", "bad \udfff")
    with pytest.raises(InvalidEvent, match="surrogate"):
        pub.publish(env)
    assert len(pub) == 0


def test_reads_back_in_order_with_sequential_acks() -> None:
    """Envelopes come back from get() and drain() in publish order; futures are already resolved
    with sequence 1, 2, 3..."""
    pub = InMemoryPublisher()
    envs = envelopes(10)
    futures = [pub.publish(e) for e in envs]
    assert all(f.done() for f in futures)
    assert [f.result(timeout=0) for f in futures] == [PublishAck(i, "memory", False) for i in range(1, 11)]
    assert len(pub) == 10
    assert pub.flush(timeout=0)
    assert pub.get(timeout=0) == envs[0]
    assert pub.drain() == envs[1:]
    assert len(pub) == 0
    assert pub.drain() == []
    with pytest.raises(queue.Empty):
        pub.get(timeout=0.01)


def test_sequence_matches_read_order_across_threads() -> None:
    """With 4 threads publishing at once, each ack's sequence is the envelope's position in the read order."""
    pub = InMemoryPublisher(max_queue=50)
    acks: dict[uuid.UUID, int | None] = {}
    lock = threading.Lock()
    per_thread = [envelopes(100) for _ in range(4)]

    def run(envs: list[EventEnvelope]) -> None:
        for e in envs:
            seq = pub.publish(e, timeout=10).result(timeout=0).broker_sequence
            with lock:
                acks[e.event_id] = seq

    threads = [threading.Thread(target=run, args=(envs,)) for envs in per_thread]
    for t in threads:
        t.start()
    read = [pub.get(timeout=10) for _ in range(400)]
    for t in threads:
        t.join(10)
    assert [acks[e.event_id] for e in read] == list(range(1, 401))
    for envs in per_thread:
        assert [e for e in read if e in envs] == envs


def test_full_channel_raises_queue_full_after_timeout() -> None:
    """On a full channel publish() waits about `timeout` then raises QueueFull (timeout=0: at once);
    nothing is stored."""
    pub = InMemoryPublisher(max_queue=2, publish_timeout=0.2)
    pub.publish(envelope(0))
    pub.publish(envelope(1))
    with pytest.raises(QueueFull):
        pub.publish(envelope(2), timeout=0)
    for kwargs in ({"timeout": 0.15}, {}):  # explicit timeout, then the publish_timeout default
        start = time.monotonic()
        with pytest.raises(QueueFull):
            pub.publish(envelope(3), **kwargs)
        assert 0.14 <= time.monotonic() - start < 2.0
    assert len(pub) == 2


def test_reader_thread_lets_blocked_publisher_through() -> None:
    """A publisher blocked on a full channel goes through as soon as a reader thread takes an envelope."""
    pub = InMemoryPublisher(max_queue=1)
    first, second = envelope(0), envelope(1)
    pub.publish(first)
    result: list[PublishAck] = []
    publisher = threading.Thread(target=lambda: result.append(pub.publish(second, timeout=30).result(timeout=0)))
    publisher.start()
    publisher.join(0.3)
    assert publisher.is_alive()  # still blocked: the channel is full
    assert not result
    taken: list[EventEnvelope] = []
    reader = threading.Thread(target=lambda: taken.append(pub.get(timeout=10)))
    reader.start()
    reader.join(10)
    publisher.join(10)
    assert taken == [first]
    assert result == [PublishAck(2, "memory", False)]
    assert pub.drain() == [second]


def test_close_refuses_new_events_and_wakes_blocked_publisher() -> None:
    """After close() publish raises PublisherClosed, a publisher blocked on the full channel is
    woken with it, and accepted events stay readable."""
    pub = InMemoryPublisher(max_queue=1)
    first = envelope(0)
    pub.publish(first)
    errors: list[BaseException] = []
    done = threading.Event()

    def blocked() -> None:
        try:
            pub.publish(envelope(1), timeout=30)
        except BaseException as exc:  # noqa: BLE001  # record whatever wakes it; asserted below
            errors.append(exc)
        done.set()

    thread = threading.Thread(target=blocked)
    thread.start()
    thread.join(0.2)
    assert thread.is_alive()
    start = time.monotonic()
    pub.close()
    assert done.wait(10)
    assert time.monotonic() - start < 5
    assert len(errors) == 1
    assert isinstance(errors[0], PublisherClosed)
    with pytest.raises(PublisherClosed):
        pub.publish(envelope(2))
    pub.close()  # idempotent
    assert pub.drain() == [first]
    assert "closed" in repr(pub)


def test_discard_oldest_never_blocks() -> None:
    """With discard_oldest=True a full channel drops its oldest unread envelope instead of blocking."""
    pub = InMemoryPublisher(max_queue=3, discard_oldest=True)
    envs = envelopes(5)
    acks = [pub.publish(e, timeout=0).result(timeout=0).broker_sequence for e in envs]
    assert acks == [1, 2, 3, 4, 5]
    assert pub.discarded == 2
    assert pub.drain() == envs[2:]


def test_context_manager_closes() -> None:
    """Leaving the with-block closes the publisher."""
    with InMemoryPublisher() as pub:
        pub.publish(envelope())
    with pytest.raises(PublisherClosed):
        pub.publish(envelope())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_queue": 0},
        {"max_queue": True},
        {"max_queue": 1.5},
        {"publish_timeout": 0},
        {"publish_timeout": float("nan")},
        {"subject": ""},
        {"subject": "a.*"},
        {"subject": "a.{user}"},
        {"discard_oldest": "yes"},
    ],
)
def test_bad_settings_raise_config_error(kwargs: dict[str, object]) -> None:
    """Invalid settings raise ConfigError when the in-memory publisher is built."""
    with pytest.raises(ConfigError):
        InMemoryPublisher(**kwargs)  # type: ignore[arg-type]  # deliberately ill-typed: the runtime checks are tested


def test_subject_template_is_checked_per_event() -> None:
    """With a subject template, any tenant is routed like the real publisher does, and one too
    long for a NATS subject raises InvalidEvent."""
    pub = InMemoryPublisher(subject="edupulse.{tenant}.{type}")
    env = envelope(0, tenant="a.b c")
    assert pub.publish(env).result(timeout=0).broker_sequence == 1
    with pytest.raises(InvalidEvent, match="subject"):
        pub.publish(envelope(0, tenant="t" * 5000))
    assert pub.drain() == [env]


def test_both_publishers_satisfy_event_publisher_protocol() -> None:
    """InMemoryPublisher and NatsPublisher are EventPublisher instances (runtime_checkable); other objects are not."""
    memory = InMemoryPublisher()
    nats_pub = NatsPublisher(
        PublisherConfig(servers="nats://127.0.0.1:4222", subject="edupulse.events")
    )  # lazy: never connects
    try:
        assert isinstance(memory, EventPublisher)
        assert isinstance(nats_pub, EventPublisher)
        assert not isinstance(object(), EventPublisher)
        assert not isinstance(queue.Queue(), EventPublisher)
    finally:
        nats_pub.close(0)
        memory.close()


def test_publish_many_keeps_a_batch_in_order_or_names_the_bad_index() -> None:
    """publish_many() keeps a batch in order with sequential acks; a bad item raises InvalidEvent naming its
    index and keeps nothing; a full channel raises QueueFull carrying the futures of those kept."""
    pub = InMemoryPublisher(max_queue=5)
    batch = envelopes(3)
    assert [f.result(timeout=0).broker_sequence for f in pub.publish_many(iter(batch))] == [1, 2, 3]
    with pytest.raises(InvalidEvent, match=r"^envelopes\[1\]: "):
        pub.publish_many([envelope(3), None])  # type: ignore[list-item]  # deliberately not an envelope
    assert pub.drain() == batch
    with pytest.raises(QueueFull, match="5 of 7 events queued") as caught:
        pub.publish_many(envelopes(7), timeout=0)
    assert [f.result(timeout=0).broker_sequence for f in caught.value.futures] == [4, 5, 6, 7, 8]
    assert len(pub) == 5


def test_stats_and_state_as_every_publisher_gives_them() -> None:
    """InMemoryPublisher.stats(): accepted = acknowledged, blocked publishes counted; its state follows close()."""
    pub = InMemoryPublisher(max_queue=2)
    assert pub.stats() == PublisherStats(0, 0, 0, 0, 0, 0, 0, state=PublisherState.RUNNING)
    pub.publish_many(envelopes(2))
    with pytest.raises(QueueFull):
        pub.publish(envelope(), timeout=0.01)  # waited for room: a blocked publish
    stats = pub.stats()
    assert (stats.accepted, stats.acknowledged, stats.failed, stats.queued, stats.blocked_publishes) == (2, 2, 0, 0, 1)
    assert pub.state is stats.state is PublisherState.RUNNING
    pub.close()
    closed: str = "closed"
    assert pub.state is pub.stats().state is PublisherState.CLOSED == closed


def test_event_publisher_protocol_offers_stats_and_state() -> None:
    """What build_from_env() returns offers stats() and state: an object without them is not an EventPublisher."""

    class NoStats:  # what EventPublisher was before stats() and state
        def publish(self, envelope: EventEnvelope, *, timeout: float | None = None) -> None:
            return None

        def publish_many(self, envelopes: object, *, timeout: float | None = None) -> None:
            return None

        def flush(self, timeout: float | None = None) -> bool:
            return True

        def close(self, timeout: float | None = None) -> None:
            return None

        def __enter__(self) -> NoStats:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    publisher: EventPublisher = InMemoryPublisher()
    assert isinstance(publisher.stats(), PublisherStats)
    assert publisher.state is PublisherState.RUNNING
    assert not isinstance(NoStats(), EventPublisher)


def test_codec_must_be_a_codec() -> None:
    """InMemoryPublisher(codec=...) takes a Codec or None; anything else is a ConfigError naming its type."""
    assert InMemoryPublisher(codec=Codec()).publish(envelope()).result(timeout=0).broker_sequence == 1
    with pytest.raises(ConfigError, match=r"codec must be an edupulse_events\.Codec .*got EventRegistry"):
        InMemoryPublisher(codec=EventRegistry())  # type: ignore[arg-type]  # deliberately not a Codec


def test_atomic_publish_many_keeps_the_whole_batch_with_contiguous_numbers() -> None:
    """publish_many(atomic=True) keeps every envelope, numbered one after the other, in order."""
    pub = InMemoryPublisher(10)
    pub.publish(envelope())
    batch = envelopes(4)
    futures = pub.publish_many(batch, atomic=True)
    assert [f.result(0).broker_sequence for f in futures] == [2, 3, 4, 5]
    assert [e.event_id for e in pub.drain()[1:]] == [e.event_id for e in batch]


def test_atomic_publish_many_keeps_nothing_without_room_for_all() -> None:
    """A full channel refuses an atomic batch whole (QueueFull, no futures), and nothing of it is kept."""
    pub = InMemoryPublisher(5)
    pub.publish_many(envelopes(3))
    with pytest.raises(QueueFull) as info:
        pub.publish_many(envelopes(3), atomic=True, timeout=0.0)
    assert info.value.futures == []
    assert len(pub) == 3
    with pytest.raises(QueueFull):
        pub.publish_many(envelopes(6), atomic=True, timeout=0.0)  # longer than the channel: never fits
    dropping = InMemoryPublisher(5, discard_oldest=True)
    dropping.publish_many(envelopes(4))
    dropping.publish_many(envelopes(3), atomic=True)
    assert (len(dropping), dropping.discarded) == (5, 2)


def test_atomic_publish_many_refuses_a_batch_no_broker_could_take() -> None:
    """Longer than max_batch, an event id twice, or empty: InvalidBatch (an InvalidEvent) and nothing kept."""
    pub = InMemoryPublisher(100, max_batch=3)
    one = envelope()
    for batch, why in (([*envelopes(4)], "longer than the server allows"), ([one, one], "twice"), ([], "at least")):
        with pytest.raises(InvalidBatch, match=why):
            pub.publish_many(batch, atomic=True)
    assert len(pub) == 0
    assert issubclass(InvalidBatch, InvalidEvent)
    with pytest.raises(ConfigError):
        InMemoryPublisher(max_batch=0)


def test_publish_encoded_keeps_the_envelopes_the_rows_encode() -> None:
    """publish_encoded() checks each event as NatsPublisher does and keeps its decoded envelope, in
    order (atomically when asked); a forged event, or a body that does not decode, keeps nothing."""
    pub = InMemoryPublisher(100, subject="edupulse.{tenant}.{type}")
    batch = envelopes(3)
    futures = pub.publish_encoded(encoded(batch, "edupulse.{tenant}.{type}"), atomic=True)
    assert [f.result(0).broker_sequence for f in futures] == [1, 2, 3]
    assert pub.drain() == batch
    good = encoded([envelope()], "edupulse.{tenant}.{type}")[0]
    with pytest.raises(InvalidEvent, match=r"events\[1\].*subject template"):
        pub.publish_encoded([good, *encoded([envelope()], "other.{type}")])
    with pytest.raises(InvalidEvent, match=r"events\[0\]: its body does not decode"):
        pub.publish_encoded([good._replace(body=good.body[:-1])])
    with pytest.raises(InvalidBatch, match="twice"):
        pub.publish_encoded([good, good], atomic=True)
    assert len(pub) == 0
