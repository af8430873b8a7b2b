"""`NatsConsumer` against one real nats-server: fetch and the five outcomes, run() with handler
threads (ack on return, nak with backoff on failure, the dead letter for permanent failures,
undecodable messages and max_deliver), a clean stop on the stop event and on SIGTERM, binding
checks and the config's validation. Each test uses its own stream and subjects on a server
shared by the module."""

from __future__ import annotations

import collections
import itertools
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from consumer_support import ack_pending, dead_letters, fill, publish_raw
from helpers import LogWatcher, envelopes

from edupulse_events import (
    AlreadySettled,
    BrokerError,
    ConfigError,
    ConsumerClosed,
    ConsumerConfig,
    EventEnvelope,
    LessonPublished,
    NatsConsumer,
    PermanentFailure,
    ReceivedMessage,
    encode,
)
from edupulse_events.testing import NatsServer

pytestmark = pytest.mark.pull_consumer

_names = itertools.count(1)


@pytest.fixture(scope="module")
def server(nats_binary: str) -> Iterator[NatsServer]:
    """One JetStream server for the module (each test has its own stream)."""
    with NatsServer(binary=nats_binary) as srv:
        yield srv


@pytest.fixture
def stream(server: NatsServer) -> tuple[str, str]:
    """A fresh stream name and subject prefix (``S<n>``, ``t<n>``)."""
    n = next(_names)
    return f"S{n}", f"t{n}"


def test_fetch_and_every_outcome(server: NatsServer, stream: tuple[str, str]) -> None:
    """fetch() gives decoded envelopes with metadata; ack, nak, term, in_progress and a second outcome behave."""
    name, prefix = stream
    events = envelopes(4)
    fill(server.url, name, prefix, events)
    with NatsConsumer.connect(server.url, stream=name, durable="d") as consumer:
        got = consumer.fetch(10, timeout=5.0)
        assert [m.envelope for m in got] == events
        first = got[0]
        assert first.subject == f"{prefix}.school-1.LessonPublished"
        assert (first.stream_sequence, first.consumer_sequence, first.num_delivered) == (1, 1, 1)
        assert first.headers["Nats-Msg-Id"] == str(events[0].event_id)
        first.in_progress()
        first.ack()
        with pytest.raises(AlreadySettled):
            first.nak()
        got[1].nak(delay=0)
        got[2].term(reason="not for us")
        got[3].ack()
        again = consumer.fetch(10, timeout=5.0)
        assert [(m.envelope, m.num_delivered) for m in again] == [(events[1], 2)]
        again[0].ack()
        assert consumer.fetch(10, timeout=0.5) == []
        stats = consumer.stats()
    assert (stats.received, stats.acknowledged, stats.nacked, stats.terminated, stats.in_progress) == (5, 3, 1, 1, 1)
    assert ack_pending(server.url, name, "d") == (0, 0)


def test_fetch_is_idle_then_closed(server: NatsServer, stream: tuple[str, str]) -> None:
    """An empty stream gives [] after the timeout; after close() fetch raises ConsumerClosed."""
    name, prefix = stream
    fill(server.url, name, prefix, [])
    consumer = NatsConsumer.connect(server.url, stream=name, durable="d")
    assert consumer.fetch(5, timeout=0.3) == []
    consumer.close()
    with pytest.raises(ConsumerClosed):
        consumer.fetch(5, timeout=0.3)


def test_run_failing_handler_every_event_handled_once(server: NatsServer, stream: tuple[str, str]) -> None:
    """2 % of 10,000 events fail their first try: all handled successfully once, failures after their backoff."""
    name, prefix = stream
    events = envelopes(10_000)
    failing = {e.event_id for e in events[::50]}
    fill(server.url, name, prefix, events)
    done: collections.Counter[uuid.UUID] = collections.Counter()
    failed_at: dict[uuid.UUID, float] = {}
    redelivered_at: dict[uuid.UUID, float] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def handle(message: ReceivedMessage) -> None:
        event_id = message.envelope.event_id
        with lock:
            if event_id in failing and message.num_delivered == 1:
                failed_at[event_id] = time.monotonic()
                raise RuntimeError("first try fails")
            if message.num_delivered > 1:
                redelivered_at[event_id] = time.monotonic()
            done[event_id] += 1
            if len(done) == len(events):
                stop.set()

    with NatsConsumer.connect(
        server.url, stream=name, durable="d", backoff_initial=0.5, backoff_jitter=0.0
    ) as consumer:
        reason = consumer.run(handle, concurrency=4, stop=stop, timeout=60.0)
        stats = consumer.stats()
    assert reason == "stop event"
    assert set(done) == {e.event_id for e in events}
    assert set(done.values()) == {1}
    assert set(redelivered_at) == failing == set(failed_at)
    assert all(redelivered_at[i] - failed_at[i] >= 0.5 for i in failing)  # the nak's delay was kept
    assert (stats.handler_errors, stats.nacked, stats.redelivered) == (200, 200, 200)
    assert stats.acknowledged == 10_000
    assert ack_pending(server.url, name, "d") == (0, 0)


def test_dead_letters_undecodable_permanent_and_max_deliver(server: NatsServer, stream: tuple[str, str]) -> None:
    """Undecodable, PermanentFailure and past-max_deliver messages go to the dead letter with reason and headers."""
    name, prefix = stream
    events = envelopes(6)
    fill(server.url, name, prefix, events)
    publish_raw(server.url, f"{prefix}.x.Broken", b'{"not": "an envelope"}', {"X-Origin": "legacy"})
    dead_letters(server.url, f"DL{name}", f"dead.{prefix}")
    permanent, flaky = events[1].event_id, events[2].event_id
    handled: list[uuid.UUID] = []
    lock = threading.Lock()
    rest, stop = threading.Event(), threading.Event()

    def handle(message: ReceivedMessage) -> None:
        if message.envelope.event_id == permanent:
            raise PermanentFailure("lesson 1 references a deleted course")
        if message.envelope.event_id == flaky:
            raise RuntimeError("still down")
        with lock:
            handled.append(message.envelope.event_id)
            if len(handled) == 4:
                rest.set()

    # Stop once the 4 others are handled and the 3 dead letters stored: a stop naks whatever a
    # handler thread has not taken yet (the other thread may be slower than the flaky redelivery).
    def watch(logs: LogWatcher) -> None:
        deadline = time.monotonic() + 30.0
        try:
            rest.wait(30.0)
            for seq in (2, 3, 7):
                logs.wait_for(rf" {name}#{seq} dead-lettered", timeout=max(0.0, deadline - time.monotonic()))
        finally:
            stop.set()

    with (
        LogWatcher() as logs,
        NatsConsumer.connect(
            server.url,
            stream=name,
            durable="d",
            dead_letter_subject=f"dead.{prefix}",
            max_deliver=2,
            backoff_initial=0.05,
        ) as consumer,
    ):
        watcher = threading.Thread(target=watch, args=(logs,))
        watcher.start()
        assert consumer.run(handle, concurrency=2, stop=stop, timeout=60.0) == "stop event"
        watcher.join()
        stats = consumer.stats()
    assert sorted(map(str, handled)) == sorted(str(e.event_id) for e in events if e.event_id not in (permanent, flaky))
    letters = dead_letters(server.url, f"DL{name}", f"dead.{prefix}")
    by_seq = {int(h["Edupulse-Dead-Letter-Sequence"]): (body, h) for body, h in letters}
    assert sorted(by_seq) == [2, 3, 7]
    body, headers = by_seq[7]
    assert body == b'{"not": "an envelope"}'
    assert headers["X-Origin"] == "legacy"
    assert headers["Edupulse-Dead-Letter-Reason"].startswith("undecodable: ")
    assert headers["Edupulse-Dead-Letter-Subject"] == f"{prefix}.x.Broken"
    assert by_seq[2][1]["Edupulse-Dead-Letter-Reason"] == "PermanentFailure: lesson 1 references a deleted course"
    assert by_seq[2][1]["Edupulse-Original-Msg-Id"] == str(permanent)
    assert by_seq[3][1]["Edupulse-Dead-Letter-Reason"] == "max_deliver reached (2 deliveries)"
    assert by_seq[3][1]["Edupulse-Dead-Letter-Deliveries"] == "2"
    assert (stats.dead_lettered, stats.undecodable, stats.dead_letter_failures) == (3, 1, 0)
    assert ack_pending(server.url, name, "d") == (0, 0)


def test_stop_naks_what_it_holds(server: NatsServer, stream: tuple[str, str]) -> None:
    """A stop mid-run acks what was handled and naks the rest it held: all of it comes again at once, none lost."""
    name, prefix = stream
    events = envelopes(300)
    fill(server.url, name, prefix, events)
    seen: list[uuid.UUID] = []
    stop = threading.Event()
    lock = threading.Lock()

    def handle(message: ReceivedMessage) -> None:
        with lock:
            seen.append(message.envelope.event_id)
            if len(seen) == 50:
                stop.set()

    with NatsConsumer.connect(server.url, stream=name, durable="d", batch=100, max_buffered=200) as consumer:
        assert consumer.run(handle, concurrency=3, stop=stop, timeout=30.0, stop_timeout=5.0) == "stop event"
        stats = consumer.stats()
    assert stats.held == 0
    assert stats.nacked > 0  # the first pull brought 100: some were held when it stopped, and given back
    assert stats.acknowledged == len(seen)
    # ack_wait is 30 s: only a nak brings them back now, and an ack keeps a message away for good.
    # A fetch returns what is there when it is answered: the server may not have taken every nak in yet.
    rest: list[ReceivedMessage] = []
    with NatsConsumer.connect(server.url, stream=name, durable="d") as again:
        while len(rest) < 300 - len(seen) and (got := again.fetch(300, timeout=3.0)):
            rest += got
        for message in rest:
            message.ack()
    assert len(rest) == 300 - len(seen)
    assert sum(m.num_delivered == 2 for m in rest) == stats.nacked
    assert {e.event_id for e in events} == set(seen) | {m.envelope.event_id for m in rest}


def test_sigterm_stops_run_and_restores_the_handler(server: NatsServer, stream: tuple[str, str]) -> None:
    """SIGTERM during run() (main thread) stops it cleanly; the previous SIGTERM handler is back afterwards."""
    name, prefix = stream
    fill(server.url, name, prefix, envelopes(200))
    previous = signal.getsignal(signal.SIGTERM)
    count = itertools.count(1)

    def handle(message: ReceivedMessage) -> None:
        if next(count) == 20:
            os.kill(os.getpid(), signal.SIGTERM)

    with NatsConsumer.connect(server.url, stream=name, durable="d", batch=20, max_buffered=60) as consumer:
        assert consumer.run(handle, concurrency=2, timeout=30.0) == "SIGTERM"
        stats = consumer.stats()
    assert signal.getsignal(signal.SIGTERM) is previous
    assert stats.held == 0
    assert stats.acknowledged + stats.nacked == stats.received


def test_handler_running_past_stop_timeout_is_nacked(server: NatsServer, stream: tuple[str, str]) -> None:
    """A handler still busy at stop_timeout: its message is nak'ed for it, and its late return changes nothing."""
    name, prefix = stream
    fill(server.url, name, prefix, envelopes(1))
    release, entered, stop, returned = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    outcomes: list[str | None] = []

    def handle(message: ReceivedMessage) -> None:
        entered.set()
        release.wait(30.0)
        outcomes.append(message.settled)
        returned.set()

    with NatsConsumer.connect(server.url, stream=name, durable="d") as consumer:

        def watch() -> None:
            if entered.wait(10.0):
                stop.set()

        watcher = threading.Thread(target=watch)
        watcher.start()
        consumer.run(handle, stop=stop, stop_timeout=0.5, timeout=30.0)
        watcher.join()
        release.set()
        assert consumer.fetch(1, timeout=5.0)[0].num_delivered == 2  # nak'ed: delivered again
    assert returned.wait(10.0)  # the abandoned handler thread, released, has looked at its message
    assert outcomes == ["nak"]


def test_idle_timeout_returns_once_drained(server: NatsServer, stream: tuple[str, str]) -> None:
    """run(idle_timeout=) handles everything there is, then returns "idle" with nothing held or nak'ed; run(timeout=)
    then returns "timeout"."""
    name, prefix = stream
    events = envelopes(500)
    fill(server.url, name, prefix, events)
    seen: list[uuid.UUID] = []
    lock = threading.Lock()

    def handle(message: ReceivedMessage) -> None:
        with lock:
            seen.append(message.envelope.event_id)

    with NatsConsumer.connect(server.url, stream=name, durable="d", batch=50, max_buffered=100) as consumer:
        assert consumer.run(handle, concurrency=4, idle_timeout=2.0, timeout=60.0) == "idle (2.0 s)"
        stats = consumer.stats()
        assert consumer.run(handle, timeout=0.3) == "timeout (0.3 s)"  # nothing left
    assert sorted(seen) == sorted(e.event_id for e in events)
    assert (stats.acknowledged, stats.nacked, stats.held) == (500, 0, 0)
    assert ack_pending(server.url, name, "d") == (0, 0)


def test_idle_timeout_waits_for_a_busy_handler(server: NatsServer, stream: tuple[str, str]) -> None:
    """A handler busy longer than idle_timeout, with nothing delivered meanwhile, keeps run() going: what
    arrives afterwards is handled."""
    name, prefix = stream
    first, second, third = envelopes(3)
    fill(server.url, name, prefix, [first])
    handled = {e.event_id: threading.Event() for e in (first, second, third)}

    def handle(message: ReceivedMessage) -> None:
        event_id = message.envelope.event_id
        if event_id == first.event_id:
            fill(server.url, name, prefix, [second])
            assert handled[second.event_id].wait(10.0)  # the other thread took it: nothing is queued now
            threading.Event().wait(2.0)  # busy for twice idle_timeout, nothing delivered meanwhile
            fill(server.url, name, prefix, [third])
            assert handled[third.event_id].wait(10.0)  # delivered: run() is still going
        handled[event_id].set()

    with NatsConsumer.connect(server.url, stream=name, durable="d") as consumer:
        assert consumer.run(handle, concurrency=2, idle_timeout=1.0, timeout=60.0) == "idle (1.0 s)"
        stats = consumer.stats()
    assert all(event.is_set() for event in handled.values())
    assert (stats.acknowledged, stats.handler_errors) == (3, 0)


def lessons(titles: list[int]) -> list[EventEnvelope]:
    """One LessonPublished per entry, its title that many characters long."""
    return [
        EventEnvelope.new(LessonPublished(uuid.uuid4(), uuid.uuid4(), "x" * n), tenant_id="school-1") for n in titles
    ]


def test_max_buffered_bytes_bounds_what_run_holds(server: NatsServer, stream: tuple[str, str]) -> None:
    """With max_buffered_bytes, run() never holds more body bytes than that (about 3 of 40 3-KB events at a
    time); an event larger than all of it still comes, alone; every event handled once."""
    name, prefix = stream
    events = lessons([3000] * 20 + [30_000] + [3000] * 20)
    fill(server.url, name, prefix, events)
    big = len(encode(events[20]))
    limit = 10_000
    seen: list[tuple[uuid.UUID, int, int]] = []  # event, held messages and bytes while it is handled
    lock = threading.Lock()
    with NatsConsumer.connect(server.url, stream=name, durable="d", max_buffered_bytes=limit) as consumer:

        def handle(message: ReceivedMessage) -> None:
            stats = consumer.stats()
            with lock:
                seen.append((message.envelope.event_id, stats.held, stats.held_bytes))

        assert consumer.run(handle, concurrency=2, idle_timeout=2.0, timeout=60.0) == "idle (2.0 s)"
        stats = consumer.stats()
    assert sorted(i for i, _, _ in seen) == sorted(e.event_id for e in events)
    assert all(held_bytes <= limit for i, _, held_bytes in seen if i != events[20].event_id)
    [(_, held, held_bytes)] = [s for s in seen if s[0] == events[20].event_id]
    assert (held, held_bytes) == (1, big)  # alone
    assert (stats.acknowledged, stats.held, stats.held_bytes) == (41, 0, 0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"timeout": 0.0}, "timeout"),
        ({"idle_timeout": -1.0}, "idle_timeout"),
        ({"stop_timeout": 0.0}, "stop_timeout"),
    ],
)
def test_run_checks_its_arguments(
    server: NatsServer, stream: tuple[str, str], options: dict[str, object], message: str
) -> None:
    """run() with a bad argument raises ValueError naming it, takes nothing, and the consumer goes on working."""
    name, prefix = stream
    events = envelopes(1)
    fill(server.url, name, prefix, events)
    with NatsConsumer.connect(server.url, stream=name, durable="d") as consumer:
        with pytest.raises(ValueError, match=message):
            consumer.run(lambda _message: None, **options)  # type: ignore[arg-type]
        assert consumer.stats().received == 0
        [got] = consumer.fetch(1, timeout=5.0)
        got.ack()
    assert got.envelope == events[0]


def test_binding_checks(server: NatsServer, stream: tuple[str, str]) -> None:
    """No stream, no durable (create=False), another filter, an uncaptured dead letter: each a BrokerError."""
    name, prefix = stream
    with pytest.raises(BrokerError, match="does not exist"):
        NatsConsumer.connect(server.url, stream=name, durable="d")
    fill(server.url, name, prefix, envelopes(1))
    with pytest.raises(BrokerError, match="create=False"):
        NatsConsumer.connect(server.url, stream=name, durable="d", create=False)
    NatsConsumer.connect(server.url, stream=name, durable="d", filter_subject=f"{prefix}.*.LessonPublished").close()
    with pytest.raises(BrokerError, match="filters"):
        NatsConsumer.connect(server.url, stream=name, durable="d", filter_subject=f"{prefix}.>")
    with pytest.raises(BrokerError, match="dead-letter subject"):
        NatsConsumer.connect(server.url, stream=name, durable="d2", dead_letter_subject="nowhere.dlq")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"durable": "a.b"}, "durable"),
        ({"stream": ""}, "stream"),
        ({"filter_subject": "a.>.b"}, "filter_subject"),
        ({"ack_wait": 0}, "ack_wait"),
        ({"max_deliver": 0}, "max_deliver"),
        ({"batch": 300}, "max_buffered"),
        ({"max_buffered_bytes": 0}, "max_buffered_bytes"),
        ({"backoff_initial": 5.0, "backoff_maximum": 1.0}, "backoff_maximum"),
        ({"dead_letter_subject": "dlq.*"}, "subject"),
        ({"servers": "http://x:1"}, "nats://"),
    ],
)
def test_config_is_checked_at_construction(options: dict[str, object], message: str) -> None:
    """ConsumerConfig raises ConfigError naming the bad setting."""
    kwargs: dict[str, object] = {"servers": "nats://127.0.0.1:4222", "stream": "S", "durable": "d", **options}
    with pytest.raises(ConfigError, match=message):
        ConsumerConfig(**kwargs)  # type: ignore[arg-type]
