"""`NatsConsumer`: reading events from a JetStream durable in synchronous code, from any thread.

The publisher's shape turned around: one background thread with its own asyncio loop holds
the connection and pulls (`_consumer._loop`); caller threads get decoded, typed messages
(`ReceivedMessage`, with ``.envelope``) and settle each one — ``ack()``, ``nak(delay=)``,
``term(reason=)``, ``dead_letter(reason)``, ``in_progress()`` — without blocking: outcomes go
back to the thread, many per wake-up. Two ways to read:

- ``fetch(batch, timeout=)``: up to ``batch`` messages, waiting up to ``timeout`` for the
  first (``[]`` when idle); the caller settles each;
- ``run(handler, concurrency=N, stop=)``: ``N`` handler threads fed by a pump that keeps at
  most ``max_buffered`` messages held; ack on return, nak with backoff on an exception, dead
  letter on `PermanentFailure`; a clean stop on ``stop``, SIGTERM or ``timeout``
  (`_consumer._running`).

A message that does not decode, or that fails its last delivery (``max_deliver``), goes to the
dead-letter subject with the reason and its original headers, and is terminated: never retried
for ever, never dropped silently. `Inbox` gives handlers that write to a database an
exactly-once effect. The consumer connects on `start` (or `connect`), or lazily on the first
``fetch``/``run`` — so one built before a pre-fork server forks connects in each worker; a
forked child never uses its parent's thread or connection; one whose connection nats-py gave up
on connects anew at the next call. With OpenTelemetry configured, handler calls get CONSUMER
spans (`_consumer._tracing`) and the consumer reports metrics (`_consumer._metrics`). This
module owns the life cycle (new, running, closed), ``stats()``, and closing at interpreter exit.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from ._consumer._inbox import Inbox
from ._consumer._loop import ConsumerLoop
from ._consumer._message import Backoff, ReceivedMessage, decode_deliveries
from ._consumer._metrics import metrics_for
from ._consumer._running import Handler, run_handlers
from ._consumer._tally import Tally
from ._consumer._tracing import tracing_for
from ._engine._processes import keep_orphan, own_process, track, untrack
from ._nats._pull import check_nats_py
from .codec import decode as default_decode
from .config import ConsumerConfig
from .errors import ConfigError, ConsumerClosed
from .stats import ConsumerStats

__all__ = ["ConsumerConfig", "ConsumerStats", "Inbox", "NatsConsumer", "ReceivedMessage"]

log = logging.getLogger("edupulse_events")
_names = iter(range(1, 1 << 62))


class NatsConsumer:
    """Reads a JetStream durable pull consumer from any number of threads.

    Build it with `NatsConsumer.connect(url, stream=..., durable=...)` (connects now, or raises
    `BrokerError` saying why) or `NatsConsumer(ConsumerConfig(...))` (connects on the first
    ``fetch``/``run``, in the process that calls it). Use it as a context manager, or call `close()`.
    """

    def __init__(self, config: ConsumerConfig) -> None:
        if not isinstance(config, ConsumerConfig):
            raise TypeError(f"NatsConsumer takes a ConsumerConfig, got {type(config).__name__}")
        check_nats_py()  # ConfigError on a nats-py too old to pull with heartbeats
        self._config = config
        self._decode = config.codec.decode if config.codec is not None else default_decode
        self._backoff = Backoff(config)
        self._tracing = tracing_for(config)
        number = next(_names)
        self._name = f"edupulse-consumer-{number}"
        self._reset()
        self._metrics = metrics_for(config, f"{config.client_name}-consumer-{number}", self.stats)
        track(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._loop: ConsumerLoop | None = None
        self._closed = False
        self._running = False
        self._tally = Tally()
        self._pid = os.getpid()

    @classmethod
    def connect(
        cls,
        url: str | Sequence[str] | None = None,
        *,
        stream: str,
        durable: str,
        servers: str | Sequence[str] | None = None,
        **options: Any,
    ) -> NatsConsumer:
        """Connect to ``url`` (or ``servers=``), create or bind ``durable`` on ``stream``, and return
        the consumer. Every other `ConsumerConfig` field may be given as a keyword. Raises
        `BrokerError` (unreachable, credentials, no such stream, a durable that does not fit)."""
        if (url is None) == (servers is None):
            raise ConfigError("connect() takes the server URL(s) once: url or servers=")
        config = ConsumerConfig(servers=url if servers is None else servers, stream=stream, durable=durable, **options)
        consumer = cls(config)
        try:
            consumer.start()
        except BaseException:
            consumer.close(0.0)
            raise
        return consumer

    @property
    def config(self) -> ConsumerConfig:
        return self._config

    def start(self) -> NatsConsumer:
        """Connect and bind now (if not yet); raises `BrokerError` saying why it could not."""
        self._ensure_loop()
        return self

    def _ensure_loop(self) -> ConsumerLoop:
        if self._pid != os.getpid():
            own_process(self, self._name)
        with self._lock:
            if self._closed:
                raise ConsumerClosed("the NatsConsumer is closed")
            loop = self._loop
            if loop is not None and loop.alive:
                return loop
            if loop is not None:  # the connection was given up on: a new thread and connection
                log.warning("consumer %s: starting a new connection (%s)", self._name, loop.broken or "thread ended")
                loop.stop(1.0)
            loop = ConsumerLoop(self._config, self._name, self._tally)
            loop.start(self._config.connect_timeout)
            self._loop = loop
            if self._metrics is not None:
                self._metrics.recheck()
            return loop

    def fetch(self, batch: int = 1, *, timeout: float) -> list[ReceivedMessage]:
        """Up to ``batch`` decoded messages, waiting up to ``timeout`` seconds for the first; ``[]``
        when none came. Settle each one (``ack()``...): unsettled, the server delivers it again
        after ``ack_wait``. A message that does not decode is dead-lettered, not returned."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        loop = self._ensure_loop()
        deliveries = loop.call(lambda: loop.fetch(batch, timeout), timeout + self._config.connect_timeout + 1.0)
        return decode_deliveries(deliveries, self._decode, loop, self._tally, self._backoff)

    def run(
        self,
        handler: Handler,
        *,
        concurrency: int = 1,
        stop: threading.Event | None = None,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        stop_timeout: float = 10.0,
        handle_signals: bool = True,
        permanent: tuple[type[BaseException], ...] = (),
    ) -> str:
        """Call ``handler(message)`` for every message from ``concurrency`` threads until stopped;
        returns why it stopped.

        The handler's return acks the message (unless it settled it itself); an exception naks
        it with the backoff (``backoff_initial``... by delivery count; the dead letter on the
        last delivery); a `PermanentFailure` or one of ``permanent`` dead-letters it at once.
        It stops when ``stop`` is set, on SIGTERM (from the main thread, with ``handle_signals``;
        the previous handler is restored), on Ctrl-C (re-raised after the stop), after
        ``timeout`` seconds (None: never), or once ``idle_timeout`` seconds passed with nothing
        delivered and no handler busy (None: never; a batch job's "until drained"): it fetches
        no more, lets handlers finish within ``stop_timeout`` and naks whatever else this
        process holds. A lost connection raises `BrokerError` after the same clean stop."""
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout!r}")
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be > 0 seconds or None, got {idle_timeout!r}")
        if not stop_timeout > 0:
            raise ValueError(f"stop_timeout must be > 0 seconds, got {stop_timeout!r}")
        loop = self._ensure_loop()
        with self._lock:
            if self._running:
                raise RuntimeError("run() is already running on this consumer")
            self._running = True
        try:
            if self._tracing is not None:
                self._tracing.recheck()
            if self._metrics is not None:
                self._metrics.recheck()
            return run_handlers(
                loop,
                handler,
                decode=self._decode,
                tally=self._tally,
                backoff=self._backoff,
                tracing=self._tracing,
                metrics=self._metrics,
                concurrency=concurrency,
                stop=stop,
                timeout=timeout,
                idle_timeout=idle_timeout,
                stop_timeout=stop_timeout,
                handle_signals=handle_signals,
                permanent=tuple(permanent),
                name=self._name,
            )
        finally:
            self._running = False

    def stats(self) -> ConsumerStats:
        """A snapshot of this consumer's counters."""
        loop = self._loop if self._pid == os.getpid() else None
        if self._closed:
            state = "closed"
        elif loop is None:
            state = "new"
        else:
            state = "running" if loop.alive else "broken" if loop.broken is not None else "new"
        held, held_bytes = (loop.held, loop.held_bytes) if loop is not None else (0, 0)
        return ConsumerStats(**self._tally.snapshot(), held=held, held_bytes=held_bytes, state=state)

    def close(self, timeout: float | None = None) -> None:
        """Send the outcomes given so far, flush them to the server and close the connection
        (within ``timeout`` s; default ``exit_timeout``). Messages fetched and not settled come
        again after ``ack_wait``. Idempotent."""
        if self._pid != os.getpid():
            own_process(self, self._name)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, self._loop = self._loop, None
        if loop is not None and not loop.stop(self._config.exit_timeout if timeout is None else max(0.0, timeout)):
            log.error("consumer thread %s did not stop in time", self._name)
        untrack(self)

    @property
    def _exit_timeout(self) -> float:
        return self._config.exit_timeout

    def _on_fork(self) -> None:
        """In a forked child: the parent's thread and connection are not ours; start afresh."""
        if self._loop is not None:
            keep_orphan(self._loop)
        closed = self._closed
        self._reset()
        self._closed = closed

    def __enter__(self) -> NatsConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        cfg = self._config
        return f"<NatsConsumer {self.stats().state} {cfg.stream}/{cfg.durable} servers={cfg.redacted_servers!r}>"
