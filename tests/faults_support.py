"""Shared pieces of the fault-injection tests: publishers on the FAULTS stream, progress
marks from done-callbacks, stream read-back, sized envelopes, caller threads, and atomic batches
published from a thread and checked against the stream read back."""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import nats
import nats.js.errors
from helpers import StoredMessage, envelopes, read_stream

from edupulse_events import (
    EventEnvelope,
    LessonPublished,
    NatsPublisher,
    PublishAck,
    RetryPolicy,
)
from edupulse_events._pipeline._routing import Router

STREAM = "FAULTS"
SUBJECT = "edupulse.faults"
#: Short deadlines so outage tests finish in seconds; attempts are retried after 0.3 s without an ack.
SHORT = {"delivery_timeout": 1.5, "retry": RetryPolicy(attempt_timeout=0.3)}


def connect(url: str, **kwargs: Any) -> NatsPublisher:
    """A publisher on SUBJECT that creates the FAULTS stream (file storage) when missing."""
    kwargs.setdefault("stream", STREAM)
    kwargs.setdefault("create_stream", True)
    return NatsPublisher.connect(url, SUBJECT, **kwargs)


class Progress:
    """Counts resolved futures from their done-callbacks; ``mark(n)`` is set once ``n`` resolved."""

    def __init__(self, *marks: int) -> None:
        self._lock = threading.Lock()
        self.resolved = 0
        self._marks = {n: threading.Event() for n in marks}

    def track(self, future: concurrent.futures.Future[PublishAck]) -> concurrent.futures.Future[PublishAck]:
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: concurrent.futures.Future[PublishAck]) -> None:
        with self._lock:
            self.resolved += 1
            n = self.resolved
        for mark, event in self._marks.items():
            if n >= mark:
                event.set()

    def mark(self, n: int) -> threading.Event:
        return self._marks[n]


def stored_messages(url: str, *, timeout: float = 30.0, attempts: int = 1) -> list[StoredMessage]:
    """Every message of the FAULTS stream, oldest first.

    ``attempts`` > 1 reads again after a 503 (no responders): right after a failover the read
    helper's new consumer may not answer its first fetch yet.
    """
    for attempt in range(1, attempts + 1):
        try:
            return read_stream(url, STREAM, timeout=timeout)
        except nats.js.errors.ServiceUnavailableError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def stored_ids(url: str, *, timeout: float = 30.0, attempts: int = 1) -> collections.Counter[str]:
    """How many times each Nats-Msg-Id is stored in the FAULTS stream (``attempts``: as `stored_messages`)."""
    messages = stored_messages(url, timeout=timeout, attempts=attempts)
    return collections.Counter(m.headers.get("Nats-Msg-Id", "") for m in messages)


def ids(envs: Iterable[EventEnvelope]) -> set[str]:
    return {str(e.event_id) for e in envs}


def large(size: int) -> EventEnvelope:
    """A valid envelope whose encoded body is a little over ``size`` bytes."""
    return EventEnvelope.new(LessonPublished(uuid.uuid4(), uuid.uuid4(), "x" * size), tenant_id="school-1")


def sized(total: int) -> EventEnvelope:
    """An envelope of exactly ``total`` bytes on the wire (routing headers + body), as max_payload counts them."""
    env = large(total)
    pad = total - Router(SUBJECT).prepare(env, None).size
    env = EventEnvelope.new(LessonPublished(uuid.uuid4(), uuid.uuid4(), "x" * (total + pad)), tenant_id="school-1")
    assert Router(SUBJECT).prepare(env, None).size == total
    return env


def oversized(limit: int) -> EventEnvelope:
    """A valid envelope whose encoded body alone is larger than ``limit`` bytes."""
    return large(limit + 100)


def publish_from_threads(
    pub: NatsPublisher,
    batches: Sequence[Sequence[EventEnvelope]],
    progress: Progress | None = None,
    timeout: float | None = None,
) -> tuple[list[threading.Thread], list[list[concurrent.futures.Future[PublishAck]]], list[BaseException]]:
    """Start one thread per batch publishing it in order; returns (threads, futures per thread, errors)."""
    futures: list[list[concurrent.futures.Future[PublishAck]]] = [[] for _ in batches]
    errors: list[BaseException] = []
    go = threading.Barrier(len(batches))

    def run(i: int) -> None:
        go.wait()
        try:
            for env in batches[i]:
                f = pub.publish(env, timeout=timeout)
                futures[i].append(progress.track(f) if progress else f)
        except BaseException as exc:  # noqa: BLE001  # any error of a caller thread is kept for the test to assert on
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


class AtomicBatch:
    """One ``publish_many(atomic=True)`` call: its event ids in order, its futures, when it was made
    and when its last future resolved (from their done-callbacks, which `wait` waits for too)."""

    def __init__(self, pub: NatsPublisher, envs: Sequence[EventEnvelope], timeout: float | None = None) -> None:
        self.ids = [str(e.event_id) for e in envs]
        self.resolved_at = 0.0
        self._lock = threading.Lock()
        self._resolved = threading.Event()
        self.started = time.monotonic()
        self.futures = pub.publish_many(envs, atomic=True, timeout=timeout)
        self._left = len(self.futures)
        for future in self.futures:
            future.add_done_callback(self._one_resolved)

    def _one_resolved(self, _future: concurrent.futures.Future[PublishAck]) -> None:
        with self._lock:
            self._left -= 1
            self.resolved_at = max(self.resolved_at, time.monotonic())
            if self._left == 0:
                self._resolved.set()

    def wait(self, timeout: float = 30.0) -> bool:
        """Wait until every future resolved (however); False if ``timeout`` ran out first."""
        return self._resolved.wait(timeout)

    @property
    def done(self) -> bool:
        return self._resolved.is_set()


def check_atomic_batches(
    messages: Sequence[StoredMessage], batches: Sequence[AtomicBatch], deadline: float | None = None
) -> collections.Counter[str]:
    """Assert what atomic batches promise, against the stream read back (``messages``): no event stored
    twice; each batch stored whole, contiguously and in order, or not at all; a batch whose futures say
    stored is in the stream, each ack (unless a duplicate's) with its event's stream sequence; a batch's
    futures resolve alike (all acks, or all the same error), each within ``deadline`` s of the call (plus
    scheduling slack). Returns how many batches ended each way: "stored", "duplicate", or the error's type
    (with " (stored)" for a failed batch the stream holds all the same: its ack lost, or too late)."""
    seq_of: dict[str, int] = {}
    for m in messages:
        event_id = m.headers.get("Nats-Msg-Id", "")
        assert event_id not in seq_of, f"event {event_id} stored twice (#{seq_of.get(event_id)} and #{m.sequence})"
        seq_of[event_id] = m.sequence
    outcomes: collections.Counter[str] = collections.Counter()
    for n, batch in enumerate(batches):
        seqs = [seq_of.get(event_id) for event_id in batch.ids]
        held = [s for s in seqs if s is not None]
        assert len(held) in (0, len(seqs)), f"batch {n}: {len(held)} of its {len(seqs)} events stored"
        if held:
            assert held == list(range(held[0], held[0] + len(held))), f"batch {n} not contiguous and in order: {held}"
        assert batch.wait(10), f"batch {n} still unresolved"
        errors = [f.exception(timeout=0) for f in batch.futures]
        if all(e is None for e in errors):
            assert held, f"batch {n}: its futures say stored, the stream does not hold it"
            acks = [f.result(timeout=0) for f in batch.futures]
            assert all(a.duplicate for a in acks) or all(not a.duplicate for a in acks), acks
            if acks[0].duplicate:
                outcomes["duplicate"] += 1
            else:
                assert [a.broker_sequence for a in acks] == held, f"batch {n}: acks are not its stream sequences"
                outcomes["stored"] += 1
        else:
            assert len({(type(e), str(e)) for e in errors}) == 1, f"batch {n} failed unlike: {errors}"
            outcomes[type(errors[0]).__name__ + (" (stored)" if held else "")] += 1  # (an ack lost, or late)
        if deadline is not None:
            late = batch.resolved_at - batch.started - deadline
            assert late < DEADLINE_SLACK, f"batch {n} resolved {late:.2f} s past its delivery deadline"
    return outcomes


#: How late past its delivery deadline a future may resolve: the sweep's tick and a busy shared CPU.
DEADLINE_SLACK = 1.5


class BatchRunner:
    """A thread publishing atomic batches of ``size`` events until `stop`, at most ``depth`` of them
    unresolved at once; ``batches`` holds them in order. `wait_for(n)` waits until ``n`` more are
    stored, `wait_unresolved` until one is in flight."""

    def __init__(self, pub: NatsPublisher, size: int, depth: int = 4) -> None:
        self._pub, self._size, self._depth = pub, size, depth
        self.batches: list[AtomicBatch] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._stored = 0
        self._thread = threading.Thread(target=self._run, name="atomic-batches")

    def __enter__(self) -> BatchRunner:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.stop()
        else:  # the test failed already: stop, and leave the stage to its error
            self._stop.set()
            self._thread.join(60)

    def _count(self, future: concurrent.futures.Future[PublishAck]) -> None:
        if future.exception() is None:
            with self._cond:
                self._stored += 1
                self._cond.notify_all()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if len(self.batches) >= self._depth:
                    assert self.batches[-self._depth].wait(60), "a batch still unresolved after 60 s"
                batch = AtomicBatch(self._pub, envelopes(self._size), timeout=30)
                batch.futures[-1].add_done_callback(self._count)  # (a batch resolves whole)
                with self._cond:
                    self.batches.append(batch)
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001  # kept for the test to assert on
            self.errors.append(exc)
            with self._cond:
                self._cond.notify_all()

    def wait_unresolved(self, timeout: float = 30.0) -> None:
        """Wait until a published batch is unresolved (with the server frozen, it stays so)."""
        with self._cond:
            ok = self._cond.wait_for(lambda: any(not b.done for b in self.batches) or bool(self.errors), timeout)
        assert not self.errors, self.errors
        assert ok, f"no batch unresolved within {timeout} s"

    def wait_for(self, n: int, timeout: float = 30.0) -> None:
        """Wait until ``n`` batches more than now resolved stored."""
        with self._cond:
            target = self._stored + n
            ok = self._cond.wait_for(lambda: self._stored >= target or bool(self.errors), timeout)
        assert not self.errors, self.errors
        assert ok, f"only {self._stored} batches stored, waiting for {target}, after {timeout} s"

    def stop(self, timeout: float = 60.0) -> None:
        """Stop publishing; wait for the thread (its last batches may still be unresolved)."""
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the publishing thread did not stop"
        assert not self.errors, self.errors
