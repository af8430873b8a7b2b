"""Publishers across processes: which are open, what a ``fork()`` does to them, and exit.

Every open publisher is tracked here (weakly). In a forked child, each is told to start
afresh (`Tracked._on_fork`): by Python's at-fork hook when the server runs it, and otherwise
by `own_process`, which the publisher calls when it finds its pid stale (uWSGI forks its
workers without the hooks unless ``--py-call-osafterfork``). Before a fork, while any
publisher is open, `prepare_children` builds what each child's first publish would otherwise
build again (in a uWSGI master, which forks without the hooks, ``check()`` calls it through
`prepare_uwsgi_workers`). At interpreter exit, open publishers are closed within their
``exit_timeout``. The `Tracked` members are private on the publisher (not its public API).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import weakref
from typing import Protocol

from .._nats import prepare_process
from ..codec import warm

__all__ = ["Tracked", "keep_orphan", "own_process", "prepare_children", "prepare_uwsgi_workers", "track", "untrack"]

log = logging.getLogger("edupulse_events")


class Tracked(Protocol):
    """What this module needs of a publisher."""

    @property
    def _pid(self) -> int: ...

    @property
    def _exit_timeout(self) -> float: ...

    def _on_fork(self) -> None: ...

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
        if publisher._pid != pid:  # noqa: SLF001 - the Tracked protocol
            log.info("publisher %s is in a new process (pid %d) no fork hook reported: starting afresh", name, pid)
            publisher._on_fork()  # noqa: SLF001 - the Tracked protocol


def prepare_children() -> None:
    """Build, in a process about to fork workers, what each one's first publish would otherwise
    build again (part of its first publish: `bench_worker.py`, docs/performance.md): the default
    codec's encoders, the fast path's checks and ack matchers. Cheap once done; never fails the
    fork (errors are logged)."""
    try:
        warm()
        prepare_process()
    except Exception:
        log.exception("preparing for a fork failed (each child will do it itself)")


def prepare_uwsgi_workers() -> None:
    """`prepare_children` in a uWSGI master (the app loaded before forking, uWSGI's default),
    which forks its workers without running the at-fork hooks."""
    uwsgi = sys.modules.get("uwsgi")
    try:
        master = uwsgi is not None and uwsgi.worker_id() == 0
    except Exception:  # noqa: BLE001 - not uWSGI's module after all, or an older one
        master = False
    if master:
        prepare_children()


def _before_fork() -> None:
    if _live:
        prepare_children()


def _after_fork_in_child() -> None:
    for publisher in list(_live):
        publisher._on_fork()  # noqa: SLF001 - the Tracked protocol


def _close_all_at_exit() -> None:
    for publisher in list(_live):
        try:
            publisher.close(publisher._exit_timeout)  # noqa: SLF001 - the Tracked protocol
        except Exception:
            log.exception("closing %r at exit failed", publisher)


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
