"""Memory held for events stays within a small multiple of the byte budget (max_queue_bytes +
window_bytes), measured as the RSS of a real process publishing ~1 MB events through a hung
(SIGSTOPped) broker, then its crash and restart (a reconnect that resends what was in flight)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nats
import pytest
from faults_support import STREAM

from edupulse_events.testing import NatsServer

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
QUEUE_BYTES = 16 * MIB
WINDOW_BYTES = 8 * MIB
BUDGET = QUEUE_BYTES + WINDOW_BYTES
EVENT = 1_000_000

CHILD = textwrap.dedent(
    """
    import resource, sys, threading, time
    sys.path[:0] = [{tests!r}]
    from faults_support import connect, large
    from edupulse_events import QueueFull, RetryPolicy

    def peak_kib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    pub = connect({url!r}, max_queue_bytes={queue}, window_bytes={window}, publish_timeout=0.2,
                  delivery_timeout=60.0, retry=RetryPolicy(attempt_timeout=1.0))
    for _ in range(3):  # warm up: allocator arenas, nats-py buffers, one event of each size
        pub.publish(large({size})).result(timeout=30)
    baseline = peak_kib()
    accepted = [0]
    lock = threading.Lock()

    def publish_for(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                pub.publish(large({size}))
            except QueueFull:
                continue
            with lock:
                accepted[0] += 1

    def phase(seconds):
        threads = [threading.Thread(target=publish_for, args=(seconds,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    print("READY", flush=True)
    sys.stdin.readline()          # the broker is paused now
    phase(3.0)
    print("HUNG", peak_kib() - baseline, accepted[0], flush=True)
    sys.stdin.readline()          # the broker was killed and restarted: nats-py reconnects
    phase(2.0)
    flushed = pub.flush(timeout=60)
    stats = pub.stats()
    pub.close(10)
    print("DONE", peak_kib() - baseline, accepted[0], flushed, stats.acknowledged, stats.failed, flush=True)
    """
)


def stream_messages(url: str) -> int:
    async def count() -> int:
        nc = await nats.connect(url)
        try:
            return int((await nc.jetstream().stream_info(STREAM)).state.messages)
        finally:
            await nc.close()

    return asyncio.run(count())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("malloc", "limit"),
    [
        # glibc returns every large block at once: the peak is what the process really holds
        ({"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}, 2.0),
        # glibc's defaults keep freed 1 MB blocks around for reuse (its mmap threshold grows)
        ({}, 5.0),
    ],
    ids=["held", "glibc-defaults"],
)
def test_rss_stays_within_a_multiple_of_the_byte_budget(
    nats_server: NatsServer, malloc: dict[str, str], limit: float
) -> None:
    """~1 MB events, a hung broker then a reconnect: peak RSS growth stays within a small multiple of
    max_queue_bytes + window_bytes (2x for what is held; 5x with glibc's retention of freed blocks)."""
    script = CHILD.format(
        tests=str(ROOT / "tests"), url=nats_server.url, queue=QUEUE_BYTES, window=WINDOW_BYTES, size=EVENT
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **malloc},
    )
    assert child.stdin is not None
    assert child.stdout is not None
    assert child.stderr is not None
    try:
        assert child.stdout.readline().split() == ["READY"]
        nats_server.pause()
        child.stdin.write("go\n")
        child.stdin.flush()
        hung = child.stdout.readline().split()
        assert hung[0] == "HUNG", hung
        nats_server.kill()  # a stopped process dies on SIGKILL too; the store survives
        nats_server.restart()
        child.stdin.write("go\n")
        child.stdin.flush()
        done = child.stdout.readline().split()
        assert done[0] == "DONE", (done, child.stderr.read() if child.poll() is not None else "")
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(30)
    hung_kib, done_kib = int(hung[1]), int(done[1])
    accepted, flushed, acknowledged, failed = int(done[2]), done[3], int(done[4]), int(done[5])
    assert flushed == "True"
    assert acknowledged + failed == accepted + 3
    assert acknowledged >= 10
    budget = f"budget {BUDGET // MIB} MiB, limit {limit}x"
    assert hung_kib * 1024 < limit * BUDGET, f"{hung_kib / 1024:.0f} MiB while the broker hung ({budget})"
    assert done_kib * 1024 < limit * BUDGET, f"{done_kib / 1024:.0f} MiB after the reconnect ({budget})"
    assert stream_messages(nats_server.url) == acknowledged  # each acknowledged event stored once
