"""The example WSGI app (``examples/wsgi_app.py``) under real pre-fork servers.

gunicorn and uWSGI run as subprocesses on 127.0.0.1 (each in its own process group, stopped by
its own pid), concurrent HTTP clients publish through them, and the stream is read back: every
2xx answer's event is stored exactly once, through worker recycling, reloads and graceful stops,
for views that wait for the ack (201) and fire-and-forget ones (202).
"""

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
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
from helpers import read_stream

from edupulse_events.testing import NatsServer, free_port

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

pytestmark = [
    pytest.mark.servers,
    pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="pre-fork servers need POSIX"),
]

HAVE_GUNICORN = importlib.util.find_spec("gunicorn") is not None
UWSGI = shutil.which("uwsgi", path=str(Path(sys.executable).parent)) or shutil.which("uwsgi")
needs_gunicorn = pytest.mark.skipif(
    not HAVE_GUNICORN, reason="gunicorn is not installed (pip install -e '.[test]' installs it)"
)
needs_uwsgi = pytest.mark.skipif(
    UWSGI is None, reason="uwsgi is not installed (pip install -e '.[test]' builds it; it needs a C compiler)"
)


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
    """What a run of requests got back, and when."""

    replies: list[Reply] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> list[Reply]:
        return [r for r in self.replies if r.ok]

    @property
    def pids(self) -> set[int]:
        return {r.pid for r in self.replies if r.pid is not None}


def drive(
    port: int, n: int, *, wait: bool, clients: int = CLIENTS, at: tuple[int, Callable[[], object]] | None = None
) -> Load:
    """``n`` requests from ``clients`` threads; ``at=(i, action)`` runs ``action`` once, just before request ``i``."""
    counter = itertools.count()
    load = Load()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client() -> None:
        mine: list[Reply] = []
        try:
            while (i := next(counter)) < n:
                if at is not None and i == at[0]:
                    at[1]()
                mine.append(publish_once(port, wait))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)
        with lock:
            load.replies.extend(mine)

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


def check_stream(nats: NatsServer, load: Load, *, every_request_ok: bool) -> None:
    """Every 2xx answer's event is stored exactly once (a 201's at the sequence it reported);
    with ``every_request_ok`` every request got a 2xx and nothing else is stored."""
    stored = read_stream(nats.url, STREAM, timeout=30.0)
    counts = Counter(m.headers.get("Nats-Msg-Id", "") for m in stored)
    doubled = [event_id for event_id, n in counts.items() if n > 1]
    assert not doubled, f"stored more than once: {doubled[:10]}"
    sequence_of = {m.headers.get("Nats-Msg-Id", ""): m.sequence for m in stored}
    answered = {r.event_id or "": r for r in load.ok}
    assert "" not in answered, "a 2xx answer without X-Event-Id"
    missing = [event_id for event_id in answered if event_id not in sequence_of]
    assert not missing, f"{len(missing)} of {len(answered)} 2xx answers have no stored event: {missing[:10]}"
    wrong = [r for i, r in answered.items() if r.sequence is not None and sequence_of[i] != r.sequence]
    assert not wrong, f"201 answers naming another sequence than the stored one: {wrong[:5]}"
    if every_request_ok:
        failed = [r for r in load.replies if not r.ok]
        assert not failed, f"{len(failed)} requests failed, e.g. {failed[:3]}"
        assert len(stored) == len(answered) == len(load.replies)


# --------------------------------------------------------------------------- server command lines


UWSGI_ACCEPTING_LINE = "uwsgi worker accepting"
GUNICORN_WORKERS = (r"Booting worker with pid", 4)
UWSGI_ACCEPTING = (rf"(?m)^{UWSGI_ACCEPTING_LINE}$", 4)
UWSGI_APPS = (r"WSGI app \d+ \(mountpoint='[^']*'\) ready in", 4)  # --lazy-apps: one per worker
#: a worker that reached --max-requests; the master then respawns it
UWSGI_RECYCLED, UWSGI_RESPAWNED = r"\.\.\.The work of process \d+ is done", r"Respawned uWSGI worker \d+"


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


@pytest.fixture
def serve(nats_server: NatsServer, tmp_path: Path) -> Iterator[Serve]:
    """Factory: ``serve("gunicorn" | "uwsgi", *options)`` starts the example app under that server
    (ready: every worker spawned, ``/health`` answers); every server is stopped at teardown."""
    servers: list[WsgiServer] = []

    def start(kind: str, *options: str) -> WsgiServer:
        port = free_port()
        if kind == "gunicorn":
            argv, ready = gunicorn_argv(port, *options), [GUNICORN_WORKERS]
            fifo = None
        else:
            fifo = tmp_path / f"uwsgi-{len(servers)}.fifo"
            argv, ready = uwsgi_argv(port, "--master-fifo", str(fifo), *options), [UWSGI_ACCEPTING]
            if "--lazy-apps" in options:
                ready.append(UWSGI_APPS)
        log = tmp_path / f"{kind}-{len(servers)}.log"
        server = WsgiServer(argv, server_env(nats_server), port, log, ready, fifo)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


def assert_publishers_closed(server: WsgiServer, load: Load) -> None:
    """Each worker that served a request closed its publisher at exit, every event acknowledged."""
    log = server.log_text()
    closed = re.findall(
        r"\[(\d+)\] edupulse_events \w+ publisher closed: \d+ events acknowledged, 0 failed, none left", log
    )
    assert load.pids <= {int(pid) for pid in closed}, log


def stop_cleanly(server: WsgiServer, load: Load) -> None:
    """A graceful stop: the master exits 0, each worker's exit hook closed its publisher with every
    event acknowledged, and the library logged no error."""
    server.begin_graceful_stop()
    code = server.wait_exit(STOP_TIMEOUT)
    log = server.log_text()
    assert code == 0, f"exit code {code}:\n{log}"
    problems = [line for line in log.splitlines() if re.search(r"edupulse_events (ERROR|CRITICAL)|Traceback", line)]
    assert not problems, "\n".join(problems) + "\n" + log
    assert_publishers_closed(server, load)


def run_steady(server: WsgiServer, nats: NatsServer, wait: bool, n: int = REQUESTS) -> Load:
    """``n`` requests; all answered 2xx, and (fire-and-forget too) stored while the server runs."""
    load = drive(server.port, n, wait=wait)
    assert len(load.ok) == n, f"{n - len(load.ok)} failed, e.g. {[r for r in load.replies if not r.ok][:3]}"
    lag = wait_stored(nats, n)
    assert lag is not None, (
        f"{n - stored_count(nats)} of {n} events not in the stream {DELIVERY_LAG} s after their 2xx "
        f"(the server still running):\n{server.log_text()}"
    )
    return load


WAITS = [pytest.param(True, id="201-wait"), pytest.param(False, id="202-fire-and-forget")]


# --------------------------------------------------------------------------- gunicorn


GUNICORN_STEADY = [
    pytest.param((), id="no-preload"),
    pytest.param(("--preload",), id="preload"),
    pytest.param(("--max-requests", "50", "--max-requests-jitter", "10"), id="max-requests-50"),
]


@needs_gunicorn
@pytest.mark.parametrize("wait", WAITS)
@pytest.mark.parametrize("options", GUNICORN_STEADY)
def test_gunicorn_stores_every_answered_event_once(
    serve: Serve, nats_server: NatsServer, options: tuple[str, ...], wait: bool
) -> None:
    """gunicorn, 4 sync workers (preloaded or not, recycled every ~50 requests): every 2xx event is stored once."""
    server = serve("gunicorn", *options)
    load = run_steady(server, nats_server, wait)
    if "--max-requests" in options:
        assert len(load.pids) > 4 + REQUESTS // 100, f"workers were not recycled: {len(load.pids)} pids"
    stop_cleanly(server, load)
    check_stream(nats_server, load, every_request_ok=True)


@needs_gunicorn
@pytest.mark.parametrize("wait", WAITS)
def test_gunicorn_sighup_reload_during_load_loses_nothing(serve: Serve, nats_server: NatsServer, wait: bool) -> None:
    """SIGHUP (new workers, old ones stopped gracefully) in the middle of the load: every 2xx event is stored once."""
    server = serve("gunicorn")
    before = server.log_count(GUNICORN_WORKERS[0])
    load = drive(server.port, REQUESTS, wait=wait, at=(REQUESTS // 3, lambda: server.signal(signal.SIGHUP)))
    server.wait_log(lambda: server.log_count(GUNICORN_WORKERS[0]) >= before + 4, "4 new workers after SIGHUP")
    assert len(load.ok) == REQUESTS, [r for r in load.replies if not r.ok][:3]
    stop_cleanly(server, load)
    check_stream(nats_server, load, every_request_ok=True)


@needs_gunicorn
@pytest.mark.parametrize("wait", WAITS)
def test_gunicorn_sigterm_during_load_stores_every_answered_event(
    serve: Serve, nats_server: NatsServer, wait: bool
) -> None:
    """SIGTERM in the middle of the load: gunicorn stops gracefully and every event that got a 2xx is stored."""
    server = serve("gunicorn")
    load = drive(server.port, REQUESTS, wait=wait, at=(REQUESTS // 2, lambda: server.signal(signal.SIGTERM)))
    assert server.wait_exit(STOP_TIMEOUT) == 0, server.log_text()
    assert REQUESTS // 3 < len(load.ok) < REQUESTS, f"the stop did not land during the load: {len(load.ok)} 2xx"
    assert_publishers_closed(server, load)
    check_stream(nats_server, load, every_request_ok=False)


# --------------------------------------------------------------------------- uWSGI


UWSGI_STEADY = [
    pytest.param((), id="default"),  # the app imported once, in the master; workers forked without hooks
    pytest.param(("--enable-threads",), id="default-enable-threads"),
    pytest.param(("--lazy-apps",), id="lazy-apps"),
    pytest.param(("--py-call-osafterfork",), id="py-call-osafterfork"),
    pytest.param(("--py-call-uwsgi-fork-hooks",), id="py-call-uwsgi-fork-hooks"),
    pytest.param(("--max-requests", "50", "--min-worker-lifetime", "0"), id="max-requests-50"),
]


@needs_uwsgi
@pytest.mark.parametrize("wait", WAITS)
@pytest.mark.parametrize("options", UWSGI_STEADY)
def test_uwsgi_stores_every_answered_event_once(
    serve: Serve, nats_server: NatsServer, options: tuple[str, ...], wait: bool
) -> None:
    """uWSGI master + 4 workers (app in master or workers, fork hooks or not, recycled): every 2xx stored once."""
    server = serve("uwsgi", *options)
    assert "python threads support enabled" in server.log_text(), (
        "this uWSGI runs without Python threads (before 2.0.27 they are off unless --enable-threads): "
        "the publisher thread only runs while a request executes, so fire-and-forget events wait for "
        "the next request and fail with PublishTimeout after delivery_timeout"
    )
    load = run_steady(server, nats_server, wait)
    if "--max-requests" in options:
        assert len(load.pids) > 4 + REQUESTS // 100, f"workers were not recycled: {len(load.pids)} pids"

        # a stop must not race a respawn (the master sleeps before some; a new worker runs the
        # master's signal handlers until it sets its own): let every respawned worker get ready
        def respawned() -> bool:
            respawns = server.log_count(UWSGI_RESPAWNED)
            return respawns >= server.log_count(UWSGI_RECYCLED) and server.log_count(UWSGI_ACCEPTING[0]) >= 4 + respawns

        server.wait_log(respawned, "every recycled worker respawned and accepting")
    stop_cleanly(server, load)
    check_stream(nats_server, load, every_request_ok=True)


@needs_uwsgi
@pytest.mark.parametrize("wait", WAITS)
def test_uwsgi_sighup_graceful_reload_during_load_loses_nothing(
    serve: Serve, nats_server: NatsServer, wait: bool
) -> None:
    """SIGHUP (graceful reload: workers finish their request, the master re-execs) mid-load: every 2xx stored once."""
    server = serve("uwsgi")
    load = drive(server.port, REQUESTS, wait=wait, at=(REQUESTS // 3, lambda: server.signal(signal.SIGHUP)))
    server.wait_log(lambda: server.log_count(UWSGI_ACCEPTING[0]) >= 8, "4 new workers accepting after the reload")
    assert len(load.pids) > 4, "the reload did not land during the load"
    stop_cleanly(server, load)
    check_stream(nats_server, load, every_request_ok=False)


@needs_uwsgi
@pytest.mark.parametrize("wait", WAITS)
def test_uwsgi_graceful_shutdown_during_load_stores_every_answered_event(
    serve: Serve, nats_server: NatsServer, wait: bool
) -> None:
    """A graceful shutdown (master FIFO ``q``) during the load: every event that got a 2xx is stored."""
    server = serve("uwsgi")
    load = drive(server.port, REQUESTS, wait=wait, at=(REQUESTS // 2, server.begin_graceful_stop))
    assert server.wait_exit(STOP_TIMEOUT) == 0, server.log_text()
    assert REQUESTS // 3 < len(load.ok) < REQUESTS, f"the stop did not land during the load: {len(load.ok)} 2xx"
    assert_publishers_closed(server, load)
    check_stream(nats_server, load, every_request_ok=False)


@needs_uwsgi
def test_uwsgi_sigterm_during_load_stores_every_acknowledged_event(serve: Serve, nats_server: NatsServer) -> None:
    """SIGTERM + --die-on-term (uWSGI 2.0 kills busy workers, no exit hooks) mid-load: every 201's event is stored."""
    server = serve("uwsgi")
    load = drive(server.port, REQUESTS, wait=True, at=(REQUESTS // 2, lambda: server.signal(signal.SIGTERM)))
    assert server.wait_exit(STOP_TIMEOUT) is not None, server.log_text()
    assert REQUESTS // 3 < len(load.ok) < REQUESTS, f"the stop did not land during the load: {len(load.ok)} 2xx"
    check_stream(nats_server, load, every_request_ok=False)
