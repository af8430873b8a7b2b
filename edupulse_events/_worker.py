"""The publisher thread: its own asyncio loop drains the queue to NATS and resolves futures.

One daemon thread per publisher runs one event loop. Caller threads only touch the
`BatchQueue` and, when the loop is idle, wake it once (`Worker.wake`): the loop then takes
whole batches, writes them pipelined (up to ``window`` JetStream publishes awaiting acks),
and resolves each future with a `PublishAck` or an error. Transient failures are retried
with tenacity's exponential-jitter backoff, reusing the same ``Nats-Msg-Id``; every event
carries a delivery deadline after which its future fails with `PublishTimeout`. A periodic
reaper enforces attempt timeouts and deadlines, so nothing waits forever, even with a
silent broker. Stopping delivers what it can before a deadline, then fails the rest with
`PublisherClosed`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Set

import tenacity

from ._nats import NatsTransport, broker_error
from ._queue import BatchQueue
from .config import PublisherConfig, RetryPolicy
from .errors import BrokerError, InvalidEvent, PublisherClosed, PublishTimeout
from .publisher import Item, PublishAck, mark_worker_thread

__all__ = ["Worker", "backoff"]

log = logging.getLogger("edupulse_events")
_CORE_ACK = PublishAck(None, None, False)


def _retrying(policy: RetryPolicy) -> tenacity.Retrying:
    return tenacity.Retrying(
        wait=tenacity.wait_exponential(multiplier=policy.initial, max=policy.maximum, exp_base=policy.multiplier)
        + tenacity.wait_random(0, policy.jitter),
        retry=tenacity.retry_if_exception(lambda exc: bool(getattr(exc, "transient", False))),
        stop=tenacity.stop_never,  # the delivery deadline stops retries (checked by the worker)
    )


def _decide(retrying: tenacity.Retrying, attempt: int, exc: BaseException) -> Optional[float]:
    """tenacity's verdict for a failed attempt: seconds to wait before the next, or None."""
    state = tenacity.RetryCallState(retrying, None, (), {})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, exc.__traceback__))  # type: ignore[arg-type]
    if not retrying.retry(state):
        return None
    return float(retrying.wait(state))


def backoff(policy: RetryPolicy, attempt: int) -> float:
    """The wait before retry number ``attempt`` (1-based) after a transient failure."""
    delay = _decide(_retrying(policy), attempt, broker_error("probe", transient=True))
    assert delay is not None
    return delay


class Worker:
    """The background thread, its loop, and everything in flight."""

    def __init__(self, config: PublisherConfig, queue: BatchQueue, on_resolved: Callable[[int, int], None], name: str) -> None:
        self.config = config
        self.queue = queue
        self.idle = False
        self.max_payload: Optional[int] = None
        self._on_resolved = on_resolved
        self._name = name
        self._loop = asyncio.new_event_loop()
        self._thread: Optional[threading.Thread] = None
        self._ready: concurrent.futures.Future = concurrent.futures.Future()
        self._retrying = _retrying(config.retry)
        self._inflight: Dict[int, Item] = {}
        self._retries: List[Item] = []
        self._delayed: Dict[Item, asyncio.TimerHandle] = {}
        self._checking: Set[Item] = set()
        self._seq = 0
        self._connected = False
        self._stopping = False
        self._aborted = False
        self._waiting_room = False
        self._acked = 0
        self._failed = 0
        self._progress_scheduled = False
        self._stream_seen: Set[bytes] = set()
        self.abandoned: List[str] = []
        #: The most JetStream publishes that were awaiting their ack at once.
        self.peak_in_flight = 0

    # ----------------------------------------------------------------- caller side
    def start(self, block: bool, timeout: float) -> None:
        """Start the thread; with ``block``, wait until connected or raise `BrokerError`."""
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        if block:
            try:
                self._ready.result(timeout + 1.0)
            except concurrent.futures.TimeoutError:
                raise broker_error(f"could not connect to {self.config.redacted_servers} within {timeout} s", transient=True) from None

    def wake(self) -> None:
        """Called by a caller thread after a put: wake the loop if it sleeps for lack of work."""
        if self.idle:
            self.idle = False
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # loop already closed: close() fails what is left
                pass

    def stop(self, timeout: float) -> bool:
        """Deliver what is queued for up to ``timeout`` s, fail the rest, end the thread."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return True
        deadline = time.monotonic() + timeout
        try:
            self._loop.call_soon_threadsafe(self._begin_stop, deadline)
        except RuntimeError:
            pass
        thread.join(max(0.0, deadline - time.monotonic()) + 2.0)
        return not thread.is_alive()

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def thread(self) -> Optional[threading.Thread]:
        return self._thread

    # ----------------------------------------------------------------- loop side
    def _run(self) -> None:
        mark_worker_thread()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - never die silently
            log.exception("publisher thread %s crashed", self._name)
            if not self._ready.done():
                self._ready.set_exception(broker_error(f"publisher thread crashed: {exc!r}", transient=False))
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        self.transport = NatsTransport(self.config, self._on_ack, self._on_state)
        reaper = asyncio.ensure_future(self._reap())
        connector: Optional[asyncio.Future] = None
        try:
            if self.config.start_without_broker or self._ready.done():
                if not self._ready.done():
                    self._ready.set_result(None)
                connector = asyncio.ensure_future(self._connect_forever())
            else:
                try:
                    await self.transport.connect(self.config.connect_timeout)
                except BrokerError as exc:
                    self._ready.set_exception(exc)
                    return
                self._ready.set_result(None)
            await self._drain()
        finally:
            for task in (reaper, connector):
                if task is not None:
                    task.cancel()
            self._abandon_all()
            await self.transport.close(1.0)

    def start_lazily(self) -> None:
        """Start without waiting; the connection is made (and retried) in the background."""
        self._ready.set_result(None)
        self.start(block=False, timeout=0.0)

    async def _connect_forever(self) -> None:
        delay = self.config.reconnect_wait
        while not self._connected and not self._stopping:
            try:
                await self.transport.connect(None)
                return
            except BrokerError as exc:
                log.error("%s; retrying in %.2f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _on_state(self, connected: bool) -> None:
        self._connected = connected
        self.max_payload = self.transport.max_payload
        self._wake.set()

    def _begin_stop(self, deadline: float) -> None:
        self._stopping = True
        self._loop.call_at(deadline, self._abort)
        self._wake.set()

    def _abort(self) -> None:
        self._aborted = True
        self._wake.set()

    def _nothing_left(self) -> bool:
        return not (self.queue.queue or self._inflight or self._retries or self._delayed or self._checking)

    async def _drain(self) -> None:
        queue, wake, window = self.queue, self._wake, self.config.window
        jetstream = self.config.jetstream
        while True:
            wake.clear()
            if self._aborted or (self._stopping and self._nothing_left()):
                return
            room = window - len(self._inflight)
            if not self._connected or room <= 0:
                self._waiting_room = room <= 0
                await wake.wait()
                continue
            batch = self._retries[:room]
            del self._retries[: len(batch)]
            if len(batch) < room:
                batch += queue.get_batch(room - len(batch))
            if not batch:
                self.idle = True
                if not queue.queue:
                    await wake.wait()
                self.idle = False
                continue
            if jetstream:
                self._send_jetstream(batch)
                await self.transport.kick()
            else:
                await self._send_core(batch)

    def _too_big(self, item: Item) -> bool:
        limit = self.max_payload
        if limit is not None and item.size > limit:
            self._fail(item, InvalidEvent(f"event {item.event_id} is {item.size} bytes with headers, more than the server's max_payload of {limit} bytes"))
            return True
        return False

    def _send_jetstream(self, batch: List[Item]) -> None:
        now = time.monotonic()
        prefix = self.transport.reply_prefix
        inflight = self._inflight
        commands = []
        seq = self._seq
        for item in batch:
            if self._too_big(item):
                continue
            seq += 1
            item.attempts += 1
            item.sent_at = now
            inflight[seq] = item
            commands.append(
                b"HPUB %s %s%d %d %d\r\n%s%s\r\n" % (item.subject, prefix, seq, len(item.headers), item.size, item.headers, item.payload)
            )
        self._seq = seq
        if len(inflight) > self.peak_in_flight:
            self.peak_in_flight = len(inflight)
        self.transport.write(commands)

    async def _send_core(self, batch: List[Item]) -> None:
        batch = [item for item in batch if not self._too_big(item)]
        self.transport.write(
            [b"HPUB %s %d %d\r\n%s%s\r\n" % (i.subject, len(i.headers), i.size, i.headers, i.payload) for i in batch]
        )
        await self.transport.kick()
        try:
            await self.transport.ping(self.config.retry.attempt_timeout)
        except BrokerError as exc:
            for item in batch:
                item.attempts += 1
                self._failed_attempt(item, exc)
            return
        for item in batch:
            self._resolve(item, _CORE_ACK)

    def _on_ack(self, seq: int, ack: Optional[dict], status: Optional[str]) -> None:
        item = self._inflight.pop(seq, None)
        if item is None:  # a late ack for an attempt already retried: the retry gets its own
            return
        try:
            if status is not None:
                self._no_responders(item, status)
            elif "error" in ack:  # type: ignore[operator]
                err = ack["error"] or {}  # type: ignore[index]
                code, text = err.get("code"), err.get("description", "unknown error")
                self._failed_attempt(
                    item,
                    broker_error(f"JetStream rejected event {item.event_id}: {text} (code {code}, err_code {err.get('err_code')})", transient=code == 503),
                )
            else:
                self._resolve(item, PublishAck(ack.get("seq"), ack.get("stream"), bool(ack.get("duplicate", False))))  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - one bad ack never stops the thread
            self._fail(item, broker_error(f"unreadable ack for event {item.event_id}: {exc!r}", transient=False))
        if self._waiting_room and len(self._inflight) <= self.config.window // 2:
            self._waiting_room = False
            self._wake.set()
        elif self._stopping and not self._inflight:
            self._wake.set()

    def _no_responders(self, item: Item, status: str) -> None:
        if status != "503" or item.subject in self._stream_seen:
            self._failed_attempt(item, broker_error(f"no JetStream responder for {item.subject.decode()} (status {status})", transient=True))
            return
        self._checking.add(item)
        asyncio.ensure_future(self._check_stream(item))

    async def _check_stream(self, item: Item) -> None:
        subject = item.subject.decode()
        captured = await self.transport.stream_captures(subject, min(self.config.retry.attempt_timeout, 2.0))
        self._checking.discard(item)
        if item.future.done():
            return
        if captured is False:
            self._fail(item, broker_error(f"no JetStream stream captures subject {subject!r}: create one, or pass create_stream=True with stream=<name>", transient=False))
        else:
            if captured:
                self._stream_seen.add(item.subject)
            self._failed_attempt(item, broker_error(f"no JetStream responder for {subject} (stream leader election?)", transient=True))

    def _failed_attempt(self, item: Item, exc: BaseException) -> None:
        """Retry after tenacity's backoff if the failure is transient and the deadline allows."""
        delay = _decide(self._retrying, item.attempts, exc)
        if delay is None or self._aborted:
            self._fail(item, exc)
            return
        remaining = item.deadline - time.monotonic()
        if remaining <= 0:
            self._fail(item, self._timeout(item, exc))
            return
        log.debug("event %s: attempt %d failed (%s); retrying in %.3f s", item.event_id, item.attempts, exc, delay)
        self._delayed[item] = self._loop.call_later(min(delay, remaining), self._requeue, item, exc)

    def _requeue(self, item: Item, exc: BaseException) -> None:
        self._delayed.pop(item, None)
        if time.monotonic() >= item.deadline:
            self._fail(item, self._timeout(item, exc))
            return
        self._retries.append(item)
        self._wake.set()

    def _timeout(self, item: Item, last: Optional[BaseException]) -> PublishTimeout:
        why = f" (last error: {last})" if last is not None else ""
        err = PublishTimeout(f"event {item.event_id} was not acknowledged within its delivery deadline of {self.config.delivery_timeout} s after {item.attempts} attempt(s){why}")
        err.__cause__ = last
        return err

    async def _reap(self) -> None:
        """Every tick: fail or retry attempts without an answer; expire what is past its deadline."""
        policy = self.config.retry
        tick = min(0.05, policy.attempt_timeout / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            late = [seq for seq, item in self._inflight.items() if item.sent_at + policy.attempt_timeout <= now or item.deadline <= now]
            for seq in late:
                item = self._inflight.pop(seq)
                if item.deadline <= now:
                    self._fail(item, self._timeout(item, None))
                else:
                    self._failed_attempt(item, broker_error(f"no ack within {policy.attempt_timeout} s", transient=True))
            expired = [item for item in self._retries if item.deadline <= now]
            if expired:
                self._retries = [item for item in self._retries if item.deadline > now]
            expired += self.queue.take_expired(now)
            for item in expired:
                self._fail(item, self._timeout(item, None))
            if late or expired:
                self._wake.set()

    # ----------------------------------------------------------------- outcomes
    def _resolve(self, item: Item, ack: PublishAck) -> None:
        try:
            item.future.set_result(ack)
        except concurrent.futures.InvalidStateError:
            return
        self._acked += 1
        self._count()

    def _fail(self, item: Item, exc: BaseException) -> None:
        try:
            item.future.set_exception(exc)
        except concurrent.futures.InvalidStateError:
            return
        self._failed += 1
        self._count()

    def _count(self) -> None:
        if not self._progress_scheduled:
            self._progress_scheduled = True
            self._loop.call_soon(self._report)

    def _report(self) -> None:
        self._progress_scheduled = False
        acked, failed, self._acked, self._failed = self._acked, self._failed, 0, 0
        self._on_resolved(acked, failed)

    def _abandon_all(self) -> None:
        """Fail everything still unresolved with `PublisherClosed` (close() ran out of time)."""
        items = list(self._inflight.values()) + self._retries + list(self._delayed) + list(self._checking)
        for handle in self._delayed.values():
            handle.cancel()
        self._inflight.clear()
        self._retries = []
        self._delayed.clear()
        self._checking.clear()
        items += self.queue.get_batch(len(self.queue.queue) + 1)
        for item in items:
            if not item.future.done():
                self.abandoned.append(item.event_id)
            self._fail(item, PublisherClosed(f"publisher closed before event {item.event_id} was acknowledged"))
        self._report()
