"""The consumer thread: its own asyncio loop, its connection, the pump, and the way back for acks.

One daemon thread per consumer runs one event loop holding a `PullConsumer`. Caller threads
reach it three ways:

- `ConsumerLoop.call` runs a coroutine there and waits for its result up to a timeout (a
  ``fetch()``); from the loop's own thread it is refused (`DeadlockError`) instead of waiting
  forever. Readiness (connected, the durable bound) is reported through a future, as anyio's
  ``start_blocking_portal`` does, so a failure to connect is raised in the caller's thread.
- `respond` queues an ack (or nak, term, progress) and wakes the loop once per batch of them
  (``call_soon_threadsafe`` only when no wake-up is pending), so the acks of a fetched batch
  cost one wake-up, not one each.
- `dead_letter` hands a message over to be stored under the dead-letter subject (retried with
  tenacity within half the ack wait) and terminated; if that fails it is nak'ed instead, never
  dropped.

The pump (`start_pump`, used by ``run()``) keeps at most ``max_buffered`` messages held by this
process (delivered and not yet settled), and with ``max_buffered_bytes`` at most that many bytes
of their bodies (each held message's size is kept by its reply subject until it is settled):
`PullConsumer.stream` keeps pull requests of up to ``batch`` outstanding while there is room and
hands each read's messages to the caller's queue.
`stop_pump` lets the outstanding requests end (their messages are handed over too, to be
nak'ed); `stop` waits for dead letters in flight, writes the queued acks, flushes them to the
server and closes the connection within its timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import tenacity

from .._nats._pull import PROGRESS, Delivery, PullConsumer, nak_payload, term_payload
from ..config import ConsumerConfig
from ..errors import BrokerError, BrokerUnavailable, ConsumerClosed, DeadlockError
from ._tally import Tally

__all__ = ["ConsumerLoop"]

log = logging.getLogger("edupulse_events")
T = TypeVar("T")
#: How long each of the pump's pull requests lasts: a stop ends within about it.
POLL = 1.0


class ConsumerLoop:
    """The background thread of one `NatsConsumer`: a loop, a connection, a pump."""

    def __init__(self, config: ConsumerConfig, name: str, tally: Tally) -> None:
        self.config = config
        self.name = name
        self.tally = tally
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.source = PullConsumer(config, self._closed_by_library)
        self._responses: list[tuple[str, bytes]] = []
        self._finals = 0
        self._lock = threading.Lock()
        self._wake_pending = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._done: asyncio.Future[float] | None = None
        self._room = asyncio.Event()
        #: Messages delivered to this process and not settled yet (changed on the loop only).
        self.held = 0
        #: With ``max_buffered_bytes`` only (nothing is counted otherwise): their bodies' bytes,
        #: each one's size by reply subject, and the replies of the outcomes queued since the last send.
        self.held_bytes = 0
        self._sizes: dict[str, int] | None = None if config.max_buffered_bytes is None else {}
        self._final_replies: list[str] = []
        #: Why the connection cannot be used any more (nats-py gave up on it), or None.
        self.broken: BrokerError | None = None

    # ----------------------------------------------------------------- caller side
    def start(self, timeout: float) -> None:
        """Start the thread and wait until connected and bound, or raise `BrokerError`."""
        self._thread = threading.Thread(target=self._run, args=(timeout,), name=self.name, daemon=True)
        self._thread.start()
        try:
            self._ready.result(timeout + 2.0)
        except concurrent.futures.TimeoutError:
            self.stop(1.0)
            raise BrokerUnavailable(f"could not connect to {self.config.redacted_servers} within {timeout} s") from None

    @property
    def alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive() and self._done is not None and not self._done.done()

    @property
    def max_deliver(self) -> int | None:
        """The durable's ``max_deliver`` as the server has it (None: unlimited)."""
        return getattr(self.source, "max_deliver", None)

    def call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float) -> T:
        """Run ``make()`` on the loop and wait up to ``timeout`` s for its result."""
        if threading.current_thread() is self._thread:
            raise DeadlockError("a blocking consumer call from the consumer's own thread would wait forever")
        if not self.alive:
            raise self.broken or ConsumerClosed("the consumer's thread is not running")
        future = asyncio.run_coroutine_threadsafe(make(), self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BrokerUnavailable(f"no answer from the consumer's thread within {timeout} s") from None

    def respond(self, reply: str, payload: bytes, final: bool = True) -> None:
        """Queue an ack (``final``: it settles the message) and wake the loop if no wake-up is pending."""
        with self._lock:
            self._responses.append((reply, payload))
            if final:
                self._finals += 1
                if self._sizes is not None:
                    self._final_replies.append(reply)
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._send)
        except RuntimeError:  # the loop is closed: the server delivers these messages again
            log.warning("consumer %s is closed: an ack was not sent (the message comes again)", self.name)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Store ``delivery`` as a dead letter with ``reason`` and terminate it (on the loop)."""
        try:
            self._loop.call_soon_threadsafe(self._spawn_dead_letter, delivery, reason)
        except RuntimeError:
            log.error(
                "consumer %s is closed: %s#%d was not dead-lettered (%s); it comes again",
                self.name,
                self.config.stream,
                delivery.stream_sequence,
                reason,
            )

    def start_pump(self, deliver: Callable[[list[Delivery]], None]) -> concurrent.futures.Future[None]:
        """Fetch while there is room and hand each fetched batch to ``deliver`` until `stop_pump`."""
        self.source.begin_stream()
        return asyncio.run_coroutine_threadsafe(self._pump(deliver), self._loop)

    def stop_pump(self) -> None:
        """The pump asks for no more (its requests under way end by their expiry, at most `POLL` s)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._end_pump)

    def stop(self, timeout: float) -> bool:
        """Send what is queued, wait for dead letters, flush and close within ``timeout`` s."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return True
        deadline = time.monotonic() + timeout
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._finish, deadline)
        thread.join(max(0.0, deadline - time.monotonic()) + 2.0)
        return not thread.is_alive()

    # ----------------------------------------------------------------- the loop's side
    def _run(self, timeout: float) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main(timeout))
        except BaseException as exc:
            log.error("consumer thread %s crashed", self.name, exc_info=(type(exc), exc, exc.__traceback__))
            if not self._ready.done():
                self._ready.set_exception(exc)
        finally:
            with contextlib.suppress(Exception):
                tasks = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
                for task in tasks:
                    task.cancel()
                if tasks:
                    self._loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
            self._loop.close()

    async def _main(self, timeout: float) -> None:
        self._done = asyncio.get_running_loop().create_future()
        try:
            await self.source.open(timeout)
            if self.config.dead_letter_subject is not None:
                await self.source.watch_max_deliveries(self._expired)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller waiting in start()
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        deadline = await self._done
        await self._shutdown(deadline)

    async def _shutdown(self, deadline: float) -> None:
        self._end_pump()
        loop = asyncio.get_running_loop()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(0.1, deadline - loop.time() - 0.5))
        self._send()
        await asyncio.sleep(0)  # the send task writes
        if not await self.source.flush(max(0.5, deadline - loop.time())):
            log.warning("consumer %s: the server did not confirm the last acks before close", self.name)
        await self.source.close(max(0.2, deadline - loop.time()))

    def _finish(self, deadline: float) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(deadline)

    def _closed_by_library(self) -> None:
        self.broken = BrokerUnavailable(f"nats-py closed the connection to {self.config.redacted_servers} for good")
        self._finish(time.monotonic() + 2.0)

    def _send(self) -> None:
        with self._lock:
            responses, self._responses = self._responses, []
            finals, self._finals = self._finals, 0
            replies, self._final_replies = self._final_replies, []
            self._wake_pending = False
        if replies and self._sizes is not None:
            pop = self._sizes.pop
            self.held_bytes -= sum(pop(reply, 0) for reply in replies)
        if finals:
            self._settled(finals)
        if responses:
            self._keep(self._loop.create_task(self.source.respond(responses)))

    def _settled(self, count: int) -> None:
        self.held -= count
        if self.held < self.config.max_buffered:
            self._room.set()

    def _keep(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn_dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._keep(self._loop.create_task(self._dead_letter(delivery, reason)))

    def _expired(self, delivery: Delivery) -> None:
        """The server gave up on a message after max_deliver deliveries (an advisory)."""
        self.tally.add(expired=1)
        self._spawn_dead_letter(delivery, f"max_deliver reached ({delivery.num_delivered} deliveries, none acked)")

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        cfg = self.config
        where = f"{cfg.stream}#{delivery.stream_sequence}"
        if cfg.dead_letter_subject is None:
            log.error("consumer %s: %s terminated (no dead_letter_subject): %s", self.name, where, reason)
            self.tally.add(terminated=1)
            self._respond_now(delivery, term_payload(reason))
            return
        limit = min(cfg.ack_wait / 2, 10.0)
        try:
            async for attempt in tenacity.AsyncRetrying(
                stop=tenacity.stop_after_delay(limit),
                wait=tenacity.wait_exponential(multiplier=0.1, max=1.0) + tenacity.wait_random(0, 0.1),
                retry=tenacity.retry_if_exception_type(BrokerUnavailable),
                reraise=True,
            ):
                with attempt:
                    if delivery.reply:
                        await self.source.respond([(delivery.reply, PROGRESS)])
                    await self.source.dead_letter(delivery, reason, timeout=min(2.0, limit))
        except BrokerError as exc:
            log.error("consumer %s: %s could not be dead-lettered (%s); nak'ed, it comes again", self.name, where, exc)
            self.tally.add(dead_letter_failures=1, nacked=1)
            self._respond_now(delivery, nak_payload(None))
            return
        log.warning("consumer %s: %s dead-lettered to %s: %s", self.name, where, cfg.dead_letter_subject, reason)
        self.tally.add(dead_lettered=1, terminated=1)
        self._respond_now(delivery, term_payload(reason))

    def _respond_now(self, delivery: Delivery, payload: bytes) -> None:
        if delivery.reply:  # one read back after an advisory has none: nothing to settle
            with self._lock:
                self._responses.append((delivery.reply, payload))
                self._finals += 1
                if self._sizes is not None:
                    self._final_replies.append(delivery.reply)
        self._send()

    def _end_pump(self) -> None:
        self.source.end_stream()
        self._room.set()

    async def _pump(self, deliver: Callable[[list[Delivery]], None]) -> None:
        cfg = self.config

        def room() -> int:
            if self.broken is not None:
                raise self.broken
            return cfg.max_buffered - self.held

        def took(got: list[Delivery]) -> None:
            self._took(got)
            deliver(got)

        limit = cfg.max_buffered_bytes
        byte_room = None if limit is None else lambda: limit - self.held_bytes
        await self.source.stream(room, took, self._room, POLL, byte_room, limit)
        if self.broken is not None:
            raise self.broken

    async def flush(self, timeout: float) -> bool:
        """On the loop: send the queued outcomes, wait for dead letters and writes in flight, and
        for the server to have read them all; False if that took longer than ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._send()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
            self._send()  # what the dead letters settled
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - loop.time()))
        return await self.source.flush(max(0.1, deadline - loop.time())) and not self._tasks

    async def fetch(self, batch: int, wait: float) -> list[Delivery]:
        """On the loop: a ``fetch()``'s messages (held from here until settled)."""
        if self.broken is not None:
            raise self.broken
        got = await self.source.fetch(batch, wait)
        self._took(got)
        return got

    def _took(self, got: list[Delivery]) -> None:
        if got:
            self.held += len(got)
            sizes = self._sizes
            if sizes is not None:
                for delivery in got:
                    sizes[delivery.reply] = size = len(delivery.data)
                    self.held_bytes += size
            self.tally.add(received=len(got), redelivered=sum(d.num_delivered > 1 for d in got))
