"""The outcome side of publishing: `PublishAck` and the futures every publisher returns.

`PublishFuture` is a `concurrent.futures.Future` whose instances share their publisher's
condition; `settle` resolves a run of them under one acquisition of it (the publisher thread
calls it once per read of acks), and `new_ack` builds a `PublishAck` on that hot path.
`mark_worker_thread` / `in_worker_thread` let futures and publishers refuse to block a
publisher's own thread. A done-callback that raises (anything, even ``SystemExit``) is
logged and never reaches the publisher thread.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures._base import FINISHED, PENDING
from typing import Any

import attrs

from .errors import DeadlockError, WaitTimeout

__all__ = ["PublishAck", "PublishFuture"]

log = logging.getLogger("edupulse_events")
_worker_state = threading.local()


@attrs.frozen(slots=True)
class PublishAck:
    """The broker's receipt for one event. Core NATS has no sequence: ``broker_sequence=None``.

    ``spooled=True`` (with a spool configured): not acknowledged yet, but safe in the local spool
    (the broker was away past the delivery deadline, or the publisher closed); it is delivered
    when a publisher on the same spool directory reaches the broker.
    """

    broker_sequence: int | None
    stream: str | None
    duplicate: bool = False
    spooled: bool = False


_FINISHED = FINISHED
_PENDING = PENDING
_RESOLVED_WITH_CALLBACKS = 2
_new = object.__new__
# the slots' own setters: a frozen attrs class refuses setattr, and its __init__ costs twice as much
_set_sequence = PublishAck.__dict__["broker_sequence"].__set__
_set_stream = PublishAck.__dict__["stream"].__set__
_set_duplicate = PublishAck.__dict__["duplicate"].__set__
_set_spooled = PublishAck.__dict__["spooled"].__set__


def new_ack(broker_sequence: int | None, stream: str | None, duplicate: bool) -> PublishAck:
    """`PublishAck(...)` for the publisher thread's hot path: half the cost of the frozen
    class's ``__init__`` (the values come from the broker's ack, already typed)."""
    ack = _new(PublishAck)
    _set_sequence(ack, broker_sequence)
    _set_stream(ack, stream)
    _set_duplicate(ack, duplicate)
    _set_spooled(ack, False)
    return ack


class PublishFuture(concurrent.futures.Future[Any]):
    """A `concurrent.futures.Future` for one published event; it cannot be cancelled.

    Speed: the futures of one publisher share one `threading.Condition` (a new Condition per
    future costs more than encoding the event), so `result()`/`exception()` wait in a loop
    until *this* future is done. Waiting inside a publisher's own thread (e.g. from a
    done-callback) could never finish, so it raises `DeadlockError` instead.
    """

    __slots__ = ()
    # Class-level initial values (Future.__init__ sets them per instance): resolving a future
    # assigns its own, so a pending future costs three attribute writes less to create.
    _state = _PENDING
    _result: Any = None
    _exception: BaseException | None = None
    # The lists of concurrent.futures.wait()/as_completed() waiters and of done-callbacks are
    # made on first use (few futures ever get either): two objects fewer per event for the
    # allocator and the garbage collector, which otherwise costs more than encoding.
    _waiter_list: list[Any] | None = None
    _callback_list: list[Callable[[Any], object]] | None = None
    _stream: str | None = None

    def __init__(self, condition: threading.Condition | None = None) -> None:
        self._condition = condition if condition is not None else threading.Condition()

    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]  # Future keeps a list; this one is made on first use
        waiters = self._waiter_list
        if waiters is None:
            waiters = self._waiter_list = []
        return waiters

    @property
    def _done_callbacks(self) -> list[Callable[[Any], object]]:  # what Future.add_done_callback() appends to
        callbacks = self._callback_list
        if callbacks is None:
            callbacks = self._callback_list = []
        return callbacks

    def _finished(self) -> bool:
        return self._state == _FINISHED

    def resolved(self) -> bool:
        """`done()` without taking the shared condition: for the publisher thread, the only one
        that resolves these futures (so it always sees its own writes)."""
        return self._state == _FINISHED

    def _wait(self, timeout: float | None) -> None:
        if self._state != _FINISHED:
            if getattr(_worker_state, "active", False):
                raise DeadlockError("waiting on an unresolved event from the publisher's own thread would wait forever")
            with self._condition:
                if not self._condition.wait_for(self._finished, timeout):
                    raise WaitTimeout(
                        f"no outcome for this event within {timeout} s of waiting; it is still on its way "
                        "(wait again, or let it go: its future resolves by its delivery deadline)"
                    )

    def result(self, timeout: float | None = None) -> Any:
        """The event's `PublishAck`, waiting up to ``timeout`` s (None: until it resolves).

        Raises the event's error if it failed (`PublishTimeout`, `BrokerError`, ...), and
        `WaitTimeout` if ``timeout`` ran out first: the event is not failed, only not resolved yet.
        """
        self._wait(timeout)
        result = super().result(0)
        if type(result) is int:  # a stream sequence (see settle): made a PublishAck when asked for
            result = self._result = new_ack(result, self._stream, False)
        return result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The event's error, or None once acknowledged; `WaitTimeout` if ``timeout`` ran out first."""
        self._wait(timeout)
        return super().exception(0)

    def _invoke_callbacks(self) -> None:
        """Run the done-callbacks, each on its own: one that raises is logged and the next runs.

        Unlike `concurrent.futures.Future`, this also catches ``BaseException`` (a callback that
        calls ``sys.exit()``): callbacks run on the publisher thread, which must go on.
        """
        for callback in self._done_callbacks:
            try:
                callback(self)
            except BaseException:
                log.exception("done-callback %r of an event future raised", callback)

    @property
    def condition(self) -> threading.Condition:
        """The condition this future's waiters wait on (shared by one publisher's futures)."""
        return self._condition

    def settle_locked(self, result: Any, condition: threading.Condition) -> int | None:
        """With ``condition`` held, resolve as ``set_result`` would but wake no one (`settle`
        wakes them all once): 0 if already done, 1 if resolved, 2 if resolved and it has
        done-callbacks to run; None if this future waits on another condition."""
        if self._condition is not condition:
            return None
        if self._state != _PENDING:
            return 0
        if type(result) is tuple:
            self._result = result[2] if type(result[2]) is int else new_ack(result[2], result[1], result[3])
            self._stream = result[1]
        else:
            self._result = result
        self._state = _FINISHED
        if self._waiter_list:
            for waiter in self._waiter_list:
                waiter.add_result(self)
        return _RESOLVED_WITH_CALLBACKS if self._callback_list else 1

    def run_callbacks(self) -> None:
        """Run the done-callbacks of a future `settle` resolved."""
        self._invoke_callbacks()

    def cancel(self) -> bool:
        """Always False: an accepted event is on its way and cannot be taken back."""
        return False

    def __repr__(self) -> str:
        if self._state == _FINISHED and self._exception is None:
            self.result(0)
        return super().__repr__()


def settle(futures: Sequence[PublishFuture], results: Sequence[Any]) -> int:
    """Resolve many futures at once, as ``set_result`` each would (waiters of
    `concurrent.futures.wait`/`as_completed`, then done-callbacks), taking their shared
    condition once and waking its waiters once. Skips futures already done; returns how many
    it resolved. Futures with another condition (none, in practice) get ``set_result``.

    A JetStream ack that is neither an error nor a duplicate may be given as the ack tuple
    `_acks.AckReader` reads (``(publish sequence, stream, stream sequence, False, None)``):
    the future then keeps the stream sequence and name, and `PublishFuture.result` makes the
    `PublishAck` when someone asks (most callers never do): no object per event for the
    allocator and the garbage collector to track.
    """
    if not futures:
        return 0
    condition = futures[0].condition
    with_callbacks = []
    others = []
    count = 0
    with condition:
        for future, result in zip(futures, results, strict=True):
            outcome = future.settle_locked(result, condition)
            if outcome:
                count += 1
                if outcome == _RESOLVED_WITH_CALLBACKS:
                    with_callbacks.append(future)
            elif outcome is None:
                others.append((future, result))
        condition.notify_all()
    for future, result in others:
        try:
            future.set_result(new_ack(result[2], result[1], result[3]) if type(result) is tuple else result)
            count += 1
        except concurrent.futures.InvalidStateError:
            pass
    for future in with_callbacks:
        future.run_callbacks()
    return count


def mark_worker_thread() -> None:
    """Called once by each publisher thread, so its futures can refuse to block there."""
    _worker_state.active = True


def in_worker_thread() -> bool:
    """Whether the calling thread is a publisher thread (blocking there could never finish)."""
    return getattr(_worker_state, "active", False) is True
