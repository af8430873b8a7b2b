"""The outcome side of publishing: `PublishAck` and the futures every publisher returns.

`PublishFuture` is a `concurrent.futures.Future` that cannot be cancelled, raises `WaitTimeout`
when ``result(timeout)`` runs out and `DeadlockError` when it would wait on a publisher's own
thread, and logs a done-callback that raises (anything, even ``SystemExit``) so that it never
reaches the publisher thread. `new_future` makes the futures publishers hand out: on the fast
path, a subclass whose instances share their publisher's condition and which `settle` resolves
a run of under one acquisition of it (the publisher thread calls it once per read of acks).
That subclass overrides private parts of `concurrent.futures.Future` (its ``_state``,
``_waiters``, ``_done_callbacks`` and ``_invoke_callbacks``), so at import a self-test checks
that this CPython's `Future` still has them and behaves with them as expected; where it does
not, or with ``EDUPULSE_EVENTS_FUTURES=plain`` (`FUTURES_ENV`), `new_future` is the plain
`PublishFuture`, which uses only `Future`'s public API (a condition per future; slower, as
correct). `new_ack` builds a `PublishAck` on the hot path. `mark_worker_thread` /
`in_worker_thread` let futures and publishers refuse to block a publisher's own thread.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from .errors import DeadlockError, WaitTimeout

__all__ = ["FUTURES_ENV", "PublishAck", "PublishFuture", "fast_futures_refusal"]

log = logging.getLogger("edupulse_events")
_worker_state = threading.local()
#: ``plain``: never take the fast futures (what the fallback does, on any CPython).
FUTURES_ENV = "EDUPULSE_EVENTS_FUTURES"


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


try:  # the states are in concurrent.futures' private module (checked below, with the rest)
    from concurrent.futures import _base as _futures_base
except ImportError:  # pragma: no cover - a CPython without it takes the plain futures
    _futures_base = None  # type: ignore[assignment]
_FINISHED: str = getattr(_futures_base, "FINISHED", "FINISHED")
_PENDING: str = getattr(_futures_base, "PENDING", "PENDING")
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


def _wait_timeout(timeout: float | None) -> WaitTimeout:
    return WaitTimeout(
        f"no outcome for this event within {timeout} s of waiting; it is still on its way "
        "(wait again, or let it go: its future resolves by its delivery deadline)"
    )


def _guarded(callback: Callable[[Any], object]) -> Callable[[Any], None]:
    """``callback``, logging whatever it raises (even ``BaseException``) instead of raising it."""

    def run(future: Any) -> None:
        try:
            callback(future)
        except BaseException:
            log.exception("done-callback %r of an event future raised", callback)

    return run


class PublishFuture(concurrent.futures.Future[Any]):
    """A `concurrent.futures.Future` for one published event; it cannot be cancelled.

    `result()`/`exception()` raise `WaitTimeout` (a `TimeoutError`) when ``timeout`` runs out
    before the event resolved: it is not failed, only not resolved yet. Waiting inside a
    publisher's own thread (e.g. from a done-callback) could never finish, so it raises
    `DeadlockError` instead. Done-callbacks run on the publisher thread: one that raises is
    logged and the next runs. This class uses only `Future`'s public API; publishers hand out
    a faster subclass where this CPython allows it (`new_future`).
    """

    def __init__(self, condition: threading.Condition | None = None) -> None:
        super().__init__()
        self._shared = condition if condition is not None else threading.Condition()

    def resolved(self) -> bool:
        """Whether the event resolved (`done()`; the publisher thread asks it)."""
        return self.done()

    def result(self, timeout: float | None = None) -> Any:
        """The event's `PublishAck`, waiting up to ``timeout`` s (None: until it resolves).

        Raises the event's error if it failed (`PublishTimeout`, `BrokerError`, ...), and
        `WaitTimeout` if ``timeout`` ran out first: the event is not failed, only not resolved yet.
        """
        if not self.done() and in_worker_thread():
            raise DeadlockError("waiting on an unresolved event from the publisher's own thread would wait forever")
        try:
            return super().result(timeout)
        except concurrent.futures.TimeoutError:
            if self.done():  # the event's own error
                raise
            raise _wait_timeout(timeout) from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The event's error, or None once acknowledged; `WaitTimeout` if ``timeout`` ran out first."""
        if not self.done() and in_worker_thread():
            raise DeadlockError("waiting on an unresolved event from the publisher's own thread would wait forever")
        try:
            return super().exception(timeout)
        except concurrent.futures.TimeoutError:
            raise _wait_timeout(timeout) from None

    def add_done_callback(self, fn: Callable[[concurrent.futures.Future[Any]], object]) -> None:
        """Call ``fn(future)`` once the event resolved (at once if it has); what it raises is logged."""
        super().add_done_callback(_guarded(fn))

    @property
    def condition(self) -> threading.Condition:
        """The condition `settle` takes for a run of futures (shared by one publisher's futures)."""
        return self._shared

    def settle_locked(self, result: Any, condition: threading.Condition) -> int | None:
        """None: `settle` resolves this future with ``set_result`` (the fast subclass does better)."""
        return None

    def run_callbacks(self) -> None:
        """Nothing here: ``set_result`` ran the done-callbacks."""

    def cancel(self) -> bool:
        """Always False: an accepted event is on its way and cannot be taken back."""
        return False


_future_result = concurrent.futures.Future.result
_future_exception = concurrent.futures.Future.exception


class _FastFuture(PublishFuture):
    """`PublishFuture` for speed, through `Future`'s private parts (checked at import).

    The futures of one publisher share one `threading.Condition` (a new Condition per future
    costs more than encoding the event), so `result()`/`exception()` wait in a loop until
    *this* future is done.
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

    def __init__(self, condition: threading.Condition | None = None) -> None:  # no super(): see above
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
                    raise _wait_timeout(timeout)

    def result(self, timeout: float | None = None) -> Any:
        """`PublishFuture.result`."""
        self._wait(timeout)
        result = _future_result(self, 0)
        if type(result) is int:  # a stream sequence (see settle): made a PublishAck when asked for
            result = self._result = new_ack(result, self._stream, False)
        return result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """`PublishFuture.exception`."""
        self._wait(timeout)
        return _future_exception(self, 0)

    add_done_callback = concurrent.futures.Future.add_done_callback  # _invoke_callbacks guards them

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


def _self_test() -> str | None:
    """What of `Future`'s private parts `_FastFuture` relies on is missing or behaves otherwise
    on this CPython (None: nothing): a few futures resolved and waited on every way it serves."""
    plain = concurrent.futures.Future[Any]()
    missing = {"_condition", "_state", "_result", "_exception", "_waiters", "_done_callbacks"} - set(vars(plain))
    if missing or not callable(getattr(concurrent.futures.Future, "_invoke_callbacks", None)):
        return f"concurrent.futures.Future has no {sorted(missing) or ['_invoke_callbacks']}"
    states = (getattr(_futures_base, "PENDING", None), getattr(_futures_base, "FINISHED", None))
    if (plain._state, _FINISHED) != (states[0], states[1]) or states != (_PENDING, _FINISHED):  # noqa: SLF001
        return "concurrent.futures.Future's states are not what the fast futures set"
    condition = threading.Condition()
    ok, failed, pending = _FastFuture(condition), _FastFuture(condition), _FastFuture(condition)
    called: list[object] = []
    ok.add_done_callback(called.append)
    error = RuntimeError("self-test")
    waited = concurrent.futures.wait([pending], timeout=0)  # installs and removes a waiter
    if settle([ok], [(1, "s", 7, False, None)]) != 1 or ok.result(0) != new_ack(7, "s", False) or called != [ok]:
        return "a settled future did not resolve or run its callback"
    failed.set_exception(error)
    if failed.exception(0) is not error or not failed.done() or waited.not_done != {pending}:
        return "a future's exception or wait() did not behave"
    done, not_done = concurrent.futures.wait([ok, failed, pending], timeout=0)
    if done != {ok, failed} or not_done != {pending} or pending.done():
        return "concurrent.futures.wait() does not see the fast futures' states"
    return None


def fast_futures_refusal() -> str | None:
    """Why this process hands out plain futures (None: the fast ones): `FUTURES_ENV`, or what
    the self-test found. Decided once, at import."""
    return _REFUSAL


def _refusal() -> str | None:
    if os.environ.get(FUTURES_ENV, "").strip().lower() == "plain":
        return f"{FUTURES_ENV}=plain"
    try:
        return _self_test()
    except Exception as exc:  # noqa: BLE001 - any surprise means: not this CPython's Future
        return f"the fast futures' self-test raised {type(exc).__name__}: {exc}"


_REFUSAL = _refusal()
if _REFUSAL is not None:  # asked for (info), or this CPython's Future is not what the fast futures need
    log.log(logging.INFO if _REFUSAL.startswith(FUTURES_ENV) else logging.WARNING, "plain event futures: %s", _REFUSAL)
#: What publishers call to make an event's future (a class: no call in between on the hot path).
new_future: Callable[[threading.Condition | None], PublishFuture] = PublishFuture if _REFUSAL else _FastFuture


def mark_worker_thread() -> None:
    """Called once by each publisher thread, so its futures can refuse to block there."""
    _worker_state.active = True


def in_worker_thread() -> bool:
    """Whether the calling thread is a publisher thread (blocking there could never finish)."""
    return getattr(_worker_state, "active", False) is True
