"""The outbox on a real PostgreSQL: commit order is not id order (no id is skipped), relays
sharing one database, LISTEN/NOTIFY wake-ups, and a database outage retried with backoff."""

from __future__ import annotations

import re
import threading
from collections import Counter

import psycopg
import pytest
from helpers import LogWatcher, envelope, envelopes
from outbox_support import Database, atomic_stream, publisher_to, stored_ids

from edupulse_events import InMemoryPublisher, OutboxRelay, RetryPolicy
from edupulse_events.testing import NatsServer, PostgresServer, free_port

pytestmark = pytest.mark.batch_streams


@pytest.fixture
def pg(postgres_url: str) -> Database:
    """An empty PostgreSQL outbox database."""
    database = Database("postgresql", postgres_url)
    database.create()
    return database


def test_a_lower_id_committing_later_is_not_skipped(pg: Database) -> None:
    """A transaction that took its id first but commits after a later one is delivered after it:
    in commit order, never skipped (no 'last id' watermark)."""
    early, late = envelope(0), envelope(1)
    slow = pg.connect()
    pg.outbox.add(slow, early)  # lower id, not committed yet
    pg.commit([late])
    publisher = InMemoryPublisher()
    with OutboxRelay(pg.url, publisher) as relay:
        assert relay.run_once(timeout=30.0) == 1
        slow.commit()
        assert relay.run_once(timeout=30.0) == 1
    assert [e.event_id for e in publisher.drain()] == [late.event_id, early.event_id]


def test_three_relays_share_the_work_without_doubles(pg: Database, nats_server: NatsServer) -> None:
    """Three relays on one database while four threads commit: every event stored exactly once,
    and more than one relay delivered."""
    with atomic_stream(nats_server):
        pass
    committed: list[list[str]] = [[] for _ in range(4)]

    def commit(n: int) -> None:
        conn = pg.connect()
        for _ in range(60):
            batch = envelopes(3)
            pg.commit(batch, conn=conn)
            committed[n] += [str(e.event_id) for e in batch]

    publishers = [publisher_to(nats_server) for _ in range(3)]
    relays = [OutboxRelay(pg.url, p, claim=20, poll_interval=0.05) for p in publishers]
    try:
        for relay in relays:
            relay.start()
        writers = [threading.Thread(target=commit, args=(n,)) for n in range(4)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(60)
        expected = sorted(i for ids in committed for i in ids)
        stored = stored_ids(nats_server, len(expected))
    finally:
        for relay in relays:
            relay.close()
        for publisher in publishers:
            publisher.close()
    assert len(expected) == 720
    assert Counter(stored) == Counter(expected)
    assert sum(1 for relay in relays if relay.stats().delivered) >= 2
    assert pg.count() == 0


def test_an_idle_relay_is_woken_by_the_commit(pg: Database) -> None:
    """An idle relay polling once a minute delivers a new commit at once: LISTEN/NOTIFY woke it."""
    publisher = InMemoryPublisher()
    with OutboxRelay(pg.url, publisher, poll_interval=60.0) as relay:
        relay.start()
        pg.commit([envelope(0)])
        first = publisher.get(timeout=10.0)  # the relay is past its first look, now waiting
        pg.commit([envelope(1)])
        second = publisher.get(timeout=10.0)  # far sooner than the next poll
    assert first.event_id != second.event_id


def test_a_database_outage_is_retried_with_backoff() -> None:
    """A relay whose database is down retries with growing waits (logged), and delivers once it is up."""
    port = free_port()
    server = PostgresServer(port=port)
    publisher = InMemoryPublisher()
    relay = OutboxRelay(
        server.url(),
        publisher,
        retry=RetryPolicy(initial=0.05, maximum=0.4, jitter=0.0),
        db_timeout=1.0,
        poll_interval=0.05,
    )
    try:
        with LogWatcher() as logs:
            relay.start()
            assert logs.wait_for(r"database unavailable .*attempt 4\)", timeout=30.0)
            waits = [float(w) for w in re.findall(r"retrying in ([0-9.]+) s", logs.text)]
            server.start()
            conn = psycopg.connect(server.dsn())
            database = Database("postgresql", server.url())
            database.outbox.create_table(conn)
            database.outbox.add(conn, event := envelope())
            conn.commit()
            conn.close()
            assert publisher.get(timeout=30.0).event_id == event.event_id
            assert logs.wait_for("delivering again", timeout=10.0)
    finally:
        relay.close()
        server.close()
    assert waits[:4] == [0.05, 0.1, 0.2, 0.4]
