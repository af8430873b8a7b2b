"""The publisher thread: its own asyncio loop, its connection, its drain loop and its supervision.

One daemon thread per publisher runs one event loop. Caller threads only touch the
`BatchQueue` and, when the loop is idle, wake it once (`Worker.wake`): the drain loop then
takes whole batches (within the window: ``window`` events and ``window_bytes`` bytes
outstanding) and hands them to a sender (`_sending`); outcomes are kept by `Outstanding`.
A sweep runs every few tens of milliseconds while anything is queued or outstanding — and
never while idle — to resend attempts that got no answer and fail events past their deadline.

Supervision: every piece of work the loop runs enters through the `Supervisor`'s doors
(tasks, timers, callbacks from nats-py and futures), and whatever escapes comes to `_crash`,
once; the drain loop and the connection are watched by the main task itself. A crash
fails everything outstanding with `PublisherCrashed` (saying why), tells the publisher (which
fails what is queued and starts a new thread on the next ``publish()``), closes the
connection and ends the thread. Stopping delivers what it can before ``close()``'s deadline,
then fails the rest with `PublisherClosed`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from .._nats import NatsTransport, cancel_and_wait
from .._nats._acks import Ack
from .._nats._batches import FastReply
from .._pipeline._queue import BatchQueue
from .._pipeline._routing import Item
from .._spool._spooling import Spooling
from ..config import PublisherConfig
from ..errors import BrokerError, BrokerUnavailable, ConfigError, PublisherCrashed
from ..futures import mark_worker_thread
from ._attempts import Attempts
from ._otel import Telemetry
from ._outstanding import Outstanding, undelivered
from ._sending import CoreSender, JetStreamSender
from ._supervisor import Supervisor

__all__ = ["Worker", "WorkerOwner", "refuse_threadless_uwsgi"]

log = logging.getLogger("edupulse_events")
_sleep = time.sleep


def refuse_threadless_uwsgi() -> None:
    """Under a uWSGI that runs no Python threads the publisher thread would only run during
    requests, so fire-and-forget events would time out: `ConfigError` saying which flag fixes it."""
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is not None and not getattr(uwsgi, "has_threads", True):
        raise ConfigError(
            "uWSGI runs without Python threads, so the publisher thread would only run during requests "
            "and fire-and-forget events would time out: start uWSGI with --enable-threads (or --threads N; "
            "uWSGI 2.0.27 and later always enables them)"
        )


class WorkerOwner(Protocol):
    """What a worker tells its publisher."""

    def _on_resolved(self, acked: int, failed: int, spooled: int = 0) -> None: ...

    def _on_crash(self, worker: Worker, error: PublisherCrashed) -> None: ...


class Worker:
    """The background thread, its loop and connection, the drain loop, the sweep, retries."""

    def __init__(
        self,
        config: PublisherConfig,
        queue: BatchQueue[Item],
        owner: WorkerOwner,
        name: str,
        telemetry: Telemetry | None = None,
        spooling: Spooling | None = None,
    ) -> None:
        self.config = config
        self.queue = queue
        self.name = name
        #: True while the drain loop sleeps for lack of work (a caller's put must wake it).
        self.idle = False
        self.max_payload: int | None = None
        #: The error that crashed the thread (None unless it crashed).
        self.crash: PublisherCrashed | None = None
        self.started_at = time.monotonic()
        #: How many batches the loop has written (one wake-up each, at most).
        self.batches = 0
        #: Event ids failed by a stop that ran out of time (close() logs them).
        self.abandoned: list[str] = []
        self._owner = owner
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.supervisor = Supervisor(self._loop, self._crash)
        self._main_task: asyncio.Task[None] | None = None
        self.outstanding = Outstanding(self._loop, self.supervisor, owner._on_resolved)  # noqa: SLF001 - the WorkerOwner protocol
        self.outstanding.telemetry = telemetry
        self.outstanding.spooling = self.spooling = spooling
        #: Write-ahead spooling: callers release the GIL on every commit, so a woken loop would take
        #: events one or two at a time (a wake-up, a write and an ack run each); it waits this long
        #: for a batch instead (those events are on disk already, their acks come one gathering delay later).
        self._gather = 0.001 if spooling is not None and spooling.write_ahead else 0.0
        self.transport = self._new_transport()
        # the collaborators see this worker only as a `DrainLoop` (see `_attempts`)
        self.attempts = Attempts(config, self, self.outstanding, self.supervisor, queue)
        sender = JetStreamSender if config.jetstream else CoreSender
        self._sender = sender(config, self, self.outstanding, self.supervisor, self.attempts)
        self._wake = asyncio.Event()
        self._in_hand: Sequence[Item] = ()
        self._connected = False
        self._stopping = False
        self._stop_deadline: float | None = None
        self.aborted = False
        #: Set by the publisher before it first queues an atomic batch (`publish_many(atomic=True)`).
        self.atomic = False
        self._shutting_down = False
        self._owner_told = False
        self._waiting_room = False
        self._half_window = config.window // 2
        self._half_window_bytes = config.window_bytes // 2

    # ----------------------------------------------------------------- caller side
    def start(self, block: bool, timeout: float) -> None:
        """Start the thread; with ``block``, wait until connected or raise `BrokerError`."""
        if not block:
            self._ready.set_result(None)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if block:
            try:
                self._ready.result(timeout + 1.0)
            except concurrent.futures.TimeoutError:
                raise BrokerUnavailable(
                    f"could not connect to {self.config.redacted_servers} within {timeout} s"
                ) from None

    def hand_over(self) -> None:
        """Called by a caller thread in the middle of long CPU-bound work (`publish_many`'s
        encoding): while events are in flight, give up the GIL for a moment. This thread releases
        the GIL at every poll of its sockets and, while a caller keeps it busy, gets it back only
        at Python's switch interval (5 ms): acks wait and the broker runs dry. Measured, JetStream
        ``publish_many`` gains events/s from it (docs/performance.md; every 256 envelopes: more
        often, or sleeping longer, measured no better; ``publish()``'s own loop gained nothing)."""
        if self.outstanding.count:
            _sleep(0)

    def wake(self) -> None:
        """Called by a caller thread after a put: wake the loop if it sleeps for lack of work."""
        if self.idle:
            self.idle = False
            with contextlib.suppress(RuntimeError):  # loop closed: close() or the crash handler fails the rest
                self._loop.call_soon_threadsafe(self._wake.set)

    def stop(self, timeout: float) -> bool:
        """Deliver what is queued for up to ``timeout`` s, fail the rest, end the thread."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return True
        deadline = time.monotonic() + timeout
        with contextlib.suppress(RuntimeError):  # the loop already ended
            self._loop.call_soon_threadsafe(self._begin_stop, deadline)
        thread.join(max(0.0, deadline - time.monotonic()) + 2.0)
        return not thread.is_alive()

    @property
    def connected(self) -> bool:
        """Whether the connection is up (read by publish() in overflow mode)."""
        return self._connected

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    # ----------------------------------------------------------------- supervision
    def _on_acks(self, acks: list[Ack]) -> None:
        try:
            self._sender.on_acks(acks)  # type: ignore[union-attr]  # only JetStream asks for acks
        except BaseException as exc:  # noqa: BLE001 - supervision (called from nats-py's read loop)
            self.supervisor.crash(exc)

    def _on_part(self, seq: int, error: dict[str, Any] | None) -> None:
        self.supervisor.guard(self._sender.on_part, seq, error)  # type: ignore[union-attr]  # JetStream only

    def _on_fast(self, batch_id: bytes, reply: FastReply) -> None:
        self.supervisor.guard(self._sender.on_fast, batch_id, reply)  # type: ignore[union-attr]  # JetStream only

    def _on_state(self, connected: bool) -> None:
        self.supervisor.guard(self._state_changed, connected)

    def _on_closed(self) -> None:
        self.supervisor.guard(self._rebuild)

    def _crash(self, exc: BaseException) -> None:
        """Something escaped (the supervisor calls this once): fail everything with
        `PublisherCrashed` and end the thread."""
        log.error("publisher thread %s crashed", self.name, exc_info=(type(exc), exc, exc.__traceback__))
        error = PublisherCrashed(f"the publisher thread {self.name} crashed ({type(exc).__name__}: {exc})")
        error.__cause__ = exc
        self.crash = error
        if not self._ready.done():
            self._ready.set_exception(error)
        if self._main_task is not None and not self._shutting_down:
            self._main_task.cancel()

    # ----------------------------------------------------------------- life of the thread
    def _run(self) -> None:
        mark_worker_thread()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - the last line of supervision
            self.supervisor.crash(exc)
        finally:
            try:
                self._cancel_leftovers()
            finally:
                self._loop.close()
                self._ended()

    async def _main(self) -> None:
        self._main_task = asyncio.current_task()
        try:
            await self._connect_first()
            await self._drain()
        except asyncio.CancelledError:
            if not (self.aborted or self.crash is not None):
                raise
        except BaseException as exc:  # noqa: BLE001 - supervision
            self.supervisor.crash(exc)
        finally:
            self._shutting_down = True
            await self._shutdown()

    async def _connect_first(self) -> None:
        if self._ready.done():  # lazy start: connect (and retry) in the background
            self.supervisor.spawn(self._connect_forever())
            return
        try:
            await self.transport.connect(self.config.connect_timeout)
        except BrokerError as exc:
            self._ready.set_exception(exc)
            self.aborted = True
            return
        self._ready.set_result(None)

    async def _shutdown(self) -> None:
        """Cancel every task, settle everything outstanding, tell the publisher, close the connection."""
        await self.supervisor.cancel_all(1.0)
        self._settle_everything()
        # past close()'s deadline the connection gets a moment: a hung broker would block nats-py's close()
        end = self._stop_deadline
        limit = 1.0 if end is None else max(0.1, min(1.0, end - time.monotonic()))
        await self.transport.close(limit)

    def _settle_everything(self) -> None:
        """Fail whatever is unresolved: with the crash error, or `PublisherClosed` at a stop."""
        crash = self.crash
        if crash is not None:  # first: what done-callbacks publish from here on goes to a new thread
            self._tell_owner(crash)
        items = [*self.outstanding.abandon_all(), *self._in_hand]
        self._in_hand = ()
        if crash is None:
            from_queue = self.queue.take_all()  # close() ran out of time
            self.outstanding.take(from_queue)
            items += from_queue
        for item in items:
            error = undelivered(item, crash, "acknowledged")
            try:
                if self.outstanding.fail(item, error) and crash is None:  # (a batch: every event of it)
                    self.abandoned += [m.event_id for m in item.group.items] if item.group else [item.event_id]
            except BaseException:  # noqa: BLE001 - the books are broken: fail the future directly
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    item.future.set_exception(error)
        self.outstanding.report()

    def _tell_owner(self, crash: PublisherCrashed) -> None:
        """Once: the publisher fails what is queued (under its lock) and restarts on the next publish()."""
        if not self._owner_told:
            self._owner_told = True
            self._owner._on_crash(self, crash)  # noqa: SLF001 - the WorkerOwner protocol

    def _ended(self) -> None:
        """The thread's last act: a thread that ends without being asked to is a crash too."""
        if self.crash is None and not self._stopping and not self._ready_failed():
            self.supervisor.crash(RuntimeError("the publisher thread ended without being stopped"))
            self._settle_everything()
        elif self.crash is not None:
            self._settle_everything()

    def _ready_failed(self) -> bool:
        return self._ready.done() and self._ready.exception() is not None

    def _cancel_leftovers(self) -> None:
        """Cancel the client's tasks a timed-out close left behind, and let them finish, so that
        closing the loop destroys no pending task."""
        loop = self._loop
        tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
        try:
            if tasks:
                waits = [loop.create_task(cancel_and_wait(task, 1.0)) for task in tasks]
                loop.run_until_complete(asyncio.wait(waits))
            loop.run_until_complete(loop.shutdown_asyncgens())
        except Exception:
            log.debug("publisher thread %s: cleanup after close failed", self.name, exc_info=True)

    def _new_transport(self) -> NatsTransport:
        transport = NatsTransport(self.config, self._on_acks, self._on_state, self._on_closed)
        transport.on_fast(self._on_fast)
        transport.on_part(self._on_part)
        return transport

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

    def _rebuild(self) -> None:
        """nats-py closed the connection for good (e.g. after a server -ERR): build a new one."""
        if self._stopping:
            return
        verified = self.transport.stream_verified
        self.transport = self._new_transport()
        self.transport.stream_verified = verified
        self.supervisor.spawn(self._connect_forever())

    def _state_changed(self, connected: bool) -> None:
        self._connected = connected
        self.max_payload = self.transport.max_payload
        if connected and self.spooling is not None:
            self.spooling.adopt()  # a process that died meanwhile left events to deliver
        if connected:
            out = self.outstanding
            if out.inflight and self.transport.resend_on_reconnect:
                # Acks for attempts sent on the lost connection will not come: send them again now
                # rather than at attempt_timeout (same Nats-Msg-Id: stored once; late acks ignored).
                log.info("reconnected: resending %d events that were awaiting an ack", out.resend_inflight())
            if isinstance(self._sender, CoreSender):
                self._sender.abandon_pongs()
            else:
                self._sender.connection_replaced()
        self._wake.set()

    def _begin_stop(self, deadline: float) -> None:
        self._stopping = True
        self._stop_deadline = deadline
        self.supervisor.call_at(deadline, self._abort)
        self._wake.set()

    def _abort(self) -> None:
        """close()'s deadline: stop sending, even if the drain waits on a stalled connection."""
        self.aborted = True
        if self._main_task is not None and not self._shutting_down:
            self._main_task.cancel()

    # ----------------------------------------------------------------- the drain loop
    async def _drain(self) -> None:
        queue, wake, out = self.queue, self._wake, self.outstanding
        window, window_bytes = self.config.window, self.config.window_bytes
        while True:
            wake.clear()
            if self.aborted or (self._stopping and not len(queue) and not out.count and not self._replaying()):
                return
            if len(queue) or out.count:
                self.attempts.schedule_sweep()
            if not self._connected:  # callers still wake it: queued events have deadlines to keep
                self.idle = True
                await wake.wait()
                self.idle = False
                continue
            # Retries go first and already hold their slots: an attempt that got no ack keeps
            # its slot until the event resolves, so a hung or slow broker gets no more than the
            # window, and callers feel back-pressure instead of a retry storm.
            retries = out.retries
            room = window - out.count
            fresh = queue.take(room, window_bytes - out.nbytes, not out.count) if room > 0 else []
            if fresh and fresh[-1].group is not None and fresh[-1] is not fresh[-1].group.last:
                fresh += self._rest_of_group(fresh[-1])  # an atomic batch goes whole, window or not
            spooling = self.spooling
            if spooling is not None and spooling.replay_pending and not retries:
                spare = min(room - len(fresh), self._half_window or 1)  # new events first: never starved
                if spare > 0:
                    replays = spooling.claim(spare)
                    if replays and not self.atomic and any(item.group is not None for item in replays):
                        self.atomic = True  # spooled atomic batches go as such again
                    fresh = [*fresh, *replays]
            batch = retries + fresh if retries and fresh else retries or fresh
            if not batch:
                if out.count and (len(queue) or (spooling is not None and spooling.replay_pending)):
                    self._waiting_room = True
                    await wake.wait()
                    continue
                self.idle = True
                if not len(queue):
                    await wake.wait()
                    if self._gather:  # let a batch gather (see __init__)
                        await asyncio.sleep(self._gather)
                self.idle = False
                continue
            self._in_hand = batch  # held by the loop from here to the sender: a crash fails them too
            out.take_retries()
            out.take(fresh)
            self.batches += 1
            await self._sender.send(batch)
            self._in_hand = ()

    def _rest_of_group(self, taken: Item) -> list[Item]:
        """The events of ``taken``'s atomic batch queued behind it (the queue holds a batch
        contiguously: `BatchQueue.put_whole`)."""
        items = taken.group.items  # type: ignore[union-attr]  # the caller checked
        rest = len(items) - items.index(taken) - 1
        return self.queue.take(rest, 1 << 62, True)

    def _replaying(self) -> bool:
        """Spooled events (own or adopted) wait to be sent and the broker is up: a stop delivers
        them too, within close()'s deadline (with the broker away they are safe where they are)."""
        spooling = self.spooling
        return spooling is not None and spooling.replay_pending and self._connected

    def wake_loop(self) -> None:
        """On the loop: let the drain loop look again (retries ready, room, a state change)."""
        self._wake.set()

    def room_opened(self) -> None:
        """Wake the drain loop when it waits for window room (half free) or for the last event at close."""
        out = self.outstanding
        if self._waiting_room and out.count <= self._half_window and out.nbytes <= self._half_window_bytes:
            self._waiting_room = False
            self._wake.set()
        elif self._stopping and not out.count:
            self._wake.set()
