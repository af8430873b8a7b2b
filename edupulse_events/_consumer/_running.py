"""``NatsConsumer.run()``: handler threads fed by the pump, outcomes by return or exception, a clean stop.

The pump (`ConsumerLoop.start_pump`) puts each fetched batch on a queue, cut in one share per
handler thread (one queue operation per share, not per message); ``concurrency`` handler
threads take them, decode them in their own thread and call the handler. Its return acks the
message (unless the handler settled it itself); an exception naks it with the consumer's
backoff (`Backoff`; on the durable's last delivery it goes to the dead letter instead); a
`PermanentFailure` (or one of the ``permanent`` types) dead-letters it at once.

Stopping — the ``stop`` event set, SIGTERM (when ``run()`` is called from the main thread: the
previous handler is restored on return), Ctrl-C, the ``timeout`` run out, ``idle_timeout`` seconds
with nothing delivered and nothing being handled, or a handler raising
``BaseException`` — fetches no more, lets each handler finish the message it holds, naks what
is queued and what the pump's last fetch brings (redelivered at once, to this process or
another), and, past ``stop_timeout``, naks on their behalf the messages of handlers still
running (their late outcome is then ignored). Then the acks are flushed to the server. Nothing
is left held: every message taken is acked, nak'ed, terminated or dead-lettered.

Where OpenTelemetry is configured (looked up at ``run()``'s start), each handler call runs in
its CONSUMER span (`_tracing`) and its duration is recorded (`_metrics`); otherwise the handler
is called as it is.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .._nats._pull import Delivery
from ..errors import PermanentFailure
from ._loop import POLL, ConsumerLoop
from ._message import Backoff, ReceivedMessage, decode_deliveries
from ._metrics import Metrics
from ._tally import Tally
from ._tracing import Tracing

__all__ = ["Handler", "run_handlers"]

log = logging.getLogger("edupulse_events")
Handler = Callable[[ReceivedMessage], object]
_GET_WAIT = 0.1  # a handler thread looks at the stop flag at least this often while idle


class _Run:
    """The state of one ``run()``."""

    def __init__(
        self,
        loop: ConsumerLoop,
        call: Handler,
        decode: Callable[[bytes], Any],
        tally: Tally,
        backoff: Backoff,
        permanent: tuple[type[BaseException], ...],
        stop: threading.Event | None,
    ) -> None:
        self.loop = loop
        self.user_stop = stop
        self.call = call  # the handler, traced and timed where an SDK is configured (`_observed`)
        self.decode = decode
        self.tally = tally
        self.backoff = backoff
        self.permanent = permanent
        self.queue: queue.SimpleQueue[list[Delivery]] = queue.SimpleQueue()
        self.shares = 1
        self.stopping = threading.Event()
        self.in_hand: dict[int, ReceivedMessage] = {}  # thread ident -> the message it handles
        self.fatal: BaseException | None = None
        self.reason = ""
        self.active_at = time.monotonic()  # the last delivery or handled message (``idle_timeout``)

    def idle_for(self, now: float) -> float:
        """Seconds with nothing delivered, queued or being handled (0.0 while anything is)."""
        if self.in_hand or not self.queue.empty():
            return 0.0
        return now - self.active_at

    def stop(self, reason: str) -> None:
        if not self.stopping.is_set():
            self.reason = reason
            self.stopping.set()

    def deliver(self, batch: list[Delivery]) -> None:
        """On the loop: a fetched batch, one share per handler thread."""
        self.active_at = time.monotonic()
        shares, put = self.shares, self.queue.put
        if shares == 1 or len(batch) < 2 * shares:
            put(batch)
            return
        size = -(-len(batch) // shares)
        for start in range(0, len(batch), size):
            put(batch[start : start + size])

    def work(self) -> None:
        """One handler thread: take, decode, handle, settle; until stopping."""
        me = threading.get_ident()
        get, stopping, user_stop = self.queue.get, self.stopping, self.user_stop
        decode, loop, tally, backoff = self.decode, self.loop, self.tally, self.backoff
        try:
            while not stopping.is_set():
                try:
                    share = get(timeout=_GET_WAIT)
                except queue.Empty:
                    continue
                for i, delivery in enumerate(share):
                    if stopping.is_set() or (user_stop is not None and user_stop.is_set()):
                        self.queue.put(share[i:])  # nak'ed with the rest by the coordinator
                        return
                    for message in decode_deliveries([delivery], decode, loop, tally, backoff):
                        self.in_hand[me] = message
                        try:
                            self.handle(message)
                        finally:
                            self.active_at = time.monotonic()  # before: idle needs no message in hand
                            self.in_hand.pop(me, None)
        except BaseException as exc:  # noqa: BLE001 - reported by run() in the caller's thread
            self.fatal = self.fatal or exc
            self.stop(f"a handler thread failed: {type(exc).__name__}: {exc}")

    def handle(self, message: ReceivedMessage) -> None:
        try:
            self.call(message)
        except self.permanent as exc:
            self.tally.add(handler_errors=1)
            if message.try_settle("dead_letter"):
                self.loop.dead_letter(message._delivery, f"{type(exc).__name__}: {exc}")  # noqa: SLF001
        except Exception as exc:  # noqa: BLE001 - the handler's failure: nak with backoff
            self.tally.add(handler_errors=1)
            log.debug("handler failed on %r: %r", message, exc)
            if message.try_settle("nak"):
                message._nak(None)  # noqa: SLF001
        except BaseException as exc:
            self.tally.add(handler_errors=1)
            if message.try_settle("nak"):
                message._nak(0)  # noqa: SLF001
            raise exc
        else:
            if message.try_settle("ack"):
                self.tally.add(acknowledged=1)
                self.loop.respond(message._delivery.reply, b"+ACK")  # noqa: SLF001

    def nak_queued(self) -> int:
        count = 0
        while True:
            try:
                share = self.queue.get_nowait()
            except queue.Empty:
                return count
            for delivery in share:
                self.loop.respond(delivery.reply, b"-NAK")
            count += len(share)


def _observed(handler: Handler, tracing: Tracing | None, metrics: Metrics | None) -> Handler:
    """``handler`` as run() calls it: in its CONSUMER span and timed where a tracing or metrics SDK
    is configured (looked up at run()'s start), else ``handler`` itself (nothing per message)."""
    span = tracing.span if tracing is not None and tracing.active else None
    record = metrics.record if metrics is not None and metrics.metering else None
    if span is None and record is None:
        return handler
    clock = time.perf_counter

    def call(message: ReceivedMessage) -> object:
        started = clock()
        try:
            if span is None:
                result = handler(message)
            else:
                with span(message):
                    result = handler(message)
        except BaseException as exc:
            if record is not None:
                record(clock() - started, exc)
            raise
        if record is not None:
            record(clock() - started, None)
        return result

    return call


@contextlib.contextmanager
def _sigterm_stops(run: _Run, enabled: bool) -> Iterator[None]:
    """In the main thread: SIGTERM stops the run; the previous handler comes back after."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(_signum: int, _frame: object) -> None:
        run.stop("SIGTERM")

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_handlers(
    loop: ConsumerLoop,
    handler: Handler,
    *,
    decode: Callable[[bytes], Any],
    tally: Tally,
    backoff: Backoff,
    tracing: Tracing | None,
    metrics: Metrics | None,
    concurrency: int,
    stop: threading.Event | None,
    timeout: float | None,
    idle_timeout: float | None,
    stop_timeout: float,
    handle_signals: bool,
    permanent: tuple[type[BaseException], ...],
    name: str,
) -> str:
    """Run until stopped (see the module's docstring); returns why it stopped."""
    call = _observed(handler, tracing, metrics)
    run = _Run(loop, call, decode, tally, backoff, (PermanentFailure, *permanent), stop)
    threads = [
        threading.Thread(target=run.work, name=f"{name}-handler-{i + 1}", daemon=True) for i in range(concurrency)
    ]
    run.shares = concurrency
    deadline = None if timeout is None else time.monotonic() + timeout
    interrupted: BaseException | None = None
    with _sigterm_stops(run, handle_signals):  # before any message is taken
        pump = loop.start_pump(run.deliver)
        for thread in threads:
            thread.start()
        try:
            while not run.stopping.is_set():
                if stop is not None and stop.is_set():
                    run.stop("stop event")
                elif deadline is not None and time.monotonic() >= deadline:
                    run.stop(f"timeout ({timeout} s)")
                elif idle_timeout is not None and run.idle_for(time.monotonic()) >= idle_timeout:
                    run.stop(f"idle ({idle_timeout} s)")
                elif pump.done():
                    run.stop("the pump ended")
                else:
                    run.stopping.wait(0.05 if stop is not None else 0.2)
        except KeyboardInterrupt as exc:
            interrupted = exc
            run.stop("KeyboardInterrupt")
        _stop(run, loop, pump, threads, stop_timeout)
    if interrupted is not None:
        raise interrupted
    if loop.broken is not None:  # nats-py gave up on the connection: the loop ended, the pump was cancelled
        raise loop.broken
    if pump.done() and not pump.cancelled() and pump.exception() is not None:
        raise pump.exception()  # type: ignore[misc]  # a BrokerError: the connection is gone
    if run.fatal is not None:
        raise run.fatal
    return run.reason


def _stop(run: _Run, loop: ConsumerLoop, pump: Any, threads: list[threading.Thread], stop_timeout: float) -> None:
    deadline = time.monotonic() + stop_timeout
    loop.stop_pump()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    with contextlib.suppress(Exception):
        pump.result(POLL + 2.0)
    # Only now, with no pull request of ours left on the server: a nak while one is still waiting
    # would bring the message straight back into it.
    nacked = run.nak_queued()
    abandoned = 0
    for message in list(run.in_hand.values()):  # handlers still running past stop_timeout
        if message.try_settle("nak"):
            loop.respond(message._delivery.reply, b"-NAK")  # noqa: SLF001
            abandoned += 1
    if abandoned:
        log.error(
            "%d handler(s) still running %.1f s after the stop: their messages were nak'ed (their outcome is ignored)",
            abandoned,
            stop_timeout,
        )
    run.tally.add(nacked=nacked + abandoned)
    if nacked:
        log.info("stopping (%s): %d messages held were nak'ed for redelivery", run.reason, nacked)
    remaining = max(1.0, deadline - time.monotonic())
    try:
        flushed = loop.call(lambda: loop.flush(remaining), remaining + 1.0)
    except Exception as exc:  # noqa: BLE001 - the connection is gone: the server redelivers after ack_wait
        log.warning("stopping: outcomes not confirmed by the server (%s); unconfirmed ones come again", exc)
    else:
        if not flushed:
            log.warning("stopping: the server did not confirm every outcome in time; unconfirmed ones come again")
