"""Supervision of the publisher thread's event loop: nothing that runs there fails unnoticed.

Every piece of work the loop runs enters through one of three doors of a `Supervisor`:
`spawn` (tasks: all kept, and cancelled and awaited by `cancel_all`), `call_soon` /
`call_at` (callbacks and timers) and `guard` (calls that arrive from elsewhere: nats-py's
callbacks, future done-callbacks). Whatever escapes any of them — a bug, a dependency
upgrade that changed behaviour, even ``SystemExit`` — goes to one place, the ``on_crash``
function the worker gives, once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["Supervisor"]


class Supervisor:
    """The doors through which work enters one event loop; an escape calls ``on_crash`` once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_crash: Callable[[BaseException], None]) -> None:
        self._loop = loop
        self._on_crash = on_crash
        self._tasks: set[asyncio.Task[None]] = set()
        #: The first error that escaped (None while all is well).
        self.error: BaseException | None = None

    @property
    def tasks(self) -> frozenset[asyncio.Task[None]]:
        """The tasks started through `spawn` that have not finished."""
        return frozenset(self._tasks)

    def crash(self, exc: BaseException) -> None:
        """Report ``exc`` as escaped (the first report wins)."""
        if self.error is None:
            self.error = exc
            self._on_crash(exc)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as a task that is kept until it ends; its error is a crash."""
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                self.crash(exc)

    def call_soon(self, fn: Callable[..., None], *args: Any) -> asyncio.Handle:
        """Run ``fn(*args)`` on the loop soon; an exception is a crash."""
        return self._loop.call_soon(self.guard, fn, *args)

    def call_at(self, when: float, fn: Callable[..., None], *args: Any) -> asyncio.TimerHandle:
        """Run ``fn(*args)`` at ``when`` (the loop's clock is time.monotonic()); an exception is a crash."""
        return self._loop.call_at(when, self.guard, fn, *args)

    def guard(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` now; an exception is a crash."""
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - supervision: nothing may escape unnoticed
            self.crash(exc)

    async def cancel_all(self, timeout: float) -> None:
        """Cancel every kept task and wait up to ``timeout`` s for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
