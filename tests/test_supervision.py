"""A supervised publisher thread: a crash at any step resolves every future, and the next publish() restarts it.

Crashes are injected by making one of the library's own steps raise once (monkeypatching its
code, never nats-py's), as a bug or a dependency upgrade would, against a real nats-server.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faults_support import STREAM, SUBJECT, connect, stored_ids
from helpers import LogWatcher, envelope, envelopes

from edupulse_events import (
    BrokerError,
    EventEnvelope,
    NatsPublisher,
    PublisherConfig,
    PublisherCrashed,
    PublisherState,
    RetryPolicy,
)
from edupulse_events._engine._attempts import Attempts
from edupulse_events._engine._outstanding import Outstanding
from edupulse_events._engine._sending import CoreSender, JetStreamSender
from edupulse_events._nats import NatsTransport
from edupulse_events.testing import NatsServer


class Injected(RuntimeError):
    """The error a test makes one of the library's steps raise."""


def crash_once(
    monkeypatch: pytest.MonkeyPatch, owner: type, name: str, when: Callable[..., bool] | None = None
) -> threading.Event:
    """Make ``owner.name`` raise `Injected` the first time it is called (and ``when(*args)`` holds);
    the event says it fired."""
    original = getattr(owner, name)
    fired = threading.Event()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not fired.is_set() and (when is None or when(*args)):
            fired.set()
            raise Injected(f"injected into {owner.__name__}.{name}")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return fired


def crash_always(monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> None:
    def wrapper(*_args: Any, **_kwargs: Any) -> Any:
        raise Injected(f"injected into {owner.__name__}.{name}, every time")

    monkeypatch.setattr(owner, name, wrapper)


def outcomes(futures: list[concurrent.futures.Future[Any]], timeout: float) -> collections.Counter[str]:
    """Wait (bounded) for every future; count acks and each kind of error."""
    _done, pending = concurrent.futures.wait(futures, timeout=timeout)
    assert not pending, f"{len(pending)} futures unresolved after {timeout} s"
    kinds: collections.Counter[str] = collections.Counter()
    for f in futures:
        exc = f.exception(timeout=0)
        kinds["acked" if exc is None else type(exc).__name__] += 1
    return kinds


@pytest.fixture
def logs() -> Iterator[LogWatcher]:
    with LogWatcher() as watcher:
        yield watcher


def assert_books_balanced(pub: NatsPublisher) -> None:
    """After flush(): the running thread holds no event, and its count and bytes agree (no drift)."""
    worker = pub._last_worker  # noqa: SLF001  # the thread's bookkeeping, checked for drift
    assert worker is not None
    out = worker.outstanding
    held = {"inflight": out.inflight, "core": out.core, "delayed": out.delayed, "retries": out.retries}
    held |= {"parked": out.parked, "hand": out.hand}
    assert not any(held.values()), held
    assert out.count == 0
    assert out.nbytes == 0


def records(logs: LogWatcher, text: str, level: int) -> list[logging.LogRecord]:
    return [r for r in logs.records if text in r.getMessage() and r.levelno == level]


def _holds_events(attempts: Attempts) -> bool:
    return attempts._out.count > 0  # noqa: SLF001 - the sweep also runs when the acks have caught up


# Each step, when it crashes, and whether the server is paused meanwhile. Sending and ack handling
# hold events whose acks cannot come (not sent; their acks taken by the crashing step). The sweep
# crashes only while events are outstanding, and with the server paused (SIGSTOP): their acks
# would otherwise still arrive while the thread shuts down, and rightly resolve them as acked.
STEPS: dict[str, tuple[type, str, Callable[..., bool] | None, bool]] = {
    "send": (JetStreamSender, "send", None, False),
    "ack handling": (JetStreamSender, "on_acks", None, False),
    "deadline sweep": (Attempts, "sweep", _holds_events, True),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_crash_in_a_step_resolves_every_future_and_the_next_publish_restarts(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch, logs: LogWatcher, step: str
) -> None:
    """A step raising once fails what the thread held with PublisherCrashed (why); the next publish() restarts."""
    first, later_envs = envelope(), envelopes(50)
    hit_envs: list[EventEnvelope] = []
    hit: list[concurrent.futures.Future[Any]] = []
    with connect(nats_server.url) as pub:
        assert pub.publish(first).result(timeout=10).broker_sequence == 1
        before = set(threading.enumerate())
        owner, name, when, pause = STEPS[step]
        fired = crash_once(monkeypatch, owner, name, when)
        if pause:
            nats_server.pause()
        try:
            end = time.monotonic() + 10
            while not fired.is_set() and time.monotonic() < end:  # keep events flowing until the step runs
                hit_envs.append(envelope(len(hit_envs)))
                hit.append(pub.publish(hit_envs[-1]))
            if pause and hit:  # held (or queued) at the crash, no ack possible: failed by it
                assert isinstance(hit[0].exception(timeout=10), PublisherCrashed)
        finally:
            if pause:
                nats_server.resume()
        kinds = outcomes(hit, timeout=10)
        assert fired.is_set()
        assert kinds["PublisherCrashed"] >= 1
        assert set(kinds) <= {"acked", "PublisherCrashed"}
        crashed = [exc for f in hit if (exc := f.exception(timeout=0)) is not None]
        assert all("crashed" in str(e) and "Injected" in str(e) for e in crashed), crashed[0]
        assert all(isinstance(e.__cause__, Injected) for e in crashed)
        assert pub.flush(timeout=5)
        later = [pub.publish(e) for e in later_envs]
        assert outcomes(later, timeout=10) == {"acked": 50}
        assert pub.flush(timeout=5)
        assert_books_balanced(pub)
        stats = pub.stats()
        assert stats.crashes == 1
        assert stats.restarts == 1
        assert stats.state == "running"
        assert stats.accepted == stats.acknowledged + stats.failed == 1 + len(hit) + 50
        new_threads = [t for t in threading.enumerate() if t.name.startswith("edupulse-publisher") and t not in before]
        assert len(new_threads) == 1
    assert len(records(logs, "crashed", logging.ERROR)) == 1
    assert len(records(logs, "starting a new publisher thread", logging.WARNING)) == 1
    acked = [first, *(e for e, f in zip(hit_envs, hit, strict=True) if f.exception(timeout=0) is None), *later_envs]
    stored = stored_ids(nats_server.url)
    assert all(n == 1 for n in stored.values()), "an event was stored twice"
    assert {str(e.event_id) for e in acked} <= set(stored)


def test_crash_while_connecting_lazily_fails_queued_events_then_restarts(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash in the background connect fails the queued events; the next publish() connects afresh and delivers."""
    original = NatsTransport.connect
    queued = threading.Event()
    calls: list[int] = []

    async def connect_crashes_once(self: NatsTransport, timeout: float | None) -> None:
        calls.append(1)
        if len(calls) == 1:  # the first thread's connect: crash once the test's event is queued
            await asyncio.get_running_loop().run_in_executor(None, queued.wait, 10.0)
            raise Injected("injected into NatsTransport.connect")
        await original(self, timeout)

    monkeypatch.setattr(NatsTransport, "connect", connect_crashes_once)
    config = PublisherConfig(servers=nats_server.url, subject=SUBJECT, stream=STREAM, create_stream=True)
    with NatsPublisher(config) as pub:
        first = pub.publish(envelope())  # starts the thread, whose connect crashes
        queued.set()
        assert isinstance(first.exception(timeout=10), PublisherCrashed)
        assert "NatsTransport.connect" in str(first.exception(timeout=0))
        assert pub.state is PublisherState.CRASHED
        assert pub.publish(envelope()).result(timeout=10).broker_sequence == 1
        assert pub.stats().restarts == 1


def test_crash_while_connecting_in_connect_raises_broker_error(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """connect() whose thread crashes while connecting raises a BrokerError saying so; the next one works."""
    crash_once(monkeypatch, NatsTransport, "connect")
    started = time.monotonic()
    with pytest.raises(BrokerError, match=r"crashed .*Injected"):
        connect(nats_server.url)
    assert time.monotonic() - started < 3.0
    with connect(nats_server.url) as pub:
        assert pub.publish(envelope()).result(timeout=10).broker_sequence == 1


def test_crash_in_core_send_resolves_and_restarts(nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Core NATS: a sender crash fails the batch and the queue with PublisherCrashed; later events are delivered."""
    with connect(nats_server.url, jetstream=False) as pub:
        fired = crash_once(monkeypatch, CoreSender, "send")
        kinds = outcomes([pub.publish(e) for e in envelopes(100)], timeout=10)
        assert fired.is_set()
        assert kinds["PublisherCrashed"] >= 1
        assert set(kinds) <= {"acked", "PublisherCrashed"}
        assert outcomes([pub.publish(e) for e in envelopes(30)], timeout=10) == {"acked": 30}


@pytest.mark.slow
def test_crash_while_scheduling_a_retry(nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash while a timed-out attempt is scheduled for retry (broker paused) resolves everything; it recovers."""
    with connect(nats_server.url, retry=RetryPolicy(attempt_timeout=0.2)) as pub:
        assert pub.publish(envelope()).result(timeout=10).broker_sequence == 1
        fired = crash_once(monkeypatch, Attempts, "failed")
        nats_server.pause()
        try:
            hung = [pub.publish(e) for e in envelopes(20)]
            assert fired.wait(10)
            assert outcomes(hung, timeout=5) == {"PublisherCrashed": 20}
        finally:
            nats_server.resume()
        assert pub.flush(timeout=5)
        assert outcomes([pub.publish(e) for e in envelopes(10)], timeout=20) == {"acked": 10}
        assert pub.stats().crashes == 1


def test_done_callbacks_that_raise_do_not_crash_the_thread(
    make_server: Callable[..., NatsServer], logs: LogWatcher
) -> None:
    """A done-callback raising an error, or even SystemExit, is logged; every future resolves and nothing restarts."""
    calls: list[str] = []

    def failing(_f: concurrent.futures.Future[Any]) -> None:
        calls.append("error")
        raise RuntimeError("callback bug")

    def exiting(_f: concurrent.futures.Future[Any]) -> None:
        calls.append("exit")
        raise SystemExit(3)

    server = make_server(start=False)  # the futures are pending until it starts: callbacks run on the publisher thread
    with connect(server.url, start_without_broker=True) as pub:
        futures = [pub.publish(e) for e in envelopes(100)]
        for i, f in enumerate(futures):
            f.add_done_callback(failing if i % 2 else exiting)
        server.start()
        assert outcomes(futures, timeout=20) == {"acked": 100}
        assert pub.publish(envelope()).result(timeout=10).broker_sequence == 101
        assert pub.flush(timeout=5)
        stats = pub.stats()
        assert stats.crashes == 0
        assert stats.restarts == 0
    assert collections.Counter(calls) == {"error": 50, "exit": 50}
    assert len(records(logs, "done-callback", logging.ERROR)) == 100


def test_done_callbacks_that_publish_during_a_crash_do_not_deadlock(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Futures failed by a crash run their callbacks outside the publisher's lock: a callback may publish again."""
    republished: list[concurrent.futures.Future[Any]] = []
    errors: list[BaseException] = []

    with connect(nats_server.url, start_without_broker=True) as pub:

        def again(f: concurrent.futures.Future[Any]) -> None:
            if isinstance(f.exception(timeout=0), PublisherCrashed):
                try:
                    republished.append(pub.publish(envelope(), timeout=0))
                except BaseException as exc:  # noqa: BLE001  # recorded for the assertion below
                    errors.append(exc)

        fired = crash_once(monkeypatch, JetStreamSender, "send")
        futures = [pub.publish(e) for e in envelopes(50)]
        for f in futures:
            f.add_done_callback(again)
        assert outcomes(futures, timeout=10)["PublisherCrashed"] >= 1
        assert fired.is_set()
        assert pub.flush(timeout=10)
        assert not errors
        assert republished
        assert outcomes(republished, timeout=10) == {"acked": len(republished)}


@pytest.mark.slow
def test_a_thread_that_keeps_crashing_is_restarted_with_backoff(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that always raises: restarts back off, and publish() meanwhile fails at once with PublisherCrashed."""
    crash_always(monkeypatch, JetStreamSender, "send")
    with connect(nats_server.url, start_without_broker=True) as pub:
        futures: list[concurrent.futures.Future[Any]] = []
        refused: list[PublisherCrashed] = []
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            try:
                futures.append(pub.publish(envelope()))
            except PublisherCrashed as exc:
                refused.append(exc)
        stats = pub.stats()
        assert 2 <= stats.restarts <= 4, stats
        assert stats.crashes >= stats.restarts
        assert refused
        assert "restarts in" in str(refused[-1])
        assert outcomes(futures, timeout=5).keys() == {"PublisherCrashed"}


def test_events_parked_for_a_stream_check_meet_their_deadline(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events parked for a stream check that never answers time out by their deadline; close() cancels the check."""
    never = asyncio.Event

    async def hang(self: NatsTransport, subject: str, timeout: float) -> bool | None:
        await never().wait()
        return None

    monkeypatch.setattr(NatsTransport, "stream_captures", hang)
    with LogWatcher() as logs:
        pub = NatsPublisher.connect(
            nats_server.url, "nostream.events", delivery_timeout=1.0, retry=RetryPolicy(attempt_timeout=0.5)
        )
        try:
            started = time.monotonic()
            futures = [pub.publish(e) for e in envelopes(5)]
            assert outcomes(futures, timeout=5) == {"PublishTimeout": 5}
            assert time.monotonic() - started < 1.0 + 0.5
            worker = pub._last_worker  # noqa: SLF001  # the check task must be kept, then cancelled
            assert worker is not None
            assert len(worker.supervisor.tasks) == 1
        finally:
            pub.close(timeout=2.0)
        assert not worker.supervisor.tasks
    assert "destroyed but it is pending" not in logs.text


@pytest.mark.parametrize(("publish_timeout", "delivery_timeout"), [(2.0, 0.5), (0.5, 2.0)])
@pytest.mark.slow
def test_every_future_resolves_by_its_deadline(
    nats_server: NatsServer, publish_timeout: float, delivery_timeout: float
) -> None:
    """Hung broker, full queue: each future resolves by acceptance + delivery_timeout, whatever publish_timeout is."""
    accepted: dict[int, float] = {}
    resolved: dict[int, float] = {}
    lock = threading.Lock()
    settings = {"max_queue": 5, "window": 4, "publish_timeout": publish_timeout, "delivery_timeout": delivery_timeout}
    with connect(nats_server.url, retry=RetryPolicy(attempt_timeout=0.2), **settings) as pub:
        assert pub.publish(envelope()).result(timeout=10).broker_sequence == 1
        nats_server.pause()
        try:

            def on_done(i: int) -> Callable[[concurrent.futures.Future[Any]], None]:
                def done(_f: concurrent.futures.Future[Any]) -> None:
                    with lock:
                        resolved[i] = time.monotonic()

                return done

            def caller(t: int) -> None:
                for n in range(8):
                    i = t * 100 + n
                    try:
                        future = pub.publish(envelope(i))
                    except Exception:  # noqa: BLE001  # QueueFull: not accepted, no deadline
                        continue
                    with lock:
                        accepted[i] = time.monotonic()
                    future.add_done_callback(on_done(i))

            threads = [threading.Thread(target=caller, args=(t,)) for t in range(3)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(30)
            assert pub.flush(timeout=10)
            assert_books_balanced(pub)
        finally:
            nats_server.resume()
    assert len(accepted) >= 8
    late = {
        i: resolved[i] - (accepted[i] + delivery_timeout)
        for i in accepted
        if resolved[i] > accepted[i] + delivery_timeout + 0.25
    }
    assert not late, f"resolved after their deadline (s): {late}"


def test_library_logger_has_a_null_handler() -> None:
    """The library's logger has a NullHandler, so an app that configured no logging gets nothing on stderr."""
    handlers = logging.getLogger("edupulse_events").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def test_unconfigured_app_prints_no_library_warnings(tmp_path: Path) -> None:
    """An app that never configured logging and triggers a library warning writes nothing to stderr."""
    import subprocess
    import sys

    code = "from edupulse_events import build_from_env; build_from_env({})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_an_error_in_the_outcome_report_is_a_crash_not_a_lost_callback(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch, logs: LogWatcher
) -> None:
    """What the outcome report raises reaches the Supervisor (the thread crashes, the next publish() restarts)."""
    with connect(nats_server.url) as pub:
        assert pub.publish(envelope()).result(timeout=10).broker_sequence == 1
        fired = crash_once(monkeypatch, Outstanding, "report")
        pub.publish(envelope(1)).result(timeout=10)  # acked; the report that counts it raises
        assert fired.wait(10)
        assert logs.wait_for("crashed", 10), "the report's error must crash the thread, not vanish in asyncio's log"
        # The crash is counted once the thread has told the publisher. The state may already be
        # RUNNING again: when the ack's report crashes the thread before publish(envelope(1)) has
        # returned, that publish() sees its thread gone and starts the next one itself.
        end = time.monotonic() + 10
        while pub.stats().crashes == 0 and time.monotonic() < end:  # bounded: the thread tells the publisher
            pass
        assert pub.stats().crashes == 1
        assert pub.publish(envelope(2)).result(timeout=10).broker_sequence == 3
        assert pub.stats().crashes == 1
        assert pub.stats().restarts == 1
