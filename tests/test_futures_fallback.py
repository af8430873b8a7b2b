"""The guard around `futures.py`'s use of `concurrent.futures.Future` internals: checked once at
import, and the plain futures (public `Future` API only) taken when the check fails or when
``EDUPULSE_EVENTS_FUTURES=plain`` asks for them, which still resolve, run callbacks and wait."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edupulse_events import futures
from edupulse_events.futures import FUTURES_ENV, fast_futures_refusal

ROOT = Path(__file__).resolve().parents[1]

PLAIN_RUN = textwrap.dedent(
    """
    import concurrent.futures, logging, sys, threading
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, "tests")
    from helpers import envelope, envelopes
    from edupulse_events import NatsPublisher, PublishFuture, RetryPolicy, WaitTimeout
    from edupulse_events.futures import fast_futures_refusal
    from edupulse_events.testing import NatsServer

    assert fast_futures_refusal() == "EDUPULSE_EVENTS_FUTURES=plain", fast_futures_refusal()
    with NatsServer() as server:
        options = {"stream": "PLAIN", "create_stream": True, "fast_ingest": False}  # a sequence per event
        with NatsPublisher.connect(server.url, "plain.futures", **options) as pub:
            called, done = [], threading.Event()
            def callback(future):
                called.append(future.result(0).broker_sequence)
                if len(called) == 50:
                    done.set()
            def raising(future):
                raise SystemExit("a callback that exits: logged, the publisher thread goes on")
            batch = pub.publish_many(envelopes(49))
            single = pub.publish(envelope())
            assert all(type(f) is PublishFuture for f in [*batch, single])
            single.add_done_callback(raising)
            for f in [*batch, single]:
                f.add_done_callback(callback)
            assert single.result(timeout=10).broker_sequence == 50
            assert done.wait(10) and sorted(called) == list(range(1, 51)), called
            assert concurrent.futures.wait(batch, timeout=10).not_done == set()
            assert [f.result(timeout=0).broker_sequence for f in concurrent.futures.as_completed(batch)]
        server.stop()
        cfg = dict(start_without_broker=True, delivery_timeout=0.5, retry=RetryPolicy(attempt_timeout=0.2))
        with NatsPublisher.connect(server.url, "plain.futures", **cfg) as pub:
            pending = pub.publish(envelope())
            try:
                pending.result(timeout=0.01)
                raise AssertionError("resolved without a broker")
            except TimeoutError as exc:
                assert isinstance(exc, WaitTimeout) and isinstance(exc, concurrent.futures.TimeoutError)
            assert type(pending.exception(timeout=10)).__name__ == "PublishTimeout"
    print("plain futures: OK")
    """
)


def test_this_cpython_takes_the_fast_futures() -> None:
    """On the CPython the suite runs on, the import-time check passes: publishers hand out the fast futures."""
    if os.environ.get(FUTURES_ENV):
        pytest.skip(f"{FUTURES_ENV} is set")
    assert fast_futures_refusal() is None
    assert futures.new_future is not futures.PublishFuture


def test_the_check_refuses_a_future_without_the_private_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Future whose private parts differ (no _invoke_callbacks, no _waiters list) fails the import-time check."""
    monkeypatch.delattr(concurrent.futures.Future, "_invoke_callbacks")
    assert "_invoke_callbacks" in (futures._refusal() or "")  # noqa: SLF001 - the check itself
    monkeypatch.undo()
    original = concurrent.futures.Future.__init__

    def without_waiters(self: concurrent.futures.Future[object]) -> None:
        original(self)
        del self._waiters  # a CPython that keeps them elsewhere

    monkeypatch.setattr(concurrent.futures.Future, "__init__", without_waiters)
    assert "_waiters" in (futures._refusal() or "")  # noqa: SLF001 - the check itself
    monkeypatch.undo()
    assert futures._refusal() is None  # noqa: SLF001 - the check itself


def test_plain_futures_resolve_run_callbacks_and_wait(tmp_path: Path) -> None:
    """EDUPULSE_EVENTS_FUTURES=plain (a fresh process): events resolve, callbacks run, result(timeout) waits."""
    env = {**os.environ, FUTURES_ENV: "plain"}
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_RUN], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "plain futures: OK"
    assert "SystemExit: a callback that exits" in proc.stderr  # logged, not raised
