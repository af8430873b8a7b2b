"""`NatsPublisher`: the blocking, thread-safe publisher that sends events to NATS.

Caller threads validate and encode (`Router.prepare`), put the event on a bounded
`BatchQueue` (blocking up to ``timeout`` when full: back-pressure) and get a future; the
`Worker` thread does all network work. This module owns the publisher's life cycle — one
explicit `PublisherState`: NEW (no thread yet), RUNNING, CRASHED (the thread died; the next
``publish()`` starts a new one, after a backoff when it keeps crashing), CLOSED — and with it
`flush`, `close`, re-creation after ``fork()`` (pre-fork servers such as gunicorn), and
closing open publishers at interpreter exit, logging what could not be delivered (count and
event ids, never payloads).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import queue
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from ._engine._closing import fail_taken, log_closed
from ._engine._otel import Telemetry, correlation_of, telemetry_for
from ._engine._outstanding import Tally
from ._engine._processes import keep_orphan, own_process, prepare_uwsgi_workers, track, untrack
from ._engine._restarts import Restarts
from ._engine._worker import Worker, refuse_threadless_uwsgi
from ._nats import BATCH_HEADERS, check_broker
from ._pipeline._cloudevents import router_for
from ._pipeline._encoded import EncodedEvent, RowCheck, encoded_items
from ._pipeline._queue import BatchQueue
from ._pipeline._routing import Group, Item, check_atomic
from ._spool._spooling import Spooling
from .config import PublisherConfig
from .envelope import EventEnvelope
from .errors import ConfigError, DeadlockError, InvalidBatch, PublisherClosed, PublisherCrashed, QueueFull
from .futures import PublishAck, in_worker_thread
from .stats import FAILED_IDS_KEPT, PublisherState, PublisherStats, add

__all__ = ["NatsPublisher", "PublisherState"]

log = logging.getLogger("edupulse_events")
_getpid = os.getpid
_names = iter(range(1, 1 << 62))
_CORE_NATS = "atomic batches are a JetStream feature: this publisher publishes to core NATS"


class NatsPublisher:
    """Publishes envelopes to NATS (JetStream by default) from any number of threads.

    Build it with `NatsPublisher.connect(url, subject, ...)` (blocks until connected, or raises
    `BrokerError` saying why) or `NatsPublisher(PublisherConfig(...))` (connects lazily on the
    first publish). Use it as a context manager, or call `close()`. Events are encoded with
    ``config.codec`` (default: the default codec).
    """

    def __init__(self, config: PublisherConfig) -> None:
        if not isinstance(config, PublisherConfig):
            raise TypeError(f"NatsPublisher takes a PublisherConfig, got {type(config).__name__}")
        self._config = config
        self._publish_timeout = config.publish_timeout  # read on every publish()
        self._router = router_for(config)
        self._telemetry = telemetry_for(config, self.stats)
        self._name = f"edupulse-publisher-{next(_names)}"
        self._stream_verified = False  # check() or a thread found the stream: later connections skip it
        self._row_check: RowCheck | None = None  # publish_encoded()'s, made at its first call
        self._reset()
        track(self)

    def _reset(self) -> None:
        """A fresh start: new queue, locks and counters (at construction, and in a forked child)."""
        cfg = self._config
        self._state = PublisherState.NEW
        #: The running thread's worker; None unless RUNNING (publish() checks only this).
        self._worker: Worker | None = None
        self._last_worker: Worker | None = None
        self._queue: BatchQueue[Item] = BatchQueue(cfg.max_queue, cfg.max_queue_bytes, cfg.delivery_timeout)
        #: Guards the state and the worker; start() also holds the start lock while it connects.
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._progress = threading.Condition(threading.Lock())
        self._futures_condition = threading.Condition()  # shared by this publisher's futures
        self._resolved = self._acked = self._failed = 0
        self._restarts = Restarts()
        self._tally = Tally()  # counters of threads that crashed
        self._leftover_failures: dict[str, int] = {}  # queued events failed by close() or a crash
        self._failed_ids: collections.deque[str] = collections.deque(maxlen=FAILED_IDS_KEPT)
        #: The process this publisher's state belongs to (a fork no hook reported leaves it stale).
        self._pid = _getpid()
        #: The durable spool (`PublisherConfig.spool_dir`), opened by this process's first worker.
        self._spooling: Spooling | None = None

    @classmethod
    def connect(
        cls,
        url: str | Sequence[str] | None = None,
        subject: str | None = None,
        *,
        servers: str | Sequence[str] | None = None,
        **options: Any,
    ) -> NatsPublisher:
        """Connect to ``url`` (one URL, a comma-separated cluster list, or a list) and return a publisher.

        ``url`` is the positional shorthand of `PublisherConfig`'s ``servers``: give one of the
        two. Every other `PublisherConfig` field may be given as a keyword under its own name
        (``codec=Codec(my_registry)`` for the events of an application's own registry). Blocks
        until connected (at most ``connect_timeout``), or raises `BrokerError`; with
        ``start_without_broker=True`` it returns at once and delivers when the broker is up.
        """
        if (url is None) == (servers is None) or subject is None:
            given = "no subject" if (url is None) != (servers is None) else "both" if url is not None else "neither"
            raise ConfigError(f"connect() takes the server URL(s) once (url or servers=) and a subject: {given} given")
        config = PublisherConfig(servers=url if servers is None else servers, subject=subject, **options)
        publisher = cls(config)
        try:
            publisher.start()
        except BaseException:
            publisher.close(0.0)
            raise
        return publisher

    @property
    def config(self) -> PublisherConfig:
        return self._config

    @property
    def state(self) -> PublisherState:
        return self._state

    def start(self) -> NatsPublisher:
        """Start the publisher thread now and, unless ``start_without_broker``, wait to be connected."""
        with self._start_lock:
            with self._lock:
                if self._state is PublisherState.CLOSED:
                    raise PublisherClosed("start() on a closed NatsPublisher")
                if self._state is PublisherState.RUNNING:
                    return self
            worker = self._new_worker()
            try:  # not under self._lock: a thread crashing while it connects reports under it
                worker.start(block=not self._config.start_without_broker, timeout=self._config.connect_timeout)
            except BaseException:
                worker.stop(1.0)
                raise
            with self._lock:
                if self.state is not PublisherState.CLOSED:  # close() may have run meanwhile
                    self._run(worker)
                    return self
        worker.stop(1.0)
        raise PublisherClosed("close() ran while start() was connecting")

    def check(self, timeout: float | None = None) -> None:
        """Connect to the broker once and close again, without starting the publisher thread:
        raises `BrokerError` saying why publishing could not work (unreachable, credentials or
        certificate refused, no such stream, a stream that does not capture the subject). Nothing
        stays behind, so a pre-fork server's master can call it at import, before it forks
        workers that each connect on their first ``publish()`` (a uWSGI master readies them too).
        Waits at most ``timeout`` (default ``connect_timeout``); the stream is not asked again."""
        check_broker(self._config, self._config.connect_timeout if timeout is None else timeout)
        self._stream_verified = True
        prepare_uwsgi_workers()

    def _new_worker(self) -> Worker:
        refuse_threadless_uwsgi()
        if self._config.spool_dir is not None and self._spooling is None:
            self._spooling = Spooling(self._config, self._futures_condition)  # adopts dead processes' files
        worker = Worker(self._config, self._queue, self, self._name, self._telemetry, self._spooling)
        last = self._last_worker
        if self._stream_verified or (last is not None and last.transport.stream_verified):
            worker.transport.stream_verified = self._stream_verified = True
        return worker

    def _run(self, worker: Worker) -> None:
        """With the lock held: ``worker`` is the running thread."""
        self._state = PublisherState.RUNNING
        self._worker = self._last_worker = worker

    def _ensure_worker(self) -> Worker:
        """The running worker, started (or restarted after a crash) if need be; raises
        `PublisherClosed` after close(), `PublisherCrashed` while a crashing thread backs off."""
        self._own_process()
        with self._lock:
            return self._ensure_worker_locked()

    def _own_process(self) -> None:
        """Start afresh in a process this publisher was forked into without a fork hook running
        (uWSGI forks its workers without Python's at-fork hooks unless --py-call-osafterfork):
        a new queue, thread and connection; what the parent queued stays the parent's."""
        if self._pid != _getpid():
            own_process(self, self._name)

    def _ensure_worker_locked(self) -> Worker:
        state = self._state
        if state is PublisherState.RUNNING and self._worker is not None:
            return self._worker
        if state is PublisherState.CLOSED:
            raise PublisherClosed("publish() on a closed NatsPublisher")
        if state is PublisherState.CRASHED:
            number = self._restarts.restart()  # or PublisherCrashed: backing off
            log.warning("starting a new publisher thread %s after a crash (restart %d)", self._name, number)
        worker = self._new_worker()
        try:
            worker.start(block=False, timeout=0.0)
        except RuntimeError as exc:  # "can't start new thread": out of threads or memory
            raise PublisherCrashed(f"could not start the publisher thread ({exc}); nothing was queued") from exc
        self._run(worker)
        return worker

    def publish(
        self, envelope: EventEnvelope, *, timeout: float | None = None
    ) -> concurrent.futures.Future[PublishAck]:
        """Validate, encode and queue ``envelope``; return a future resolving to its `PublishAck`.

        Raises `InvalidEvent` (nothing queued) for bad input, `QueueFull` when the queue stayed
        full for ``timeout`` seconds (default ``config.publish_timeout``; 0 = do not wait),
        `PublisherClosed` after `close()`, and `PublisherCrashed` while a publisher thread that
        keeps crashing waits to be restarted. The event's delivery deadline
        (``delivery_timeout``) starts when it is accepted.
        """
        worker = self._worker
        if worker is None or self._pid != _getpid():  # not started, crashed, closed, or in a forked process
            worker = self._ensure_worker()
        item = self._router.prepare(envelope, worker.max_payload, self._futures_condition)
        telemetry = self._telemetry
        if telemetry is not None:  # opentelemetry-api installed: trace if an SDK is configured
            telemetry.countdown -= 1
            if telemetry.countdown <= 0:
                telemetry.recheck()
            if telemetry.tracing:
                telemetry.trace(item, envelope.correlation_id)
        wait = self._publish_timeout if timeout is None else timeout
        spooling = self._spooling
        if spooling is not None:
            if spooling.write_ahead:
                spooling.accept(item)  # on disk before publish() returns (SpoolFull: nothing queued)
            elif not worker.connected:
                wait = 0.0  # overflow: while the broker is away, a full queue spills to disk at once
        try:
            self._queue.put(item, wait)
        except queue.Full:
            if spooling is not None:
                if not spooling.write_ahead:
                    spooling.overflow(item)  # resolved now: never counted as accepted by the queue
                    return item.future
                spooling.unaccept(item)
            cfg = self._config
            raise QueueFull(
                f"publisher queue stayed full for {wait} s ({cfg.max_queue} events / {cfg.max_queue_bytes} bytes)"
            ) from None
        worker.wake()
        if self._worker is not worker:  # closed, crashed or forked meanwhile: the event must not be stranded
            self._rescue()
        return item.future

    def publish_many(
        self,
        envelopes: Iterable[EventEnvelope],
        *,
        timeout: float | None = None,
        atomic: bool = False,
        resend: bool = False,
    ) -> list[concurrent.futures.Future[PublishAck]]:
        """`publish` for a batch, in order, one future per envelope, without `publish`'s per-call
        costs (a lock acquisition, a wake-up and a process check per event).

        Every envelope is validated and encoded first: the first bad one raises `InvalidEvent`
        naming its index (``envelopes[3]: ...``) and nothing is queued. Then they are queued
        under one lock acquisition and one wake-up of the publisher thread when they fit,
        waiting for room (up to ``timeout``, default ``config.publish_timeout``, in all) when they
        do not. If the time runs out, `QueueFull` is raised and its ``futures`` are those of the
        envelopes queued before (a prefix of the batch, delivered as usual); the rest were not.
        The whole batch is held encoded before it is queued: send batches of thousands, not millions.

        With ``atomic=True`` the batch is one JetStream atomic batch: the stream stores all of it,
        contiguously and in order, or none of it, and the futures resolve together (each with its
        own `PublishAck`, or all with the same error). It is queued whole or not at all (`QueueFull`
        with no futures); `InvalidBatch` for a batch that cannot be one (more than
        ``config.max_batch`` events, an event id twice, core NATS); a stream without
        ``allow_atomic`` fails it with `EventRejected`. An event that fits the server's max_payload alone but
        not with the batch headers is an `InvalidBatch` too (an `InvalidEvent` on the futures if
        the limit was learnt after it was queued). A resent batch that the stream had stored
        already resolves as stored (``duplicate=True``, no sequence): never twice, never failed.
        ``resend=True`` says the same of a first attempt — the batch may have been published whole
        before, by a process that died before it learnt the outcome (what an outbox relay sends
        again after a crash): if the stream holds its event ids already, it resolves as stored.
        """
        if atomic and not self._config.jetstream:
            raise InvalidBatch(_CORE_NATS)
        worker = self._worker
        if worker is None or self._pid != _getpid():
            worker = self._ensure_worker()
        envelopes = envelopes if isinstance(envelopes, list) else list(envelopes)
        items = self._router.prepare_many(envelopes, worker.max_payload, self._futures_condition, worker.hand_over)
        if not self._batch(items, worker, atomic, resend):
            return []
        telemetry = self._telemetry
        if telemetry is not None and self._tracing(telemetry, len(items)):
            for item, envelope in zip(items, envelopes, strict=True):
                telemetry.trace(item, envelope.correlation_id)
        return self._put_batch(items, worker, timeout, atomic)

    def publish_encoded(
        self,
        events: Iterable[EncodedEvent],
        *,
        timeout: float | None = None,
        atomic: bool = False,
        resend: bool = False,
    ) -> list[concurrent.futures.Future[PublishAck]]:
        """`publish_many` for events already encoded (`EncodedEvent`: what `Outbox.add` stores),
        sent as they are: the bytes given are the bytes published, none decoded or encoded again.

        Each is checked to be one this publisher could have written: its subject fits
        ``config.subject``, its header block holds only the routing headers (and, with
        ``cloudevents``, the ``ce-`` ones) with ``Nats-Msg-Id`` = its event id and the type and
        tenant its subject names, its body begins with that event id and correlation id, and it
        fits ``max_payload``. The first that is not raises `InvalidEvent` naming its index
        (``events[3]: ...``), and nothing is queued. From there on, exactly as `publish_many`:
        the same queue, futures, ``atomic`` batches (and ``resend``), `InvalidBatch`, `QueueFull`
        and tracing.
        """
        if atomic and not self._config.jetstream:
            raise InvalidBatch(_CORE_NATS)
        return self._queue_checked(self._check_encoded(events), timeout=timeout, atomic=atomic, resend=resend)

    def _check_encoded(self, events: Iterable[EncodedEvent]) -> list[Item]:
        """`publish_encoded`'s checks alone: ``events`` as items ready for `_queue_checked` (once).
        The outbox relay checks its next batch this way while the one before is in flight."""
        worker = self._worker
        if worker is None or self._pid != _getpid():
            worker = self._ensure_worker()
        check = self._row_check
        if check is None:
            check = self._row_check = RowCheck(self._config.subject, cloudevents=self._config.cloudevents)
        events = events if isinstance(events, Sequence) else list(events)
        return encoded_items(events, check, worker.max_payload, self._futures_condition, worker.hand_over)

    def _queue_checked(
        self, items: list[Item], *, timeout: float | None, atomic: bool, resend: bool = False
    ) -> list[concurrent.futures.Future[PublishAck]]:
        """Queue the items of `_check_encoded` as `publish_encoded` does."""
        if atomic and not self._config.jetstream:
            raise InvalidBatch(_CORE_NATS)
        worker = self._worker
        if worker is None or self._pid != _getpid():
            worker = self._ensure_worker()
        if not self._batch(items, worker, atomic, resend):
            return []
        telemetry = self._telemetry
        if telemetry is not None and self._tracing(telemetry, len(items)):
            for item in items:
                telemetry.trace(item, correlation_of(item.headers))
        return self._put_batch(items, worker, timeout, atomic)

    def _batch(self, items: list[Item], worker: Worker, atomic: bool, resend: bool = False) -> bool:
        """Mark ``items`` as one atomic batch (`InvalidBatch` if they cannot be one; ``resend``:
        see `publish_many`) or as bulk; False when there is nothing to queue."""
        if atomic:
            check_atomic(items, self._config.max_batch, worker.max_payload, BATCH_HEADERS)
            if len(items) > self._config.max_queue:
                raise InvalidBatch(
                    f"an atomic batch of {len(items)} events never fits the queue (max_queue={self._config.max_queue})"
                )
            Group(items, resend)
            worker.atomic = True
        elif not items:
            return False
        else:
            for item in items:
                item.bulk = True
        return True

    @staticmethod
    def _tracing(telemetry: Telemetry, count: int) -> bool:
        """Count ``count`` publishes towards the telemetry's next look at the SDK; whether it traces."""
        telemetry.countdown -= count
        if telemetry.countdown <= 0:
            telemetry.recheck()
        return telemetry.tracing

    def _put_batch(
        self, items: list[Item], worker: Worker, timeout: float | None, atomic: bool
    ) -> list[concurrent.futures.Future[PublishAck]]:
        """Queue prepared ``items`` (spool first, when write-ahead) as `publish_many` says."""
        wait = self._publish_timeout if timeout is None else timeout
        spooling = self._spooling
        if spooling is not None:
            if spooling.write_ahead:
                spooling.accept_many(items)  # SpoolFull: nothing written, nothing queued
            elif not worker.connected:
                wait = 0.0
        if atomic:
            queued = len(items) if self._queue.put_whole(items, wait, worker.wake) else 0
        else:
            queued = self._queue.put_many(items, wait, worker.wake)
        worker.wake()
        if self._worker is not worker:
            self._rescue()
        if queued < len(items) and (spooling is None or not spooling.refused(items, queued)):
            raise QueueFull.partial([item.future for item in items[:queued]], len(items), wait)
        return [item.future for item in items]

    def _rescue(self) -> None:
        """After a put that raced with close() or a crash: hand the queue to a running thread, or fail it."""
        with self._lock:
            try:
                worker = self._ensure_worker_locked()
            except (PublisherClosed, PublisherCrashed) as exc:
                crash, leftovers = (exc if isinstance(exc, PublisherCrashed) else None), self._queue.take_all()
            else:
                worker.wake()
                return
        self._fail(leftovers, crash)  # not under the lock: done-callbacks may call publish()

    # ------------------------------------------- the worker's reports (its WorkerOwner protocol)
    def _on_resolved(self, acked: int, failed: int, spooled: int = 0) -> None:
        """Called by the publisher thread: events resolved (for flush() and stats())."""
        with self._progress:
            self._acked += acked
            self._failed += failed
            self._resolved += acked + failed + spooled
            self._progress.notify_all()

    def _on_crash(self, worker: Worker, error: PublisherCrashed) -> None:
        """Called by a crashing publisher thread once it failed what it held: fail what is
        queued and let the next publish() start a new thread (at once, or after a backoff
        when threads keep crashing soon after their start)."""
        with self._lock:
            if worker is self._last_worker:
                self._tally.absorb(worker)
                self._last_worker = None
            if self._worker is not worker:
                return
            self._worker = None
            self._restarts.crashed(error, worker.started_at)
            self._state = PublisherState.CRASHED
            leftovers = self._queue.take_all()
        self._fail(leftovers, error)  # not under the lock: done-callbacks may call publish()

    # ----------------------------------------------------------------- waiting and closing
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event accepted so far has resolved; False if ``timeout`` ran out first."""
        if in_worker_thread():
            raise DeadlockError("flush() called from a publisher's own thread would wait forever")
        self._own_process()
        with self._progress:
            target = self._queue.accepted
            return self._progress.wait_for(lambda: self._resolved >= target, timeout)

    def drain_spool(self, timeout: float | None = None) -> bool:
        """With a spool: wait until it holds no event (this process's, and those adopted from
        processes that died, all delivered); False if ``timeout`` ran out. True without a spool."""
        if in_worker_thread():
            raise DeadlockError("drain_spool() called from a publisher's own thread would wait forever")
        self._ensure_worker()  # a publisher that never published opens the spool and adopts now
        return True if self._spooling is None else self._spooling.wait_empty(timeout)

    def stats(self) -> PublisherStats:
        """A snapshot of this publisher's counters."""
        self._own_process()
        with self._progress:
            worker, spooling = self._last_worker, self._spooling
            tally = self._tally.with_thread(worker)
            add(tally.failures, self._leftover_failures)
            return PublisherStats(
                accepted=self._queue.accepted,
                acknowledged=self._acked,
                failed=self._failed,
                queued=len(self._queue),
                blocked_publishes=self._queue.blocked_puts,
                peak_in_flight=tally.peak,
                batches=tally.batches,
                crashes=self._restarts.crashes,
                restarts=self._restarts.restarts,
                nats_path=worker.transport.path if worker is not None else None,
                state=self._state,
                in_flight=worker.outstanding.count if worker is not None else 0,
                retried=tally.retried,
                duplicates=tally.duplicates,
                acknowledged_atomic=tally.atomic,
                acknowledged_fast=tally.fast,
                failures=tally.failures,
                spooled=spooling.kept if spooling is not None else 0,
                replayed=spooling.replayed if spooling is not None else 0,
                spool_events=spooling.pending if spooling is not None else 0,
                replayed_late=spooling.late if spooling is not None else 0,
            )

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting, deliver what is queued within ``timeout`` (default: the delivery
        deadline), fail the rest with `PublisherClosed`, stop the thread. Idempotent."""
        if in_worker_thread():
            raise DeadlockError("close() called from a publisher's own thread would wait forever")
        self._own_process()
        with self._lock:
            if self._state is PublisherState.CLOSED:
                return
            self._state = PublisherState.CLOSED
            worker, self._worker = self._worker, None
            ever_used = self._queue.accepted > 0 or worker is not None
        timeout = self._config.delivery_timeout if timeout is None else max(0.0, timeout)
        abandoned: list[str] = []
        if worker is not None:
            if not worker.stop(timeout):
                log.error("publisher thread %s did not stop within %.1f s", self._name, timeout)
            abandoned += worker.abandoned
        abandoned += self._fail(self._queue.take_all(), None)
        untrack(self)
        if self._spooling is not None:
            self._spooling.close()  # its file stays if it holds events: the next publisher there adopts it
        if ever_used:
            failed_before = self._tally.failed_before(self._failed_ids, self._last_worker)
            log_closed(self.stats(), abandoned, failed_before, self._spooling)

    def _fail(self, items: list[Item], crash: PublisherCrashed | None) -> list[str]:
        """Fail events taken from the queue: with the crash's error, or `PublisherClosed` (a spool
        keeps them instead); returns the ids of those failed."""
        ids, error_name, kept = fail_taken(items, crash, self._spooling)
        if kept:
            self._on_resolved(0, 0, kept)
        if ids:
            with self._progress:
                add(self._leftover_failures, {error_name: len(ids)})
                self._failed_ids.extend(ids)
            self._on_resolved(0, len(ids))
        return ids

    @property
    def _exit_timeout(self) -> float:
        """How long the interpreter-exit hook (`_processes`) waits for this publisher to close."""
        return self._config.exit_timeout

    def _on_fork(self) -> None:
        """In a forked child (`_processes`): start afresh, as a new publisher that keeps its config."""
        if self._worker is not None:
            keep_orphan(self._worker)
        if self._spooling is not None:
            self._spooling.store.forget()  # the parent's file: this process opens its own
        closed = self._state is PublisherState.CLOSED
        self._reset()  # new queue, locks and counters; the parent's queued events stay the parent's
        if closed:
            self._state = PublisherState.CLOSED

    def __enter__(self) -> NatsPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "jetstream" if self._config.jetstream else "core"
        worker = self._last_worker
        path = worker.transport.path if worker is not None else None
        return (
            f"<NatsPublisher {self._state.value} {mode} path={path} servers={self._config.redacted_servers!r} "
            f"subject={self._config.subject!r} queued={len(self._queue)}>"
        )
