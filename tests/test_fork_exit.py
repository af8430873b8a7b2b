"""Pre-fork servers and process exit: a forked child gets its own publisher state (nothing of the
parent's is sent twice), and the exit hook delivers pending events within ``exit_timeout`` or
logs the ids (never the payloads) of what it could not deliver; a SIGKILL loses only unacked events."""

from __future__ import annotations

import ctypes
import json
import os
import queue
import re
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import envelopes, read_stream

from edupulse_events import EventEnvelope, NatsPublisher, PublisherConfig
from edupulse_events.testing import NatsServer

STREAM = "LIFECYCLE"
SUBJECT = "lifecycle.events"
ROOT = Path(__file__).resolve().parents[1]
UUID_LINE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def stored_ids(server: NatsServer) -> list[str]:
    return [m.headers["Nats-Msg-Id"] for m in read_stream(server.url, STREAM)]


# --------------------------------------------------------------------------- fork


def hookless_fork() -> int:
    """fork() straight from libc, as uWSGI forks its workers: Python's at-fork hooks do not run
    (the GIL stays held through the call, as in uWSGI's master)."""
    return int(ctypes.PyDLL(None).fork())


def run_in_child(
    body: Callable[[], dict[str, Any]],
    before_wait: Callable[[], object] = lambda: None,
    timeout: float = 30.0,
    fork: Callable[[], int] = os.fork,
) -> dict[str, Any]:
    """Fork; the child runs ``body`` and sends back its JSON report, then ``os._exit``s (never
    pytest's teardown). The parent runs ``before_wait`` and returns the child's report."""
    read_fd, write_fd = os.pipe()
    pid = fork()
    if pid == 0:  # the child
        code = 70
        try:
            os.close(read_fd)
            report = body()
            code = 0 if report.get("ok") else 1
        except BaseException:  # noqa: BLE001  # the forked child reports whatever it raised, then _exit()s
            report = {"ok": False, "error": traceback.format_exc()}
        finally:
            try:
                os.write(write_fd, json.dumps(report).encode())
            finally:
                os._exit(code)
    os.close(write_fd)
    chunks: list[bytes] = []
    try:
        before_wait()
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)  # our own child, hung
                break
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(
        b"".join(chunks) or b'{"ok": false, "error": "no report (child hung and was killed)"}'
    )
    result["exit_code"] = os.waitstatus_to_exitcode(status)
    return result


def child_publishes(pub: NatsPublisher, envs: list[EventEnvelope]) -> Callable[[], dict[str, Any]]:
    """The child's work: publish ``envs``, flush, report acks and counters."""

    def body() -> dict[str, Any]:
        fresh = pub.stats()
        futures = [pub.publish(e) for e in envs]
        flushed = pub.flush(timeout=20)
        acks = [f.result(timeout=0) for f in futures]
        stats = pub.stats()
        threads = [t.name for t in threading.enumerate() if t.name.startswith("edupulse-publisher")]
        ok = (
            flushed
            and fresh.accepted == fresh.queued == 0
            and stats.accepted == stats.acknowledged == len(envs)
            and stats.failed == 0
            and not any(a.duplicate for a in acks)
            and len(threads) == 1
        )
        return {
            "ok": ok,
            "flushed": flushed,
            "fresh": repr(fresh),
            "stats": repr(stats),
            "threads": threads,
            "acks": [[a.broker_sequence, a.duplicate] for a in acks],
        }

    return body


def test_fork_with_events_queued_in_parent(make_server: Callable[..., NatsServer]) -> None:
    """Forked with events queued: the child gets its own thread and connection; the parent delivers its queue once."""
    server = make_server(start=False)
    pub = NatsPublisher.connect(server.url, SUBJECT, stream=STREAM, create_stream=True, start_without_broker=True)
    try:
        parent_envs, child_envs = envelopes(5), envelopes(7)
        parent_futures = [pub.publish(e) for e in parent_envs]
        assert pub.stats().queued == 5
        report = run_in_child(child_publishes(pub, child_envs), before_wait=server.start)
        assert report["exit_code"] == 0, report
        assert report["ok"], report
        assert pub.flush(timeout=20)
        parent_acks = [f.result(timeout=0) for f in parent_futures]
        assert not any(a.duplicate for a in parent_acks)
        stats = pub.stats()
        assert stats.accepted == stats.acknowledged == 5
        assert stats.failed == 0
    finally:
        pub.close(5)
    ids = stored_ids(server)
    assert len(ids) == 12
    assert len(set(ids)) == 12
    assert set(ids) == {str(e.event_id) for e in parent_envs + child_envs}


def test_fork_without_hooks_of_a_publisher_not_started_yet(nats_server: NatsServer) -> None:
    """uWSGI's default: the master builds the publisher, forks without hooks; the worker's first publish starts it."""
    config = PublisherConfig(servers=nats_server.url, subject=SUBJECT, stream=STREAM, create_stream=True)
    child_envs, parent_envs = envelopes(5), envelopes(3)
    with NatsPublisher(config) as pub:  # lazy: no thread, no connection in the "master"
        report = run_in_child(child_publishes(pub, child_envs), fork=hookless_fork)
        assert report["exit_code"] == 0, report
        assert report["ok"], report
        assert [pub.publish(e).result(timeout=10).duplicate for e in parent_envs] == [False] * 3
    ids = stored_ids(nats_server)
    assert sorted(ids) == sorted(str(e.event_id) for e in child_envs + parent_envs)


def test_fork_of_connected_publisher(nats_server: NatsServer) -> None:
    """A publisher used before fork works in the child on a new connection, and in the parent after the child exits."""
    before, child_envs, after = envelopes(3), envelopes(6), envelopes(4)
    with NatsPublisher.connect(nats_server.url, SUBJECT, stream=STREAM, create_stream=True) as pub:
        assert [pub.publish(e).result(timeout=10).broker_sequence for e in before] == [1, 2, 3]
        parent_worker = pub._worker  # noqa: SLF001  # the parent's running thread, to check it survives the fork
        parent_thread = parent_worker.thread if parent_worker else None
        report = run_in_child(child_publishes(pub, child_envs))
        assert report["exit_code"] == 0, report
        assert report["ok"], report
        assert sorted(seq for seq, _ in report["acks"]) == list(range(4, 10))
        assert [pub.publish(e).result(timeout=10).broker_sequence for e in after] == [10, 11, 12, 13]
        worker = pub._worker  # noqa: SLF001  # the thread now running: still the parent's own
        assert worker is not None
        assert worker.thread is parent_thread
        assert pub.flush(timeout=10)
        assert pub.stats().acknowledged == 7
    ids = stored_ids(nats_server)
    assert ids == [str(e.event_id) for e in before + child_envs + after]


# --------------------------------------------------------------------------- exit


PREAMBLE = """
import logging, os, sys, time, uuid
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
from edupulse_events import EventEnvelope, LessonPublished, NatsPublisher

def event(title):
    return EventEnvelope.new(LessonPublished(uuid.uuid4(), uuid.uuid4(), title), tenant_id="school-1")
"""


class Child:
    """A Python child process running ``script``; its stdout and stderr lines are collected by threads."""

    def __init__(self, script: str, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        code = PREAMBLE + textwrap.dedent(script)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout, self.lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr, None), daemon=True),
        ]
        for pump in self._pumps:
            pump.start()

    @staticmethod
    def _pump(stream: Any, into: list[str], lines: queue.Queue[str] | None) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))
            if lines is not None:
                lines.put(line.rstrip("\n"))

    def next_line(self, timeout: float = 20.0) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no output from the child within {timeout} s; stderr:\n" + "\n".join(self.stderr)
            ) from None

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def wait(self, timeout: float = 30.0) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()  # our own child, by pid
                self.proc.wait(10)
        for pump in self._pumps:
            pump.join(10)
        return code

    @property
    def log(self) -> str:
        return "\n".join(self.stderr)


@pytest.fixture
def children() -> Iterator[Callable[..., Child]]:
    """Children started by a test; any still running at teardown are killed (by pid) and reaped."""
    started: list[Child] = []

    def start(script: str, *args: str) -> Child:
        child = Child(script, *args)
        started.append(child)
        return child

    yield start
    for child in started:
        if child.proc.poll() is None:
            child.proc.kill()
        child.proc.wait(10)
        if child.proc.stdin:
            child.proc.stdin.close()


def test_exit_hook_delivers_pending_events(nats_server: NatsServer, children: Callable[..., Child]) -> None:
    """Exiting without close(): the exit hook delivers the pending events and logs none left undelivered."""
    child = children(
        """
        pub = NatsPublisher.connect(
            sys.argv[1], "lifecycle.events", stream="LIFECYCLE", create_stream=True, exit_timeout=20
        )
        print("connected", flush=True)
        sys.stdin.readline()
        futures = [pub.publish(event(f"lesson {i}")) for i in range(int(sys.argv[2]))]
        print("pending", sum(not f.done() for f in futures), flush=True)
        # no close(), no flush(): the interpreter exits with everything unacknowledged
        """,
        nats_server.url,
        "300",
    )
    assert child.next_line() == "connected"
    nats_server.pause()  # nothing can be acknowledged until resume()
    try:
        child.send("go\n")
        assert child.next_line() == "pending 300"
    finally:
        nats_server.resume()
    assert child.wait(30) == 0, child.log
    assert re.search(r"publisher closed: 300 events acknowledged, 0 failed, none left undelivered", child.log), (
        child.log
    )
    ids = stored_ids(nats_server)
    assert len(ids) == 300
    assert len(set(ids)) == 300


def test_exit_with_unreachable_broker_logs_ids_not_payloads(
    make_server: Callable[..., NatsServer], children: Callable[..., Child]
) -> None:
    """Broker unreachable: exits within about exit_timeout, logging undelivered events' count and ids, not payloads."""
    down = make_server(start=False)
    secret_title = "TOP-SECRET-TITLE-7c1e0b"
    child = children(
        """
        pub = NatsPublisher.connect(sys.argv[1], "lifecycle.events", start_without_broker=True, exit_timeout=1.0)
        for _ in range(3):
            e = event(sys.argv[2])
            pub.publish(e)
            print(e.event_id, flush=True)
        print("exiting", time.monotonic(), flush=True)
        """,
        down.url,
        secret_title,
    )
    ids = [child.next_line() for _ in range(3)]
    assert all(UUID_LINE.match(i) for i in ids), ids
    word, exiting_at = child.next_line().split()
    assert word == "exiting"
    assert child.wait(30) == 0, child.log
    took = time.monotonic() - float(exiting_at)
    assert took < 1.0 + 2.5, f"exit took {took:.2f} s with exit_timeout=1.0"
    assert re.search(
        r"ERROR edupulse_events publisher closed: 0 events acknowledged, 3 failed; 3 were not confirmed", child.log
    ), child.log
    for event_id in ids:
        assert event_id in child.log
    assert secret_title not in child.log
    assert secret_title not in "\n".join(child.stdout)


def test_sigkill_loses_only_unacknowledged_events(nats_server: NatsServer, children: Callable[..., Child]) -> None:
    """A process SIGKILLed mid-publish loses only unacked events: every id it reported acked is in the stream, once."""
    child = children(
        """
        pub = NatsPublisher.connect(
            sys.argv[1], "lifecycle.events", stream="LIFECYCLE", create_stream=True, max_queue=2000
        )

        def report(future, event_id):
            if future.exception() is None:
                os.write(1, f"{event_id}\\n".encode())  # one write per line: a kill never cuts a line

        print("connected", flush=True)
        end = time.monotonic() + 20
        for i in range(200_000):
            if time.monotonic() > end:
                break
            e = event(f"lesson {i}")
            pub.publish(e).add_done_callback(lambda f, i=str(e.event_id): report(f, i))
        pub.close(10)
        """,
        nats_server.url,
    )
    assert child.next_line() == "connected"
    acked: list[str] = []
    while len(acked) < 500:
        acked.append(child.next_line())
    child.proc.send_signal(signal.SIGKILL)  # our own child, by pid
    assert child.wait(30) == -signal.SIGKILL
    acked = [line for line in child.stdout[1:] if UUID_LINE.match(line)]
    assert len(acked) >= 500
    ids = stored_ids(nats_server)
    assert len(ids) == len(set(ids))
    missing = set(acked) - set(ids)
    assert not missing, f"{len(missing)} acked events are not in the stream"
    assert len(ids) < 200_000  # killed mid-publishing
