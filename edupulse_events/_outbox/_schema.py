"""The outbox table, its dead-letter table and the row format, for each database family.

One row is one event, exactly as ``publish()`` would send it (``subject``, the ``headers`` block
and the ``body`` the codec wrote; ``event_id`` = its ``Nats-Msg-Id``), plus:

- ``txid``: which transaction added it. PostgreSQL fills it itself (a column default,
  ``pg_current_xact_id()``: unique per transaction, never reused). SQLite has no transaction id;
  the writer takes it from the row just before its own (see `_stores.SqliteStore.group`).
- ``created_at``: when it was added (seconds since the epoch), for the oldest pending age.
- ``traceparent``: the W3C trace context of the span that added it, when OpenTelemetry was
  tracing (the relay's span links to it).
- ``delivered_at``: NULL while pending; set instead of deleting the row when the relay keeps
  delivered rows for a while (``keep_delivered``).

The dead-letter table ``<table>_dead`` holds the rows the broker refused for good (or that could not
be decoded), with the reason and when, until ``outbox retry-dead`` moves them back.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ..errors import ConfigError

__all__ = ["COLUMNS", "FAMILIES", "Row", "StoredRow", "check_table", "ddl"]

#: The database families the outbox knows (what `ddl` takes).
FAMILIES = ("sqlite", "postgresql")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,50}")
#: The columns the writer fills, in the order `Row` holds them.
COLUMNS = ("event_id", "subject", "headers", "body", "created_at", "traceparent")


class Row(NamedTuple):
    """What `Outbox.add` writes for one event (the writer's side; ``txid`` is the store's)."""

    event_id: str
    subject: str
    headers: bytes
    body: bytes
    created_at: float
    traceparent: str | None


class StoredRow(NamedTuple):
    """A pending row as the relay reads it back."""

    id: int
    txid: int
    event_id: str
    subject: str
    headers: bytes
    body: bytes
    created_at: float
    traceparent: str | None


def check_table(table: object) -> str:
    """``table`` if it is a plain SQL identifier (letters, digits, ``_``; up to 51 characters, so
    its index and dead-letter names fit PostgreSQL's 63); `ConfigError` otherwise."""
    if not isinstance(table, str) or not _NAME.fullmatch(table):
        raise ConfigError(
            f"the outbox table name must be a plain SQL identifier ([A-Za-z_][A-Za-z0-9_]*), got {table!r}"
        )
    return table


def ddl(family: str, table: str) -> list[str]:
    """The statements that create ``table``, its indexes and its dead-letter table (and, on
    PostgreSQL, the trigger that wakes relays by ``NOTIFY <table>``); each is idempotent."""
    table = check_table(table)
    if family == "sqlite":
        # AUTOINCREMENT: ids are never reused, so id order is commit order (one writer at a time)
        return [
            f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY AUTOINCREMENT, txid INTEGER NOT NULL, "
            "event_id TEXT NOT NULL, subject TEXT NOT NULL, headers BLOB NOT NULL, body BLOB NOT NULL, "
            "created_at REAL NOT NULL, traceparent TEXT, delivered_at REAL)",
            f"CREATE INDEX IF NOT EXISTS {table}_txid ON {table} (txid, id)",
            f"CREATE INDEX IF NOT EXISTS {table}_pending ON {table} (id) WHERE delivered_at IS NULL",
            f"CREATE TABLE IF NOT EXISTS {table}_dead (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "original_id INTEGER NOT NULL, txid INTEGER NOT NULL, event_id TEXT NOT NULL, subject TEXT NOT NULL, "
            "headers BLOB NOT NULL, body BLOB NOT NULL, created_at REAL NOT NULL, traceparent TEXT, "
            "failed_at REAL NOT NULL, reason TEXT NOT NULL)",
        ]
    if family == "postgresql":
        return [
            f"CREATE TABLE IF NOT EXISTS {table} (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            "txid BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint), "
            "event_id TEXT NOT NULL, subject TEXT NOT NULL, headers BYTEA NOT NULL, body BYTEA NOT NULL, "
            "created_at DOUBLE PRECISION NOT NULL, traceparent TEXT, delivered_at DOUBLE PRECISION)",
            f"CREATE INDEX IF NOT EXISTS {table}_txid ON {table} (txid, id)",
            f"CREATE INDEX IF NOT EXISTS {table}_pending ON {table} (id) WHERE delivered_at IS NULL",
            f"CREATE TABLE IF NOT EXISTS {table}_dead (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            "original_id BIGINT NOT NULL, txid BIGINT NOT NULL, event_id TEXT NOT NULL, subject TEXT NOT NULL, "
            "headers BYTEA NOT NULL, body BYTEA NOT NULL, created_at DOUBLE PRECISION NOT NULL, traceparent TEXT, "
            "failed_at DOUBLE PRECISION NOT NULL, reason TEXT NOT NULL)",
            # one NOTIFY per inserting statement (PostgreSQL folds a transaction's identical ones
            # into one, delivered at commit): an idle relay wakes at once
            f"CREATE OR REPLACE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_notify('{table}', ''); RETURN NULL; END $$",
            f"CREATE OR REPLACE TRIGGER {table}_notify AFTER INSERT ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_notify()",
        ]
    raise ConfigError(f"the outbox knows the database families {', '.join(FAMILIES)}, not {family!r}")
