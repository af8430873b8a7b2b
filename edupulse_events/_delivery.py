"""What happens to an event after it is written: acks, retries, deadlines, outcomes.

`Delivery` is the half of the publisher thread that settles events: it reads JetStream acks
(a sequence, a duplicate, an error, or "no responders" — then asks once per subject whether
any stream captures it), retries transient failures after tenacity's exponential-jitter
backoff with the same ``Nats-Msg-Id``, fails permanent ones at once, and runs the reaper that
enforces attempt timeouts and delivery deadlines (`PublishTimeout`). Resolutions are counted
once per loop iteration, not once per event. `Worker` (the thread, the loop and the sending
side) inherits it; everything here runs on the publisher thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable

import tenacity

from ._acks import Ack
from ._futures import PublishAck, new_ack, settle
from ._nats import NatsTransport, broker_error
from ._queue import BatchQueue
from ._routing import Item
from .config import PublisherConfig, RetryPolicy
from .errors import PublisherClosed, PublishTimeout

__all__ = ["Delivery", "backoff"]

log = logging.getLogger("edupulse_events")
_STREAM_FULL = 10077  # JetStream err_code: a discard=new stream at its limits refused the message
_CORE_ACK = PublishAck(None, None, False)
_MAX_BACKLOG = 1 << 20  # bytes not yet on the socket above which the reaper resends nothing


def _retrying(policy: RetryPolicy) -> tenacity.Retrying:
    return tenacity.Retrying(
        wait=tenacity.wait_exponential(multiplier=policy.initial, max=policy.maximum, exp_base=policy.multiplier)
        + tenacity.wait_random(0, policy.jitter),
        retry=tenacity.retry_if_exception(lambda exc: bool(getattr(exc, "transient", False))),
        stop=tenacity.stop_never,  # the delivery deadline stops retries (checked by the worker)
    )


def _decide(retrying: tenacity.Retrying, attempt: int, exc: BaseException) -> float | None:
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


class Delivery:
    """Settles events in flight; state is created by `Worker.__init__`."""

    config: PublisherConfig
    queue: BatchQueue
    transport: NatsTransport
    _loop: asyncio.AbstractEventLoop
    _wake: asyncio.Event
    _retrying: tenacity.Retrying
    _inflight: dict[int, Item]
    _retries: list[Item]
    _delayed: dict[Item, asyncio.TimerHandle]
    _checking: dict[bytes, list[Item]]
    _core_pending: dict[int, tuple[list[Item], asyncio.TimerHandle]]
    _core_count: int
    _stream_seen: set[bytes]
    _on_resolved: Callable[[int, int], None]
    _aborted: bool
    _stopping: bool
    _waiting_room: bool
    _half_window: int
    _acked: int
    _failed: int
    _progress_scheduled: bool
    abandoned: list[str]

    def _outstanding(self) -> int:
        """Events taken from the queue and not resolved: each holds a slot of the window."""
        checking = sum(map(len, self._checking.values())) if self._checking else 0
        return len(self._inflight) + len(self._retries) + len(self._delayed) + checking + self._core_count

    def _room_opened(self) -> None:
        """Wake the drain loop when it waits for window room (half free) or for the last event at close."""
        if self._waiting_room and len(self._inflight) <= self._half_window and self._outstanding() <= self._half_window:
            self._waiting_room = False
            self._wake.set()
        elif self._stopping and not self._inflight:
            self._wake.set()

    def _core_settled(self, key: int, ok: bool) -> None:
        """A core batch's PONG came (every event in it reached the server) or its attempt timed out."""
        entry = self._core_pending.pop(key, None)
        if entry is None:
            return
        batch, timer = entry
        timer.cancel()
        self._core_count -= len(batch)
        if ok:
            self._acked += settle([item.future for item in batch], [_CORE_ACK] * len(batch))
            self._count()
        else:
            exc = broker_error(
                f"no answer from the broker within {self.config.retry.attempt_timeout} s", transient=True
            )
            for item in batch:
                self._failed_attempt(item, exc)
        self._room_opened()

    def _on_acks(self, acks: list[Ack]) -> None:
        """Acks as they arrived (`_acks.Ack` tuples): settle the events they answer, together."""
        pop = self._inflight.pop
        futures, results = [], []
        for ack in acks:
            item = pop(ack[0], None)
            if item is None:  # a late ack for an attempt already retried: the retry gets its own
                continue
            if ack[4] is not None:
                self._refused(item, ack[4])
            elif ack[3]:  # a duplicate: rare, so a PublishAck now
                futures.append(item.future)
                results.append(new_ack(ack[2], ack[1], True))
            else:
                futures.append(item.future)
                results.append(ack)  # settle() keeps the sequence; result() makes the PublishAck
        if futures:
            self._acked += settle(futures, results)
            self._count()
        self._room_opened()

    def _refused(self, item: Item, error: dict) -> None:
        """An ack that is an error: "no responders" (a status), or JetStream's error object."""
        status = error.get("status")
        if status is not None:
            self._no_responders(item, str(status))
            return
        code, err_code, text = error.get("code"), error.get("err_code"), error.get("description", "unknown error")
        # 503 is "try again" except err_code 10077: the stream's limits refused the
        # message (discard=new: maximum messages/bytes/per-subject exceeded).
        self._failed_attempt(
            item,
            broker_error(
                f"JetStream rejected event {item.event_id}: {text} (code {code}, err_code {err_code})",
                transient=code == 503 and err_code != _STREAM_FULL,
            ),
        )

    def _no_responders(self, item: Item, status: str) -> None:
        if status != "503" or item.subject in self._stream_seen:
            self._failed_attempt(
                item,
                broker_error(f"no JetStream responder for {item.subject.decode()} (status {status})", transient=True),
            )
            return
        waiting = self._checking.get(item.subject)
        if waiting is not None:  # one check per subject answers for every event waiting on it
            waiting.append(item)
            return
        self._checking[item.subject] = [item]
        asyncio.ensure_future(self._check_stream(item.subject))

    async def _check_stream(self, subject: bytes) -> None:
        name = subject.decode()
        captured = await self.transport.stream_captures(name, min(self.config.retry.attempt_timeout, 2.0))
        items = self._checking.pop(subject, [])
        if captured:
            self._stream_seen.add(subject)
        for item in items:
            if item.future.done():
                continue
            if captured is False:
                self._fail(
                    item,
                    broker_error(
                        f"no JetStream stream captures subject {name!r}: create one, or pass create_stream=True with stream=<name>",
                        transient=False,
                    ),
                )
            else:
                self._failed_attempt(
                    item, broker_error(f"no JetStream responder for {name} (stream leader election?)", transient=True)
                )
        self._wake.set()

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

    def _timeout(self, item: Item, last: BaseException | None) -> PublishTimeout:
        why = f" (last error: {last})" if last is not None else ""
        err = PublishTimeout(
            f"event {item.event_id} was not acknowledged within its delivery deadline of {self.config.delivery_timeout} s after {item.attempts} attempt(s){why}"
        )
        err.__cause__ = last
        return err

    async def _reap(self) -> None:
        """Every tick: fail or retry attempts without an answer; expire what is past its deadline."""
        policy = self.config.retry
        tick = min(0.05, policy.attempt_timeout / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            # While the broker is not reading (hung), resending would only pile copies into
            # the client's buffer: then enforce deadlines only.
            resend = self.transport.backlog < _MAX_BACKLOG
            late = [
                seq
                for seq, item in self._inflight.items()
                if item.deadline <= now or (resend and item.sent_at + policy.attempt_timeout <= now)
            ]
            for seq in late:
                item = self._inflight.pop(seq)
                if item.deadline <= now:
                    self._fail(item, self._timeout(item, None))
                else:
                    self._failed_attempt(
                        item, broker_error(f"no ack within {policy.attempt_timeout} s", transient=True)
                    )
            expired = [item for item in self._retries if item.deadline <= now]
            if expired:
                self._retries = [item for item in self._retries if item.deadline > now]
            expired += self.queue.take_expired(now)
            for item in expired:
                self._fail(item, self._timeout(item, None))
            if late or expired:
                self._wake.set()

    # ----------------------------------------------------------------- outcomes
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
        items = list(self._inflight.values()) + self._retries + list(self._delayed)
        for batch, timer in self._core_pending.values():
            timer.cancel()
            items += batch
        for waiting in self._checking.values():
            items += waiting
        for handle in self._delayed.values():
            handle.cancel()
        self._inflight.clear()
        self._retries = []
        self._delayed.clear()
        self._checking.clear()
        self._core_pending.clear()
        self._core_count = 0
        items += self.queue.get_batch(len(self.queue.queue) + 1)
        for item in items:
            if not item.future.done():
                self.abandoned.append(item.event_id)
            self._fail(item, PublisherClosed(f"publisher closed before event {item.event_id} was acknowledged"))
        self._report()
