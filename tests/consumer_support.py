"""Helpers for the consumer's tests: filling a stream, asking a durable's state, reading dead
letters, and a consumer process (``python tests/consumer_support.py ...``) that records each
event it handles, can SIGKILL itself in the middle of one, and ends once the durable has every
message acked."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nats
from nats.js.api import StreamConfig

from edupulse_events import EventEnvelope, NatsPublisher

__all__ = ["ack_pending", "consume_in_child", "dead_letters", "fill", "publish_raw", "read_ids"]

CHILD = Path(__file__)


def consume_in_child(
    url: str, stream: str, durable: str, out: Path, *, kill_at: int = 0, inbox_db: str = "", ack_wait: float = 2.0
) -> subprocess.Popen[bytes]:
    """Start a consumer process (`_child`) recording the event ids it handles in ``out``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CHILD.parent.parent), os.environ.get("PYTHONPATH", "")])}
    args = [url, stream, durable, str(out), str(kill_at), inbox_db, str(ack_wait)]
    return subprocess.Popen([sys.executable, str(CHILD), *args], env=env)


def fill(url: str, stream: str, prefix: str, events: list[EventEnvelope], replicas: int = 1) -> None:
    """Publish ``events`` under ``<prefix>.{tenant}.{type}`` into ``stream`` (created), all acked."""
    with NatsPublisher.connect(
        url, prefix + ".{tenant}.{type}", stream=stream, create_stream=True, stream_replicas=replicas
    ) as publisher:
        futures = publisher.publish_many(events)
        assert publisher.flush(60.0)
    assert all(f.exception() is None for f in futures)


def publish_raw(url: str, subject: str, body: bytes, headers: Mapping[str, str] | None = None) -> None:
    """Store ``body`` as it is on ``subject`` (JetStream, acked)."""

    async def go() -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().publish(subject, body, headers=dict(headers or {}))
        finally:
            await nc.close()

    asyncio.run(go())


def ack_pending(url: str, stream: str, durable: str) -> tuple[int, int]:
    """The durable's (num_ack_pending, num_pending): delivered and unacked, not delivered yet."""

    async def go() -> tuple[int, int]:
        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().consumer_info(stream, durable)
            return info.num_ack_pending or 0, info.num_pending or 0
        finally:
            await nc.close()

    return asyncio.run(go())


def dead_letters(url: str, stream: str, subject: str) -> list[tuple[bytes, dict[str, str]]]:
    """Create (first call) or read stream ``stream`` capturing ``subject``: its (body, headers)."""

    async def go() -> list[tuple[bytes, dict[str, str]]]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            try:
                info = await js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
                return []
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(stream, seq)
                out.append((msg.data or b"", dict(msg.headers or {})))
            return out
        finally:
            await nc.close()

    return asyncio.run(go())


def read_ids(path: Path) -> list[str]:
    """The event ids a consumer process recorded, one per line."""
    return path.read_text().split() if path.exists() else []


def _child(url: str, stream: str, durable: str, out: str, kill_at: int, inbox_db: str, ack_wait: float) -> None:
    """A consumer process: handle (in runs of 1.5 s) until the durable has every message acked (exit
    3 if that takes over 50 s), recording each event id (one unbuffered write each); with
    ``kill_at`` > 0, SIGKILL itself while handling that message (after its effect, before the
    ack); with ``inbox_db`` (an SQLite file or a postgresql:// URL), record
    the effect (a row in ``effects``) through an `Inbox`."""
    from edupulse_events import Inbox, NatsConsumer

    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    inbox = Inbox(durable)
    db: Any = None
    if inbox_db.startswith("postgresql://"):
        import psycopg

        db = psycopg.connect(inbox_db)
    elif inbox_db:
        db = sqlite3.connect(inbox_db, timeout=30.0, check_same_thread=False)
    mark = "%s" if inbox_db.startswith("postgresql://") else "?"
    lock = threading.Lock()
    handled = 0

    def handle(message: Any) -> None:
        nonlocal handled
        event_id = str(message.envelope.event_id)
        with lock:
            handled += 1
            if db is not None:
                inbox.handle(db, event_id, lambda: db.execute(f"INSERT INTO effects VALUES ({mark})", (event_id,)))
            os.write(fd, f"{event_id}\n".encode())
            if handled == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    consumer = NatsConsumer.connect(url, stream=stream, durable=durable, ack_wait=ack_wait, batch=20, max_buffered=40)
    deadline = time.monotonic() + 50.0
    with consumer:
        # Done once the durable has nothing left to deliver or waiting for an ack (not after a
        # run that got nothing: on a loaded machine the first delivery can take longer than a
        # run, and a dead process's messages come again only after their ack_wait).
        while True:
            consumer.run(handle, concurrency=2, timeout=1.5, stop_timeout=5.0)
            if ack_pending(url, stream, durable) == (0, 0):
                break
            if time.monotonic() > deadline:
                sys.exit(3)
    os.close(fd)


if __name__ == "__main__":
    url, stream, durable, out = sys.argv[1:5]
    _child(url, stream, durable, out, int(sys.argv[5]), sys.argv[6], float(sys.argv[7]))
