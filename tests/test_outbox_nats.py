"""The outbox relay delivering to a real nats-server, from real SQLite and PostgreSQL databases:
exactly the committed transactions, each whole and in order, exactly once — through random
rollbacks, a relay SIGKILLed mid-delivery, refusals and a broker outage."""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import LogWatcher, envelope, envelopes, raw_messages, read_stream
from nats.js.api import DiscardPolicy
from outbox_support import STREAM, SUBJECT, Database, atomic_stream, publisher_to, stored_ids

from edupulse_events import EventEnvelope, NatsPublisher, Outbox, OutboxRelay
from edupulse_events.testing import NatsServer

pytestmark = pytest.mark.batch_streams

#: A relay in its own process: delivers until killed, logging each batch it sends to stderr.
RELAY_PROCESS = """
import logging, sys, threading
from edupulse_events import NatsPublisher, OutboxRelay
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(message)s")
publisher = NatsPublisher.connect(sys.argv[2], "edupulse.{tenant}.{type}", stream="OUTBOX")
relay = OutboxRelay(sys.argv[1], publisher, claim=50, poll_interval=0.05)
print("ready", flush=True)
relay.run(threading.Event())
"""


def _ids(events: list[EventEnvelope]) -> list[str]:
    return [str(e.event_id) for e in events]


def test_rollback_sends_nothing_commit_stores_exactly_once(outbox_db: Database, nats_server: NatsServer) -> None:
    """Only the committed transaction's events reach the stream, once, in order; a second run sends nothing."""
    outbox_db.commit(envelopes(2), rollback=True)
    committed = envelopes(3)
    outbox_db.commit(committed)
    with atomic_stream(nats_server) as publisher, OutboxRelay(outbox_db.url, publisher) as relay:
        assert relay.run_once(timeout=30.0) == 3
        assert relay.run_once(timeout=30.0) == 0
    assert stored_ids(nats_server, 3) == _ids(committed)


def test_a_transaction_a_dead_relay_sent_is_delivered_not_dead_lettered(
    outbox_db: Database, nats_server: NatsServer
) -> None:
    """A relay that died after sending and before deleting: the next one's resend finds the ids stored
    (10201) and takes it as delivered, once; a later transaction packed with it is not taken for stored."""
    sent, later = envelopes(3), envelopes(2)
    outbox_db.commit(sent)
    outbox_db.commit(later)
    with atomic_stream(nats_server) as publisher:
        # what the dead relay did: the first transaction stored, its rows left behind
        assert all(f.result(timeout=10) for f in publisher.publish_many(sent, atomic=True))
        with OutboxRelay(outbox_db.url, publisher) as relay:
            assert relay.run_once(timeout=30.0) == 5
            assert relay.stats().dead == 0
    assert stored_ids(nats_server, 5) == _ids(sent) + _ids(later)
    assert outbox_db.count() == 0


def test_random_rollbacks_leave_exactly_the_committed_transactions(
    outbox_db: Database, nats_server: NatsServer
) -> None:
    """1,000 transactions of 1-3 events, 20 % rolled back at random: the stream holds exactly the
    committed events, each transaction's contiguous and in add order, transactions in commit order."""
    rng = random.Random(21)
    conn = outbox_db.connect()
    expected: list[str] = []
    for _ in range(1000):
        batch = envelopes(rng.randint(1, 3))
        rollback = rng.random() < 0.2
        outbox_db.commit(batch, rollback=rollback, conn=conn)
        if not rollback:
            expected += _ids(batch)
    with atomic_stream(nats_server) as publisher, OutboxRelay(outbox_db.url, publisher, claim=100) as relay:
        assert relay.run_once(timeout=60.0) == len(expected)  # claims of 100 rows, the next read during a send
    assert stored_ids(nats_server, len(expected)) == expected
    assert outbox_db.count() == 0


def test_the_relay_publishes_the_bytes_the_writer_stored(outbox_db: Database, nats_server: NatsServer) -> None:
    """Each row goes to the stream as stored (subject, header block, body), neither decoded nor
    encoded again; transactions as atomic batches, in order."""
    outbox_db.commit(envelopes(3, tenant="école 7"))
    outbox_db.commit(envelopes(2, tenant=None, correlation_id="c0ffee00-0000-4000-8000-000000000000"))
    conn = outbox_db.connect()
    rows = conn.execute("SELECT subject, headers, body FROM edupulse_outbox ORDER BY id").fetchall()
    conn.rollback()
    with atomic_stream(nats_server) as publisher, OutboxRelay(outbox_db.url, publisher) as relay:
        assert relay.run_once(timeout=30.0) == 5
        assert publisher.stats().acknowledged_atomic == 5
    assert raw_messages(nats_server.url, STREAM, 5) == [(s, bytes(h), bytes(b)) for s, h, b in rows]


def test_rows_the_publisher_would_not_write_are_encoded_again_or_dead_lettered(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Rows the publisher does not send as they are: one written for another subject template and
    one with a header it does not write are decoded and published as it routes them (the forged
    header is not sent); a forged one whose body does not decode takes its transaction to the dead
    letters. Logged once."""
    database = Database("sqlite", f"sqlite:///{tmp_path / 'app.db'}")
    database.create()
    other, forged, broken, fine = envelopes(2), envelopes(2), envelopes(2), envelopes(2)
    conn = database.connect()
    Outbox(subject="legacy.{type}").add_many(conn, other)
    conn.commit()
    for batch in (forged, broken, fine):
        database.commit(batch)
    forge = "UPDATE edupulse_outbox SET headers = replace(headers, X'0d0a0d0a', X'0d0a582d466f726765643a20310d0a0d0a')"
    conn.execute(f"{forge} WHERE event_id IN (?, ?)", (str(forged[0].event_id), str(broken[1].event_id)))
    conn.execute("UPDATE edupulse_outbox SET body = body || 'x' WHERE event_id = ?", (str(broken[1].event_id),))
    conn.commit()
    with LogWatcher() as logs, atomic_stream(nats_server) as publisher, OutboxRelay(database.url, publisher) as relay:
        assert relay.run_once(timeout=30.0) == 6
        dead = relay.dead()
    database.close()
    stored = read_stream(nats_server.url, STREAM, at_least=6)
    assert [m.headers["Nats-Msg-Id"] for m in stored] == _ids(other + forged + fine)
    assert all(m.subject.startswith("edupulse.school-1.") and "X-Forged" not in m.headers for m in stored)
    assert [d.event_id for d in dead] == _ids(broken)
    assert "does not decode" in dead[0].reason
    assert logs.text.count("does not send a stored row as it is") == 1


def _lines(stream: object) -> queue.Queue[str]:
    """The lines of a subprocess pipe, read by a daemon thread (it ends with the pipe)."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _wait_line(lines: queue.Queue[str], text: str, timeout: float = 30.0) -> None:
    while True:
        if text in lines.get(timeout=timeout):
            return


def test_a_relay_killed_mid_delivery_delivers_nothing_twice(
    outbox_db: Database, nats_server: NatsServer, tmp_path: Path
) -> None:
    """A relay SIGKILLed while a batch is on its way (the broker stopped before acknowledging it),
    then a new relay: every committed event is stored exactly once, each transaction whole."""
    with atomic_stream(nats_server):
        pass
    first = envelopes(10)
    rest = [envelopes(50) for _ in range(6)]
    proc = subprocess.Popen(
        [sys.executable, "-c", RELAY_PROCESS, outbox_db.url, nats_server.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        start_new_session=True,
    )
    try:
        out, err = _lines(proc.stdout), _lines(proc.stderr)
        _wait_line(out, "ready")
        outbox_db.commit(first)
        assert stored_ids(nats_server, len(first)) == _ids(first)  # the relay delivers
        nats_server.pause()
        for batch in rest:
            outbox_db.commit(batch)
        _wait_line(err, "sending 50 events")  # claimed and handed to the publisher: no ack can come
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        nats_server.resume()
    assert outbox_db.count() == 300  # nothing settled after the pause
    with publisher_to(nats_server) as publisher, OutboxRelay(outbox_db.url, publisher) as relay:
        relay.run_once(timeout=60.0)
    expected = _ids(first) + [i for batch in rest for i in _ids(batch)]
    assert stored_ids(nats_server, len(expected)) == expected
    assert outbox_db.count() == 0


def test_a_refused_transaction_goes_to_the_dead_letters(tmp_path: Path, nats_server: NatsServer) -> None:
    """A transaction the stream refuses for good (two events on one subject where the stream keeps
    one per subject, discarding new ones) goes whole to the dead letters with the broker's reason;
    the transaction sent in the same batch, and those after, are delivered."""
    database = Database("sqlite", f"sqlite:///{tmp_path / 'app.db'}")
    database.create()
    refused, after = [envelope(0, tenant="t1"), envelope(2, tenant="t1")], envelopes(2)
    database.commit(refused)
    database.commit(after)
    limits = {"max_msgs_per_subject": 1, "discard": DiscardPolicy.NEW, "discard_new_per_subject": True}
    with atomic_stream(nats_server, **limits) as publisher, OutboxRelay(database.url, publisher) as relay:
        assert relay.run_once(timeout=30.0) == 2
        dead = relay.dead()
        stats = relay.stats()
    database.close()
    assert stored_ids(nats_server, 2) == _ids(after)
    assert [d.event_id for d in dead] == _ids(refused)
    assert "maximum messages per subject exceeded" in dead[0].reason
    assert (stats.pending, stats.dead, stats.dead_lettered) == (0, 2, 2)


@pytest.mark.parametrize("core", [False, True], ids=["allow_atomic=False", "core NATS"])
def test_without_atomic_batches_each_event_goes_in_order(tmp_path: Path, nats_server: NatsServer, core: bool) -> None:
    """Where atomic batches cannot be had (a stream without allow_atomic, err_code 10174; a core NATS
    publisher) the relay says so once and sends event by event, in order."""
    database = Database("sqlite", f"sqlite:///{tmp_path / 'app.db'}")
    database.create()
    batches = [envelopes(3) for _ in range(3)]
    for batch in batches:
        database.commit(batch)
    with atomic_stream(nats_server, allow_atomic=False) as jetstream:
        publisher = NatsPublisher.connect(nats_server.url, SUBJECT, jetstream=False) if core else jetstream
        with LogWatcher() as logs, publisher, OutboxRelay(database.url, publisher) as relay:
            assert relay.run_once(timeout=30.0) == 9
            assert not relay.atomic
    database.close()
    assert stored_ids(nats_server, 9) == [i for batch in batches for i in _ids(batch)]
    assert logs.text.count("sending event by event") == 1
    assert ("core NATS" if core else "10174") in logs.text


@pytest.mark.slow
def test_a_broker_outage_of_a_minute_leaves_rows_waiting(tmp_path: Path, nats_server: NatsServer) -> None:
    """The broker gone for 60 s while transactions commit: rows wait (the relay backs off, no busy
    loop), then everything is delivered exactly once, in order."""
    from edupulse_events import RetryPolicy

    database = Database("sqlite", f"sqlite:///{tmp_path / 'app.db'}")
    database.create()
    publisher = atomic_stream(nats_server)
    relay = OutboxRelay(database.url, publisher, retry=RetryPolicy(initial=0.5, maximum=5.0), wait_timeout=15.0)
    expected: list[str] = []
    with LogWatcher() as logs, publisher, relay:
        relay.start()
        before = envelopes(20)
        database.commit(before)
        expected += _ids(before)
        assert stored_ids(nats_server, 20) == expected
        nats_server.kill()
        stop = threading.Event()
        done = threading.Event()

        def commit_for_a_minute() -> None:
            conn = database.connect()
            while not stop.wait(0.05):
                batch = envelopes(5)
                database.commit(batch, conn=conn)
                expected.extend(_ids(batch))
            done.set()

        writer = threading.Thread(target=commit_for_a_minute)
        writer.start()
        assert logs.wait_for("broker unavailable", timeout=60.0)
        assert not stop.wait(60.0)  # the outage
        stop.set()
        writer.join(30)
        assert done.is_set()
        pending = database.count()
        assert pending > 0  # rows waited
        nats_server.restart()
        assert stored_ids(nats_server, len(expected)) == expected
        attempts = logs.text.count("broker unavailable")
    database.close()
    assert attempts < 60  # backed off: no busy loop
