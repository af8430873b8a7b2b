"""The ``nats-server`` child process: spawning, its log, signals, reaping and the GC safety net.

Owns :func:`spawn` (output appended to one log file across runs, with a marker line before
each restart), :func:`log_tail` (what the latest run wrote, for error messages),
:func:`wait_stopped` (SIGSTOP has taken effect), bounded waits for exit, SIGKILL, and
:class:`ProcState` with :func:`finalize`: the only things the ``weakref.finalize`` safety net
holds (never the :class:`~edupulse_events.testing.NatsServer` itself, so it can still be
collected), run at garbage collection, interpreter exit or ``close()``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

RESTART_MARKER = b"\n----- edupulse_events.testing: (re)start -----\n"


class ProcState:
    """What the safety-net finalizer needs; must not reference the NatsServer itself."""

    __slots__ = ("proc", "tmpdir")

    def __init__(self, tmpdir: str) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmpdir: str | None = tmpdir

    def live_proc(self) -> subprocess.Popen[bytes] | None:
        """The process while it is alive (paused included), else None."""
        proc = self.proc
        return proc if proc is not None and proc.poll() is None else None


def spawn(
    binary: str, config_path: Path, log_path: Path, *, cwd: str, restart: bool
) -> tuple[subprocess.Popen[bytes], int]:
    """Run ``binary -c config_path`` with stdout and stderr appended to ``log_path``.

    Returns the process and the log offset where this run's output starts. A marker line
    separates this run from earlier output when ``restart`` is true or the log is not empty.
    """
    with open(log_path, "ab") as log:
        if restart or log.tell() > 0:
            log.write(RESTART_MARKER)
            log.flush()
        offset = log.tell()
        proc = subprocess.Popen(
            [binary, "-c", os.fspath(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            close_fds=True,
        )
    return proc, offset


def log_tail(log_path: Path, offset: int, lines: int) -> str:
    """The last ``lines`` lines of ``log_path`` written after ``offset``."""
    try:
        with open(log_path, "rb") as log:
            log.seek(offset)
            data = log.read()
    except FileNotFoundError:
        return "(no log)"
    text = data.decode("utf-8", errors="replace").rstrip()
    if not text:
        return "(log is empty)"
    return "\n".join(text.splitlines()[-lines:])


def reap(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``proc`` to exit; True when it did."""
    try:
        proc.wait(timeout=max(timeout, 0.0))
        return True
    except subprocess.TimeoutExpired:
        return False


def wait_stopped(proc: subprocess.Popen[bytes], timeout: float = 1.0) -> bool:
    """After SIGSTOP: wait until the kernel reports ``proc`` stopped (every thread) or exited.

    SIGSTOP takes effect asynchronously; without this wait a request sent right after
    ``pause()`` is sometimes still answered. The report is peeked (``WNOWAIT``), never consumed,
    so ``Popen`` still reaps the process. False when ``timeout`` passed first.
    """
    flags = os.WSTOPPED | os.WEXITED | os.WNOHANG | os.WNOWAIT
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, proc.pid, flags) is not None:
                return True
        except ChildProcessError:  # pragma: no cover - already reaped
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)


def hard_kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc`` unless it already exited, and reap it."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):  # raced with exit
        proc.kill()  # SIGKILL also ends a SIGSTOPped process
    reap(proc, 10.0)


def finalize(state: ProcState) -> None:
    """Safety net at garbage collection / interpreter exit: kill the child, remove the temp dir."""
    proc, state.proc = state.proc, None
    if proc is not None:
        with contextlib.suppress(Exception):  # best effort at exit: nothing may escape a finalizer
            hard_kill(proc)
    tmpdir, state.tmpdir = state.tmpdir, None
    if tmpdir:
        shutil.rmtree(tmpdir, ignore_errors=True)
