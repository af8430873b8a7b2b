"""Spool files seen from outside their owner: who owns one, whether it is sound, what it holds.

Each `_spool.Spool` writes ``spool-<pid>-<8 hex>.db`` (with SQLite's ``-wal`` and ``-shm``)
beside ``spool-<pid>-<8 hex>.lock``, on which its owner holds an exclusive ``lockf`` lock from
before the ``.db`` exists until it is gone or abandoned. Whoever can take that lock now may
adopt or purge the ``.db``: its owner is gone. A ``.db`` without its ``.lock`` counts as
abandoned once it is `YOUNG` seconds old. Whoever takes a lock checks that the path still names
the inode it locked (a finishing adopter deletes the ``.lock`` last, while holding it), so
exactly one process ever acts on a spool file.

POSIX locks belong to a process, not to a file descriptor: the process's lock would not stop
its own second ``lockf``, and closing *any* descriptor of the file drops it. So this process
never opens a lock file it holds or is taking: `held` names them (per pid, as a forked child
holds none of its parent's), and every claim goes through it.

`spool_files` (read-only: ``?mode=ro`` connections, shared-lock probes) and `purge` back the
``spool inspect`` and ``spool purge`` commands; `create_locked` is an owner's first step and
`claim`, `problem`, `move_aside` and `remove` are adoption's.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Collection
from pathlib import Path

import attrs

__all__ = [
    "COLUMNS",
    "FORMAT",
    "SCHEMA",
    "YOUNG",
    "SpoolFileInfo",
    "claim",
    "claim_lock",
    "connect",
    "create_locked",
    "held",
    "is_full",
    "lock_path",
    "move_aside",
    "orphan_dbs",
    "problem",
    "purge",
    "release",
    "remove",
    "spool_files",
]

#: The ``meta`` table's ``format`` value: a spool this code can adopt.
FORMAT = "edupulse-spool-1"
#: ``PRAGMA table_info(events)`` rows as (name, type, notnull, pk).
COLUMNS = [
    ("id", "INTEGER", 0, 1),
    ("event_id", "TEXT", 1, 0),
    ("subject", "BLOB", 1, 0),
    ("headers", "BLOB", 1, 0),
    ("payload", "BLOB", 1, 0),
    ("accepted", "REAL", 1, 0),
    ("parked", "INTEGER", 1, 0),
]
#: The schema a `_spool.Spool` creates (in one transaction).
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, event_id TEXT NOT NULL, subject BLOB NOT NULL,"
    " headers BLOB NOT NULL, payload BLOB NOT NULL, accepted REAL NOT NULL, parked INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS events_parked ON events (id) WHERE parked = 1",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"INSERT OR IGNORE INTO meta (key, value) VALUES ('format', '{FORMAT}')",
)
#: A ``.db`` with no ``.lock`` younger than this (seconds) may still be being created.
YOUNG = 5.0

#: Lock files this process holds or is taking now -> the pid that does (a fork()ed child, whose
#: pid differs, holds none of them).
held: dict[str, int] = {}
_held_mutex = threading.Lock()


def _after_fork_in_child() -> None:
    global _held_mutex
    _held_mutex = threading.Lock()  # another thread may have held it at fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


@attrs.frozen
class SpoolFileInfo:
    """One spool file as ``spool inspect`` shows it (sizes exclude subjects; ages are accepted times)."""

    path: Path
    owner_alive: bool
    #: None while the owner lives: it holds its database exclusively.
    count: int | None
    nbytes: int | None
    parked: int | None
    oldest: float | None
    newest: float | None
    error: str | None


def lock_path(db: Path) -> Path:
    return db.with_suffix(".lock")


def connect(db: Path, mode: str) -> sqlite3.Connection:
    """A connection in autocommit mode (explicit BEGIN/COMMIT) through a ``file:`` URI (``mode``: ro, rw, rwc)."""
    uri = f"{db.resolve().as_uri()}?mode={mode}"
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)


def _lock_now(fd: int, operation: int) -> bool:
    try:
        fcntl.lockf(fd, operation | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


def claim_lock(lock: Path, *, create: bool = False) -> int | None:
    """Lock ``lock`` exclusively for this process, or None if someone (this process included) holds it.

    Returns the locked descriptor; hand it back with `release`.
    """
    key, pid = str(lock), os.getpid()
    with _held_mutex:
        if held.get(key) == pid:
            return None
        held[key] = pid
    fd = -1
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o600)
        if _lock_now(fd, fcntl.LOCK_EX):
            try:
                if os.path.samestat(os.fstat(fd), os.stat(lock)):
                    return fd
            except FileNotFoundError:
                pass  # an adopter finished with it and deleted it
    except FileNotFoundError:
        pass
    except BaseException:
        release(fd, lock)
        raise
    release(fd, lock)
    return None


def release(fd: int, lock: Path, *, delete: bool = False) -> None:
    """Give back a lock taken by `claim_lock` (deleting the lock file first when ``delete``)."""
    try:
        if delete:
            lock.unlink(missing_ok=True)
        if fd >= 0:
            os.close(fd)
    finally:
        with _held_mutex:
            held.pop(str(lock), None)


def create_locked(directory: Path) -> tuple[int, Path]:
    """Create and lock a fresh ``spool-<pid>-<8 hex>.lock`` in ``directory``: its descriptor and the .db path."""
    while True:
        lock = directory / f"spool-{os.getpid()}-{secrets.token_hex(4)}.lock"
        try:
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            continue
        fd = claim_lock(lock)  # None: purge() found it without a .db and took it first; try another name
        if fd is not None:
            return fd, lock.with_suffix(".db")


def claim(db: Path) -> int | None:
    """The locked descriptor of ``db``'s lock file if its owner is gone (None if alive, busy or too young)."""
    lock = lock_path(db)
    create = False
    if not lock.exists():
        try:
            create = time.time() - db.stat().st_mtime >= YOUNG
        except FileNotFoundError:
            return None
        if not create:
            return None
    fd = claim_lock(lock, create=create)
    if fd is not None and not db.exists():
        release(fd, lock, delete=True)  # adopted or purged meanwhile; the lock file is a leftover
        return None
    return fd


def orphan_dbs(directory: Path) -> list[Path]:
    """The spool databases in ``directory``, oldest name first (not side files, not moved-aside ones)."""
    return sorted(directory.glob("spool-*.db"))


def is_full(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's SQLITE_FULL (the disk, or max_page_count)."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    return (code is not None and code & 0xFF == 13) or "database or disk is full" in str(exc)


def problem(db: Path, mode: str = "rw") -> str | None:
    """Why ``db`` is not a sound spool (corrupt, not SQLite, foreign schema), or None if it is one."""
    try:
        conn = connect(db, mode)
    except sqlite3.Error as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        return _problem(conn)
    finally:
        conn.close()


def _problem(conn: sqlite3.Connection) -> str | None:
    try:
        checks = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
        if checks != ["ok"]:
            return "quick_check failed: " + "; ".join(map(str, checks[:3]))
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"meta", "events"} <= tables:
            return f"not an edupulse spool: tables {sorted(tables)}"
        fmt = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        if fmt is None or fmt[0] != FORMAT:
            return f"not an edupulse spool: format {fmt[0] if fmt else None!r}, expected {FORMAT!r}"
        columns = [(row[1], row[2], row[3], row[5]) for row in conn.execute("PRAGMA table_info(events)")]
        if columns != COLUMNS:
            return f"not an edupulse spool: events columns {columns}"
    except sqlite3.Error as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def move_aside(db: Path) -> Path:
    """Rename ``db`` and its side files to ``<name>.corrupt-<UTC time>`` (never deleted); returns the new .db path."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for suffix in ("-wal", "-shm", ""):
        path = db.with_name(db.name + suffix)
        if path.exists():
            path.rename(path.with_name(f"{path.name}.corrupt-{stamp}"))
    return db.with_name(f"{db.name}.corrupt-{stamp}")


def remove(db: Path) -> None:
    """Delete ``db`` and its side files (not its lock file)."""
    for suffix in ("", "-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)


def _owner_alive(db: Path) -> bool:
    lock = lock_path(db)
    if held.get(str(lock)) == os.getpid():
        return True  # never open it: closing our descriptor would drop our own lock
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        return not _lock_now(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)


def _stats(conn: sqlite3.Connection) -> tuple[int, int, int, float | None, float | None]:
    count, nbytes, parked, oldest, newest = conn.execute(
        "SELECT count(*), coalesce(sum(length(headers) + length(payload)), 0), coalesce(sum(parked), 0),"
        " min(accepted), max(accepted) FROM events"
    ).fetchone()
    return count, nbytes, parked, oldest, newest


def spool_files(directory: str | os.PathLike[str]) -> list[SpoolFileInfo]:
    """Every spool file in ``directory`` with its owner's liveness and contents; reads only."""
    infos = []
    for db in orphan_dbs(Path(directory)):
        alive = _owner_alive(db)
        if alive:  # its owner holds the database exclusively: nothing to read until it is gone
            infos.append(SpoolFileInfo(db, True, None, None, None, None, None, error=None))
            continue
        stats: tuple[int | None, int | None, int | None, float | None, float | None] = (0, 0, 0, None, None)
        try:
            conn = connect(db, "ro")
        except sqlite3.Error as exc:
            error: str | None = f"{type(exc).__name__}: {exc}"
        else:
            try:
                error = _problem(conn)
                if error is None:
                    stats = _stats(conn)
            except sqlite3.Error as exc:
                error = f"{type(exc).__name__}: {exc}"
            finally:
                conn.close()
        infos.append(SpoolFileInfo(db, alive, *stats, error=error))
    return infos


def purge(directory: str | os.PathLike[str], only: Collection[Path] | None = None) -> int:
    """Delete the spool files whose owner is gone (taking their lock first); returns the events deleted.
    ``only``: delete none but these (what a user confirmed; a process that died since is left alone)."""
    root = Path(directory)
    deleted = 0
    for db in orphan_dbs(root):
        if only is not None and db not in only:
            continue
        fd = claim(db)
        if fd is None:
            continue
        try:
            try:
                conn = connect(db, "rw")
                try:
                    deleted += conn.execute("SELECT count(*) FROM events").fetchone()[0]
                finally:
                    conn.close()
            except sqlite3.Error:
                pass  # unreadable: deleted all the same, with nothing to count
            remove(db)
        finally:
            release(fd, lock_path(db), delete=True)
    for lock in root.glob("spool-*.lock"):  # an owner that died before creating its .db
        if not lock.with_suffix(".db").exists() and (fd := claim_lock(lock)) is not None:
            release(fd, lock, delete=not lock.with_suffix(".db").exists())
    return deleted
