"""`NatsPublisher`: the blocking, thread-safe publisher that sends events to NATS.

Caller threads validate and encode (`Router.prepare`), put the event on a bounded
`BatchQueue` (blocking up to ``timeout`` when full: back-pressure) and get a future; the
`Worker` thread does all network work. This module owns the publisher's life cycle: lazy
start, `flush`, `close`, re-creation after ``fork()`` (pre-fork servers such as gunicorn),
and closing open publishers at interpreter exit, logging what could not be delivered (count
and event ids, never payloads).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import os
import queue
import threading
import time
import weakref
from typing import Any

import attrs

from ._futures import PublishAck, _worker_state
from ._queue import BatchQueue
from ._routing import Router
from ._worker import Worker
from .config import PublisherConfig
from .envelope import EventEnvelope
from .errors import DeadlockError, PublisherClosed, QueueFull

__all__ = ["NatsPublisher", "PublisherStats"]

log = logging.getLogger("edupulse_events")
_live: weakref.WeakSet[NatsPublisher] = weakref.WeakSet()
_orphans: list[Worker] = []  # a parent's workers, kept (never run) in a forked child
_names = iter(range(1, 1 << 62))
_IDS_PER_LINE = 500  # undelivered event ids per log line (~19 kB)


@attrs.frozen
class PublisherStats:
    """Counters since the publisher was created (or since fork, in a child process)."""

    accepted: int
    acknowledged: int
    failed: int
    queued: int
    blocked_publishes: int
    peak_in_flight: int
    batches: int


class NatsPublisher:
    """Publishes envelopes to NATS (JetStream by default) from any number of threads.

    Build it with `NatsPublisher.connect(url, subject, ...)` (blocks until connected, or raises
    `BrokerError` saying why) or `NatsPublisher(PublisherConfig(...))` (connects lazily on the
    first publish). Use it as a context manager, or call `close()`.
    """

    def __init__(self, config: PublisherConfig) -> None:
        if not isinstance(config, PublisherConfig):
            raise TypeError(f"NatsPublisher takes a PublisherConfig, got {type(config).__name__}")
        self._config = config
        self._delivery_timeout = config.delivery_timeout  # read on every publish()
        self._publish_timeout = config.publish_timeout
        self._router = Router(config.subject)
        self._name = f"edupulse-publisher-{next(_names)}"
        self._closed = False
        self._reset()
        _live.add(self)

    def _reset(self) -> None:
        cfg = self._config
        self._queue = BatchQueue(cfg.max_queue, cfg.max_queue_bytes)
        self._start_lock = threading.Lock()
        self._progress = threading.Condition(threading.Lock())
        self._futures_condition = threading.Condition()  # shared by this publisher's futures
        self._resolved = self._acked = self._failed = 0
        self._worker: Worker | None = None
        self._pid = os.getpid()

    @classmethod
    def connect(
        cls,
        url: str,
        subject: str,
        *,
        auth_token: str | None = None,
        jetstream: bool = True,
        max_queue: int = 10_000,
        **options: Any,
    ) -> NatsPublisher:
        """Connect to ``url`` (one URL or a comma-separated cluster list) and return a publisher.

        Every other `PublisherConfig` field may be given as a keyword. Blocks until connected
        (at most ``connect_timeout``), or raises `BrokerError`; with
        ``start_without_broker=True`` it returns at once and delivers when the broker is up.
        """
        config = PublisherConfig(
            servers=url, subject=subject, auth_token=auth_token, jetstream=jetstream, max_queue=max_queue, **options
        )
        publisher = cls(config)
        try:
            publisher.start()
        except BaseException:
            publisher._discard()
            raise
        return publisher

    @property
    def config(self) -> PublisherConfig:
        return self._config

    def start(self) -> NatsPublisher:
        """Start the publisher thread now and, unless ``start_without_broker``, wait to be connected."""
        with self._start_lock:
            if self._worker is not None:
                return self
            worker = self._new_worker()
            try:
                worker.start(block=not self._config.start_without_broker, timeout=self._config.connect_timeout)
            except BaseException:
                worker.stop(1.0)
                raise
            self._worker = worker
        return self

    def _discard(self) -> None:
        """Forget a publisher whose start() failed before it accepted anything: closed, no
        exit-hook close (and no "publisher closed" log line for a publisher that never ran)."""
        with self._start_lock:
            self._closed = True
        _live.discard(self)

    def _new_worker(self) -> Worker:
        return Worker(self._config, self._queue, self._on_resolved, self._name)

    def _lazy_worker(self) -> Worker:
        with self._start_lock:
            if self._worker is None:
                worker = self._new_worker()
                worker.start_lazily()
                self._worker = worker
            return self._worker

    def publish(
        self, envelope: EventEnvelope, *, timeout: float | None = None
    ) -> concurrent.futures.Future[PublishAck]:
        """Validate, encode and queue ``envelope``; return a future resolving to its `PublishAck`.

        Raises `InvalidEvent` (nothing queued) for bad input, `QueueFull` when the queue stayed
        full for ``timeout`` seconds (default ``config.publish_timeout``; 0 = do not wait), and
        `PublisherClosed` after `close()`.
        """
        if self._closed:
            raise PublisherClosed("publish() on a closed NatsPublisher")
        worker = self._worker or self._lazy_worker()
        item = self._router.prepare(
            envelope, time.monotonic() + self._delivery_timeout, worker.max_payload, self._futures_condition
        )
        wait = self._publish_timeout if timeout is None else timeout
        try:
            self._queue.put(item, wait > 0, wait)
        except queue.Full:
            raise QueueFull(
                f"publisher queue stayed full for {wait} s ({self._config.max_queue} events / {self._config.max_queue_bytes} bytes)"
            ) from None
        worker.wake()
        if self._closed:  # close() ran while we were putting: fail what it could not see
            self._fail_leftovers()
        return item.future

    def _on_resolved(self, acked: int, failed: int) -> None:
        with self._progress:
            self._acked += acked
            self._failed += failed
            self._resolved += acked + failed
            self._progress.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event accepted so far has resolved; False if ``timeout`` ran out first."""
        if getattr(_worker_state, "active", False):
            raise DeadlockError("flush() called from a publisher's own thread would wait forever")
        with self._progress:
            target = self._queue.accepted
            return self._progress.wait_for(lambda: self._resolved >= target, timeout)

    def stats(self) -> PublisherStats:
        """A snapshot of this publisher's counters."""
        with self._progress:
            worker = self._worker
            peak, batches = (worker.peak_in_flight, worker.batches) if worker is not None else (0, 0)
            return PublisherStats(
                self._queue.accepted,
                self._acked,
                self._failed,
                self._queue.qsize(),
                self._queue.blocked_puts,
                peak,
                batches,
            )

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting, deliver what is queued within ``timeout`` (default: the delivery
        deadline), fail the rest with `PublisherClosed`, stop the thread. Idempotent."""
        if getattr(_worker_state, "active", False):
            raise DeadlockError("close() called from a publisher's own thread would wait forever")
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            worker = self._worker
        timeout = self._config.delivery_timeout if timeout is None else max(0.0, timeout)
        abandoned: list[str] = []
        if worker is not None:
            if not worker.stop(timeout):
                log.error("publisher thread %s did not stop within %.1f s", self._name, timeout)
            abandoned += worker.abandoned
        abandoned += self._fail_leftovers()
        _live.discard(self)
        stats = self.stats()
        if abandoned:
            first = abandoned[:_IDS_PER_LINE]
            more = (
                f" {len(first)} of {len(abandoned)}, the rest on the next lines" if len(abandoned) > len(first) else ""
            )
            log.error(
                "publisher closed: %d events acknowledged, %d failed; %d were NOT delivered (event ids%s: %s)",
                stats.acknowledged,
                stats.failed,
                len(abandoned),
                more,
                ", ".join(first),
            )
            for start in range(_IDS_PER_LINE, len(abandoned), _IDS_PER_LINE):  # lines a log pipeline keeps whole
                chunk = abandoned[start : start + _IDS_PER_LINE]
                log.error(
                    "NOT delivered (event ids %d-%d of %d): %s",
                    start + 1,
                    start + len(chunk),
                    len(abandoned),
                    ", ".join(chunk),
                )
        else:
            log.info(
                "publisher closed: %d events acknowledged, %d failed, none left undelivered",
                stats.acknowledged,
                stats.failed,
            )

    def _fail_leftovers(self) -> list[str]:
        items = self._queue.get_batch(self._config.max_queue + 1)
        ids = []
        for item in items:
            try:
                item.future.set_exception(PublisherClosed(f"publisher closed before event {item.event_id} was sent"))
            except concurrent.futures.InvalidStateError:
                continue
            ids.append(item.event_id)
        if ids:
            self._on_resolved(0, len(ids))
        return ids

    def _after_fork_in_child(self) -> None:
        if self._worker is not None:
            _orphans.append(self._worker)
        self._reset()  # new queue, locks and counters; the parent's queued events stay the parent's

    def __enter__(self) -> NatsPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        mode = "jetstream" if self._config.jetstream else "core"
        return f"<NatsPublisher {state} {mode} servers={self._config.redacted_servers!r} subject={self._config.subject!r} queued={self._queue.qsize()}>"


def _after_fork_in_child() -> None:
    for publisher in list(_live):
        publisher._after_fork_in_child()


def _close_all_at_exit() -> None:
    for publisher in list(_live):
        try:
            publisher.close(publisher.config.exit_timeout)
        except Exception:
            log.exception("closing %r at exit failed", publisher)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
