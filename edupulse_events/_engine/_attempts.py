"""What happens when an attempt fails or runs out of time, and the sweep that keeps every deadline.

`Attempts.failed` asks tenacity (`_retry.Backoff`) whether and when to try again: a
retryable failure waits out its backoff (capped by the event's deadline) and is resent with
the same ``Nats-Msg-Id``; anything else fails the event at once. The sweep runs every few tens
of milliseconds while anything is queued or outstanding (never while idle): it fails what is
past its deadline wherever it waits — in flight, in a core batch, waiting to be resent,
parked for a stream check, or still queued — and retries attempts that got no answer within
``attempt_timeout``, as far as the client's unsent buffer allows. Runs on the publisher thread.

`Attempts` and the senders (`_sending`) see the loop that runs them only through `DrainLoop` (the
current transport, whether a stop aborted, two wake-ups): they move events through
`Outstanding`'s methods and set timers through the `Supervisor`, never through the `Worker`.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from .._nats import NatsTransport
from .._pipeline._queue import BatchQueue
from .._pipeline._routing import Item
from ..config import PublisherConfig
from ..errors import BrokerError, BrokerUnavailable, PublishTimeout
from ._outstanding import Outstanding
from ._retry import Backoff
from ._supervisor import Supervisor

__all__ = ["Attempts", "DrainLoop"]

log = logging.getLogger("edupulse_events")
_MAX_BACKLOG = 1 << 20  # bytes not yet on the socket above which the sweep resends nothing


class DrainLoop(Protocol):
    """What `Attempts` and the senders need of the loop that runs them (the `Worker` offers it)."""

    @property
    def transport(self) -> NatsTransport:
        """The current connection (replaced when nats-py closes one for good)."""
        ...

    @property
    def max_payload(self) -> int | None:
        """The server's max_payload (None before the first connection)."""
        ...

    @property
    def atomic(self) -> bool:
        """Whether atomic batches were ever queued (until then the senders never look for them)."""
        ...

    @property
    def aborted(self) -> bool:
        """Whether close()'s deadline passed: nothing is retried any more."""
        ...

    def wake_loop(self) -> None:
        """Let the drain loop look again (retries ready, a state change)."""

    def room_opened(self) -> None:
        """Events resolved: the drain loop may have window room again."""


class Attempts:
    """Retries (tenacity's backoff, the same Msg-Id) and deadlines (the sweep) for one worker."""

    def __init__(
        self,
        config: PublisherConfig,
        loop: DrainLoop,
        outstanding: Outstanding,
        supervisor: Supervisor,
        queue: BatchQueue[Item],
    ) -> None:
        self._config = config
        self._loop = loop
        self._out = outstanding
        self._supervisor = supervisor
        self._queue = queue
        self._backoff: Backoff | None = None  # built at the first failure: most workers never fail
        self._attempt_timeout = config.retry.attempt_timeout
        self._tick = min(0.05, self._attempt_timeout / 4)
        self._sweep_scheduled = False

    def failed(self, item: Item, exc: BrokerError) -> None:
        """Retry after tenacity's backoff if the failure is transient and the deadline allows."""
        out = self._out
        if self._backoff is None:
            self._backoff = Backoff(self._config.retry)
        delay = self._backoff.delay(item.attempts, exc)
        if delay is None or self._loop.aborted:
            out.fail(item, exc)
            return
        remaining = item.deadline - time.monotonic()
        if remaining <= 0:
            out.fail(item, self.timeout(item, exc))
            return
        log.debug("event %s: attempt %d failed (%s); retrying in %.3f s", item.event_id, item.attempts, exc, delay)
        when = time.monotonic() + min(delay, remaining)
        out.delay(item, self._supervisor.call_at(when, self._requeue, item, exc))

    def _requeue(self, item: Item, exc: BrokerError) -> None:
        out = self._out
        if time.monotonic() >= item.deadline:
            out.fail(item, self.timeout(item, exc))
            out.undelay(item)
        else:
            out.requeue(item)
            self._loop.wake_loop()

    def timeout(self, item: Item, last: BaseException | None) -> PublishTimeout:
        """The error of an event that reached its delivery deadline (``last``: the last attempt's)."""
        why = f" (last error: {last})" if last is not None else ""
        err = PublishTimeout(
            f"event {item.event_id} was not acknowledged within its delivery deadline of "
            f"{self._config.delivery_timeout} s after {item.attempts} attempt(s){why}"
        )
        err.__cause__ = last
        return err

    def schedule_sweep(self) -> None:
        """Make sure a sweep comes within a tick (the drain loop calls this while there is work)."""
        if not self._sweep_scheduled:
            self._sweep_scheduled = True
            self._supervisor.call_at(time.monotonic() + self._tick, self.sweep)

    def sweep(self) -> None:
        """Fail what is past its deadline, wherever it waits; retry attempts that got no answer.
        Runs while anything is queued or outstanding, and stops when nothing is."""
        self._sweep_scheduled = False
        now = time.monotonic()
        out, queue = self._out, self._queue
        # While the broker is not reading (hung), resending would only pile copies into the
        # client's buffer: then resend only within what the buffer may still take.
        budget = _MAX_BACKLOG - self._loop.transport.backlog
        # each event is in `out.hand` until placed (failed, or scheduled for retry)
        late, unanswered = out.overdue(now, self._attempt_timeout, budget)
        for item in late:
            out.fail(item, self.timeout(item, None))
        no_ack = BrokerUnavailable(f"no ack within {self._attempt_timeout} s")
        for item in unanswered:
            self.failed(item, no_ack)
        out.placed()
        for item in out.core_expired(now):
            out.fail(item, self.timeout(item, None))
        expired = out.expired(now)  # `out.hand`: they stay findable until each is failed
        from_queue = queue.take_expired(now)
        out.take(from_queue)  # counted in, as the drain loop does, before they are counted out
        expired += from_queue
        for item in expired:
            out.fail(item, self.timeout(item, None))
        had_expired = bool(expired)
        out.placed()
        if late or unanswered or had_expired:
            self._loop.wake_loop()
        if out.count or len(queue):
            self.schedule_sweep()
