"""What happens when an attempt fails or runs out of time, and the sweep that keeps every deadline.

`Attempts.failed` asks tenacity (`_retry.Backoff`) whether and when to try again: a
retryable failure waits out its backoff (capped by the event's deadline) and is resent with
the same ``Nats-Msg-Id``; anything else fails the event at once. The sweep runs every few tens
of milliseconds while anything is queued or outstanding (never while idle): it fails what is
past its deadline wherever it waits — in flight, in a core batch, waiting to be resent,
parked for a stream check, or still queued — and retries attempts that got no answer within
``attempt_timeout``, as far as the client's unsent buffer allows. Runs on the publisher thread.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from .._pipeline._routing import Item
from ..errors import BrokerError, BrokerUnavailable, PublishTimeout
from ._retry import Backoff

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["Attempts"]

log = logging.getLogger("edupulse_events")
_MAX_BACKLOG = 1 << 20  # bytes not yet on the socket above which the sweep resends nothing


class Attempts:
    """Retries (tenacity's backoff, the same Msg-Id) and deadlines (the sweep) for one worker."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._backoff: Backoff | None = None  # built at the first failure: most workers never fail
        self._attempt_timeout = worker.config.retry.attempt_timeout
        self._tick = min(0.05, self._attempt_timeout / 4)
        self._sweep_scheduled = False

    def failed(self, item: Item, exc: BrokerError) -> None:
        """Retry after tenacity's backoff if the failure is transient and the deadline allows."""
        worker = self._worker
        if self._backoff is None:
            self._backoff = Backoff(worker.config.retry)
        delay = self._backoff.delay(item.attempts, exc)
        if delay is None or worker.aborted:
            worker.outstanding.fail(item, exc)
            return
        remaining = item.deadline - time.monotonic()
        if remaining <= 0:
            worker.outstanding.fail(item, self.timeout(item, exc))
            return
        log.debug("event %s: attempt %d failed (%s); retrying in %.3f s", item.event_id, item.attempts, exc, delay)
        worker.outstanding.retried += 1
        when = time.monotonic() + min(delay, remaining)
        worker.outstanding.delayed[item] = worker.supervisor.call_at(when, self._requeue, item, exc)

    def _requeue(self, item: Item, exc: BrokerError) -> None:
        out = self._worker.outstanding
        if time.monotonic() >= item.deadline:
            out.fail(item, self.timeout(item, exc))
        else:
            out.retries.append(item)
            self._worker.wake_loop()
        out.delayed.pop(item, None)

    def timeout(self, item: Item, last: BaseException | None) -> PublishTimeout:
        """The error of an event that reached its delivery deadline (``last``: the last attempt's)."""
        why = f" (last error: {last})" if last is not None else ""
        err = PublishTimeout(
            f"event {item.event_id} was not acknowledged within its delivery deadline of "
            f"{self._worker.config.delivery_timeout} s after {item.attempts} attempt(s){why}"
        )
        err.__cause__ = last
        return err

    def schedule_sweep(self) -> None:
        """Make sure a sweep comes within a tick (the drain loop calls this while there is work)."""
        if not self._sweep_scheduled:
            self._sweep_scheduled = True
            self._worker.supervisor.call_at(time.monotonic() + self._tick, self.sweep)

    def sweep(self) -> None:
        """Fail what is past its deadline, wherever it waits; retry attempts that got no answer.
        Runs while anything is queued or outstanding, and stops when nothing is."""
        self._sweep_scheduled = False
        worker = self._worker
        now = time.monotonic()
        out = worker.outstanding
        attempt_timeout = self._attempt_timeout
        # While the broker is not reading (hung), resending would only pile copies into the
        # client's buffer: then resend only within what the buffer may still take.
        budget = _MAX_BACKLOG - worker.transport.backlog
        late = [
            seq
            for seq, item in out.inflight.items()
            if item.deadline <= now or (budget > 0 and item.sent_at + attempt_timeout <= now)
        ]
        no_ack = BrokerUnavailable(f"no ack within {attempt_timeout} s")
        inflight = out.inflight
        for seq in late:  # each event is placed (failed, or scheduled for retry) before it leaves inflight
            item = inflight[seq]
            if item.deadline <= now:
                out.fail(item, self.timeout(item, None))
                del inflight[seq]
            elif budget > 0:
                budget -= item.size
                self.failed(item, no_ack)
                del inflight[seq]
        for batch, _timer in out.core.values():
            for item in batch:
                if item.deadline <= now and not item.future.resolved():
                    out.fail(item, self.timeout(item, None))
        expired = out.expired(now)  # `out.hand`: they stay findable until each is failed
        from_queue = worker.queue.take_expired(now)
        out.take(from_queue)  # counted in, as the drain loop does, before they are counted out
        expired += from_queue
        for item in expired:
            out.fail(item, self.timeout(item, None))
        had_expired = bool(expired)
        expired.clear()
        if late or had_expired:
            worker.wake_loop()
        if out.count or len(worker.queue):
            self.schedule_sweep()
