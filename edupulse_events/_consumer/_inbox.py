"""`Inbox`: an exactly-once effect for handlers that write to a database (SQLite, PostgreSQL).

JetStream delivers at least once: a consumer that dies after its handler committed and before
its ack reached the server gets the message again. The inbox records each handled event's id
in a table, in the handler's own transaction: the redelivery finds the id there and is
skipped, and a handler that died before committing left neither its effect nor the id. The
table's primary key is (consumer, event id): two durables (two applications) sharing a
database each apply an event once. Each row keeps when it was recorded (the database's clock),
so `Inbox.prune` can forget ids older than any redelivery can be: the table does not grow for
ever.

Self-contained on purpose (the DB-API connection's own placeholders and transactions, no other
module of this package): ``sqlite3`` connections (a ``with connection:`` transaction) and
psycopg 3 connections (``connection.transaction()``) are the ones tested.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ..errors import ConfigError

__all__ = ["Inbox"]

T = TypeVar("T")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


def _placeholder(connection: Any) -> str:
    """``?`` or ``%s``, from the paramstyle of the connection's DB-API module."""
    module = sys.modules.get(type(connection).__module__.split(".")[0])
    style = getattr(module, "paramstyle", "qmark")
    return "?" if style == "qmark" else "%s"


def _is_sqlite(connection: Any) -> bool:
    """Whether ``connection`` is SQLite's (``sqlite3`` or a drop-in such as ``pysqlite3``)."""
    return "sqlite" in type(connection).__module__.split(".")[0]


@contextlib.contextmanager
def _transaction(connection: Any) -> Iterator[None]:
    """One transaction on ``connection``: psycopg's ``transaction()``, else the DB-API context
    manager (sqlite3: commit on success, roll back on an exception)."""
    begin = getattr(connection, "transaction", None)
    if callable(begin):
        with begin():
            yield
    else:
        with connection:
            yield


class Inbox:
    """The ids of events a consumer has handled, in the application's own database.

    ``name`` tells consumers apart (use the durable's name); ``table`` is created by
    `create_table`. In a handler, `handle` runs ``apply`` in one transaction with the record
    of the event id, or skips it when the id is there already. `claim` is the same record for a
    handler that manages its own transaction.
    """

    def __init__(self, name: str, *, table: str = "edupulse_inbox") -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"the inbox name must be a non-empty string, got {name!r}")
        if not isinstance(table, str) or not _IDENTIFIER.match(table):
            raise ConfigError(f"table must be an SQL identifier (letters, digits, _), got {table!r}")
        self.name = name
        self.table = table

    def create_table(self, connection: Any) -> None:
        """Create the inbox table if it does not exist (and commit)."""
        with _transaction(connection):
            connection.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                "consumer TEXT NOT NULL, event_id TEXT NOT NULL, "
                "handled_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (consumer, event_id))"
            )

    def claim(self, connection: Any, event_id: object) -> bool:
        """Record ``event_id`` in the caller's open transaction: True the first time, False when
        it was recorded before (skip the work). The record counts only once committed: with the
        effect, or not at all. A concurrent claim of the same id waits for the first to end."""
        mark = _placeholder(connection)
        cursor = connection.execute(
            f"INSERT INTO {self.table} (consumer, event_id) VALUES ({mark}, {mark}) ON CONFLICT DO NOTHING",
            (self.name, str(event_id)),
        )
        return bool(cursor.rowcount == 1)

    def handle(self, connection: Any, event_id: object, apply: Callable[[], T]) -> bool:
        """In one transaction on ``connection``: record ``event_id`` and run ``apply()`` (True),
        or do nothing when it was handled before (False). ``apply`` raising rolls both back."""
        with _transaction(connection):
            if not self.claim(connection, event_id):
                return False
            apply()
        return True

    def prune(self, connection: Any, *, older_than: float) -> int:
        """Forget this inbox's event ids recorded more than ``older_than`` seconds ago (by the
        database's clock), in a transaction of its own; returns how many rows went.

        A forgotten id that is delivered again is applied again: keep ``older_than`` well above
        the longest time one message can be redelivered — ``max_deliver`` × (``ack_wait`` +
        ``backoff_maximum``) with the defaults is under 8 minutes; a day or a week is typical.
        It deletes without an index on the time (one scan of the table): call it now and then
        (a daily job), not per message."""
        if isinstance(older_than, bool) or not isinstance(older_than, (int, float)) or not 0 < older_than < math.inf:
            raise ValueError(f"older_than must be a number of seconds > 0, got {older_than!r}")
        mark = _placeholder(connection)
        age: str | float
        if _is_sqlite(connection):  # CURRENT_TIMESTAMP there is UTC text, 'YYYY-MM-DD HH:MM:SS'
            cutoff, age = "datetime('now', ?)", f"-{older_than:.6f} seconds"
        else:  # PostgreSQL: a timestamp with time zone, compared as such
            cutoff, age = f"CURRENT_TIMESTAMP - {mark} * INTERVAL '1 second'", float(older_than)
        with _transaction(connection):
            cursor = connection.execute(
                f"DELETE FROM {self.table} WHERE consumer = {mark} AND handled_at < {cutoff}", (self.name, age)
            )
        return int(cursor.rowcount)

    def seen(self, connection: Any, event_id: object) -> bool:
        """Whether ``event_id`` is recorded (committed, or in this transaction)."""
        mark = _placeholder(connection)
        cursor = connection.execute(
            f"SELECT 1 FROM {self.table} WHERE consumer = {mark} AND event_id = {mark}", (self.name, str(event_id))
        )
        return cursor.fetchone() is not None

    def __repr__(self) -> str:
        return f"<Inbox {self.name!r} table={self.table!r}>"
