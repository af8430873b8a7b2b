"""The durable spool as publishers use it, against real nats-server processes: write-ahead events
survive SIGKILL (adopted by the next publisher), overflow keeps a broker outage off the heap,
deadlines and close() keep events instead of failing them, and a full or broken spool says so."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import LogWatcher, envelope, read_stream

from edupulse_events import (
    ConfigError,
    NatsPublisher,
    PublisherConfig,
    QueueFull,
    RetryPolicy,
    SpoolFull,
)
from edupulse_events._engine._sending import JetStreamSender
from edupulse_events.testing import NatsServer

ROOT = Path(__file__).resolve().parents[1]
STREAM = "SPOOLED"
SUBJECT = "edupulse.{tenant}.{type}"
FAST_RETRY = RetryPolicy(initial=0.05, maximum=0.2, attempt_timeout=0.5)


def publisher(nats: NatsServer, spool: Path, **options: object) -> NatsPublisher:
    options.setdefault("stream", STREAM)
    options.setdefault("create_stream", True)
    return NatsPublisher.connect(nats.url, SUBJECT, spool_dir=str(spool), **options)  # type: ignore[arg-type]


def stored_ids(nats: NatsServer) -> Counter[str]:
    return Counter(m.headers["Nats-Msg-Id"] for m in read_stream(nats.url, STREAM, timeout=30.0))


def spool_files(spool: Path) -> list[str]:
    return sorted(p.name for p in spool.iterdir() if p.name.endswith(".db"))


def test_write_ahead_events_are_acknowledged_and_leave_nothing_on_disk(nats_server: NatsServer, tmp_path: Path) -> None:
    """With a write-ahead spool every event is acknowledged as usual; the spool is empty and removed at close."""
    with publisher(nats_server, tmp_path) as pub:
        futures = [pub.publish(envelope()) for _ in range(300)]
        assert pub.flush(10.0)
        acks = [f.result(0) for f in futures]
        assert not any(ack.spooled for ack in acks)
        assert pub.stats().spool_events == 0
    assert spool_files(tmp_path) == []
    assert sum(stored_ids(nats_server).values()) == 300


CHILD = textwrap.dedent(
    """
    import sys, threading
    sys.path[:0] = [sys.argv[4], sys.argv[4] + "/tests"]
    from helpers import envelope
    from edupulse_events import NatsPublisher
    url, spool, stream = sys.argv[1:4]
    pub = NatsPublisher.connect(url, "edupulse.{tenant}.{type}", stream=stream, create_stream=True, spool_dir=spool)
    lock = threading.Lock()
    def run():
        while True:
            env = envelope()
            pub.publish(env, timeout=30.0)
            with lock:  # printed only once publish() returned: the event is on disk
                sys.stdout.write(f"{env.event_id}\\n")
                sys.stdout.flush()
    for _ in range(3):
        threading.Thread(target=run, daemon=True).start()
    threading.Event().wait()
    """
)


def test_events_of_a_sigkilled_process_are_delivered_once_by_the_next_publisher(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """SIGKILL mid-stream (3 threads, broker stalled): a new publisher on the spool stores every returned event once."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, nats_server.url, str(tmp_path), STREAM, str(ROOT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    returned: list[str] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            returned.append(line.strip())
            if len(returned) == 500:
                nats_server.pause()  # what is published from here on is only in memory and on disk
            if len(returned) == 1500:
                break
        os.kill(child.pid, signal.SIGKILL)
        rest, _ = child.communicate(timeout=10.0)
        returned += [line for line in rest.split("\n")[:-1] if line]  # a last line cut short never returned
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10.0)
        nats_server.resume()
    assert child.returncode == -signal.SIGKILL
    before = stored_ids(nats_server)
    assert set(returned) - set(before), "the kill lost nothing: the test proves nothing"
    with publisher(nats_server, tmp_path) as pub:
        assert pub.drain_spool(30.0), pub.stats()
        assert pub.stats().replayed >= len(set(returned) - set(before))
    stored = stored_ids(nats_server)
    assert [i for i in returned if stored[i] != 1] == []
    assert spool_files(tmp_path) == []


def test_overflow_keeps_an_outage_on_disk_and_delivers_everything_once_after_it(
    make_server: Callable[..., NatsServer], tmp_path: Path
) -> None:
    """Broker down past the deadline, 200x max_queue events: publish() never raises, the queue stays at its
    bound and RSS flat, every future resolves as spooled, and all are stored once when the broker is back."""
    nats = make_server()
    pub = publisher(nats, tmp_path, spool_mode="overflow", max_queue=100, delivery_timeout=1.0, retry=FAST_RETRY)
    ids: list[str] = []
    outcomes: Counter[str] = Counter()
    resolved = threading.Semaphore(0)

    lock = threading.Lock()

    def done(future: concurrent.futures.Future[Any]) -> None:  # runs in caller and publisher threads
        with lock:
            outcomes["spooled" if future.exception() is None and future.result().spooled else "other"] += 1
        resolved.release()

    def publish(n: int) -> int:
        peak = 0
        for _ in range(n):
            env = envelope()
            pub.publish(env).add_done_callback(done)  # futures not kept: the test holds only ids
            ids.append(str(env.event_id))
            peak = max(peak, pub.stats().queued)
        return peak

    try:
        nats.stop()
        assert publish(2_000) <= 100  # the allocator and SQLite's page cache settle
        before = rss()
        assert publish(18_000) <= 100
        growth = rss() - before
        # held in memory, 18,000 such events would take ~30 MB (bodies, items, futures)
        assert growth < 6 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB during the outage"
        for _ in ids:
            assert resolved.acquire(timeout=30.0)
        assert outcomes == {"spooled": 20_000}
        stats = pub.stats()
        assert (stats.spooled, stats.failed, stats.spool_events) == (20_000, 0, 20_000)
        nats.start()
        assert pub.drain_spool(60.0), pub.stats()
        assert pub.stats().replayed == 20_000
    finally:
        pub.close(10.0)
    stored = stored_ids(nats)
    assert [i for i in ids if stored[i] != 1] == []


def rss() -> int:
    """This process's resident set size, in bytes (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_write_ahead_event_past_its_deadline_is_spooled_then_delivered(
    make_server: Callable[..., NatsServer], tmp_path: Path
) -> None:
    """Write-ahead, broker down past the deadline: the future says spooled (not PublishTimeout); delivered later."""
    nats = make_server()
    with publisher(nats, tmp_path, delivery_timeout=1.0, retry=FAST_RETRY) as pub:
        nats.stop()
        env = envelope()
        ack = pub.publish(env).result(10.0)
        assert (ack.spooled, ack.broker_sequence) == (True, None)
        nats.start()
        assert pub.drain_spool(30.0)
    assert stored_ids(nats)[str(env.event_id)] == 1


def test_close_with_the_broker_away_keeps_events_for_the_next_publisher(
    make_server: Callable[..., NatsServer], tmp_path: Path
) -> None:
    """close() that cannot deliver keeps its events (resolved as spooled); the next publisher's close() sends them."""
    nats = make_server()
    with LogWatcher() as logs:
        pub = publisher(nats, tmp_path, retry=FAST_RETRY)
        nats.stop()
        futures = [pub.publish(envelope()) for _ in range(50)]
        pub.close(0.5)
        assert all(f.result(0).spooled for f in futures)
        assert "not confirmed" not in logs.text
        assert logs.wait_for(r"50 wait in the spool", timeout=1.0)
    assert len(spool_files(tmp_path)) == 1
    nats.start()
    with publisher(nats, tmp_path) as second:  # adopts the file, and close() delivers it: no drain_spool()
        second.publish(envelope()).result(10.0)
    assert sum(stored_ids(nats).values()) == 51
    assert spool_files(tmp_path) == []


def test_a_full_spool_refuses_at_publish_and_the_publisher_keeps_working(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """spool_max_bytes reached (broker stalled): SpoolFull (a QueueFull) naming the spool, nothing queued; then fine."""
    with publisher(nats_server, tmp_path, spool_max_bytes=8_000) as pub:
        nats_server.pause()
        accepted = []
        try:
            with pytest.raises(SpoolFull, match=r"spool .*spool-") as raised:  # noqa: PT012 - until it is full
                for _ in range(100):
                    accepted.append(pub.publish(envelope()))
            assert isinstance(raised.value, QueueFull)
            assert 0 < len(accepted) < 100
            assert pub.stats().accepted == len(accepted)
        finally:
            nats_server.resume()
        assert pub.flush(30.0)
        assert not any(f.result(0).spooled for f in accepted)
        assert pub.publish(envelope()).result(10.0).broker_sequence is not None


def test_a_corrupt_file_in_the_spool_is_moved_aside_and_publishing_works(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """A corrupt spool file: logged as an error naming it, renamed (never deleted), the publisher works."""
    bad = tmp_path / "spool-1-deadbeef.db"
    bad.write_bytes(os.urandom(4096))
    os.utime(bad, (1e9, 1e9))  # old: not a file its owner is still creating
    with LogWatcher() as logs, publisher(nats_server, tmp_path) as pub:
        assert pub.publish(envelope()).result(10.0).broker_sequence is not None
        assert "spool-1-deadbeef.db" in logs.text
    assert not bad.exists()
    assert [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]


def test_spool_settings_are_checked_at_construction(tmp_path: Path) -> None:
    """A missing spool directory or an unknown mode is a ConfigError when the config is built."""
    with pytest.raises(ConfigError, match="not a directory"):
        PublisherConfig(servers="nats://127.0.0.1:4222", subject="a", spool_dir=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="spool_mode"):
        PublisherConfig(servers="nats://127.0.0.1:4222", subject="a", spool_dir=str(tmp_path), spool_mode="later")
    config = PublisherConfig.from_env(
        {
            "EDUPULSE_EVENT_BROKER_URL": "nats://127.0.0.1:4222",
            "EDUPULSE_EVENT_BROKER_SUBJECT": "a",
            "EDUPULSE_EVENT_BROKER_SPOOL": str(tmp_path),
            "EDUPULSE_EVENT_BROKER_SPOOL_MODE": "overflow",
        }
    )
    assert (config.spool_dir, config.spool_mode) == (str(tmp_path), "overflow")


def test_a_crash_of_the_publisher_thread_keeps_its_events_in_the_spool(
    nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash while sending: what the thread held resolves as spooled (not PublisherCrashed); all stored once."""
    original = JetStreamSender.send
    fired = threading.Event()

    async def send_then_crash(self: JetStreamSender, batch: Any) -> None:
        if not fired.is_set() and len(batch) > 10:
            fired.set()
            raise RuntimeError("injected into JetStreamSender.send")
        await original(self, batch)

    monkeypatch.setattr(JetStreamSender, "send", send_then_crash)
    with publisher(nats_server, tmp_path) as pub:
        envs = [envelope() for _ in range(2000)]
        futures = [pub.publish(env, timeout=30.0) for env in envs]
        _, pending = concurrent.futures.wait(futures, timeout=30.0)
        assert not pending
        assert fired.is_set()
        acks = [f.result(0) for f in futures]  # none raised
        assert any(ack.spooled for ack in acks), "the crash kept nothing: the test proves nothing"
        assert pub.stats().crashes == 1
        pub.publish(envelope()).result(10.0)  # a new thread, which replays the kept events
        assert pub.drain_spool(30.0), pub.stats()
    stored = stored_ids(nats_server)
    assert [str(env.event_id) for env in envs if stored[str(env.event_id)] != 1] == []
