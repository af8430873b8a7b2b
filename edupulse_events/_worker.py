"""The publisher thread: its own asyncio loop, its connection, its drain loop and its supervision.

One daemon thread per publisher runs one event loop. Caller threads only touch the
`BatchQueue` and, when the loop is idle, wake it once (`Worker.wake`): the drain loop then
takes whole batches (within the window: ``window`` events and ``window_bytes`` bytes
outstanding) and hands them to a sender (`_sending`); outcomes are kept by `Outstanding`.
A sweep runs every few tens of milliseconds while anything is queued or outstanding — and
never while idle — to resend attempts that got no answer and fail events past their deadline.

Supervision: every piece of work the loop runs goes through one of three doors — `_spawn`
(tasks, all kept and cancelled or awaited at the end), `call_soon`/`call_at` (callbacks) and
the transport's callbacks — and each catches whatever escapes and calls `_crash`. A crash
fails everything outstanding with `PublisherCrashed` (saying why), tells the publisher (which
fails what is queued and starts a new thread on the next ``publish()``), closes the
connection and ends the thread. Stopping delivers what it can before ``close()``'s deadline,
then fails the rest with `PublisherClosed`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from ._acks import Ack
from ._nats import NatsTransport, cancel_and_wait
from ._outstanding import Outstanding
from ._queue import BatchQueue
from ._retry import Backoff
from ._routing import Item
from ._sending import CoreSender, JetStreamSender
from .config import PublisherConfig
from .errors import (
    BrokerError,
    BrokerUnavailable,
    EventRejected,
    InvalidEvent,
    PublisherClosed,
    PublisherCrashed,
    PublishTimeout,
)
from .futures import mark_worker_thread

__all__ = ["Worker", "WorkerOwner"]

log = logging.getLogger("edupulse_events")
_MAX_BACKLOG = 1 << 20  # bytes not yet on the socket above which the sweep resends nothing


class WorkerOwner(Protocol):
    """What a worker tells its publisher."""

    def on_resolved(self, acked: int, failed: int) -> None: ...

    def on_crash(self, worker: Worker, error: BrokerError) -> None: ...


class Worker:
    """The background thread, its loop and connection, the drain loop, the sweep, retries."""

    def __init__(self, config: PublisherConfig, queue: BatchQueue, owner: WorkerOwner, name: str) -> None:
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
        self._tasks: set[asyncio.Task[None]] = set()
        self._main_task: asyncio.Task[None] | None = None
        self.outstanding = Outstanding(self._loop, owner.on_resolved)
        self._backoff = Backoff(config.retry)
        self._sender = JetStreamSender(self) if config.jetstream else CoreSender(self)
        self.transport = self._new_transport()
        self._wake = asyncio.Event()
        self._in_hand: Sequence[Item] = ()
        self._connected = False
        self._stopping = False
        self._stop_deadline: float | None = None
        self._aborted = False
        self._shutting_down = False
        self._sweep_scheduled = False
        self._owner_told = False
        self._waiting_room = False
        self._stream_seen: set[bytes] = set()
        self._half_window = config.window // 2
        self._half_window_bytes = config.window_bytes // 2
        self._tick = min(0.05, config.retry.attempt_timeout / 4)

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

    def wake(self) -> None:
        """Called by a caller thread after a put: wake the loop if it sleeps for lack of work."""
        if self.idle:
            self.idle = False
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # loop already closed: close() or the crash handler fails what is left
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

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ----------------------------------------------------------------- the three doors
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task that is kept (cancelled at the end) and whose error crashes the thread."""
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._crash(task.exception())  # type: ignore[arg-type]  # checked just above

    def call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop soon; an exception crashes the thread."""
        self._loop.call_soon(self._guarded, fn, args)

    def call_at(self, when: float, fn: Callable[..., None], *args: Any) -> asyncio.TimerHandle:
        """Run ``fn(*args)`` at ``when`` (time.monotonic()); an exception crashes the thread."""
        return self._loop.call_at(when, self._guarded, fn, args)

    def run_guarded(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` now; an exception crashes the thread (for callbacks of others)."""
        self._guarded(fn, args)

    def _guarded(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - supervision: nothing may escape unnoticed
            self._crash(exc)

    def _on_acks(self, acks: list[Ack]) -> None:
        try:
            self._sender.on_acks(acks)  # type: ignore[union-attr]  # only JetStream asks for acks
        except BaseException as exc:  # noqa: BLE001 - supervision (called from nats-py's read loop)
            self._crash(exc)

    def _on_state(self, connected: bool) -> None:
        self._guarded(self._state_changed, (connected,))

    def _on_closed(self) -> None:
        self._guarded(self._rebuild, ())

    def _crash(self, exc: BaseException) -> None:
        """Something escaped: fail everything with `PublisherCrashed` and end the thread."""
        if self.crash is not None:
            return
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
            self._crash(exc)
        finally:
            try:
                self._cancel_leftovers()
            finally:
                self._loop.close()
                self._ended()

    async def _main(self) -> None:
        self._main_task = asyncio.current_task()  # type: ignore[assignment]  # set: we run in a task
        try:
            await self._connect_first()
            await self._drain()
        except asyncio.CancelledError:
            if not (self._aborted or self.crash is not None):
                raise
        except BaseException as exc:  # noqa: BLE001 - supervision
            self._crash(exc)
        finally:
            self._shutting_down = True
            await self._shutdown()

    async def _connect_first(self) -> None:
        if self._ready.done():  # lazy start: connect (and retry) in the background
            self._spawn(self._connect_forever())
            return
        try:
            await self.transport.connect(self.config.connect_timeout)
        except BrokerError as exc:
            self._ready.set_exception(exc)
            self._aborted = True
            return
        self._ready.set_result(None)

    async def _shutdown(self) -> None:
        """Cancel every task, settle everything outstanding, tell the publisher, close the connection."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        self._settle_everything()
        if self._stop_deadline is None:
            limit = 1.0
        else:  # past close()'s deadline the connection gets a moment: a hung broker would block nats-py's close()
            limit = max(0.1, min(1.0, self._stop_deadline - time.monotonic()))
        await self.transport.close(limit)

    def _settle_everything(self) -> None:
        """Fail whatever is unresolved: with the crash error, or `PublisherClosed` at a stop."""
        items = [*self.outstanding.abandon_all(), *self._in_hand]
        self._in_hand = ()
        crash = self.crash
        if crash is None:
            items += self.queue.take_all()  # close() ran out of time
        for item in items:
            error: BrokerError | PublisherClosed
            if crash is not None:
                error = PublisherCrashed(f"{crash} before event {item.event_id} was acknowledged")
                error.__cause__ = crash.__cause__
            else:
                error = PublisherClosed(f"publisher closed before event {item.event_id} was acknowledged")
            if self.outstanding.fail(item, error) and crash is None:
                self.abandoned.append(item.event_id)
        self.outstanding.report()
        if crash is not None:
            self._tell_owner(crash)

    def _tell_owner(self, crash: PublisherCrashed) -> None:
        """Once: the publisher fails what is queued (under its lock) and restarts on the next publish()."""
        if not self._owner_told:
            self._owner_told = True
            self._owner.on_crash(self, crash)

    def _ended(self) -> None:
        """The thread's last act: a thread that ends without being asked to is a crash too."""
        if self.crash is None and not self._stopping and not self._ready_failed():
            self._crash(RuntimeError("the publisher thread ended without being stopped"))
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
        return NatsTransport(self.config, self._on_acks, self._on_state, self._on_closed)

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
        self.transport = self._new_transport()
        self._spawn(self._connect_forever())

    def _state_changed(self, connected: bool) -> None:
        self._connected = connected
        self.max_payload = self.transport.max_payload
        if connected:
            out = self.outstanding
            if out.inflight and self.transport.resend_on_reconnect:
                # Acks for attempts sent on the lost connection will not come: send them again now
                # rather than at attempt_timeout (same Nats-Msg-Id: stored once; late acks ignored).
                log.info("reconnected: resending %d events that were awaiting an ack", len(out.inflight))
                out.retries.extend(out.inflight.values())
                out.inflight.clear()
            if isinstance(self._sender, CoreSender):
                self._sender.abandon_pongs()
        self._wake.set()

    def _begin_stop(self, deadline: float) -> None:
        self._stopping = True
        self._stop_deadline = deadline
        self.call_at(deadline, self._abort)
        self._wake.set()

    def _abort(self) -> None:
        """close()'s deadline: stop sending, even if the drain waits on a stalled connection."""
        self._aborted = True
        if self._main_task is not None and not self._shutting_down:
            self._main_task.cancel()

    # ----------------------------------------------------------------- the drain loop
    async def _drain(self) -> None:
        queue, wake, out = self.queue, self._wake, self.outstanding
        window, window_bytes = self.config.window, self.config.window_bytes
        while True:
            wake.clear()
            if self._aborted or (self._stopping and not len(queue) and not out.count):
                return
            if len(queue) or out.count:
                self._schedule_sweep()
            if not self._connected:  # callers still wake it: queued events have deadlines to keep
                self.idle = True
                await wake.wait()
                self.idle = False
                continue
            # Retries go first and already hold their slots: an attempt that got no ack keeps
            # its slot until the event resolves, so a hung or slow broker gets no more than the
            # window, and callers feel back-pressure instead of a retry storm.
            batch: list[Item] = out.retries
            if batch:
                out.retries = []
            room = window - out.count
            if room > 0:
                fresh: list[Item] = queue.take(room, window_bytes - out.nbytes, not out.count)  # type: ignore[assignment]
                if fresh:
                    out.take(fresh)
                    batch = batch + fresh if batch else fresh
            if not batch:
                if out.count and len(queue):
                    self._waiting_room = True
                    await wake.wait()
                    continue
                self.idle = True
                if not len(queue):
                    await wake.wait()
                self.idle = False
                continue
            self.batches += 1
            self._in_hand = batch
            await self._sender.send(batch)
            self._in_hand = ()

    def room_opened(self) -> None:
        """Wake the drain loop when it waits for window room (half free) or for the last event at close."""
        out = self.outstanding
        if self._waiting_room and out.count <= self._half_window and out.nbytes <= self._half_window_bytes:
            self._waiting_room = False
            self._wake.set()
        elif self._stopping and not out.count:
            self._wake.set()

    # ----------------------------------------------------------------- the sweep
    def _schedule_sweep(self) -> None:
        if not self._sweep_scheduled:
            self._sweep_scheduled = True
            self.call_at(time.monotonic() + self._tick, self._sweep)

    def _sweep(self) -> None:
        """Fail what is past its deadline, wherever it waits; retry attempts that got no answer.
        Runs while anything is queued or outstanding, and stops when nothing is."""
        self._sweep_scheduled = False
        now = time.monotonic()
        out = self.outstanding
        attempt_timeout = self.config.retry.attempt_timeout
        # While the broker is not reading (hung), resending would only pile copies into the
        # client's buffer: then resend only within what the buffer may still take.
        budget = _MAX_BACKLOG - self.transport.backlog
        late = [
            seq
            for seq, item in out.inflight.items()
            if item.deadline <= now or (budget > 0 and item.sent_at + attempt_timeout <= now)
        ]
        no_ack = BrokerUnavailable(f"no ack within {attempt_timeout} s")
        for seq in late:
            item = out.inflight[seq]
            if item.deadline <= now:
                del out.inflight[seq]
                out.fail(item, self._timeout(item, None))
            elif budget > 0:
                del out.inflight[seq]
                budget -= item.size
                self.failed_attempt(item, no_ack)
        for batch, _timer in out.core.values():
            for item in batch:
                if item.deadline <= now and not item.future.done():
                    out.fail(item, self._timeout(item, None))
        expired = out.expired(now) + self.queue.take_expired(now)  # type: ignore[operator]
        for item in expired:
            out.fail(item, self._timeout(item, None))
        if late or expired:
            self._wake.set()
        if out.count or len(self.queue):
            self._schedule_sweep()

    # ----------------------------------------------------------------- retries and outcomes
    def failed_attempt(self, item: Item, exc: BrokerError) -> None:
        """Retry after tenacity's backoff if the failure is transient and the deadline allows."""
        delay = self._backoff.delay(item.attempts, exc)
        if delay is None or self._aborted:
            self.outstanding.fail(item, exc)
            return
        remaining = item.deadline - time.monotonic()
        if remaining <= 0:
            self.outstanding.fail(item, self._timeout(item, exc))
            return
        log.debug("event %s: attempt %d failed (%s); retrying in %.3f s", item.event_id, item.attempts, exc, delay)
        self.outstanding.delayed[item] = self.call_at(
            time.monotonic() + min(delay, remaining), self._requeue, item, exc
        )

    def _requeue(self, item: Item, exc: BrokerError) -> None:
        self.outstanding.delayed.pop(item, None)
        if time.monotonic() >= item.deadline:
            self.outstanding.fail(item, self._timeout(item, exc))
            return
        self.outstanding.retries.append(item)
        self._wake.set()

    def _timeout(self, item: Item, last: BaseException | None) -> PublishTimeout:
        why = f" (last error: {last})" if last is not None else ""
        err = PublishTimeout(
            f"event {item.event_id} was not acknowledged within its delivery deadline of "
            f"{self.config.delivery_timeout} s after {item.attempts} attempt(s){why}"
        )
        err.__cause__ = last
        return err

    def too_big(self, item: Item) -> bool:
        """Fail ``item`` if it is larger than the server's max_payload (learnt after it was queued)."""
        limit = self.max_payload
        if limit is not None and item.size > limit:
            self.outstanding.fail(
                item,
                InvalidEvent(
                    f"event {item.event_id} is {item.size} bytes with headers, "
                    f"more than the server's max_payload of {limit} bytes"
                ),
            )
            return True
        return False

    # ----------------------------------------------------------------- "no responders"
    def no_responders(self, item: Item) -> None:
        """No stream answered: ask once per subject whether any captures it; park the events meanwhile."""
        if item.subject in self._stream_seen:
            self.failed_attempt(item, BrokerUnavailable(f"no JetStream responder for {item.subject.decode()}"))
            return
        waiting = self.outstanding.parked.get(item.subject)
        if waiting is not None:  # one check per subject answers for every event waiting on it
            waiting.append(item)
            return
        self.outstanding.parked[item.subject] = [item]
        self._spawn(self._check_stream(item.subject))

    async def _check_stream(self, subject: bytes) -> None:
        name = subject.decode()
        timeout = min(self.config.retry.attempt_timeout, 2.0)
        captured = await self.transport.stream_captures(name, timeout)
        items = self.outstanding.parked.pop(subject, [])
        if captured:
            self._stream_seen.add(subject)
        for item in items:
            if captured is False:
                self.outstanding.fail(
                    item,
                    EventRejected(
                        f"no JetStream stream captures subject {name!r}: "
                        "create one, or pass create_stream=True with stream=<name>"
                    ),
                )
            else:
                self.failed_attempt(item, BrokerUnavailable(f"no JetStream responder for {name} (leader election?)"))
        self._wake.set()
