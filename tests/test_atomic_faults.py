"""Atomic batches through faults, against real nats-server processes: a commit's ack lost with the
connection, the leader of an R3 stream killed, a server SIGKILLed and restarted. Retries stay
exactly-once: every batch is in the stream whole (contiguous, in order) or not at all, no event twice,
a future says stored only if its batch is, and every future resolves by its delivery deadline."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from faults_support import (
    SHORT,
    STREAM,
    AtomicBatch,
    BatchRunner,
    check_atomic_batches,
    connect,
    stored_messages,
)
from helpers import LogWatcher, envelopes
from proxy_support import CuttingProxy

from edupulse_events import NatsPublisher, RetryPolicy
from edupulse_events.testing import NatsCluster, NatsServer

pytestmark = pytest.mark.batch_streams

DEADLINE = float(SHORT["delivery_timeout"])  # type: ignore[arg-type]


@pytest.fixture
def proxy(nats_server: NatsServer) -> Iterator[CuttingProxy]:
    """A `CuttingProxy` in front of ``nats_server``, closed (every connection and thread) after the test."""
    with CuttingProxy((nats_server.host, nats_server.port)) as cutting:
        yield cutting


@pytest.mark.parametrize("then", ["reconnect", "crash"])
def test_a_lost_commit_ack_resends_the_batch_which_resolves_as_stored_once(
    nats_server: NatsServer, proxy: CuttingProxy, nats_path: str, then: str
) -> None:
    """The commit's ack lost on its way back, the connection dropped there ("reconnect"), or dead until the
    server is SIGKILLed and restarted ("crash"): the batch is resent with the same Nats-Msg-Ids and resolves
    as stored (duplicate=True, the stream refusing it as stored already), stored once; the next batch as usual."""
    deadline = 5.0  # room for a restart
    pub = connect(proxy.url, delivery_timeout=deadline, retry=RetryPolicy(attempt_timeout=0.3))
    try:
        before = AtomicBatch(pub, envelopes(3))
        assert before.wait()
        proxy.arm(hold=then == "crash")
        lost = AtomicBatch(pub, envelopes(5))  # resent on the new connection, or at attempt_timeout (public path)
        assert proxy.cut.wait(10), "the proxy never saw the commit's ack"
        if then == "crash":
            nats_server.kill()
            nats_server.restart()
        assert lost.wait()
        after = AtomicBatch(pub, envelopes(4))
        assert after.wait()
        stats = pub.stats()
    finally:
        pub.close(5)
    assert proxy.connections >= 2
    assert all(f.result(timeout=0).duplicate for f in lost.futures), [f.result(timeout=0) for f in lost.futures]
    outcomes = check_atomic_batches(stored_messages(nats_server.url), [before, lost, after], deadline)
    assert outcomes == {"stored": 2, "duplicate": 1}
    assert (stats.acknowledged_atomic, stats.duplicates, stats.failed) == (12, 5, 0)


def batches_through(pub: NatsPublisher, fault: Callable[[BatchRunner], None]) -> list[AtomicBatch]:
    """Atomic batches of 100 published from a thread (`BatchRunner`) until 5 are stored, then through
    ``fault(runner)``, until 5 more are stored; all resolved, the publisher closed. Asserts that some batch
    was in flight across the fault."""
    try:
        with BatchRunner(pub, size=100) as runner:
            runner.wait_for(5)
            fault(runner)
            struck = time.monotonic()
            runner.wait_for(5, timeout=60)
        assert pub.flush(timeout=30), pub.stats()
    finally:
        pub.close(5)
    assert any(b.started < struck < b.resolved_at for b in runner.batches), "no batch was in flight at the fault"
    return runner.batches


def test_server_killed_and_restarted_mid_batches_keeps_every_batch_whole(nats_server: NatsServer) -> None:
    """Batches published from a thread while the server is SIGKILLed (frozen first, with batches in flight) and
    restarted: each stored whole or not at all, once; every future resolves by its deadline, and says stored
    only if its batch is."""

    def crash(runner: BatchRunner) -> None:
        nats_server.pause()  # frozen first: batches are surely in flight when it dies
        runner.wait_unresolved()
        with LogWatcher() as logs:
            nats_server.kill()
            nats_server.restart()
            assert logs.wait_for("reconnected to broker", 15), logs.text

    batches = batches_through(connect(nats_server.url, **SHORT), crash)
    outcomes = check_atomic_batches(stored_messages(nats_server.url), batches, DEADLINE)
    assert outcomes["stored"] + outcomes["duplicate"] >= 10, outcomes


def test_stream_leader_killed_mid_batches_keeps_every_batch_whole(nats_cluster: NatsCluster) -> None:
    """R3 stream: batches published from a thread while its leader is SIGKILLed (frozen first, with batches in
    flight): each stored whole or not at all, once; every future resolves by its deadline, and says stored
    only if its batch is."""
    pub = connect(nats_cluster.url, stream_replicas=3, **SHORT)  # creates the stream
    try:
        nats_cluster.wait_ready()
        leader = nats_cluster.stream_leader(STREAM)
    except BaseException:
        pub.close(5)
        raise

    def kill_leader(runner: BatchRunner) -> None:
        nats_cluster.node(leader).pause()  # frozen first: batches are surely in flight when it dies
        runner.wait_unresolved()
        nats_cluster.kill(leader)

    batches = batches_through(pub, kill_leader)
    assert nats_cluster.stream_leader(STREAM) != leader
    # Reading back needs the JetStream meta leader (consumer create), which the killed node may have been.
    nats_cluster.wait_ready(timeout=30)
    survivors = ",".join(node.url for node in nats_cluster.nodes if node.running)
    outcomes = check_atomic_batches(stored_messages(survivors, attempts=3), batches, DEADLINE)
    assert outcomes["stored"] + outcomes["duplicate"] >= 10, outcomes
