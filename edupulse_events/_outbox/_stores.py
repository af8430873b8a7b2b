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

The relay's SQLite connections are in autocommit mode: claims read on one (a read sees every
commit before it), settles write on another, in the store's settler thread (`_settler`), each
one ``BEGIN IMMEDIATE`` transaction; one relay at a time holds the file lock
``<database>-<table>.relay-lock`` (`fcntl.flock`, released if the process dies). A PostgreSQL
relay's claim is its connection's transaction (its locks); the next claim is read on a second
connection while the first is in flight, and a claim's settle commits it, in the settler thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import os
import random
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, Protocol

from ..errors import ConfigError, OutboxDatabaseError
from ._connections import Connector, sqlite_path
from ._schema import COLUMNS, Row, StoredRow, check_table, ddl
from ._settler import Settler

__all__ = ["Claim", "Counts", "DeadRow", "PostgresStore", "SqliteStore", "Store", "store_for"]

_STORED = "id, txid, event_id, subject, headers, body, created_at, traceparent"
_INSERT_COLUMNS = ", ".join(COLUMNS)


class Claim(NamedTuple):
    """Rows a relay claimed: ``rows``, whole transactions (each in id order); ``full``: the claim
    stopped at its limit, so more may be pending; ``token``: which open claim it is (the store's)."""

    rows: list[StoredRow]
    full: bool
    token: int


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

    def claim(self, limit: int) -> Claim:
        """Pending rows of whole transactions, oldest transaction first, in id order within each;
        about ``limit`` rows (never half a transaction). Claimed until `settle` or `release`. A
        relay reads its next claim while the previous one is still open (in flight): a claim
        holds none of the rows of the claims open beside it (two at most)."""

    def settle(
        self, claim: Claim, delivered: Sequence[int], dead: Sequence[tuple[int, str]], now: float, keep: bool
    ) -> concurrent.futures.Future[None]:
        """Commit the outcome of ``claim``: ``delivered`` rows deleted (or marked, ``keep``),
        ``dead`` rows moved to the dead-letter table with their reasons; the rest pending again.
        In the store's own thread (`Settler`), after the settles before it: the future resolves
        once committed (or with the `OutboxDatabaseError`); the claim stays open until then."""

    def release(self, claim: Claim | None = None) -> None:
        """Give ``claim`` (None: every open claim, once the settles under way are done) back untouched."""

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
        self._conn: sqlite3.Connection | None = None  # the relay thread's: claims and looks
        self._writer: sqlite3.Connection | None = None  # the settler thread's: settles
        self._settler = Settler(f"edupulse-outbox-settle-{table}")
        self._lock_fd: int | None = None
        #: Open claims: token -> their highest id (a claim read beside them starts after it).
        self._open: dict[int, int] = {}
        self._open_lock = threading.Lock()
        self._tokens = itertools.count(1)

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
            self._conn = self._open_connection()
        return self._conn

    def _writer_db(self) -> sqlite3.Connection:
        if self._writer is None:
            self._writer = self._open_connection()
        return self._writer

    def _open_connection(self) -> sqlite3.Connection:
        if self._connect is None:
            raise ConfigError("this outbox store has no database to open (a writer's store)")
        with _database("connect", (sqlite3.Error,)):
            conn: sqlite3.Connection = self._connect()
            conn.isolation_level = None  # autocommit: each read sees the last commit
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
        return conn

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

    def claim(self, limit: int) -> Claim:
        # One writer at a time and ids never reused: a row committed later has a higher id than
        # every row committed before it, so rows up to an open claim's highest id are all its own
        # (or settled) and the next claim starts after it.
        conn = self._db()
        t = self.table
        with self._open_lock:
            after = max(self._open.values(), default=0)
        with _database("claim", (sqlite3.Error,)):
            rows = conn.execute(
                f"SELECT {_STORED} FROM {t} WHERE delivered_at IS NULL AND id > ? ORDER BY id LIMIT ?", (after, limit)
            ).fetchall()
            full = len(rows) == limit
            if full:  # the last transaction may go on past the window: take all of it
                last = rows[-1]
                rows += conn.execute(
                    f"SELECT {_STORED} FROM {t} WHERE txid = ? AND id > ? AND delivered_at IS NULL ORDER BY id",
                    (last[1], last[0]),
                ).fetchall()
        token = next(self._tokens)
        if rows:
            with self._open_lock:
                self._open[token] = rows[-1][0]
        return Claim([StoredRow(*row) for row in rows], full, token)

    def settle(
        self, claim: Claim, delivered: Sequence[int], dead: Sequence[tuple[int, str]], now: float, keep: bool
    ) -> concurrent.futures.Future[None]:
        delivered, dead = list(delivered), list(dead)

        def settle() -> None:
            try:
                if delivered or dead:
                    self._settle(delivered, dead, now, keep)
            finally:
                with self._open_lock:
                    self._open.pop(claim.token, None)

        return self._settler.submit(settle)

    def _settle(self, delivered: Sequence[int], dead: Sequence[tuple[int, str]], now: float, keep: bool) -> None:
        conn = self._writer_db()
        t = self.table
        with _database("settle", (sqlite3.Error,)):
            conn.execute("BEGIN IMMEDIATE")
            try:
                if dead:
                    conn.executemany(_to_dead(t, "?"), [(now, reason, row_id) for row_id, reason in dead])
                    _by_ids(conn, f"DELETE FROM {t} WHERE id IN", [row_id for row_id, _ in dead])
                if keep:
                    _by_ids(conn, f"UPDATE {t} SET delivered_at = ? WHERE id IN", delivered, (now,))
                else:
                    _by_ids(conn, f"DELETE FROM {t} WHERE id IN", delivered)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

    def release(self, claim: Claim | None = None) -> None:
        # nothing held in the database: a SQLite claim is a plain read under the relay lock
        if claim is None:
            self._settler.drain(timeout=60.0)  # the settles under way first
        with self._open_lock:
            if claim is None:
                self._open.clear()
            else:
                self._open.pop(claim.token, None)

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

    def _close_writer(self) -> None:
        """In the settler thread (its connection's): close it."""
        if self._writer is not None:
            with contextlib.suppress(sqlite3.Error):
                self._writer.close()
            self._writer = None

    def close(self) -> None:
        self._settler.close(self._close_writer, timeout=10.0)
        with self._open_lock:
            self._open.clear()
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


_IDS_PER_STATEMENT = 500  # well under SQLite's 999 host parameters of old builds


def _by_ids(conn: sqlite3.Connection, statement: str, ids: Sequence[int], first: tuple[Any, ...] = ()) -> None:
    """``statement`` (ending ``... WHERE id IN``; its parameters before the ids: ``first``) for
    ``ids``, a few hundred per statement (one statement per id costs as much again as the rows'
    own work)."""
    for start in range(0, len(ids), _IDS_PER_STATEMENT):
        chunk = ids[start : start + _IDS_PER_STATEMENT]
        conn.execute(f"{statement} ({', '.join('?' * len(chunk))})", (*first, *chunk))


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


#: The relay's connections for claims: one holds the claim in flight, the other reads the next.
_CLAIM_CONNECTIONS = 2


def _psycopg_errors() -> tuple[type[BaseException], ...]:
    import psycopg

    return (psycopg.Error,)


class PostgresStore:
    """The outbox in PostgreSQL with psycopg 3 (see the module's docstring for transactions)."""

    family = "postgresql"

    def __init__(self, table: str, connect: Connector | None = None) -> None:
        self.table = check_table(table)
        self._connect = connect
        #: The relay's connections: the first for everything, a second for a claim read while
        #: the first holds one (each open claim is its connection's transaction and row locks).
        self._conns: list[Any] = []
        self._holding: dict[int, Any] = {}  # open claims: token -> the connection holding them
        self._holding_lock = threading.Lock()
        self._settler = Settler(f"edupulse-outbox-settle-{table}")
        self._tokens = itertools.count(1)
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

    def _db(self, index: int = 0) -> Any:
        while len(self._conns) <= index:
            if self._connect is None:
                raise ConfigError("this outbox store has no database to open (a writer's store)")
            with _database("connect", _psycopg_errors()):
                self._conns.append(self._connect())
        return self._conns[index]

    def exclusive(self) -> bool:
        return True  # relays share the work by row locks

    def claim(self, limit: int) -> Claim:
        # A window of the first ``limit`` pending rows (by id): the first row of each transaction
        # there is its head (every pending row before it is in the window too), and the heads are
        # locked FOR UPDATE SKIP LOCKED (a locked one belongs to another relay, or to this relay's
        # other open claim). When every one is taken, the next window is looked at. Index scans
        # only, whatever the table's statistics say (a correlated "is there a lower pending row"
        # test was planned as a quadratic join on a table not analyzed yet: seconds per claim).
        index = self._free_connection()
        if index >= _CLAIM_CONNECTIONS:  # both hold a claim: the one being settled is free once it is
            self._settler.drain(timeout=60.0)
            index = self._free_connection()
        conn = self._db(index)
        t = self.table
        with _database("claim", _psycopg_errors()):
            try:
                with conn.cursor(binary=True) as cur:  # bytea as it is (text would be hex)
                    # A table filled since it was last analyzed (the usual case when a relay starts)
                    # looks to the planner as if it held a few pending rows, and a bitmap scan then
                    # reads every pending row for each claim: index scans are right at every size.
                    cur.execute("SET LOCAL enable_bitmapscan = off")
                    after, seen, heads = 0, set(), {}
                    while True:
                        cur.execute(
                            f"SELECT id, txid FROM {t} WHERE delivered_at IS NULL AND id > %s ORDER BY id LIMIT %s",
                            (after, limit),
                        )
                        window = cur.fetchall()
                        firsts = []
                        for row_id, txid in window:
                            if txid not in seen:
                                seen.add(txid)
                                firsts.append(row_id)
                        if firsts:
                            cur.execute(
                                f"SELECT id, txid, delivered_at FROM {t} WHERE id = ANY(%s) FOR UPDATE SKIP LOCKED",
                                (firsts,),
                            )
                            heads = {row_id: txid for row_id, txid, done in cur.fetchall() if done is None}
                        full = len(window) == limit
                        if heads or not full:
                            break
                        after = window[-1][0]
                    if not heads:
                        conn.rollback()
                        return Claim([], False, 0)
                    # by the (txid, id) index alone (delivered rows kept for a while are skipped
                    # here: a condition on delivered_at is planned as a scan of the whole pending index)
                    cur.execute(
                        f"SELECT {_STORED}, delivered_at FROM {t} WHERE txid = ANY(%s) ORDER BY txid, id",
                        (list(heads.values()),),
                    )
                    rows = [row[:-1] for row in cur.fetchall() if row[-1] is None]
            except BaseException:
                _rollback(conn)
                raise
        # A head is its transaction's lowest pending row (a window after the first was read after
        # commits the one before did not see: a transaction that is not is left alone).
        lowest: dict[int, int] = {}
        for row in rows:
            lowest.setdefault(row[1], row[0])
        mine = {txid for head, txid in heads.items() if lowest.get(txid) == head}
        token = next(self._tokens)
        with self._holding_lock:
            self._holding[token] = conn
        return Claim([StoredRow(*row) for row in rows if row[1] in mine], full, token)

    def _free_connection(self) -> int:
        """The index of the first connection holding no claim (one past the last: a new one)."""
        with self._holding_lock:
            busy = [id(conn) for conn in self._holding.values()]
        return next((i for i, conn in enumerate(self._conns) if id(conn) not in busy), len(self._conns))

    def settle(
        self, claim: Claim, delivered: Sequence[int], dead: Sequence[tuple[int, str]], now: float, keep: bool
    ) -> concurrent.futures.Future[None]:
        delivered, dead = list(delivered), list(dead)
        return self._settler.submit(lambda: self._settle(claim, delivered, dead, now, keep))

    def _settle(self, claim: Claim, delivered: list[int], dead: list[tuple[int, str]], now: float, keep: bool) -> None:
        """In the settler thread: the claim's connection (its transaction and locks) commits its outcome."""
        with self._holding_lock:
            conn = self._holding.get(claim.token)
        if conn is None:
            return  # an empty claim holds nothing
        t = self.table
        try:
            with _database("settle", _psycopg_errors()):
                try:
                    with conn.cursor() as cur:
                        if dead:
                            cur.executemany(_to_dead(t, "%s"), [(now, reason, row_id) for row_id, reason in dead])
                            cur.execute(f"DELETE FROM {t} WHERE id = ANY(%s)", ([row_id for row_id, _ in dead],))
                        if delivered:
                            if keep:
                                cur.execute(f"UPDATE {t} SET delivered_at = %s WHERE id = ANY(%s)", (now, delivered))
                            else:
                                cur.execute(f"DELETE FROM {t} WHERE id = ANY(%s)", (delivered,))
                    conn.commit()
                except BaseException:
                    _rollback(conn)
                    raise
        finally:
            with self._holding_lock:
                self._holding.pop(claim.token, None)  # its connection is free for the next claim

    def release(self, claim: Claim | None = None) -> None:
        if claim is None:
            self._settler.drain(timeout=60.0)  # the settles under way first
        with self._holding_lock:
            if claim is None:
                holding = list(self._holding.values())
                self._holding.clear()
            else:
                held = self._holding.pop(claim.token, None)
                holding = [] if held is None else [held]
        for conn in holding:
            _rollback(conn)

    def _rollback(self) -> None:
        """End the first connection's read transaction (a look at the table, between claims)."""
        if self._conns:
            _rollback(self._conns[0])

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
        self._settler.close(None, timeout=10.0)
        self._close_listener()
        with self._holding_lock:
            self._holding.clear()
        for conn in self._conns:
            with contextlib.suppress(Exception):
                conn.close()
        self._conns.clear()


def _rollback(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.rollback()


def store_for(family: str, table: str, connect: Connector | None = None, path: str | None = None) -> Store:
    """The store of ``family`` for ``table`` (with ``connect``: one the relay can open)."""
    if family == "sqlite":
        return SqliteStore(table, connect, path)
    return PostgresStore(table, connect)
