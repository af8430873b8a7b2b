"""The load behind `test_servers.py` (and `benchmarks/bench_recycle.py`): concurrent HTTP clients of
the example app, a worker killed mid-load, reading the stream back and the spool directory after
the server is gone. The servers themselves are `wsgi_servers`'s."""

from __future__ import annotations

import http.client
import itertools
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wsgi_servers import HOST, STREAM, WINDOW, poll

from edupulse_events._spool._files import spool_files
from edupulse_events.testing import NatsServer

REQUESTS = 1000
CLIENTS = 8
#: Fire-and-forget events must reach the stream this soon after the last answer, server still running.
DELIVERY_LAG = 10.0


# --------------------------------------------------------------------------- the clients


@dataclass(frozen=True)
class Reply:
    """One ``/publish`` request's outcome (status 0: no HTTP answer at all)."""

    status: int
    event_id: str | None = None
    pid: int | None = None
    sequence: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def publish_once(port: int, wait: bool) -> Reply:
    conn = http.client.HTTPConnection(HOST, port, timeout=30.0)
    try:
        conn.request("POST", "/publish?wait=1" if wait else "/publish", body=b"")
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        return Reply(0, error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
    seq, pid = resp.getheader("X-Broker-Sequence"), resp.getheader("X-Worker-Pid")
    return Reply(
        resp.status,
        resp.getheader("X-Event-Id"),
        int(pid) if pid else None,
        int(seq) if seq else None,
        None if 200 <= resp.status < 300 else body.decode(errors="replace"),
    )


@dataclass
class Load:
    """What a run of requests got back, and when (`drive` adds each reply as it comes, under ``lock``)."""

    replies: list[Reply] = field(default_factory=list)
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def since(self, start: int) -> list[Reply]:
        """The replies from the ``start``-th on, as they are now (safe while `drive` runs)."""
        with self.lock:
            return self.replies[start:]

    @property
    def ok(self) -> list[Reply]:
        return [r for r in self.replies if r.ok]

    @property
    def pids(self) -> set[int]:
        return {r.pid for r in self.replies if r.pid is not None}


def drive(
    port: int,
    n: int,
    *,
    wait: bool,
    clients: int = CLIENTS,
    at: tuple[int, Callable[[], object]] | None = None,
    load: Load | None = None,
) -> Load:
    """``n`` requests from ``clients`` threads; ``at=(i, action)`` runs ``action`` once, just before
    request ``i`` (in that client's thread: the others go on). Replies go to ``load`` (a new one by
    default) as they come, so an action can watch them."""
    counter = itertools.count()
    load = Load() if load is None else load
    errors: list[BaseException] = []

    def client() -> None:
        try:
            while (i := next(counter)) < n:
                if at is not None and i == at[0]:
                    at[1]()
                reply = publish_once(port, wait)
                with load.lock:
                    load.replies.append(reply)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=client, name=f"client-{k}") for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    load.seconds = time.monotonic() - started
    if errors:
        raise errors[0]
    return load


@dataclass
class KillWorker:
    """A `drive` ``at`` action: SIGKILL a worker (by its pid, from ``X-Worker-Pid``) while its
    fire-and-forget events certainly live in its memory only, then see its replacement serve.

    It pauses the broker (nothing is acknowledged) and goes on sending fire-and-forget requests,
    as the other clients do, until one worker (the first to answer after the pause) has answered
    ``WINDOW + beyond`` of them with a 2xx, so at least ``beyond`` of its events were never sent;
    SIGKILLs that worker, resumes the broker, and sends requests until a worker born after the
    kill has answered ``replacement`` of them (however few requests the other clients have left).
    Its requests count in ``load`` like the others'.
    """

    port: int
    nats: NatsServer
    load: Load
    beyond: int = 50
    replacement: int = 20
    timeout: float = 30.0
    pid: int | None = None
    #: The victim's 2xx answers while the broker was paused; how many replies ``load`` held at the kill.
    accepted: int = 0
    killed_at: int = 0

    def __call__(self) -> None:
        with self.load.lock:
            start = len(self.load.replies)
        self.nats.pause()
        try:
            self._send_until(start, self._victim_full, "the worker answering after the pause")
            assert self.pid is not None
            os.kill(self.pid, signal.SIGKILL)
            with self.load.lock:
                self.killed_at = len(self.load.replies)
        finally:
            self.nats.resume()
        before = {r.pid for r in self.load.since(0)[: self.killed_at]}
        self._send_until(
            self.killed_at,
            lambda replies: sum(1 for r in replies if r.ok and r.pid not in before) >= self.replacement,
            f"a worker started after the kill of {self.pid}",
        )

    def _victim_full(self, replies: list[Reply]) -> bool:
        if self.pid is None:
            self.pid = next((r.pid for r in replies if r.ok), None)
        self.accepted = sum(1 for r in replies if r.ok and r.pid == self.pid)
        return self.pid is not None and self.accepted >= WINDOW + self.beyond

    def _send_until(self, start: int, done: Callable[[list[Reply]], bool], who: str) -> None:
        """Send fire-and-forget requests until ``done(replies since start)``, for ``timeout`` s at most."""
        deadline = time.monotonic() + self.timeout
        while not done(self.load.since(start)):
            if time.monotonic() > deadline:
                raise AssertionError(f"not enough requests answered by {who} within {self.timeout} s")
            reply = publish_once(self.port, wait=False)
            with self.load.lock:
                self.load.replies.append(reply)


# --------------------------------------------------------------------------- the stream


def stored_count(nats: NatsServer) -> int:
    """How many messages the stream holds now (monitoring endpoint; -1 if it does not answer)."""
    jsz = nats.monitor("/jsz?streams=true")
    if jsz is None:
        return -1
    for account in jsz.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            if stream.get("name") == STREAM:
                return int(stream["state"]["messages"])
    return 0


def wait_stored(nats: NatsServer, count: int, timeout: float = DELIVERY_LAG) -> float | None:
    """Seconds until the stream holds ``count`` messages, or None if it did not within ``timeout``."""
    started = time.monotonic()
    deadline = started + timeout
    while stored_count(nats) < count:
        if not poll(deadline):
            return None
    return time.monotonic() - started


def spool_leftovers(directory: Path) -> list[str]:
    """The spool files in ``directory`` that still hold events (or are in use, or unreadable), one
    line each; [] when no event is left on disk. Only once no process uses the directory."""
    return [
        f"{info.path.name}: {'in use by a live process' if info.owner_alive else f'{info.count} events'}"
        + (f" ({info.error})" if info.error else "")
        for info in spool_files(directory)
        if info.owner_alive or info.error or info.count
    ]


SPOOL_VARIABLE = "EDUPULSE_EVENT_BROKER_SPOOL"
#: gunicorn's line for a worker it reaped after a SIGKILL (``{pid}``: the worker's)
GUNICORN_KILLED = r"Worker \(pid:{pid}\) was sent SIGKILL"
#: a publisher's line for a dead process's spool file it took over (``{pid}``: the dead one's)
SPOOL_ADOPTED = r"\[(\d+)\] edupulse_events INFO (\d+) events adopted from \S*/spool-{pid}-\w+\.db"
#: a publisher's line when it closed with events still in its spool file
SPOOL_LEFT = r"\[(\d+)\] edupulse_events WARNING publisher closed: .*?(\d+) wait in the spool (\S+)"
