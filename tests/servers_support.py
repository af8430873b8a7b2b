"""The machinery behind `test_servers.py` (and `benchmarks/bench_recycle.py`): the example WSGI
app under a real gunicorn or uWSGI subprocess (own process group, stopped by its own pid, ready
when its workers say so), concurrent HTTP clients, a worker killed mid-load, reading the stream
back and the spool directory after the server is gone."""

from __future__ import annotations

import contextlib
import http.client
import importlib.metadata
import importlib.util
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from edupulse_events import PublisherConfig
from edupulse_events._spool_files import spool_files
from edupulse_events.testing import NatsServer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
STREAM = "EXAMPLE"
SUBJECT = "edupulse.{tenant}.{type}"
HOST = "127.0.0.1"
REQUESTS = 1000
CLIENTS = 8
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
#: Fire-and-forget events must reach the stream this soon after the last answer, server still running.
DELIVERY_LAG = 10.0
POLL = 0.05

HAVE_GUNICORN = importlib.util.find_spec("gunicorn") is not None
UWSGI = shutil.which("uwsgi", path=str(Path(sys.executable).parent)) or shutil.which("uwsgi")


def _poll(deadline: float) -> bool:
    """Wait one poll interval; False once ``deadline`` has passed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    threading.Event().wait(min(POLL, remaining))
    return True


# --------------------------------------------------------------------------- the server process


class WsgiServer:
    """One gunicorn or uWSGI master (and its workers) in its own process group, output in a log file."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        port: int,
        log_path: Path,
        ready: Sequence[tuple[str, int]],
        fifo: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.env = env
        self.port = port
        self.log_path = log_path
        #: Start is complete when each pattern is in the log that many times and /health answers.
        self.ready = list(ready)
        #: uWSGI's master FIFO: ``q`` is its graceful shutdown (SIGTERM is not, in uWSGI 2.0).
        self.fifo = fifo
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = START_TIMEOUT) -> WsgiServer:
        """Spawn the master; wait until its log shows every worker started (``ready``) and
        ``/health`` answers 200 (or fail with the log)."""
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=EXAMPLES,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the workers are ours to clean up
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode} during start:\n{self.log_text()}")
            if self.log_has(self.ready) and health(self.port):
                return self
            if not _poll(deadline):
                raise AssertionError(f"server not ready within {timeout} s:\n{self.log_text()}")

    def log_count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log_text()))

    def log_has(self, wanted: Sequence[tuple[str, int]]) -> bool:
        return all(self.log_count(pattern) >= n for pattern, n in wanted)

    def wait_log(self, done: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
        """Poll the log until ``done()``; fail with the log after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not done():
            if not _poll(deadline):
                raise AssertionError(f"not seen within {timeout} s: {what}\n{self.log_text()}")

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the master (only while it runs)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def begin_graceful_stop(self, timeout: float = START_TIMEOUT) -> None:
        """gunicorn: SIGTERM. uWSGI: ``q`` on the master FIFO (workers finish their request, then
        run their exit hooks), written once the master reads it."""
        if self.fifo is None:
            self.signal(signal.SIGTERM)
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:  # not created yet (ENOENT), or no reader yet (ENXIO)
                if not _poll(deadline):
                    raise AssertionError(f"the master FIFO {self.fifo} has no reader: {exc}") from None
                continue
            try:
                os.write(fd, b"q")
            finally:
                os.close(fd)
            return

    def wait_exit(self, timeout: float) -> int | None:
        """The master's exit code, or None if it is still running after ``timeout`` s."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM the master (again every 2 s: a uWSGI master ignores it until its loop runs);
        after ``timeout`` s SIGKILL its process group (the master, not yet reaped, and its
        workers: nothing else is in it). Returns the master's exit code (None if killed)."""
        if self.proc is None:
            return None
        code: int | None = self.proc.returncode
        try:
            deadline = time.monotonic() + timeout
            while code is None and (left := deadline - time.monotonic()) > 0:
                self.signal(signal.SIGTERM)
                code = self.wait_exit(min(2.0, left))
            if code is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # the group is the master's own pid
                self.proc.wait()
        finally:
            if self._log is not None:
                self._log.close()
        return code

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def health(port: int) -> bool:
    """One ``GET /health`` probe."""
    conn = http.client.HTTPConnection(HOST, port, timeout=2.0)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


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


#: How many events a worker's publisher has sent and not seen acknowledged at most (the example
#: app sets no window). Sent ones may reach the broker even from a killed process (from the
#: kernel's socket buffers); the rest of what it accepted is in its memory only.
WINDOW = PublisherConfig(servers="nats://127.0.0.1:4222", subject=SUBJECT).window


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
        if not _poll(deadline):
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


# --------------------------------------------------------------------------- server command lines


UWSGI_ACCEPTING_LINE = "uwsgi worker accepting"
GUNICORN_WORKERS = (r"Booting worker with pid", 4)
UWSGI_ACCEPTING = (rf"(?m)^{UWSGI_ACCEPTING_LINE}$", 4)
UWSGI_APPS = (r"WSGI app \d+ \(mountpoint='[^']*'\) ready in", 4)  # --lazy-apps: one per worker
#: a worker that reached --max-requests; the master then respawns it
UWSGI_RECYCLED, UWSGI_RESPAWNED = r"\.\.\.The work of process \d+ is done", r"Respawned uWSGI worker \d+"


SPOOL_VARIABLE = "EDUPULSE_EVENT_BROKER_SPOOL"
#: gunicorn's line for a worker it reaped after a SIGKILL (``{pid}``: the worker's)
GUNICORN_KILLED = r"Worker \(pid:{pid}\) was sent SIGKILL"
#: a publisher's line for a dead process's spool file it took over (``{pid}``: the dead one's)
SPOOL_ADOPTED = r"\[(\d+)\] edupulse_events INFO (\d+) events adopted from \S*/spool-{pid}-\w+\.db"
#: a publisher's line when it closed with events still in its spool file
SPOOL_LEFT = r"\[(\d+)\] edupulse_events WARNING publisher closed: .*?(\d+) wait in the spool (\S+)"


def server_env(nats: NatsServer) -> dict[str, str]:
    """The environment the app reads (build_from_env), without coverage's subprocess hooks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVERAGE_", "COV_CORE_"))}
    env.update(
        EDUPULSE_EVENT_BROKER_URL=nats.url,
        EDUPULSE_EVENT_BROKER_SUBJECT=SUBJECT,
        EDUPULSE_EXAMPLE_STREAM=STREAM,
        PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        PYTHONUNBUFFERED="1",
    )
    return env


def gunicorn_argv(port: int, *options: str) -> list[str]:
    """``gunicorn`` with 4 sync workers serving the example app on 127.0.0.1:``port``."""
    argv = [sys.executable, "-m", "gunicorn", "--workers", "4", "--bind", f"{HOST}:{port}", "--chdir", str(EXAMPLES)]
    if tuple(int(p) for p in re.findall(r"\d+", importlib.metadata.version("gunicorn"))[:2]) >= (25, 1):
        argv.append("--no-control-socket")  # else every instance shares one socket in $HOME
    return [*argv, "--graceful-timeout", "20", *options, "wsgi_app:application"]


def uwsgi_argv(port: int, *options: str) -> list[str]:
    """``uwsgi --master`` with 4 processes serving the example app on 127.0.0.1:``port``."""
    assert UWSGI is not None
    return [
        UWSGI,
        "--strict",
        "--master",
        "--processes",
        "4",
        "--http-socket",
        f"{HOST}:{port}",
        "--need-app",
        "--die-on-term",
        "--home",
        sys.prefix,
        "--pythonpath",
        str(EXAMPLES),
        "--module",
        "wsgi_app:application",
        "--disable-logging",  # no line per request
        "--worker-reload-mercy",
        "20",
        "--reload-mercy",
        "20",
        # a line once a worker can take requests (its signal handlers set: a signal before would
        # run the master's handler in it)
        "--hook-accepting",
        f"log:{UWSGI_ACCEPTING_LINE}",
        *options,
    ]


Serve = Callable[..., WsgiServer]
