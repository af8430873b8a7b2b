"""One store per database family behind one interface: writing rows in the caller's transaction,
and the relay's side (claiming pending transactions, settling them, counting, the dead letters).

Transactions (what ``txid`` groups):

- PostgreSQL: the column default ``pg_current_xact_id()``, one value per transaction. Relays
  claim whole transactions: a transaction is claimed by locking its *head* (its lowest pending
  row) with ``FOR UPDATE SKIP LOCKED``; its other rows are read without locks (no relay takes a
  transaction whose head it does not hold), so several relays share the work, never take the
  same transaction twice, and never deadlock on each other's rows.
- SQLite: one writer at a time, so a transaction's rows are contiguous in id order. A new row
  continues the transaction of the row just before it (the highest id its connection sees) when
  that row is not committed yet, i.e. when it is this transaction's own: a second connection to
  the file (one per thread, `_Probes`) cannot see it. Otherwise (committed, or no row) it starts
  a new group with a random 63-bit txid. This needs WAL mode (readers never wait for the writer,
  and the probe always reads the last commit): `Outbox.create_table` and the relay set it, and
  the writer refuses a database in another mode.

The relay's SQLite connection is in autocommit mode: a read sees every commit before it, a
settle is one ``BEGIN IMMEDIATE`` transaction; one relay at a time holds the file lock
``<database>-<table>.relay-lock`` (`fcntl.flock`, released if the process dies).
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, Protocol

from ..errors import ConfigError, OutboxDatabaseError
from ._connections import Connector, sqlite_path
from ._schema import COLUMNS, Row, StoredRow, check_table, ddl

__all__ = ["Counts", "DeadRow", "PostgresStore", "SqliteStore", "Store", "store_for"]

_STORED = "id, txid, event_id, subject, headers, body, created_at, traceparent"
_INSERT_COLUMNS = ", ".join(COLUMNS)


class Counts(NamedTuple):
    """What the outbox holds: pending rows, the oldest pending row's ``created_at``, dead rows."""

    pending: int
    oldest: float | None
    dead: int


class DeadRow(NamedTuple):
    """A dead-lettered row: its id in the dead-letter table, the event, when and why it failed."""

    id: int
    event_id: str
    subject: str
    created_at: float
    failed_at: float
    reason: str


class Store(Protocol):
    """What the outbox and its relay need of a database family."""

    family: str
    table: str

    def insert(self, conn: Any, rows: Sequence[Row]) -> None:
        """Write ``rows`` with the DB-API connection ``conn``, in its open transaction (never commits)."""

    def create(self, conn: Any) -> None:
        """Create the tables (idempotent), in ``conn``'s transaction."""

    def exclusive(self) -> bool:
        """Whether this relay may deliver now (SQLite: it holds the relay lock)."""

    def claim(self, limit: int) -> list[StoredRow]:
        """Pending rows of whole transactions, oldest transaction first, in id order within each;
        about ``limit`` rows (never half a transaction). Claimed until `settle` or `release`."""

    def settle(self, delivered: Sequence[int], dead: Sequence[tuple[int, str]], now: float, keep: bool) -> None:
        """Commit the outcome of a claim: ``delivered`` rows deleted (or marked, ``keep``), ``dead``
        rows moved to the dead-letter table with their reasons."""

    def release(self) -> None:
        """Give a claim back untouched."""

    def prepare(self) -> None:
        """Before a relay's first pass: start listening for commits (PostgreSQL), so that none
        committed after it is missed by `wait`."""

    def wait(self, stop: threading.Event, timeout: float) -> None:
        """Wait up to ``timeout`` s for a new commit (PostgreSQL: ``LISTEN``), or until ``stop``."""

    def counts(self) -> Counts: ...

    def purge(self, before: float) -> int:
        """Delete kept delivered rows delivered before ``before``; how many."""

    def dead(self, limit: int) -> list[DeadRow]: ...

    def retry_dead(self, ids: Sequence[int] | None) -> int:
        """Move dead rows (``ids``, or all) back to the outbox, keeping their transactions; how many."""

    def close(self) -> None: ...


@contextlib.contextmanager
def _database(what: str, errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Driver errors in the block become `OutboxDatabaseError` (the driver's error as the cause)."""
    try:
        yield
    except errors as exc:
        raise OutboxDatabaseError(f"outbox {what}: {type(exc).__name__}: {' '.join(str(exc).split())}") from exc


class _Probes(threading.local):
    """Per thread: a second connection to each SQLite file, which sees only committed rows."""

    def __init__(self) -> None:
        self.connections: dict[str, sqlite3.Connection] = {}

    def committed(self, path: str, table: str, row_id: int) -> bool:
        conn = self.connections.get(path)
        if conn is None:
            conn = self.connections[path] = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # fetchall: the statement runs to its end, so no read transaction stays open on an old snapshot
        return bool(conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", (row_id,)).fetchall())


_probes = _Probes()
_random = random.SystemRandom()


class SqliteStore:
    """The outbox in a SQLite file (see the module's docstring for transactions)."""

    family = "sqlite"

    def __init__(self, table: str, connect: Connector | None = None, path: str | None = None) -> None:
        self.table = check_table(table)
        self._connect = connect
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ the writer's side
    def create(self, conn: Any) -> None:
        if not conn.in_transaction:  # WAL is a property of the file: set once, outside a transaction
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
        for statement in ddl("sqlite", self.table):
            conn.execute(statement)

    def group(self, conn: sqlite3.Connection) -> int:
        """The txid of the next row ``conn`` writes (see the module's docstring)."""
        mode = conn.execute("PRAGMA journal_mode").fetchall()[0][0]
        if str(mode).lower() != "wal":
            raise ConfigError(
                f"the outbox needs the SQLite database in WAL mode (it is in {mode!r} mode): "
                "Outbox.create_table() sets it, or run PRAGMA journal_mode=WAL once"
            )
        last = conn.execute(f"SELECT id, txid FROM {self.table} ORDER BY id DESC LIMIT 1").fetchall()
        if last and not _probes.committed(sqlite_path(conn), self.table, last[0][0]):
            return int(last[0][1])  # this transaction's own row: continue its group
        return _random.getrandbits(63)

    def insert(self, conn: Any, rows: Sequence[Row]) -> None:
        txid = self.group(conn)
        sql = f"INSERT INTO {self.table} (txid, {_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
        if len(rows) == 1:
            conn.execute(sql, (txid, *rows[0]))
        else:
            conn.executemany(sql, [(txid, *row) for row in rows])

    # ------------------------------------------------------------------ the relay's side
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            if self._connect is None:
                raise ConfigError("this outbox store has no database to open (a writer's store)")
            with _database("connect", (sqlite3.Error,)):
                conn = self._connect()
                conn.isolation_level = None  # autocommit: each read sees the last commit
                conn.execute("PRAGMA journal_mode=WAL").fetchall()
            self._conn = conn
        return self._conn

    def exclusive(self) -> bool:
        if self._lock_fd is not None:
            return True
        import fcntl

        path = f"{self._path}-{self.table}.relay-lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def claim(self, limit: int) -> list[StoredRow]:
        conn = self._db()
        t = self.table
        with _database("claim", (sqlite3.Error,)):
            rows = conn.execute(
                f"SELECT {_STORED} FROM {t} WHERE delivered_at IS NULL ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
            if len(rows) == limit:  # the last transaction may go on past the window: take all of it
                last = rows[-1]
                rows += conn.execute(
                    f"SELECT {_STORED} FROM {t} WHERE txid = ? AND id > ? AND delivered_at IS NULL ORDER BY id",
                    (last[1], last[0]),
                ).fetchall()
        return [StoredRow(*row) for row in rows]

    def settle(self, delivered: Sequence[int], dead: Sequence[tuple[int, str]], now: float, keep: bool) -> None:
        if not delivered and not dead:
            return
        conn = self._db()
        t = self.table
        with _database("settle", (sqlite3.Error,)):
            conn.execute("BEGIN IMMEDIATE")
            try:
                if dead:
                    conn.executemany(_to_dead(t, "?"), [(now, reason, row_id) for row_id, reason in dead])
                    conn.executemany(f"DELETE FROM {t} WHERE id = ?", [(row_id,) for row_id, _ in dead])
                if keep:
                    conn.executemany(
                        f"UPDATE {t} SET delivered_at = ? WHERE id = ?", [(now, row_id) for row_id in delivered]
                    )
                else:
                    conn.executemany(f"DELETE FROM {t} WHERE id = ?", [(row_id,) for row_id in delivered])
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

    def release(self) -> None:
        pass  # nothing held: a SQLite claim is a plain read under the relay lock

    def prepare(self) -> None:
        pass  # SQLite has no notifications: the relay polls

    def wait(self, stop: threading.Event, timeout: float) -> None:
        stop.wait(timeout)

    def counts(self) -> Counts:
        conn = self._db()
        t = self.table
        with _database("count", (sqlite3.Error,)):
            pending, oldest = conn.execute(
                f"SELECT count(*), min(created_at) FROM {t} WHERE delivered_at IS NULL"
            ).fetchall()[0]
            dead = conn.execute(f"SELECT count(*) FROM {t}_dead").fetchall()[0][0]
        return Counts(int(pending), oldest, int(dead))

    def purge(self, before: float) -> int:
        conn = self._db()
        with _database("purge", (sqlite3.Error,)):
            return conn.execute(f"DELETE FROM {self.table} WHERE delivered_at < ?", (before,)).rowcount

    def dead(self, limit: int) -> list[DeadRow]:
        conn = self._db()
        with _database("read the dead letters", (sqlite3.Error,)):
            rows = conn.execute(
                f"SELECT id, event_id, subject, created_at, failed_at, reason FROM {self.table}_dead "
                "ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [DeadRow(*row) for row in rows]

    def retry_dead(self, ids: Sequence[int] | None) -> int:
        conn = self._db()
        t = self.table
        where, params = _which(ids, "?")
        with _database("retry the dead letters", (sqlite3.Error,)):
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(_back_from_dead(t, where), params)
                moved = conn.execute(f"DELETE FROM {t}_dead {where}", params).rowcount
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        return int(moved)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


def _to_dead(table: str, mark: str) -> str:
    """The statement copying a row (by id) to the dead letters with when and why (``mark``: the placeholder)."""
    return (
        f"INSERT INTO {table}_dead (original_id, txid, event_id, subject, headers, body, created_at, traceparent, "
        f"failed_at, reason) SELECT id, txid, event_id, subject, headers, body, created_at, traceparent, {mark}, "
        f"{mark} FROM {table} WHERE id = {mark}"
    )


def _back_from_dead(table: str, where: str) -> str:
    """The statement copying dead rows (``where``) back into the outbox, each with its transaction."""
    columns = f"txid, {_INSERT_COLUMNS}"
    return f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {table}_dead {where} ORDER BY id"


def _which(ids: Sequence[int] | None, mark: str) -> tuple[str, tuple[Any, ...]]:
    """A WHERE clause choosing dead rows by id (all of them for None)."""
    if ids is None:
        return "", ()
    ids = [int(i) for i in ids]
    if not ids:
        return "WHERE 1 = 0", ()
    return f"WHERE id IN ({', '.join([mark] * len(ids))})", tuple(ids)


def _psycopg_errors() -> tuple[type[BaseException], ...]:
    import psycopg

    return (psycopg.Error,)


class PostgresStore:
    """The outbox in PostgreSQL with psycopg 3 (see the module's docstring for transactions)."""

    family = "postgresql"

    def __init__(self, table: str, connect: Connector | None = None) -> None:
        self.table = check_table(table)
        self._connect = connect
        self._conn: Any = None
        self._listener: Any = None

    def create(self, conn: Any) -> None:
        with conn.cursor() as cur:
            for statement in ddl("postgresql", self.table):
                cur.execute(statement)

    def insert(self, conn: Any, rows: Sequence[Row]) -> None:
        # one statement per 1,000 rows: one round trip, one trigger (executemany: one of each per row)
        with conn.cursor() as cur:
            for start in range(0, len(rows), 1000):
                chunk = rows[start : start + 1000]
                values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(chunk))
                cur.execute(
                    f"INSERT INTO {self.table} ({_INSERT_COLUMNS}) VALUES {values}",
                    [value for row in chunk for value in row],
                )

    def _db(self) -> Any:
        if self._conn is None:
            if self._connect is None:
                raise ConfigError("this outbox store has no database to open (a writer's store)")
            with _database("connect", _psycopg_errors()):
                self._conn = self._connect()
        return self._conn

    def exclusive(self) -> bool:
        return True  # relays share the work by row locks

    def claim(self, limit: int) -> list[StoredRow]:
        conn = self._db()
        t = self.table
        with _database("claim", _psycopg_errors()):
            try:
                with conn.cursor() as cur:
                    # heads: each pending transaction's lowest row; locked ones belong to another relay
                    cur.execute(
                        f"SELECT txid FROM {t} o WHERE delivered_at IS NULL AND NOT EXISTS "
                        f"(SELECT 1 FROM {t} i WHERE i.txid = o.txid AND i.id < o.id AND i.delivered_at IS NULL) "
                        "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                        (limit,),
                    )
                    txids = [row[0] for row in cur.fetchall()]
                    if not txids:
                        conn.rollback()
                        return []
                    cur.execute(
                        f"SELECT {_STORED} FROM {t} WHERE txid = ANY(%s) AND delivered_at IS NULL ORDER BY id",
                        (txids,),
                    )
                    rows = cur.fetchall()
            except BaseException:
                self._rollback()
                raise
        return [StoredRow(*row) for row in rows]

    def _rollback(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.rollback()

    def settle(self, delivered: Sequence[int], dead: Sequence[tuple[int, str]], now: float, keep: bool) -> None:
        conn = self._db()
        t = self.table
        with _database("settle", _psycopg_errors()):
            try:
                with conn.cursor() as cur:
                    if dead:
                        cur.executemany(_to_dead(t, "%s"), [(now, reason, row_id) for row_id, reason in dead])
                        cur.execute(f"DELETE FROM {t} WHERE id = ANY(%s)", ([row_id for row_id, _ in dead],))
                    if delivered:
                        if keep:
                            cur.execute(f"UPDATE {t} SET delivered_at = %s WHERE id = ANY(%s)", (now, list(delivered)))
                        else:
                            cur.execute(f"DELETE FROM {t} WHERE id = ANY(%s)", (list(delivered),))
                conn.commit()
            except BaseException:
                self._rollback()
                raise

    def release(self) -> None:
        self._rollback()

    def prepare(self) -> None:
        self._listen()

    def wait(self, stop: threading.Event, timeout: float) -> None:
        """Wait for a ``NOTIFY <table>`` (sent by the insert trigger at commit), in steps of at
        most 0.25 s so ``stop`` is seen; without a listener (it failed), just wait."""
        listener = self._listen()
        if listener is None:
            stop.wait(timeout)
            return
        import time

        end = time.monotonic() + timeout
        try:
            while not stop.is_set():
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return
                for _ in listener.notifies(timeout=min(remaining, 0.25), stop_after=1):
                    return
        except _psycopg_errors():
            self._close_listener()

    def _listen(self) -> Any:
        if self._listener is None and self._connect is not None:
            conn = None
            try:
                conn = self._connect()
                conn.autocommit = True
                conn.execute(f"LISTEN {self.table}")
            except _psycopg_errors():
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                return None
            self._listener = conn
        return self._listener

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                self._listener.close()
            self._listener = None

    def counts(self) -> Counts:
        conn = self._db()
        t = self.table
        with _database("count", _psycopg_errors()):
            try:
                with conn.cursor() as cur:
                    cur.execute(f"SELECT count(*), min(created_at) FROM {t} WHERE delivered_at IS NULL")
                    pending, oldest = cur.fetchall()[0]
                    cur.execute(f"SELECT count(*) FROM {t}_dead")
                    dead = cur.fetchall()[0][0]
            finally:
                self._rollback()
        return Counts(int(pending), oldest, int(dead))

    def purge(self, before: float) -> int:
        conn = self._db()
        with _database("purge", _psycopg_errors()):
            try:
                with conn.cursor() as cur:
                    cur.execute(f"DELETE FROM {self.table} WHERE delivered_at < %s", (before,))
                    count = cur.rowcount
                conn.commit()
            except BaseException:
                self._rollback()
                raise
        return int(count)

    def dead(self, limit: int) -> list[DeadRow]:
        conn = self._db()
        with _database("read the dead letters", _psycopg_errors()):
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        f"SELECT id, event_id, subject, created_at, failed_at, reason FROM {self.table}_dead "
                        "ORDER BY id LIMIT %s",
                        (limit,),
                    )
                    rows = cur.fetchall()
            finally:
                self._rollback()
        return [DeadRow(*row) for row in rows]

    def retry_dead(self, ids: Sequence[int] | None) -> int:
        conn = self._db()
        t = self.table
        where, params = _which(ids, "%s")
        with _database("retry the dead letters", _psycopg_errors()):
            try:
                with conn.cursor() as cur:
                    cur.execute(_back_from_dead(t, where), params)
                    cur.execute(f"DELETE FROM {t}_dead {where}", params)
                    moved = cur.rowcount
                conn.commit()
            except BaseException:
                self._rollback()
                raise
        return int(moved)

    def close(self) -> None:
        self._close_listener()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


def store_for(family: str, table: str, connect: Connector | None = None, path: str | None = None) -> Store:
    """The store of ``family`` for ``table`` (with ``connect``: one the relay can open)."""
    if family == "sqlite":
        return SqliteStore(table, connect, path)
    return PostgresStore(table, connect)
