"""`Inbox`: an exactly-once effect for handlers that write to a database (SQLite, PostgreSQL).

JetStream delivers at least once: a consumer that dies after its handler committed and before
its ack reached the server gets the message again. The inbox records each handled event's id
in a table, in the handler's own transaction: the redelivery finds the id there and is
skipped, and a handler that died before committing left neither its effect nor the id. The
table's primary key is (consumer, event id): two durables (two applications) sharing a
database each apply an event once.

Self-contained on purpose (the DB-API connection's own placeholders and transactions, no other
module of this package): ``sqlite3`` connections (a ``with connection:`` transaction) and
psycopg 3 connections (``connection.transaction()``) are the ones tested.
"""

from __future__ import annotations

import contextlib
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
                "handled_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (consumer, event_id))"
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

    def seen(self, connection: Any, event_id: object) -> bool:
        """Whether ``event_id`` is recorded (committed, or in this transaction)."""
        mark = _placeholder(connection)
        cursor = connection.execute(
            f"SELECT 1 FROM {self.table} WHERE consumer = {mark} AND event_id = {mark}", (self.name, str(event_id))
        )
        return cursor.fetchone() is not None

    def __repr__(self) -> str:
        return f"<Inbox {self.name!r} table={self.table!r}>"
