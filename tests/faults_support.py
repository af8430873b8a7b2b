"""Shared pieces of the fault-injection tests: publishers on the FAULTS stream, progress
marks from done-callbacks, stream read-back, sized envelopes, caller threads."""

import collections
import concurrent.futures
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import nats
import nats.js.errors
from helpers import read_stream

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


def stored_ids(url: str, *, timeout: float = 30.0, attempts: int = 1) -> collections.Counter[str]:
    """How many times each Nats-Msg-Id is stored in the FAULTS stream.

    ``attempts`` > 1 reads again after a 503 (no responders): right after a failover the read
    helper's new consumer may not answer its first fetch yet.
    """
    for attempt in range(1, attempts + 1):
        try:
            messages = read_stream(url, STREAM, timeout=timeout)
        except nats.js.errors.ServiceUnavailableError:
            if attempt == attempts:
                raise
            continue
        return collections.Counter(m.headers.get("Nats-Msg-Id", "") for m in messages)
    raise AssertionError("unreachable")


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
