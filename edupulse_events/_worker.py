"""The publisher thread: its own asyncio loop, its connection, and the sending side.

One daemon thread per publisher runs one event loop. Caller threads only touch the
`BatchQueue` and, when the loop is idle, wake it once (`Worker.wake`): the loop then takes
whole batches and writes them pipelined (up to ``window`` events outstanding). What happens
after an event is written — acks, tenacity retries with the same ``Nats-Msg-Id``, delivery
deadlines — is `Delivery`'s (``_delivery.py``). The connection is made (or retried in the
background), rebuilt if nats-py gives up on it, and on reconnect the events awaiting an ack
are resent at once. Stopping delivers what it can before close()'s deadline, then fails the
rest with `PublisherClosed`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable

from ._delivery import Delivery, _retrying
from ._futures import mark_worker_thread
from ._nats import NatsTransport, broker_error, cancel_and_wait
from ._queue import BatchQueue
from ._routing import Item
from .config import PublisherConfig
from .errors import BrokerError, InvalidEvent

__all__ = ["Worker"]

log = logging.getLogger("edupulse_events")


class Worker(Delivery):
    """The background thread, its loop, its connection, and the sending side."""

    def __init__(
        self, config: PublisherConfig, queue: BatchQueue, on_resolved: Callable[[int, int], None], name: str
    ) -> None:
        self.config = config
        self.queue = queue
        self.idle = False
        self.max_payload: int | None = None
        self._on_resolved = on_resolved
        self._name = name
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._ready: concurrent.futures.Future = concurrent.futures.Future()
        self._retrying = _retrying(config.retry)
        self._inflight: dict[int, Item] = {}
        self._retries: list[Item] = []
        self._delayed: dict[Item, asyncio.TimerHandle] = {}
        #: Events that got "no responders", by subject, waiting for the one stream check of that subject.
        self._checking: dict[bytes, list[Item]] = {}
        self._seq = 0
        self._connected = False
        self._stopping = False
        self._stop_deadline: float | None = None
        self._aborted = False
        self._drainer: asyncio.Future | None = None
        self._connector: asyncio.Future | None = None
        #: How many batches the loop has written (one wake-up each, at most).
        self.batches = 0
        #: Core batches written and awaiting their PONG: key -> (events, attempt timer).
        self._core_pending: dict[int, tuple[list[Item], asyncio.TimerHandle]] = {}
        self._core_key = 0
        self._core_count = 0
        self._waiting_room = False
        self._half_window = config.window // 2
        self._acked = 0
        self._failed = 0
        self._progress_scheduled = False
        self._stream_seen: set[bytes] = set()
        self.abandoned: list[str] = []
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
                raise broker_error(
                    f"could not connect to {self.config.redacted_servers} within {timeout} s", transient=True
                ) from None

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
    def thread(self) -> threading.Thread | None:
        return self._thread

    # ----------------------------------------------------------------- loop side
    def _run(self) -> None:
        mark_worker_thread()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:
            log.exception("publisher thread %s crashed", self._name)
            if not self._ready.done():
                self._ready.set_exception(broker_error(f"publisher thread crashed: {exc!r}", transient=False))
        finally:
            try:
                self._cancel_leftovers()
            finally:
                self._loop.close()

    def _cancel_leftovers(self) -> None:
        """Cancel the client's tasks a timed-out close left behind, and let them finish, so that
        closing the loop destroys no pending task (each would log an error and, when collected,
        raise "Event loop is closed" inside a coroutine)."""
        loop = self._loop
        tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
        try:
            if tasks:
                loop.run_until_complete(
                    asyncio.wait([asyncio.ensure_future(cancel_and_wait(task, 1.0), loop=loop) for task in tasks])
                )
            loop.run_until_complete(loop.shutdown_asyncgens())
        except Exception:
            log.debug("publisher thread %s: cleanup after close failed", self._name, exc_info=True)

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        self.transport = self._new_transport()
        reaper = asyncio.ensure_future(self._reap())
        try:
            if self.config.start_without_broker or self._ready.done():
                if not self._ready.done():
                    self._ready.set_result(None)
                self._connector = asyncio.ensure_future(self._connect_forever())
            else:
                try:
                    await self.transport.connect(self.config.connect_timeout)
                except BrokerError as exc:
                    self._ready.set_exception(exc)
                    return
                self._ready.set_result(None)
            self._drainer = asyncio.ensure_future(self._drain())
            try:
                await self._drainer
            except asyncio.CancelledError:
                if not self._aborted:  # cancelled from outside, not by _abort
                    raise
        finally:
            for task in (reaper, self._connector):
                if task is not None:
                    task.cancel()
            self._abandon_all()
            # Past close()'s deadline the connection gets only a moment to close: with a hung
            # broker nats-py's close() would wait on a full socket.
            limit = 1.0 if self._stop_deadline is None else max(0.1, min(1.0, self._stop_deadline - time.monotonic()))
            await self.transport.close(limit)

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

    def _new_transport(self) -> NatsTransport:
        return NatsTransport(self.config, self._on_acks, self._on_state, self._on_closed)

    def _on_closed(self) -> None:
        """nats-py closed the connection for good (e.g. after a server -ERR): build a new one."""
        if self._stopping:
            return
        self.transport = self._new_transport()
        self._connector = asyncio.ensure_future(self._connect_forever())

    def _on_state(self, connected: bool) -> None:
        self._connected = connected
        self.max_payload = self.transport.max_payload
        if connected and self._inflight:
            # Reconnected: acks for attempts sent on the lost connection will not come. Send
            # them again now rather than after attempt_timeout (the same Nats-Msg-Id, so the
            # stream stores each event once); late acks of the old attempts are ignored.
            log.info("reconnected: resending %d events that were awaiting an ack", len(self._inflight))
            self._retries.extend(self._inflight.values())
            self._inflight.clear()
        if connected:
            for key in list(self._core_pending):  # their PONGs were lost with the connection
                self._core_settled(key, False)
        self._wake.set()

    def _begin_stop(self, deadline: float) -> None:
        self._stopping = True
        self._stop_deadline = deadline
        self._loop.call_at(deadline, self._abort)
        self._wake.set()

    def _abort(self) -> None:
        """close()'s deadline: stop sending, even if the drain waits on a stalled connection."""
        self._aborted = True
        self._wake.set()
        if self._drainer is not None and not self._drainer.done():
            self._drainer.cancel()

    def _nothing_left(self) -> bool:
        return not (
            self.queue.queue or self._inflight or self._retries or self._delayed or self._checking or self._core_pending
        )

    async def _drain(self) -> None:
        queue, wake, window = self.queue, self._wake, self.config.window
        jetstream = self.config.jetstream
        while True:
            wake.clear()
            if self._aborted or (self._stopping and self._nothing_left()):
                return
            if not self._connected:
                await wake.wait()
                continue
            # Retries go first and already hold their slots: an attempt that got no ack keeps
            # its slot until the event resolves, so a hung or slow broker gets no more than
            # ``window`` events, and callers feel back-pressure instead of a retry storm.
            batch = self._retries
            if batch:
                self._retries = []
            room = window - self._outstanding() - len(batch)
            if room > 0:
                batch = batch + queue.get_batch(room) if batch else queue.get_batch(room)
            if not batch:
                if room <= 0:
                    self._waiting_room = True
                    await wake.wait()
                    continue
                self.idle = True
                if not queue.queue:
                    await wake.wait()
                self.idle = False
                continue
            self.batches += 1
            if jetstream:
                self._send_jetstream(batch)
                await self.transport.kick()
            else:
                await self._send_core(batch)

    def _too_big(self, item: Item) -> bool:
        limit = self.max_payload
        if limit is not None and item.size > limit:
            self._fail(
                item,
                InvalidEvent(
                    f"event {item.event_id} is {item.size} bytes with headers, more than the server's max_payload of {limit} bytes"
                ),
            )
            return True
        return False

    def _send_jetstream(self, batch: list[Item]) -> None:
        now = time.monotonic()
        prefix = self.transport.reply_prefix
        inflight = self._inflight
        commands = []
        seq = self._seq
        limit = self.max_payload if self.max_payload is not None else 1 << 62
        for item in batch:
            if item.size > limit and self._too_big(item):
                continue
            seq += 1
            item.attempts += 1
            item.sent_at = now
            inflight[seq] = item
            commands.append(
                b"HPUB %s %s%d %d %d\r\n%s%s\r\n"
                % (item.subject, prefix, seq, len(item.headers), item.size, item.headers, item.payload)
            )
        self._seq = seq
        if len(inflight) > self.peak_in_flight:
            self.peak_in_flight = len(inflight)
        self.transport.write(commands)

    async def _send_core(self, batch: list[Item]) -> None:
        """Write a core batch and a PING, without waiting: its PONG settles the batch
        (`_core_settled`), so several batches are in flight within the window."""
        batch = [item for item in batch if not self._too_big(item)]
        if not batch:
            return
        commands = [
            b"HPUB %s %d %d\r\n%s%s\r\n" % (i.subject, len(i.headers), i.size, i.headers, i.payload) for i in batch
        ]
        for item in batch:
            item.attempts += 1
        try:
            pong = await self.transport.write_then_ping(commands)
        except BrokerError as exc:
            for item in batch:
                self._failed_attempt(item, exc)
            return
        self._core_key += 1
        key = self._core_key
        timer = self._loop.call_later(self.config.retry.attempt_timeout, self._core_settled, key, False)
        self._core_pending[key] = (batch, timer)
        self._core_count += len(batch)
        pong.add_done_callback(lambda f, key=key: self._core_settled(key, not f.cancelled() and f.exception() is None))
