"""The outbox's writer and relay on real SQLite and PostgreSQL databases, delivering to an
InMemoryPublisher: what a transaction leaves, grouping, batches, dead letters, settings."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from helpers import envelope, envelopes
from outbox_support import Database
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from edupulse_events import ConfigError, InMemoryPublisher, InvalidEvent, Outbox, OutboxRelay
from edupulse_events._outbox._connections import relay_connector
from edupulse_events._outbox._relay import pack
from edupulse_events._outbox._schema import StoredRow


def _ids(publisher: InMemoryPublisher) -> list[str]:
    return [str(e.event_id) for e in publisher.drain()]


def test_add_validates_before_inserting_anything(outbox_db: Database) -> None:
    """A bad envelope raises InvalidEvent at add(); add_many names its index and inserts none of the batch."""
    conn = outbox_db.connect()
    with pytest.raises(InvalidEvent, match="EventEnvelope"):
        outbox_db.outbox.add(conn, "not an envelope")  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent, match=r"envelopes\[1\]"):
        outbox_db.outbox.add_many(conn, [envelope(0), "bad", envelope(2)])  # type: ignore[list-item]
    conn.commit()
    assert outbox_db.count() == 0


def test_add_never_commits(outbox_db: Database) -> None:
    """Rows added are invisible to other connections until the caller commits, and gone after a rollback."""
    conn, other = outbox_db.connect(), outbox_db.connect()
    outbox_db.outbox.add_many(conn, envelopes(2))
    assert other.execute("SELECT count(*) FROM edupulse_outbox").fetchall()[0][0] == 0
    other.rollback()
    conn.rollback()
    assert outbox_db.count() == 0
    outbox_db.outbox.add(conn, envelope())
    conn.commit()
    assert outbox_db.count() == 1


def test_rollback_sends_nothing_and_commit_sends_once_in_order(outbox_db: Database) -> None:
    """A rolled-back transaction's events are never published; a committed one's exactly once, in add order."""
    outbox_db.commit(envelopes(3), rollback=True)
    committed = envelopes(4)
    outbox_db.commit(committed)
    publisher = InMemoryPublisher()
    with OutboxRelay(outbox_db.url, publisher) as relay:
        assert relay.run_once(timeout=30.0) == 4
        assert relay.run_once(timeout=30.0) == 0
        stats = relay.stats()
    assert _ids(publisher) == [str(e.event_id) for e in committed]
    assert (stats.pending, stats.dead, stats.delivered, stats.oldest_age) == (0, 0, 4, None)
    assert outbox_db.count() == 0


def test_each_transaction_is_one_group(outbox_db: Database) -> None:
    """Adds of one transaction share a txid (other writes between them or not); the next transaction
    of the same connection, even right after, gets another."""
    conn = outbox_db.connect()
    conn.execute("CREATE TABLE orders (n INTEGER)")
    outbox_db.outbox.add(conn, envelope(0))
    conn.execute("INSERT INTO orders VALUES (1)")
    outbox_db.outbox.add_many(conn, envelopes(2))
    conn.commit()
    outbox_db.outbox.add(conn, envelope(3))
    conn.commit()
    txids = [row[0] for row in conn.execute("SELECT txid FROM edupulse_outbox ORDER BY id").fetchall()]
    conn.rollback()
    assert txids[0] == txids[1] == txids[2] != txids[3]


def test_sqlite_outside_wal_mode_is_refused(tmp_path: Path) -> None:
    """The SQLite writer refuses a database that is not in WAL mode, saying how to fix it."""
    conn = sqlite3.connect(tmp_path / "plain.db")
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute(Outbox().ddl("sqlite")[0])
    with pytest.raises(ConfigError, match="WAL"):
        Outbox().add(conn, envelope())
    conn.close()


def test_sqlalchemy_connection_and_session(outbox_db: Database) -> None:
    """A SQLAlchemy Connection and Session add in their own transaction: committed rows are
    delivered, a rolled-back Session leaves nothing."""
    url = outbox_db.url if outbox_db.family == "sqlite" else outbox_db.url.replace("postgresql:", "postgresql+psycopg:")
    engine = create_engine(url)
    outbox = outbox_db.outbox
    first, second, dropped = envelope(0), envelope(1), envelope(2)
    try:
        with engine.connect() as conn:
            conn.execute(text("CREATE TABLE orders (n INTEGER)"))
            outbox.add(conn, first)
            conn.commit()
        with Session(engine) as session, session.begin():
            session.execute(text("INSERT INTO orders VALUES (1)"))
            outbox.add(session, second)
        with Session(engine) as session:
            outbox.add(session, dropped)
            session.rollback()
    finally:
        engine.dispose()
    publisher = InMemoryPublisher()
    with OutboxRelay(outbox_db.url, publisher) as relay:
        relay.run_once(timeout=30.0)
    assert _ids(publisher) == [str(first.event_id), str(second.event_id)]


def test_a_long_transaction_goes_in_chunks_in_order(outbox_db: Database) -> None:
    """A transaction longer than max_batch is sent in order, in atomic chunks of max_batch."""
    big, small = envelopes(7), envelopes(2)
    outbox_db.commit(big)
    outbox_db.commit(small)
    publisher = InMemoryPublisher()
    with OutboxRelay(outbox_db.url, publisher, max_batch=3) as relay:
        assert relay.run_once(timeout=30.0) == 9
    assert _ids(publisher) == [str(e.event_id) for e in big + small]


def test_pack_keeps_transactions_whole() -> None:
    """Batches hold whole transactions up to max_batch events; a longer one goes alone, in chunks."""

    def rows(txid: int, n: int) -> list[StoredRow]:
        return [StoredRow(txid * 100 + i, txid, "", "", b"", b"", 0.0, None) for i in range(n)]

    a, b, c, d = rows(1, 2), rows(2, 2), rows(3, 5), rows(4, 1)
    batches = list(pack([a, b, c, d], 4))
    assert batches == [[a, b], [c[:4]], [c[4:]], [d]]


def test_claims_open_side_by_side_hold_different_transactions(outbox_db: Database) -> None:
    """A claim read while another is open (the relay reads its next claim during a send) holds the
    transactions after the open one's, in order; once the first is settled and the second given
    back, a new claim starts from the oldest pending transaction again."""
    from edupulse_events._outbox._stores import store_for

    batches = [envelopes(2) for _ in range(3)]
    for batch in batches:
        outbox_db.commit(batch)
    family, connect, path = relay_connector(outbox_db.url, timeout=10.0)
    store = store_for(family, "edupulse_outbox", connect, path)

    def ids(claim: Any) -> list[str]:
        return [row.event_id for row in claim.rows]

    try:
        first, second = store.claim(2), store.claim(2)
        assert (ids(first), ids(second), first.full, second.full) == (_env(batches[0]), _env(batches[1]), True, True)
        store.settle(first, [row.id for row in first.rows], [], 0.0, False).result(timeout=10.0)
        third = store.claim(10)
        assert (ids(third), third.full) == (_env(batches[2]), False)
        store.release()
        again = store.claim(10)
        assert ids(again) == _env(batches[1]) + _env(batches[2])
        store.release()
    finally:
        store.close()


def _env(batch: list[Any]) -> list[str]:
    return [str(e.event_id) for e in batch]


def test_an_undecodable_row_takes_its_transaction_to_the_dead_letters(outbox_db: Database) -> None:
    """A transaction with a row that no longer decodes goes whole to the dead letters with the
    reason; later transactions are delivered; retry_dead moves it back."""
    broken, fine = envelopes(2), envelopes(1)
    outbox_db.commit(broken)
    outbox_db.commit(fine)
    conn = outbox_db.connect()
    conn.execute(
        "UPDATE edupulse_outbox SET body = body || 'x' WHERE event_id = %s".replace(
            "%s", "?" if outbox_db.family == "sqlite" else "%s"
        ),
        (str(broken[1].event_id),),
    )
    conn.commit()
    publisher = InMemoryPublisher()
    with OutboxRelay(outbox_db.url, publisher) as relay:
        assert relay.run_once(timeout=30.0) == 1
        dead = relay.dead()
        assert relay.stats()[:3] == (0, None, 2)
        assert relay.retry_dead([dead[0].id]) == 1
        assert relay.stats()[:1] == (1,)
    assert _ids(publisher) == [str(fine[0].event_id)]
    assert [d.event_id for d in dead] == [str(e.event_id) for e in broken]
    assert all("does not decode" in d.reason for d in dead)


def test_the_same_event_twice_is_sent_once(outbox_db: Database) -> None:
    """An envelope added twice (one event id) is sent once; both rows are delivered."""
    same = envelope()
    outbox_db.commit([same, same])
    publisher = InMemoryPublisher()
    with OutboxRelay(outbox_db.url, publisher) as relay:
        relay.run_once(timeout=30.0)
    assert _ids(publisher) == [str(same.event_id)]
    assert outbox_db.count() == 0


def test_delivered_rows_can_be_kept(outbox_db: Database) -> None:
    """With keep_delivered the rows stay (marked delivered), are not sent again, and are not pending."""
    outbox_db.commit(envelopes(2))
    publisher = InMemoryPublisher()
    with OutboxRelay(outbox_db.url, publisher, keep_delivered=3600.0) as relay:
        assert relay.run_once(timeout=30.0) == 2
        assert relay.run_once(timeout=30.0) == 0
        assert relay.stats().pending == 0
    assert outbox_db.count() == 2
    assert len(publisher.drain()) == 2


def test_one_sqlite_relay_at_a_time(tmp_path: Path) -> None:
    """A second SQLite relay delivers nothing while the first holds the lock, and takes over once it closes."""
    database = Database("sqlite", f"sqlite:///{tmp_path / 'app.db'}")
    database.create()
    first, second = InMemoryPublisher(), InMemoryPublisher()
    relay = OutboxRelay(database.url, first)
    relay.run_once(timeout=30.0)
    database.commit(envelopes(2))
    with OutboxRelay(database.url, second) as standby:
        assert standby.run_once(timeout=30.0) == 0
        relay.close()
        assert standby.run_once(timeout=30.0) == 2
    database.close()
    assert (len(first.drain()), len(second.drain())) == (0, 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"table": "drop table"}, "plain SQL identifier"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"keep_delivered": -1.0}, "keep_delivered"),
        ({"max_batch": 0}, "max_batch"),
        ({"db": "sqlite://"}, "SQLite database file"),
        ({"db": "mysql://u@h/db"}, "not 'mysql'"),
        ({"db": "::"}, "not a database URL"),
        ({"publisher": object()}, "EventPublisher"),
    ],
)
def test_relay_settings_are_checked(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    """Relay settings that cannot work raise ConfigError at construction, saying which."""
    args: dict[str, Any] = {"db": f"sqlite:///{tmp_path / 'app.db'}", "publisher": InMemoryPublisher(), **kwargs}
    with pytest.raises(ConfigError, match=match):
        OutboxRelay(args.pop("db"), args.pop("publisher"), **args)
