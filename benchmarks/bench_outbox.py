"""What the transactional outbox costs: relay throughput against publish_many(), commit-to-stored
latency of an idle relay, and what add() adds to the application's transaction.

Usage: python benchmarks/bench_outbox.py [--events 20000] [--per-tx 10] [--rounds 3] [--latency 200]

Starts its own nats-server (JetStream, file storage, a stream allowing atomic batches) and a
throw-away PostgreSQL (the machine's initdb/pg_ctl; without one, SQLite only), then, round by round:

  publish_many   N typical ~440-byte envelopes straight to the broker in batches of 1,000
                 (publish_many, then flush): the baseline
  relay sqlite   the same N committed to a SQLite outbox in transactions of --per-tx events
                 (written for the publisher's subject template, so the relay sends them as
                 stored), then OutboxRelay.run_once(): from its start to the last batch
                 acknowledged and its rows deleted (events/s), its ratio to the baseline of the
                 same round
  relay postgresql  the same from PostgreSQL

Then, on PostgreSQL, an idle relay (woken by LISTEN/NOTIFY; polling every 60 s, so only the
notification can explain a quick delivery) and --latency commits of one event, one at a time:
commit returned -> the message seen by a core NATS subscriber on the stream's subjects (p50, p99).
Last, the cost of add(): a transaction inserting one business row, with and without one add()
(and with add_many() of 10), µs per event, median of 5 runs of 1,000 transactions each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats
from _common import machine, make_envelopes, percentile

from edupulse_events import EventEnvelope, NatsPublisher, Outbox, OutboxRelay
from edupulse_events.errors import ServerNotFound
from edupulse_events.testing import NatsServer, PostgresServer

STREAM = "OUTBOX_BENCH"
SUBJECT = "outbox.{tenant}.{type}"


async def _fresh_stream(url: str) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        with contextlib.suppress(Exception):  # no stream yet
            await js.delete_stream(STREAM)
        await js.add_stream(name=STREAM, subjects=["outbox.>"], allow_atomic=True)
    finally:
        await nc.close()


def _publisher(url: str) -> NatsPublisher:
    return NatsPublisher.connect(url, SUBJECT, stream=STREAM, delivery_timeout=60.0)


def baseline(url: str, envelopes: list[EventEnvelope]) -> float:
    """events/s of publish_many() in batches of 1,000, to the last ack."""
    asyncio.run(_fresh_stream(url))
    with _publisher(url) as publisher:
        started = time.perf_counter()
        for i in range(0, len(envelopes), 1000):
            publisher.publish_many(envelopes[i : i + 1000])
        publisher.flush(120.0)
        return len(envelopes) / (time.perf_counter() - started)


def relay_rate(url: str, connect: Callable[[], Any], db: str, envelopes: list[EventEnvelope], per_tx: int) -> float:
    """events/s of OutboxRelay.run_once() over ``envelopes`` committed ``per_tx`` per transaction."""
    asyncio.run(_fresh_stream(url))
    outbox = Outbox(subject=SUBJECT)  # the publisher's template: rows are sent as stored
    conn = connect()
    for i in range(0, len(envelopes), per_tx):
        outbox.add_many(conn, envelopes[i : i + per_tx])
        conn.commit()
    conn.close()
    with _publisher(url) as publisher, OutboxRelay(db, publisher) as relay:
        started = time.perf_counter()
        delivered = relay.run_once(timeout=300.0)
        elapsed = time.perf_counter() - started
    assert delivered == len(envelopes), (delivered, len(envelopes))
    return len(envelopes) / elapsed


def latency(url: str, pg: PostgresServer, dsn_db: str, count: int) -> list[float]:
    """Commit-to-seen seconds for ``count`` single-event transactions with an idle relay."""
    import psycopg

    asyncio.run(_fresh_stream(url))
    seen: dict[str, float] = {}
    arrived = threading.Condition()
    ready = threading.Event()
    done = threading.Event()

    async def subscribe() -> None:
        nc = await nats.connect(url)

        async def on(msg: Any) -> None:
            with arrived:
                seen[msg.headers["Nats-Msg-Id"]] = time.perf_counter()
                arrived.notify_all()

        await nc.subscribe("outbox.>", cb=on)
        await nc.flush()
        ready.set()
        while not done.is_set():
            await asyncio.sleep(0.05)
        await nc.close()

    listener = threading.Thread(target=lambda: asyncio.run(subscribe()), daemon=True)
    listener.start()
    ready.wait(10)
    outbox = Outbox(subject=SUBJECT)
    conn = psycopg.connect(pg.dsn(dsn_db))
    out: list[float] = []
    with _publisher(url) as publisher, OutboxRelay(pg.url(dsn_db), publisher, poll_interval=60.0) as relay:
        relay.start()
        for envelope in make_envelopes(count):
            outbox.add(conn, envelope)
            conn.commit()
            committed = time.perf_counter()
            key = str(envelope.event_id)
            with arrived:
                if not arrived.wait_for(lambda key=key: key in seen, timeout=10.0):  # type: ignore[misc]
                    raise RuntimeError("an event was not delivered within 10 s")
                out.append(seen[key] - committed)
    done.set()
    conn.close()
    listener.join(5)
    return out


def add_cost(connect: Callable[[], Any], family: str, transactions: int = 1000) -> dict[str, float]:
    """µs per event that add() (and add_many() of 10) adds to a one-row business transaction."""
    outbox = Outbox(subject=SUBJECT)
    mark = "?" if family == "sqlite" else "%s"
    conn = connect()
    conn.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER, note TEXT)")
    conn.commit()
    envelopes = make_envelopes(transactions * 10)

    def run(kind: str) -> float:
        started = time.perf_counter()
        for n in range(transactions):
            conn.execute(f"INSERT INTO orders VALUES ({mark}, {mark})", (n, "an order"))
            if kind == "add":
                outbox.add(conn, envelopes[n])
            elif kind == "add_many":
                outbox.add_many(conn, envelopes[n * 10 : n * 10 + 10])
            conn.commit()
        return time.perf_counter() - started

    results: dict[str, list[float]] = {"none": [], "add": [], "add_many": []}
    for _ in range(5):
        for kind in results:
            results[kind].append(run(kind))
            conn.execute("DELETE FROM edupulse_outbox")
            conn.commit()
    conn.close()
    none = statistics.median(results["none"])
    return {
        "transaction_us": none / transactions * 1e6,
        "add_us": (statistics.median(results["add"]) - none) / transactions * 1e6,
        "add_many_us_per_event": (statistics.median(results["add_many"]) - none) / (transactions * 10) * 1e6,
    }


def _create(conn: Any) -> None:
    """Create the outbox's tables with ``conn``, then close it."""
    Outbox().create_table(conn)
    conn.commit()
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--per-tx", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", type=int, default=200)
    args = parser.parse_args()
    print(machine())
    try:
        pg: PostgresServer | None = PostgresServer().start()
    except ServerNotFound as exc:
        print(f"no PostgreSQL ({exc}): SQLite only")
        pg = None
    tmp = tempfile.mkdtemp(prefix="bench-outbox-")
    try:
        with NatsServer() as server:
            url = server.url
            rates: dict[str, list[float]] = {"publish_many": [], "relay sqlite": [], "relay postgresql": []}
            ratios: dict[str, list[float]] = {"relay sqlite": [], "relay postgresql": []}
            for r in range(args.rounds):
                envelopes = make_envelopes(args.events)
                base = baseline(url, envelopes)
                rates["publish_many"].append(base)
                path = f"{tmp}/app-{r}.db"
                _create(sqlite3.connect(path))
                candidates: list[tuple[str, Callable[[], Any], str]] = [
                    ("relay sqlite", lambda path=path: sqlite3.connect(path), f"sqlite:///{path}")  # type: ignore[misc]
                ]
                if pg is not None:
                    import psycopg

                    name = pg.create_database()
                    dsn = pg.dsn(name)
                    _create(psycopg.connect(dsn))
                    candidates.append(("relay postgresql", lambda dsn=dsn: psycopg.connect(dsn), pg.url(name)))  # type: ignore[misc]
                for label, connect, db in candidates:
                    rate = relay_rate(url, connect, db, make_envelopes(args.events), args.per_tx)
                    rates[label].append(rate)
                    ratios[label].append(rate / base)
                print(
                    f"round {r + 1}: publish_many {base:,.0f}/s, "
                    + ", ".join(f"{label} {rates[label][-1]:,.0f}/s" for label, _, _ in candidates)
                )
            print(
                f"\nthroughput, {args.events:,} events, {args.per_tx} per transaction, {args.rounds} rounds (median):"
            )
            for label, values in rates.items():
                if values:
                    ratio = f"  ratio {statistics.median(ratios[label]):.2f}" if label in ratios else ""
                    print(f"  {label:<18} {statistics.median(values):>10,.0f} events/s{ratio}")
            if pg is not None:
                import psycopg

                name = pg.create_database()
                _create(psycopg.connect(pg.dsn(name)))
                values = sorted(latency(url, pg, name, args.latency))
                print(
                    f"\ncommit-to-stored, idle PostgreSQL relay (LISTEN/NOTIFY), {len(values)} commits: "
                    f"p50 {percentile(values, 50) * 1000:.1f} ms, p99 {percentile(values, 99) * 1000:.1f} ms"
                )
            print("\nadd() in a one-row business transaction (µs, median of 5 x 1,000 transactions):")
            families: list[tuple[str, Callable[[], Any]]] = [("sqlite", lambda: sqlite3.connect(f"{tmp}/app-0.db"))]
            if pg is not None:
                import psycopg

                families.append(("postgresql", lambda: psycopg.connect(pg.dsn(name))))
            for family, connect in families:
                cost = add_cost(connect, family)
                print(
                    f"  {family:<11} transaction {cost['transaction_us']:.0f} µs; add() +{cost['add_us']:.0f} µs; "
                    f"add_many(10) +{cost['add_many_us_per_event']:.0f} µs per event"
                )
    finally:
        if pg is not None:
            pg.close()


if __name__ == "__main__":
    main()
