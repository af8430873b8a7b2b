"""The example WSGI app under a real gunicorn or uWSGI master: its command lines and environment,
and `WsgiServer`, which runs it in its own process group (stopped by its own pid), says when its
workers are ready and reads its log. Used by `servers_support`, `test_servers.py` and
`benchmarks/bench_recycle.py`."""

from __future__ import annotations

import contextlib
import http.client
import importlib.metadata
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from edupulse_events.testing import NatsServer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
STREAM = "EXAMPLE"
SUBJECT = "edupulse.{tenant}.{type}"
#: The example app's publisher window (EDUPULSE_EXAMPLE_WINDOW): how many events a worker has sent
#: and not seen acknowledged at most. Sent ones may reach the broker even from a killed process
#: (from the kernel's socket buffers); the rest of what it accepted is in its memory only. Small, so
#: that filling a worker's memory past it (`servers_support.KillWorker`) takes a few hundred requests.
WINDOW = 256
HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
POLL = 0.05

HAVE_GUNICORN = importlib.util.find_spec("gunicorn") is not None
UWSGI = shutil.which("uwsgi", path=str(Path(sys.executable).parent)) or shutil.which("uwsgi")


def poll(deadline: float) -> bool:
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
            if not poll(deadline):
                raise AssertionError(f"server not ready within {timeout} s:\n{self.log_text()}")

    def log_count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log_text()))

    def log_has(self, wanted: Sequence[tuple[str, int]]) -> bool:
        return all(self.log_count(pattern) >= n for pattern, n in wanted)

    def wait_log(self, done: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
        """Poll the log until ``done()``; fail with the log after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not done():
            if not poll(deadline):
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
                if not poll(deadline):
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
        EDUPULSE_EXAMPLE_WINDOW=str(WINDOW),
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
