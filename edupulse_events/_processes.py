"""Publishers across processes: which are open, what a ``fork()`` does to them, and exit.

Every open publisher is tracked here (weakly). In a forked child, each is told to start
afresh (`Tracked.on_fork`): by Python's at-fork hook when the server runs it, and otherwise
by `own_process`, which the publisher calls when it finds its pid stale (uWSGI forks its
workers without the hooks unless ``--py-call-osafterfork``). At interpreter exit, open
publishers are closed within their ``exit_timeout``.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from typing import Protocol

__all__ = ["Tracked", "keep_orphan", "own_process", "track", "untrack"]

log = logging.getLogger("edupulse_events")


class Tracked(Protocol):
    """What this module needs of a publisher."""

    @property
    def pid(self) -> int: ...

    @property
    def exit_timeout(self) -> float: ...

    def on_fork(self) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


_live: weakref.WeakSet[Tracked] = weakref.WeakSet()
_orphans: list[object] = []  # a parent's workers, kept (never run) in a forked child
_fork_locks: dict[int, threading.Lock] = {}  # per process: made after the fork, so never inherited held


def track(publisher: Tracked) -> None:
    _live.add(publisher)


def untrack(publisher: Tracked) -> None:
    _live.discard(publisher)


def keep_orphan(worker: object) -> None:
    """Keep a parent's worker referenced in the child (its thread does not exist here: it must
    not be collected and finalized as if it had run)."""
    _orphans.append(worker)


def own_process(publisher: Tracked, name: str) -> None:
    """``publisher`` found its pid stale: start it afresh in this process, once, whichever of
    the new process's request threads gets here first."""
    pid = os.getpid()
    with _fork_locks.setdefault(pid, threading.Lock()):
        if publisher.pid != pid:
            log.info("publisher %s is in a new process (pid %d) no fork hook reported: starting afresh", name, pid)
            publisher.on_fork()


def _after_fork_in_child() -> None:
    for publisher in list(_live):
        publisher.on_fork()


def _close_all_at_exit() -> None:
    for publisher in list(_live):
        try:
            publisher.close(publisher.exit_timeout)
        except Exception:
            log.exception("closing %r at exit failed", publisher)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
