"""Outbox test helpers: a database of either family (`Database`), committing transactions of
events from it, and what a stream holds, grouped back into transactions."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

import psycopg
from helpers import read_stream

from edupulse_events import EventEnvelope, NatsPublisher, Outbox
from edupulse_events.testing import NatsServer

__all__ = ["STREAM", "SUBJECT", "Database", "atomic_stream", "publisher_to", "stored_ids"]

STREAM = "OUTBOX"
SUBJECT = "edupulse.{tenant}.{type}"


class Database:
    """One outbox database: ``family``, its SQLAlchemy-style ``url`` (what the relay takes), and
    `connect` for the application's own DB-API connections (all closed by `close`)."""

    def __init__(self, family: str, url: str) -> None:
        self.family = family
        self.url = url
        self.outbox = Outbox()
        self._opened: list[Any] = []
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        return self.url.removeprefix("sqlite:///")

    def connect(self) -> Any:
        conn: Any = (
            sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
            if self.family == "sqlite"
            else psycopg.connect(self.url)
        )
        with self._lock:
            self._opened.append(conn)
        return conn

    def create(self) -> None:
        conn = self.connect()
        self.outbox.create_table(conn)
        conn.commit()

    def commit(self, envelopes: Sequence[EventEnvelope], *, rollback: bool = False, conn: Any = None) -> None:
        """One transaction adding ``envelopes`` one by one, committed (or rolled back)."""
        conn = self.connect() if conn is None else conn
        for envelope in envelopes:
            self.outbox.add(conn, envelope)
        if rollback:
            conn.rollback()
        else:
            conn.commit()

    def count(self, table: str = "edupulse_outbox") -> int:
        conn = self.connect()
        try:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])
        finally:
            conn.rollback()

    def close(self) -> None:
        with self._lock:
            for conn in self._opened:
                conn.close()
            self._opened.clear()


def atomic_stream(server: NatsServer, **config: Any) -> NatsPublisher:
    """Stream `STREAM` on `SUBJECT`'s subjects (atomic batches allowed unless ``allow_atomic=False``),
    and a publisher to it (the caller closes it)."""
    from helpers import add_stream

    config.setdefault("allow_atomic", True)
    add_stream(server.url, STREAM, ["edupulse.>"], **config)
    return publisher_to(server)


def publisher_to(server: NatsServer) -> NatsPublisher:
    """A publisher to `STREAM` on ``server`` (the caller closes it)."""
    return NatsPublisher.connect(server.url, SUBJECT, stream=STREAM, delivery_timeout=10.0)


def stored_ids(server: NatsServer, at_least: int = 0) -> list[str]:
    """The event ids the stream holds, in stream order (waiting until it holds ``at_least``)."""
    return [m.headers["Nats-Msg-Id"] for m in read_stream(server.url, STREAM, timeout=30.0, at_least=at_least)]
