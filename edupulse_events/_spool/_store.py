"""The durable local spool: accepted events in a SQLite file, so that they survive a SIGKILL.

Layout and locking: each process's `Spool` owns ``<dir>/spool-<pid>-<8 hex>.db`` (plus SQLite's
``-wal`` and ``-shm``) and ``<dir>/spool-<pid>-<8 hex>.lock``. The ``.lock`` is created and
locked with ``fcntl.lockf`` *before* the ``.db`` exists and stays locked until `Spool.close`.
POSIX locks belong to the process, so a fork()ed child does not hold its parent's (``flock``
locks would be shared with it): while the owner lives, nobody else can take the lock. Once it is
gone (closed with rows left, killed, crashed) another `Spool` in the directory takes the lock
and adopts the rows (`Spool.adopt_orphans`; `_files` has the file-level steps): exactly once, as
the lock decides, and never a file that fails its checks (that one is moved aside, not deleted).

Adoption: for every other ``spool-*.db`` in the directory whose ``.lock`` this process can lock
now (its owner is dead: POSIX locks die with their process), the file is checked read-only
(`_files.problem`: regular files only, SQLite's quick_check, the format and the columns, then
every row: the column types and `Spool.check`, the publisher's subject template and routing
headers); an unsound one — a single bad row is enough: a file someone planted or altered is not
trusted in part — is moved aside, never deleted, with the reason logged and written beside it.
A sound one is attached and its rows copied, parked (to be replayed) and in order, after this
spool's own ids, in one transaction (an atomic batch's rows stay consecutive and keep naming
their first row: `_files.FORMAT`; a 0.7.0 file, `_files.FORMAT_1`, has no batches). Then its
files go, the lock last. The lock makes it exactly
once, even when several processes adopt at the same time; a process killed between the copy and
the delete leaves the orphan to be adopted again (at least once: the same ``Nats-Msg-Id``, so
JetStream stores it once within its duplicate window).

Trust: the directory must be this uid's and writable by nobody else (`ConfigError` when a
`Spool` opens, `_files.check_directory`); the files are created ``0600`` and never through
a symlink. Adopted rows pass `Spool.check` (the publisher's: the subject fits its subject
template, the headers are the routing headers it writes) or their whole file is moved aside.

Atomic batches: `append_many` writes a batch's rows (consecutive ids, ``batch`` = the first's id)
all or none, and `claim_parked` hands a batch out whole, so the publisher sends it as one again.

Writes: one connection in autocommit mode, used by caller threads and the publisher thread under
one lock (``_db``), holding its database in exclusive locking mode (no other process reads a
live spool; that saves the shared-memory locking of every commit). A lone row is one INSERT, its
own transaction; batches use ``BEGIN IMMEDIATE``/``COMMIT``. `Spool.append` returns an id only
once its row is committed, with group commit: the first thread that finds no commit running
takes every pending row into one transaction (the leader); threads arriving meanwhile wait on a
condition for the outcome of the next batch, whose leader is one of them. A thread appending
alone pays one commit per row; 8 threads at once share a few rows per commit (figures in
docs/performance.md; a
leader that saw company yields the CPU once before taking the batch, letting the threads it
just woke join it). Deletes of acknowledged rows go by runs of consecutive ids.

Durability: WAL with ``synchronous=OFF`` hands each commit to the OS (the ``-wal`` file) without
fsync: it survives the process being killed, not an OS crash or power loss (which may also leave
the file corrupt: the next adopter moves it aside); ``fsync=True`` (``synchronous=FULL``) syncs
every commit and survives those too. ``max_bytes`` bounds headers + payload of the rows held; a
full disk (``SQLITE_FULL``) is reported as the same `SpoolFull`, with the batch rolled back.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import attrs

from ..errors import SpoolError, SpoolFull
from ._files import (
    SCHEMA,
    SpoolFileInfo,
    batched,
    check_directory,
    claim,
    connect,
    create_locked,
    is_full,
    lock_path,
    move_aside,
    orphan_dbs,
    problem,
    purge,
    release,
    remove,
    spool_files,
)

__all__ = ["Spool", "SpoolFileInfo", "Stored", "purge", "spool_files"]

log = logging.getLogger("edupulse_events")
T = TypeVar("T")

Row = tuple[bytes, bytes, bytes, str, float]  # subject, headers, payload, event_id, accepted (batches: append_many)
#: (event_id, subject, headers) -> why that row must not be published, or None (`Spool.check`).
RowCheck = Callable[[str, bytes, bytes], "str | None"]

INSERT = (
    "INSERT INTO events (id, subject, headers, payload, event_id, accepted, batch, parked)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
SIZE = "coalesce(sum(length(headers) + length(payload)), 0)"
CHUNK = 500  # ids per IN (...) list, well under SQLite's bound on variables

DELETE_RUN = "DELETE FROM events WHERE id BETWEEN ? AND ?"
CLAIM = "SELECT id, event_id, subject, headers, payload, accepted, batch FROM events WHERE parked = 1"

#: What fork()ed children gave up on (`Spool.forget`): kept so garbage collection never closes it.
_abandoned: list[object] = []


@attrs.frozen
class Stored:
    """A row of the spool as `Spool.claim_parked` returns it; ``accepted`` is when publish() took it."""

    id: int
    event_id: str
    subject: bytes
    headers: bytes
    payload: bytes
    accepted: float
    #: The id of the first row of its atomic batch (0: an event on its own).
    batch: int = 0


class _Batch:
    """Rows waiting for one commit, and its outcome for the threads that wait on it."""

    __slots__ = ("cause", "done", "first", "nbytes", "rows")

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.nbytes = 0
        self.first = 0
        self.done = False
        self.cause: SpoolError | SpoolFull | None = None


class Spool:
    """One process's spool database in a directory."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int,
        fsync: bool = False,
        check: RowCheck | None = None,
    ) -> None:
        self.directory = Path(directory)
        check_directory(self.directory)  # ConfigError: not ours, or others may write in it
        self.max_bytes = max_bytes
        #: Why an adopted row must not be published (None: it may), given its event_id, subject and
        #: headers; a file with such a row is moved aside whole. None here: every sound row is adopted.
        self.check = check
        self.count = 0  # rows held
        self.nbytes = 0  # sum of len(headers) + len(payload) of the rows held
        self.transactions = 0  # commits made
        self._db = threading.Lock()  # the connection, and _next_id
        self._state = threading.Lock()  # the counters, the pending batch, _committing, _closed
        self._outcome = threading.Condition(self._state)
        self._batch = _Batch()
        self._committing = False
        self._concurrent = False
        self._reserved = 0  # bytes of rows accepted into a batch and not committed yet
        self._next_id = 1
        self._closed = self._forgotten = False
        self._pid = os.getpid()
        try:
            self._lock_fd, self.path = create_locked(self.directory)
        except OSError as exc:
            raise SpoolError(f"cannot create a spool in {self.directory}: {exc.strerror or exc}") from exc
        self._conn: sqlite3.Connection | None = None
        try:
            # created here, 0600 and never through a symlink (SQLite would make it 0644); SQLite gives
            # the -wal the same mode: event bodies may hold personal data
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
            self._conn = conn = connect(self.path, "rwc")
            # One process writes each file: holding its lock for good (and, set before WAL is
            # entered, the WAL index in the process's own memory, no -shm) makes a commit markedly
            # cheaper (docs/performance.md). Nobody else reads a live spool (`spool_files` reports it as in use).
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"journal_mode is {mode!r}, WAL is needed")
            # OFF: a commit is handed to the OS (it survives the process being killed) and no
            # checkpoint ever stalls a publish() on fsync; FULL: synced (it survives power loss)
            conn.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'OFF'}")
            self._run(conn, lambda: [conn.execute(statement) for statement in SCHEMA])
        except (sqlite3.Error, SpoolError, OSError) as exc:
            if self._conn is not None:
                self._conn.close()
            remove(self.path)
            release(self._lock_fd, lock_path(self.path), delete=True)
            raise SpoolError(f"cannot create a spool in {self.directory}: {exc}") from exc
        self.transactions = 0

    # ------------------------------------------------------------------ writing

    def _connection(self, *, pending: bool = False) -> sqlite3.Connection:
        """The open connection (holding ``_db``); after close() only for rows already pending."""
        if self._forgotten or self._pid != os.getpid():
            self.forget()
            raise SpoolError(f"spool {self.path} was forgotten after fork(): this process must not use it")
        if self._conn is None or (self._closed and not pending):
            raise SpoolError(f"spool {self.path} is closed")
        return self._conn

    def _full(self, why: str) -> SpoolFull:
        return SpoolFull(f"spool {self.path} is full ({why}; spool_max_bytes={self.max_bytes}): event not accepted")

    def _run(self, conn: sqlite3.Connection, work: Callable[[], T]) -> T:
        """``work`` in one BEGIN IMMEDIATE ... COMMIT (holding ``_db``), rolled back if anything fails;
        SQLITE_FULL raises `SpoolFull`, other SQLite errors `SpoolError`."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = work()
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if is_full(exc):
                raise self._full("database or disk is full") from exc
            if isinstance(exc, sqlite3.Error):
                raise SpoolError(f"spool {self.path}: {type(exc).__name__}: {exc}") from exc
            raise
        with self._state:
            self.transactions += 1
        return result

    def _insert(
        self, conn: sqlite3.Connection, rows: Sequence[Row], parked: int, batches: Sequence[int] | None = None
    ) -> int:
        """Write ``rows`` in one transaction (holding ``_db``); returns the first id. ``batches``:
        see `append_many`."""
        first = self._next_id
        if batches is None:
            values = [(first + i, *row, 0, parked) for i, row in enumerate(rows)]
        else:
            values = [
                (first + i, *row, first + b if b >= 0 else 0, parked)
                for i, (row, b) in enumerate(zip(rows, batches, strict=True))
            ]
        if len(rows) == 1:  # one statement is its own transaction: no BEGIN/COMMIT round trips
            try:
                conn.execute(INSERT, values[0])
            except sqlite3.Error as exc:
                if is_full(exc):
                    raise self._full("database or disk is full") from exc
                raise SpoolError(f"spool {self.path}: {type(exc).__name__}: {exc}") from exc
            with self._state:
                self.transactions += 1
        else:
            self._run(conn, lambda: conn.executemany(INSERT, values))
        self._next_id = first + len(rows)
        return first

    def append(self, subject: bytes, headers: bytes, payload: bytes, event_id: str, accepted: float) -> int:
        """Write one row (not parked) and return its id once committed (group commit across threads).

        Raises `SpoolFull` if the row would take the spool past ``max_bytes`` (counting rows still
        pending; nothing written) or SQLite finds the disk full (the whole batch is rolled back and
        each of its rows fails), and `SpoolError` on other SQLite errors or after close()/forget().
        """
        if self._forgotten or self._pid != os.getpid():
            self._connection()  # raises
        size = len(headers) + len(payload)
        with self._state:
            if self._closed:
                raise SpoolError(f"spool {self.path} is closed")
            if self.nbytes + self._reserved + size > self.max_bytes:
                raise self._full(f"{self.nbytes + self._reserved} bytes held, this event {size}")
            batch = self._batch
            index = len(batch.rows)
            batch.rows.append((subject, headers, payload, event_id, accepted))
            batch.nbytes += size
            self._reserved += size
            while not batch.done:
                if self._committing:
                    self._outcome.wait()
                else:
                    self._lead()
            if batch.cause is not None:  # a fresh exception per thread: they share the cause
                raise type(batch.cause)(str(batch.cause)) from batch.cause.__cause__
            return batch.first + index

    def _lead(self) -> None:
        """Commit every pending row in one transaction (entered and left holding ``_state``)."""
        self._committing = True
        if self._concurrent:
            self._state.release()
            os.sched_yield()
            self._state.acquire()
        batch, self._batch = self._batch, _Batch()
        self._concurrent = len(batch.rows) > 1
        self._state.release()
        cause: SpoolError | SpoolFull | None = SpoolError(f"spool {self.path}: the commit was interrupted")
        try:
            with self._db:
                try:
                    batch.first = self._insert(self._connection(pending=True), batch.rows, 0)
                    cause = None
                except (SpoolError, SpoolFull) as exc:
                    cause = exc
        finally:
            self._state.acquire()
            batch.cause, batch.done = cause, True
            if cause is None:
                self.count += len(batch.rows)
                self.nbytes += batch.nbytes
            self._reserved -= batch.nbytes
            self._committing = False
            self._outcome.notify_all()

    def append_many(self, rows: Sequence[Row], *, parked: bool, batches: Sequence[int] | None = None) -> list[int]:
        """Write, in one transaction and in order, the rows that fit under ``max_bytes``, stopping at the
        first that does not; returns their ids (the caller fails the rest). Disk full: writes none, returns [].

        ``batches``: for each row, the index in ``rows`` of the first row of its atomic batch (-1: an
        event on its own); the rows of a batch are consecutive, and are written all or none."""
        with self._db:
            conn = self._connection()
            with self._state:
                room, take, nbytes = self.max_bytes - self.nbytes - self._reserved, 0, 0
                for _, headers, payload, _, _ in rows:
                    if nbytes + len(headers) + len(payload) > room:
                        break
                    take, nbytes = take + 1, nbytes + len(headers) + len(payload)
                if batches is not None and take < len(rows) and 0 <= batches[take] < take:
                    cut = batches[take]  # the batch the room ends in is left out whole
                    nbytes -= sum(len(row[1]) + len(row[2]) for row in rows[cut:take])
                    take = cut
                self._reserved += nbytes
            first = 0
            try:
                if take:
                    first = self._insert(conn, rows[:take], int(parked), batches and batches[:take])
            except SpoolFull:
                pass  # the disk is full: nothing written
            finally:
                with self._state:
                    self._reserved -= nbytes
                    if first:
                        self.count += take
                        self.nbytes += nbytes
            return list(range(first, first + take)) if first else []

    def _over(self, conn: sqlite3.Connection, sql: str, ids: list[int]) -> list[tuple[int, int]]:
        """Run ``sql`` (``{}`` stands for the id list) over ``ids`` in chunks; the rows it returns."""
        results = []
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            results.extend(conn.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall())
        return results

    def delete(self, ids: Iterable[int], nbytes: int | None = None) -> None:
        """Delete these rows (acknowledged events) in one transaction; unknown ids are ignored.

        ``nbytes``: the rows' headers + payload bytes, when the caller knows them (the publisher
        does): the rows are then deleted by runs of consecutive ids (acks mostly come in order:
        usually one statement) without reading their sizes first."""
        unique = sorted(set(ids))
        if not unique:
            return
        with self._db:
            conn = self._connection()
            if nbytes is not None:
                runs = _runs(unique)

                def by_runs() -> int:
                    return sum(conn.execute(DELETE_RUN, run).rowcount for run in runs)

                deleted = self._run(conn, by_runs) if len(runs) > 1 else _single(self, conn, runs[0])
                with self._state:
                    self.count -= deleted
                    self.nbytes -= nbytes if deleted == len(unique) else min(nbytes, self.nbytes)
                return

            def work() -> list[tuple[int, int]]:
                sums = self._over(conn, f"SELECT count(*), {SIZE} FROM events WHERE id IN ({{}})", unique)
                self._over(conn, "DELETE FROM events WHERE id IN ({})", unique)
                return sums

            sums = self._run(conn, work)
            with self._state:
                self.count -= sum(count for count, _ in sums)
                self.nbytes -= sum(nbytes for _, nbytes in sums)

    def park(self, ids: Iterable[int]) -> None:
        """Mark these rows parked (their in-memory copy gave up): `claim_parked` hands them out again."""
        unique = list(dict.fromkeys(ids))
        if unique:
            with self._db:
                conn = self._connection()
                self._run(conn, lambda: self._over(conn, "UPDATE events SET parked = 1 WHERE id IN ({})", unique))

    def claim_parked(self, limit: int) -> list[Stored]:
        """At most ``limit`` parked rows, oldest (lowest id) first, unparked in the same transaction;
        an atomic batch comes whole (past ``limit`` if the limit ends inside it)."""
        with self._db:
            conn = self._connection()
            if limit <= 0:  # SQLite reads LIMIT -1 as no limit
                return []

            def work() -> list[Stored]:
                rows = conn.execute(f"{CLAIM} ORDER BY id LIMIT ?", (limit,)).fetchall()
                if rows and rows[-1][-1]:  # the rest of the last row's batch
                    rows += conn.execute(f"{CLAIM} AND batch = ? AND id > ? ORDER BY id", (rows[-1][-1], rows[-1][0]))
                self._over(conn, "UPDATE events SET parked = 0 WHERE id IN ({})", [row[0] for row in rows])
                return [Stored(*row) for row in rows]

            return self._run(conn, work)

    def parked_count(self) -> int:
        """How many rows are parked now."""
        with self._db:
            try:
                return int(self._connection().execute("SELECT count(*) FROM events WHERE parked = 1").fetchone()[0])
            except sqlite3.Error as exc:
                raise SpoolError(f"spool {self.path}: {type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------ orphans and lifetime

    def adopt_orphans(self) -> int:
        """Move into this spool, parked, the rows of every other spool file in the directory whose owner
        is gone; unsound files are moved aside (``*.corrupt-<UTC time>``) and logged. Returns rows adopted
        (see Adoption in the module's docstring)."""
        with self._db:
            self._connection()  # not after close() or forget()
        adopted = 0
        for db in orphan_dbs(self.directory):
            if db == self.path or (fd := claim(db)) is None:
                continue
            try:
                adopted += self._adopt(db)
            finally:
                release(fd, lock_path(db), delete=not db.exists())
        return adopted

    def _adopt(self, db: Path) -> int:
        """Adopt one orphan whose lock this process holds."""
        why = problem(db, self.check)  # read-only: a refused file is moved aside exactly as it was found
        if why is not None:
            log.error("spool file %s is not usable (%s): moved aside to %s", db, why, move_aside(db, why))
            return 0
        with self._db:
            conn = self._connection()
            try:
                conn.execute("ATTACH DATABASE ? AS orphan", (f"{db.resolve().as_uri()}?mode=rw",))
            except sqlite3.Error as exc:
                raise SpoolError(f"spool {self.path}: {type(exc).__name__}: {exc}") from exc
            try:
                count, nbytes, low, high = self._run(conn, lambda: self._copy_orphan(conn))
            except SpoolFull as exc:
                log.error("could not adopt %s: %s (the file stays for a later adoption)", db, exc)
                return 0
            finally:
                conn.execute("DETACH DATABASE orphan")
            self._next_id += high - low + 1 if count else 0
            with self._state:
                self.count += count
                self.nbytes += nbytes
                over = self.nbytes > self.max_bytes
        remove(db)
        log.info("%d events adopted from %s", count, db)
        if over:
            log.warning("spool %s is over spool_max_bytes=%d after adoption", self.path, self.max_bytes)
        return int(count)

    def _copy_orphan(self, conn: sqlite3.Connection) -> tuple[int, int, int, int]:
        """Copy orphan.events into main.events, parked, ids kept in order after ours (an atomic batch
        keeps naming its first row; a 0.7.0 file has no batches); (rows, bytes, min id, max id)."""
        count, nbytes, low, high = conn.execute(
            f"SELECT count(*), {SIZE}, min(id), max(id) FROM orphan.events"
        ).fetchone()
        batch = "CASE batch WHEN 0 THEN 0 ELSE batch - :low + :next END" if batched(conn, "orphan") else "0"
        conn.execute(
            "INSERT INTO main.events (id, event_id, subject, headers, payload, accepted, batch, parked)"
            f" SELECT id - :low + :next, event_id, subject, headers, payload, accepted, {batch}, 1"
            " FROM orphan.events ORDER BY id",
            {"low": low or 0, "next": self._next_id},
        )
        return count, nbytes, low or 0, high or 0

    def close(self) -> None:
        """Commit what is pending and close. With no rows left the files go; otherwise they stay, and with
        the lock released another process adopts them. Idempotent; does nothing after forget()."""
        if self._forgotten or self._pid != os.getpid():  # another process's: forget, never delete
            self.forget()
            return
        with self._state:
            if self._closed:
                return
            self._closed = True
            while self._committing or self._batch.rows:  # let appends already taken in commit
                if self._committing:
                    self._outcome.wait()
                else:
                    self._lead()
        with self._db:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
            empty = self.count == 0
            if empty:
                remove(self.path)
            release(self._lock_fd, lock_path(self.path), delete=empty)

    def forget(self) -> None:
        """In a fork()ed child: never touch this spool's connection or files again (its parent owns them).

        Takes no lock (another thread may have held one at fork()), closes nothing (SQLite could
        checkpoint or delete the parent's files): the connection and lock descriptor are kept alive
        for good. Every later call but close() (a no-op) raises `SpoolError`. A spool used from a
        process other than its creator forgets itself the same way.
        """
        if not self._forgotten:
            self._forgotten = True
            _abandoned.append((self._conn, self._lock_fd))


def _runs(ids: list[int]) -> list[tuple[int, int]]:
    """Sorted ids as runs of consecutive ids: ``[(first, last), ...]``."""
    runs = []
    start = prev = ids[0]
    for i in ids[1:]:
        if i != prev + 1:
            runs.append((start, prev))
            start = i
        prev = i
    runs.append((start, prev))
    return runs


def _single(spool: Spool, conn: sqlite3.Connection, run: tuple[int, int]) -> int:
    """One DELETE as its own transaction; returns the rows deleted."""
    try:
        deleted = conn.execute(DELETE_RUN, run).rowcount
    except sqlite3.Error as exc:
        raise SpoolError(f"spool {spool.path}: {type(exc).__name__}: {exc}") from exc
    with spool._state:  # noqa: SLF001 - this module's own class
        spool.transactions += 1
    return int(deleted)
