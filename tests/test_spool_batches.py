"""Atomic batches in the durable spool: written, parked, claimed and adopted whole, replayed as one
atomic batch again (same ``Nats-Msg-Id``s, all of it stored or none) in write-ahead and overflow
mode and after a SIGKILL, against real nats-server processes; 0.7.0's spool files (no batch
column) are still adopted, and a file whose batches are not what a spool writes is moved aside."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import nats
import pytest
from helpers import LogWatcher, StoredMessage, envelope, envelopes, read_stream
from nats.js.api import StreamConfig
from spool_support import BIG, row

from edupulse_events import EventEnvelope, EventRejected, LessonPublished, NatsPublisher, PublishAck, RetryPolicy
from edupulse_events._nats import PATH_ENV
from edupulse_events._pipeline._routing import Router
from edupulse_events._spool._store import Spool, spool_files
from edupulse_events.testing import NatsServer

pytestmark = [pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX locks"), pytest.mark.batch_streams]

ROOT = Path(__file__).resolve().parents[1]
STREAM = "BATCHES"
SUBJECT = "edupulse.{tenant}.{type}"
FAST_RETRY = RetryPolicy(initial=0.05, maximum=0.2, attempt_timeout=0.5)
#: The stream refuses an event over this size: a batch holding one is refused whole.
MAX_MSG = 2048


def poisoned() -> list[EventEnvelope]:
    """A batch the stream refuses whole: its last event is larger than `MAX_MSG` (the commit is answered 10054)."""
    big = LessonPublished(uuid.uuid4(), uuid.uuid4(), "x" * 3 * MAX_MSG)
    return [envelope(), envelope(), EventEnvelope.new(big, tenant_id="school-1")]


def ids(batch: list[EventEnvelope]) -> list[str]:
    return [str(env.event_id) for env in batch]


@pytest.fixture
def server(make_server: Callable[..., NatsServer]) -> NatsServer:
    """A server whose stream allows atomic batches and refuses events over `MAX_MSG` bytes."""
    server = make_server()

    async def add() -> None:
        nc = await nats.connect(server.url)
        try:
            config = StreamConfig(name=STREAM, subjects=["edupulse.>"], max_msg_size=MAX_MSG, allow_atomic=True)
            await nc.jetstream().add_stream(config)
        finally:
            await nc.close()

    asyncio.run(add())
    return server


def publisher(server: NatsServer, spool: Path, **options: object) -> NatsPublisher:
    return NatsPublisher.connect(server.url, SUBJECT, stream=STREAM, spool_dir=str(spool), **options)  # type: ignore[arg-type]


def assert_stored_whole(server: NatsServer, batches: list[list[str]], refused: list[str]) -> None:
    """Each of ``batches`` is in the stream once, as one atomic batch (one Nats-Batch-Id, its events
    numbered 1..n in order at consecutive stream sequences); no event of ``refused`` is there."""
    messages = read_stream(server.url, STREAM, timeout=30.0)
    counts = Counter(m.headers["Nats-Msg-Id"] for m in messages)
    by_id: dict[str, StoredMessage] = {m.headers["Nats-Msg-Id"]: m for m in messages}
    for batch in batches:
        assert [counts[i] for i in batch] == [1] * len(batch), "a batch event stored twice or not at all"
        stored = [by_id[i] for i in batch]
        first = stored[0].sequence
        assert [m.sequence for m in stored] == list(range(first, first + len(batch)))
        assert len({m.headers.get("Nats-Batch-Id") for m in stored}) == 1
        assert [m.headers.get("Nats-Batch-Sequence") for m in stored] == [str(n) for n in range(1, len(batch) + 1)]
    assert [i for i in refused if counts[i]] == [], "a refused batch was stored in part"


def spooled(futures: Sequence[concurrent.futures.Future[PublishAck]]) -> bool:
    return all(f.result(10.0).spooled for f in futures)


# --------------------------------------------------------------------------- publishers


def test_write_ahead_batches_spooled_while_the_broker_is_down_are_stored_whole_once(
    server: NatsServer, tmp_path: Path
) -> None:
    """Write-ahead, broker down past the deadline: batches resolve as spooled, then each is stored whole, once."""
    with publisher(server, tmp_path, delivery_timeout=1.0, retry=FAST_RETRY) as pub:
        server.stop()
        batches = [envelopes(n) for n in (4, 1, 7)]
        bad = poisoned()
        futures = [pub.publish_many(batch, atomic=True) for batch in (*batches, bad)]
        assert all(spooled(f) for f in futures)
        assert pub.stats().spool_events == 15
        server.start()
        assert pub.drain_spool(30.0), pub.stats()
        stats = pub.stats()
        assert (stats.replayed, stats.acknowledged_atomic) == (12, 12)
    assert_stored_whole(server, [ids(batch) for batch in batches], ids(bad))
    assert [p for p in tmp_path.iterdir() if p.suffix == ".db"] == []


def test_a_write_ahead_batch_refused_for_good_fails_whole_and_leaves_no_row(server: NatsServer, tmp_path: Path) -> None:
    """A batch the stream refuses: every future fails with EventRejected and its rows go (none replayed later)."""
    with publisher(server, tmp_path) as pub:
        futures = pub.publish_many(poisoned(), atomic=True)
        assert [type(f.exception(10.0)) for f in futures] == [EventRejected] * 3
    assert [p for p in tmp_path.iterdir() if p.suffix == ".db"] == []
    assert read_stream(server.url, STREAM, timeout=30.0) == []


CHILD = textwrap.dedent(
    """
    import sys, uuid
    sys.path[:0] = [sys.argv[4], sys.argv[4] + "/tests"]
    from helpers import envelopes
    from edupulse_events import EventEnvelope, LessonPublished, NatsPublisher
    from edupulse_events._engine import _outstanding
    from edupulse_events._spool import _spooling
    # rows of acknowledged events are deleted at the first flush, then not for an hour (never, here)
    _spooling.DELETE_DELAY = _outstanding.DELETE_DELAY = 3600.0
    url, spool, stream = sys.argv[1:4]
    pub = NatsPublisher.connect(url, "edupulse.{tenant}.{type}", stream=stream, spool_dir=spool)
    def batch(envs, wait):
        futures = pub.publish_many(envs, atomic=True, timeout=10.0)  # returned: on disk
        if wait:
            [f.result(10.0) for f in futures]
        print(" ".join(str(env.event_id) for env in envs), flush=True)
    batch(envelopes(2), True)  # stored, its rows deleted
    batch(envelopes(3), True)  # stored, its rows still on disk
    sys.stdin.readline()  # the broker is gone now
    for n in (5, 3, 4):
        envs = envelopes(n)
        if n == 3:  # one the stream refuses (its last event too large): the whole batch is
            title = "x" * 3 * int(sys.argv[5])
            envs[-1] = EventEnvelope.new(LessonPublished(uuid.uuid4(), uuid.uuid4(), title), tenant_id="school-1")
        batch(envs, False)
    sys.stdin.readline()
    """
)


@pytest.mark.parametrize("path", ["fast", "public"])
def test_batches_of_a_sigkilled_process_are_adopted_and_replayed_whole(
    server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """SIGKILL with batches on disk (one stored already, three never sent): the next publisher (on either
    nats path) stores each whole, once."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, server.url, str(tmp_path), STREAM, str(ROOT), str(MAX_MSG)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdin is not None
        assert child.stdout is not None
        stored = [child.stdout.readline().split() for _ in range(2)]
        server.stop()
        child.stdin.write("go\n")
        child.stdin.flush()
        unsent = [child.stdout.readline().split() for _ in range(3)]
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(10.0) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10.0)
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
    assert [len(batch) for batch in stored + unsent] == [2, 3, 5, 3, 4]
    server.start()
    monkeypatch.setenv(PATH_ENV, path)
    with LogWatcher() as logs, publisher(server, tmp_path) as pub:
        assert pub.drain_spool(30.0), pub.stats()
        stats = pub.stats()
        assert stats.nats_path == path
        # the second stored batch came back from disk too: the stream said "stored already" (10201)
        assert (stats.replayed, stats.duplicates) == (3 + 5 + 4, 3)
        assert logs.wait_for(r"refused for good", timeout=1.0)
    assert_stored_whole(server, [*stored, unsent[0], unsent[2]], unsent[1])
    assert [p for p in tmp_path.iterdir() if p.suffix == ".db"] == []


def test_overflow_keeps_batches_whole_at_close_and_the_next_publisher_replays_them(
    server: NatsServer, tmp_path: Path
) -> None:
    """Overflow, broker away: batches the queue has no room for go to disk whole, those queued are kept at
    close(); all resolve as spooled, and the next publisher stores each whole, once."""
    pub = publisher(server, tmp_path, spool_mode="overflow", max_queue=8, retry=FAST_RETRY)
    try:
        with LogWatcher() as logs:
            pub.publish(envelope()).result(10.0)
            server.stop()
            assert logs.wait_for("disconnected from broker")
        batches = [envelopes(5), envelopes(4), envelopes(6)]
        bad = poisoned()
        futures = [pub.publish_many(batch, atomic=True, timeout=0.0) for batch in (batches[0], bad, *batches[1:])]
        assert pub.stats().queued <= 8
        assert all(f.done() and f.result(0).spooled for f in futures[-1])  # no room in the queue: on disk at once
    finally:
        pub.close(0.5)
    assert all(spooled(f) for f in futures)
    server.start()
    with publisher(server, tmp_path, spool_mode="overflow") as second:
        assert second.drain_spool(30.0), second.stats()
        assert second.stats().replayed == 15
    assert_stored_whole(server, [ids(batch) for batch in batches], ids(bad))


# --------------------------------------------------------------------------- the file format

#: The events table of 0.7.0's spool files (format edupulse-spool-1), as 0.7.0 created it.
SCHEMA_070 = (
    "CREATE TABLE events (id INTEGER PRIMARY KEY, event_id TEXT NOT NULL, subject BLOB NOT NULL,"
    " headers BLOB NOT NULL, payload BLOB NOT NULL, accepted REAL NOT NULL, parked INTEGER NOT NULL)",
    "CREATE INDEX events_parked ON events (id) WHERE parked = 1",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT INTO meta (key, value) VALUES ('format', 'edupulse-spool-1')",
)


def test_a_spool_file_written_by_0_7_0_is_adopted_and_replayed(server: NatsServer, tmp_path: Path) -> None:
    """A 0.7.0 file (no batch column) is sound to spool inspect and adopted: each event stored once, on its own."""
    old = tmp_path / "spool-1-00070000.db"
    items = [Router(SUBJECT).prepare(envelope(i), None) for i in range(3)]
    conn = sqlite3.connect(old)
    for statement in SCHEMA_070:
        conn.execute(statement)
    conn.executemany(
        "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, 0)",
        [(n, i.event_id, i.subject, i.headers, i.payload, 1000.0) for n, i in enumerate(items, 1)],
    )
    conn.commit()
    conn.close()
    old.with_suffix(".lock").touch()  # no process holds it: its owner is gone
    assert [(info.count, info.error) for info in spool_files(tmp_path)] == [(3, None)]
    with publisher(server, tmp_path) as pub:
        assert pub.drain_spool(30.0), pub.stats()
        assert pub.stats().replayed == 3
    messages = read_stream(server.url, STREAM, timeout=30.0)
    assert sorted(m.headers["Nats-Msg-Id"] for m in messages) == sorted(i.event_id for i in items)
    assert not any("Nats-Batch-Id" in m.headers for m in messages)
    assert not old.exists()


def test_a_batch_is_written_and_claimed_whole(tmp_path: Path, spools: Callable[..., Spool]) -> None:
    """append_many leaves out whole a batch that does not fit; claim_parked hands a batch out whole past its limit."""
    spool = spools(tmp_path, max_bytes=240)  # room for six rows of 40 bytes
    rows = [row(i) for i in range(7)]  # ev-0 alone, ev-1..3 a batch, ev-4 alone, ev-5..6 a batch
    ids = spool.append_many(rows, parked=True, batches=[-1, 1, 1, 1, -1, 5, 5])
    assert len(ids) == 5  # ev-5 would fit, ev-6 not: neither is written
    assert [(s.event_id, s.batch) for s in spool.claim_parked(2)] == [
        ("ev-0", 0),
        *[(f"ev-{i}", ids[1]) for i in (1, 2, 3)],
    ]
    assert [s.event_id for s in spool.claim_parked(10)] == ["ev-4"]


@pytest.fixture
def orphan_with_batch(tmp_path: Path) -> Path:
    """A closed spool file holding ev-0 alone, then ev-1..ev-3 as one atomic batch, then ev-4 alone."""
    spool = Spool(tmp_path, max_bytes=BIG)
    spool.append_many([row(i) for i in range(5)], parked=False, batches=[-1, 1, 1, 1, -1])
    spool.close()
    return spool.path


def test_adopted_batches_name_their_first_rows_new_id(
    tmp_path: Path, spools: Callable[..., Spool], orphan_with_batch: Path
) -> None:
    """Adoption renumbers rows after the adopter's own and a batch keeps naming its first row."""
    spool = spools(tmp_path)
    own = spool.append_many([row(100), row(101)], parked=True)
    assert spool.adopt_orphans() == 5
    first = own[-1] + 2
    claimed = [(s.event_id, s.batch) for s in spool.claim_parked(100)]
    assert claimed == [
        ("ev-100", 0),
        ("ev-101", 0),
        ("ev-0", 0),
        ("ev-1", first),
        ("ev-2", first),
        ("ev-3", first),
        ("ev-4", 0),
    ]


@pytest.mark.parametrize(
    ("tamper", "why"),
    [
        ("UPDATE events SET batch = 1 WHERE id = 3", "not consecutive"),  # a row names another as its batch
        ("DELETE FROM events WHERE id = 3", "not consecutive"),  # the batch's middle row is gone
        ("DELETE FROM events WHERE id = 2", "not consecutive"),  # its first row is gone
        ("UPDATE events SET batch = 'x' WHERE id = 2", "type"),
        ("UPDATE meta SET value = 'edupulse-spool-1'", "events columns"),  # a batch column under 0.7.0's format
    ],
)
def test_a_file_whose_batches_are_not_what_a_spool_writes_is_moved_aside(
    tmp_path: Path, spools: Callable[..., Spool], orphan_with_batch: Path, tamper: str, why: str
) -> None:
    """A tampered batch column (or format) makes the whole file untrusted: moved aside with the reason, none adopted."""
    conn = sqlite3.connect(orphan_with_batch)
    conn.execute(tamper)
    conn.commit()
    conn.close()
    spool = spools(tmp_path)
    assert spool.adopt_orphans() == 0
    reasons = [p.read_text() for p in tmp_path.glob("*.corrupt-*.why")]
    assert len(reasons) == 1
    assert why in reasons[0]
