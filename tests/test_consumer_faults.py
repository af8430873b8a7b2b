"""The consumer when things break: a consumer process SIGKILLed mid-batch and restarted (nothing
lost; with the inbox, on SQLite and PostgreSQL, nothing applied twice), three processes sharing
one durable (each event handled once), an R3 cluster losing the stream's leader or a server
restarting mid-run (nothing lost), and a message whose holder died on its last delivery (dead-lettered
from the server's MAX_DELIVERIES advisory)."""

from __future__ import annotations

import collections
import sqlite3
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from consumer_support import ack_pending, consume_in_child, dead_letters, fill, publish_raw, read_ids
from helpers import envelopes

from edupulse_events import BrokerError, Inbox, NatsConsumer, ReceivedMessage, encode
from edupulse_events.testing import NatsCluster, NatsServer

pytestmark = pytest.mark.pull_consumer


def test_sigkilled_consumer_restarted_loses_nothing(nats_server: NatsServer, tmp_path: Path) -> None:
    """SIGKILL while handling the 150th of 500 events; restarted, every event is handled (at least once)."""
    events = envelopes(500)
    fill(nats_server.url, "K", "k", events)
    out = tmp_path / "ids"
    killed = consume_in_child(nats_server.url, "K", "d", out, kill_at=150)
    assert killed.wait(60) == -9
    assert len(read_ids(out)) == 150
    again = consume_in_child(nats_server.url, "K", "d", out)
    assert again.wait(60) == 0
    ids = read_ids(out)
    assert set(ids) == {str(e.event_id) for e in events}
    assert len(ids) > len(events)  # the one it died on (at least) came again


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_inbox_after_sigkill_nothing_applied_twice(
    nats_server: NatsServer, tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    """SIGKILL after the 100th effect committed, before its ack: redelivered, and the inbox applies each event once."""
    events = envelopes(300)
    fill(nats_server.url, "I", "i", events)
    db: Any
    if database == "sqlite":
        target = str(tmp_path / "app.db")
        db = sqlite3.connect(target)
    else:
        import psycopg

        target = request.getfixturevalue("postgres_url")
        db = psycopg.connect(target, autocommit=True)
    db.execute("CREATE TABLE effects (event_id TEXT NOT NULL)")
    if database == "sqlite":
        db.commit()
    Inbox("d").create_table(db)
    out = tmp_path / "ids"
    assert consume_in_child(nats_server.url, "I", "d", out, kill_at=100, inbox_db=target).wait(60) == -9
    assert consume_in_child(nats_server.url, "I", "d", out, inbox_db=target).wait(60) == 0
    applied = [row[0] for row in db.execute("SELECT event_id FROM effects").fetchall()]
    db.close()
    assert sorted(applied) == sorted(str(e.event_id) for e in events)  # each exactly once
    assert len(read_ids(out)) > len(events)  # while some were delivered (and handled) twice


def test_holder_killed_on_last_delivery_is_dead_lettered_from_the_advisory(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """A process SIGKILLed holding a message's last delivery: when its ack_wait runs out, another consumer
    on the durable dead-letters it (from the server's MAX_DELIVERIES advisory) with the reason and the
    original headers, and goes on handling what comes next."""
    url = nats_server.url
    [doomed] = envelopes(1)
    dead_letters(url, "DLA", "dead.a")
    fill(url, "A", "a", [])
    publish_raw(
        url, "a.school-1.LessonPublished", encode(doomed), {"Nats-Msg-Id": str(doomed.event_id), "X-Origin": "lms"}
    )
    with NatsConsumer.connect(
        url, stream="A", durable="d", max_deliver=1, ack_wait=1.0, dead_letter_subject="dead.a"
    ) as survivor:
        out = tmp_path / "ids"
        assert consume_in_child(url, "A", "d", out, kill_at=1).wait(60) == -9  # died holding it, unacked
        assert read_ids(out) == [str(doomed.event_id)]
        with NatsConsumer.connect(url, stream="DLA", durable="reader") as reader:
            [letter] = reader.fetch(1, timeout=15.0)  # stored once the ack wait ran out
            letter.ack()
        later = envelopes(20)
        fill(url, "A", "a", later)
        handled: list[str] = []
        stop = threading.Event()

        def handle(message: ReceivedMessage) -> None:
            handled.append(str(message.envelope.event_id))
            if len(handled) == len(later):
                stop.set()

        assert survivor.run(handle, stop=stop, timeout=30.0) == "stop event"
        stats = survivor.stats()
    assert letter.envelope == doomed
    headers = letter.headers
    assert headers["Edupulse-Dead-Letter-Reason"] == "max_deliver reached (1 deliveries, none acked)"
    assert headers["X-Origin"] == "lms"
    assert headers["Edupulse-Original-Msg-Id"] == str(doomed.event_id)
    assert (headers["Edupulse-Dead-Letter-Stream"], headers["Edupulse-Dead-Letter-Sequence"]) == ("A", "1")
    assert headers["Edupulse-Dead-Letter-Subject"] == "a.school-1.LessonPublished"
    assert (headers["Edupulse-Dead-Letter-Consumer"], headers["Edupulse-Dead-Letter-Deliveries"]) == ("d", "1")
    assert handled == [str(e.event_id) for e in later]  # the consumer went on, in order
    assert (stats.expired, stats.dead_lettered, stats.dead_letter_failures, stats.acknowledged) == (1, 1, 0, 20)
    assert ack_pending(url, "A", "d") == (0, 0)


def test_three_processes_share_one_durable(nats_server: NatsServer, tmp_path: Path) -> None:
    """Three consumer processes on one durable: 10,000 events, each handled by one of them, once, and acked
    (how the work splits depends on when each started: one may take it all)."""
    events = envelopes(10_000)
    fill(nats_server.url, "M", "m", events)
    outs = [tmp_path / f"ids{i}" for i in range(3)]
    procs = [consume_in_child(nats_server.url, "M", "shared", out, ack_wait=30.0) for out in outs]
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    per_process = [read_ids(out) for out in outs]
    every = [i for ids in per_process for i in ids]
    assert sorted(every) == sorted(str(e.event_id) for e in events)
    assert ack_pending(nats_server.url, "M", "shared") == (0, 0)  # each one acked


def test_connection_nats_py_gives_up_on_is_rebuilt_by_the_next_call(make_server: Callable[..., NatsServer]) -> None:
    """A server -ERR after which nats-py closes the connection for good ('Maximum Subscriptions Exceeded': connecting
    and binding take two subscriptions, run()'s pull inbox is a third): run() raises BrokerError, stats() says
    "broken", and the next fetch() connects anew and reads every event."""
    server = make_server(extra_config="max_subscriptions: 2")
    events = envelopes(3)
    fill(server.url, "X", "x", events)
    handled: list[ReceivedMessage] = []
    with NatsConsumer.connect(server.url, stream="X", durable="d") as consumer:
        with pytest.raises(BrokerError, match=r"closed the connection .* for good"):
            consumer.run(handled.append, timeout=30.0)
        assert consumer.stats().state == "broken"
        got = consumer.fetch(10, timeout=5.0)
        for message in got:
            message.ack()
        assert consumer.stats().state == "running"
    assert handled == []
    assert [(m.envelope, m.num_delivered) for m in got] == [(e, 1) for e in events]
    assert ack_pending(server.url, "X", "d") == (0, 0)


def _run_through(consumer: NatsConsumer, total: int, at: int, fault: threading.Event) -> collections.Counter[uuid.UUID]:
    """Run until ``total`` distinct events were handled, setting ``fault`` after the ``at``-th."""
    done: collections.Counter[uuid.UUID] = collections.Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def handle(message: ReceivedMessage) -> None:
        with lock:
            done[message.envelope.event_id] += 1
            if len(done) == at:
                fault.set()
            if len(done) == total:
                stop.set()

    consumer.run(handle, concurrency=2, stop=stop, timeout=90.0)
    return done


def test_r3_leader_loss_mid_run_loses_nothing(nats_cluster: NatsCluster) -> None:
    """R3 stream: the stream's leader is killed mid-run; every event is still handled (at least once)."""
    events = envelopes(2000)
    fill(nats_cluster.url, "HA", "ha", events, replicas=3)
    fault = threading.Event()

    def kill_leader() -> None:
        if fault.wait(60):
            nats_cluster.kill(nats_cluster.stream_leader("HA"))

    killer = threading.Thread(target=kill_leader)
    killer.start()
    with NatsConsumer.connect(nats_cluster.urls, stream="HA", durable="d", ack_wait=5.0) as consumer:
        done = _run_through(consumer, len(events), 500, fault)
    killer.join()
    assert set(done) == {e.event_id for e in events}


def test_server_restart_mid_run_loses_nothing(nats_server: NatsServer) -> None:
    """The server restarts (same store) mid-run; the consumer reconnects and every event is handled."""
    server = nats_server
    events = envelopes(1000)
    fill(server.url, "R", "r", events)
    fault = threading.Event()

    def restart() -> None:
        if fault.wait(60):
            server.restart()

    restarter = threading.Thread(target=restart)
    restarter.start()
    with NatsConsumer.connect(server.url, stream="R", durable="d", ack_wait=5.0, reconnect_wait=0.1) as consumer:
        done = _run_through(consumer, len(events), 300, fault)
    restarter.join()
    assert set(done) == {e.event_id for e in events}
