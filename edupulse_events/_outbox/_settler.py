"""A store's own thread for settling claims: the relay's thread hands it the outcome of a claim and
goes on sending (its next batch is in flight while the rows of the one before are deleted and
committed, fsync included), instead of waiting for the database.

Jobs run one at a time, in the order given, each resolving its `concurrent.futures.Future` (the
job's error, e.g. `OutboxDatabaseError`, on it). The thread is a daemon, started at the first job
(again in a forked child: the parent's thread is not there), and ends at `close`, after running a
last job there (a SQLite connection is closed by the thread that opened it).
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Settler"]

_Job = tuple[Callable[[], Any], "concurrent.futures.Future[Any]"]


class Settler:
    """One thread running settle jobs in order."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``job`` after those submitted before; its future resolves with what it returns or raises."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                self._jobs = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._run, args=(self._jobs,), name=self._name, daemon=True)
                self._pid = os.getpid()
                self._thread.start()
            self._jobs.put((job, future))
        return future

    @staticmethod
    def _run(jobs: queue.SimpleQueue[_Job | None]) -> None:
        while True:
            entry = jobs.get()
            if entry is None:
                return
            job, future = entry
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = job()
            except BaseException as exc:  # noqa: BLE001 - the job's error goes to whoever waits for it
                future.set_exception(exc)
            else:
                future.set_result(result)

    def drain(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the jobs submitted so far have run; whether they have."""
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                return True
        done, _ = concurrent.futures.wait([self.submit(lambda: None)], timeout=timeout)
        return bool(done)

    def close(self, last: Callable[[], Any] | None, timeout: float) -> None:
        """Run ``last`` in the thread (when it runs), then end it; wait at most ``timeout`` s."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None or self._pid != os.getpid():
                if last is not None:
                    last()  # no thread of this process: nothing of it to close there
                return
            done: concurrent.futures.Future[Any] = concurrent.futures.Future()
            if last is not None:
                self._jobs.put((last, done))
            self._jobs.put(None)
        if last is not None:
            concurrent.futures.wait([done], timeout=timeout)
        thread.join(timeout)
