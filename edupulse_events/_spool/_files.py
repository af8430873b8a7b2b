"""Spool files seen from outside their owner: who owns one, whether it is sound, what it holds.

Each `_spool.Spool` writes ``spool-<pid>-<8 hex>.db`` (with SQLite's ``-wal`` and ``-shm``)
beside ``spool-<pid>-<8 hex>.lock``, on which its owner holds an exclusive ``lockf`` lock from
before the ``.db`` exists until it is gone or abandoned. Whoever can take that lock now may
adopt or purge the ``.db``: its owner is gone. A ``.db`` without its ``.lock`` counts as
abandoned once it is `YOUNG` seconds old. Whoever takes a lock checks that the path still names
the inode it locked (a finishing adopter deletes the ``.lock`` last, while holding it), so
exactly one process ever acts on a spool file.

Trust: the directory is a trust boundary. `check_directory` (run when a `_spool.Spool` opens)
wants it owned by this process's effective uid and writable by nobody else (no group or other
write bit, so a sticky ``/tmp``-style directory is refused too): then only this uid (or root) can
plant files in it. Still, every file here is opened without following symlinks and without
blocking (``O_NOFOLLOW | O_NONBLOCK``, then checked to be a regular file), and a ``.db`` whose
files are not all regular files (`irregular`) is never handed to SQLite: a symlink or a FIFO
planted in the directory can neither make this process create or open a file elsewhere nor
hang it. Suspect files are only ever opened read-only (`problem`), so what is moved aside is
byte for byte what was found; `move_aside` writes the reason beside it (``*.why``).

Formats: a spool this code writes is `FORMAT` (``events.batch`` names the first row of a row's
atomic batch); 0.7.0's `FORMAT_1` (no ``batch``) is still sound. `problem` wants the columns of
the format the file names, and each batch to be consecutive rows starting at the one it names.

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
import stat
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path

import attrs

from ..errors import ConfigError

__all__ = [
    "COLUMNS",
    "COLUMNS_1",
    "FORMAT",
    "FORMATS",
    "FORMAT_1",
    "SCHEMA",
    "YOUNG",
    "SpoolFileInfo",
    "batched",
    "check_directory",
    "claim",
    "claim_lock",
    "connect",
    "create_locked",
    "held",
    "irregular",
    "is_full",
    "lock_path",
    "move_aside",
    "moved_aside",
    "orphan_dbs",
    "problem",
    "purge",
    "release",
    "remove",
    "spool_files",
]

#: The ``meta`` table's ``format`` value of the spools this code writes: ``events`` has a
#: ``batch`` column (the id of the first row of the row's atomic batch, 0 for an event on its own).
FORMAT = "edupulse-spool-2"
#: The format of 0.7.0's spools, without ``batch``: adopted too, their rows as events on their own.
FORMAT_1 = "edupulse-spool-1"
#: ``PRAGMA table_info(events)`` rows as (name, type, notnull, pk), by format.
COLUMNS_1 = [
    ("id", "INTEGER", 0, 1),
    ("event_id", "TEXT", 1, 0),
    ("subject", "BLOB", 1, 0),
    ("headers", "BLOB", 1, 0),
    ("payload", "BLOB", 1, 0),
    ("accepted", "REAL", 1, 0),
    ("parked", "INTEGER", 1, 0),
]
COLUMNS = [*COLUMNS_1, ("batch", "INTEGER", 1, 0)]
FORMATS = {FORMAT: COLUMNS, FORMAT_1: COLUMNS_1}
#: The schema a `_spool.Spool` creates (in one transaction).
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, event_id TEXT NOT NULL, subject BLOB NOT NULL,"
    " headers BLOB NOT NULL, payload BLOB NOT NULL, accepted REAL NOT NULL, parked INTEGER NOT NULL,"
    " batch INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS events_parked ON events (id) WHERE parked = 1",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"INSERT OR IGNORE INTO meta (key, value) VALUES ('format', '{FORMAT}')",
)
#: Rows whose columns do not hold what a spool writes (SQLite keeps any type in any column).
_MISTYPED = (
    "SELECT id FROM events WHERE typeof(subject) != 'blob' OR typeof(headers) != 'blob'"
    " OR typeof(payload) != 'blob' OR typeof(event_id) != 'text' OR typeof(accepted) NOT IN ('real', 'integer')"
    " ORDER BY id LIMIT 1"
)
#: ... and, in a file with atomic batches, rows whose ``batch`` is not an integer.
_MISTYPED_BATCH = "SELECT id FROM events WHERE typeof(batch) != 'integer' ORDER BY id LIMIT 1"
#: Atomic batches that are not what a spool writes: rows with consecutive ids, ``batch`` the first's.
_BROKEN_BATCH = (
    "SELECT batch FROM events WHERE batch != 0 GROUP BY batch"
    " HAVING min(id) != batch OR max(id) - min(id) + 1 != count(*) ORDER BY batch LIMIT 1"
)
#: A ``.db`` with no ``.lock`` younger than this (seconds) may still be being created.
YOUNG = 5.0
#: Flags of every os.open of a file in the directory: a planted symlink is refused (ELOOP), a
#: FIFO opens at once instead of waiting for a writer (and is then refused as not regular).
_SAFE = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: The side files of a ``.db`` SQLite may open, and the reason file `move_aside` writes.
SIDE_FILES = ("-wal", "-shm")
WHY = ".why"
#: At most this much of a reason file is read back (`moved_aside`).
_WHY_BYTES = 4096

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


def check_directory(directory: Path) -> None:
    """`ConfigError` unless ``directory`` is owned by this process's effective uid and has no group or
    other write bit. A missing or non-directory path passes: opening the spool reports it."""
    try:
        st = os.stat(directory)  # a symlink to the directory is followed: its target must be ours
    except OSError:
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    euid = os.geteuid()
    if st.st_uid != euid:
        raise ConfigError(
            f"spool_dir {str(directory)!r} is owned by uid {st.st_uid}, not by this process's uid {euid}: "
            "whoever owns it can plant spool files that would be published with this application's credentials; "
            "use a directory of this user's own"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"spool_dir {str(directory)!r} has mode {stat.S_IMODE(st.st_mode):04o}: writable by its group or by "
            "other users, who could plant spool files that would be published with this application's credentials "
            "(and read its events); use a directory of its own with no group/other write bit (chmod go-w, e.g. 0700)"
        )


def irregular(db: Path) -> str | None:
    """Why ``db`` must not be handed to SQLite (it, a side file or its lock is a symlink, a FIFO, ...),
    or None: each of them is a regular file or absent. Reads nothing but the directory entries."""
    for path in (db, *(db.with_name(db.name + suffix) for suffix in SIDE_FILES), lock_path(db)):
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            if path == db:
                return f"{path.name} is gone"
            continue
        if not stat.S_ISREG(mode):
            return f"{path.name} is not a regular file ({_kind(mode)}): never opened"
    return None


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return f"mode {mode:o}"


def _open_regular(path: Path, flags: int) -> int:
    """``os.open`` without following a symlink or blocking on a FIFO; OSError (EINVAL) unless a regular file."""
    fd = os.open(path, flags | _SAFE, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path.name} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


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
        fd = _open_regular(lock, os.O_RDWR | (os.O_CREAT if create else 0))
        if _lock_now(fd, fcntl.LOCK_EX):
            try:
                if os.path.samestat(os.fstat(fd), os.stat(lock)):
                    return fd
            except FileNotFoundError:
                pass  # an adopter finished with it and deleted it
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EINVAL, errno.ENXIO, errno.EISDIR):
            release(fd, lock)
            raise
        # a symlink (ELOOP) or not a regular file: planted, never ours to lock or create through
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
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _SAFE, 0o600))
        except FileExistsError:
            continue
        fd = claim_lock(lock)  # None: purge() found it without a .db and took it first; try another name
        if fd is not None:
            return fd, lock.with_suffix(".db")


def claim(db: Path) -> int | None:
    """The locked descriptor of ``db``'s lock file if its owner is gone (None if alive, busy or too young)."""
    lock = lock_path(db)
    create = False
    if not os.path.lexists(lock):  # a dangling symlink is there: never create its target
        try:
            create = time.time() - os.lstat(db).st_mtime >= YOUNG
        except FileNotFoundError:
            return None
        if not create:
            return None
    fd = claim_lock(lock, create=create)
    if fd is not None and not os.path.lexists(db):
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


def problem(db: Path, check: Callable[[str, bytes, bytes], str | None] | None = None) -> str | None:
    """Why ``db`` is not a sound spool (not a regular file, corrupt, not SQLite, foreign schema, a row whose
    columns do not hold what a spool writes, or one that ``check`` refuses), or None if it is one.
    Read-only: a suspect file (or its -wal) is never written to, so what is moved aside is what was found."""
    why = irregular(db)
    if why is not None:
        return why
    try:
        conn = connect(db, "ro")
    except sqlite3.Error as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        return _problem(conn) or _row_problem(conn, check)
    except sqlite3.Error as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def _row_problem(conn: sqlite3.Connection, check: Callable[[str, bytes, bytes], str | None] | None) -> str | None:
    with_batches = batched(conn)
    bad = conn.execute(_MISTYPED).fetchone()
    if bad is None and with_batches:
        bad = conn.execute(_MISTYPED_BATCH).fetchone()
    if bad is not None:
        return f"row {bad[0]}: a column does not hold the type a spool writes"
    if with_batches:
        broken = conn.execute(_BROKEN_BATCH).fetchone()
        if broken is not None:
            return f"atomic batch {broken[0]}: its rows are not consecutive rows from the one it names"
    if check is not None:
        for row_id, event_id, subject, headers in conn.execute(
            "SELECT id, event_id, subject, headers FROM events ORDER BY id"
        ):
            why = check(event_id, subject, headers)
            if why is not None:
                return f"row {row_id} (event {event_id[:64]!r}) must not be published: {why}"
    return None


def _problem(conn: sqlite3.Connection) -> str | None:
    try:
        checks = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
        if checks != ["ok"]:
            return "quick_check failed: " + "; ".join(map(str, checks[:3]))
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"meta", "events"} <= tables:
            return f"not an edupulse spool: tables {sorted(tables)}"
        fmt = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        expected = FORMATS.get(fmt[0]) if fmt is not None else None
        if expected is None:
            return f"not an edupulse spool: format {fmt[0] if fmt else None!r}, expected {FORMAT!r} or {FORMAT_1!r}"
        columns = [(row[1], row[2], row[3], row[5]) for row in conn.execute("PRAGMA table_info(events)")]
        if columns != expected:
            return f"not an edupulse spool: events columns {columns} (format {fmt[0]!r})"
    except sqlite3.Error as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def batched(conn: sqlite3.Connection, schema: str = "main") -> bool:
    """Whether the spool ``schema`` (a sound one: `problem`) has the ``batch`` column (`FORMAT`;
    0.7.0's `FORMAT_1` has none: every row an event on its own)."""
    return any(row[1] == "batch" for row in conn.execute(f"PRAGMA {schema}.table_info(events)"))


def move_aside(db: Path, why: str) -> Path:
    """Rename ``db`` and its side files to ``<name>.corrupt-<UTC time>`` (never deleted) and write ``why``
    beside them (``<name>.corrupt-<UTC time>.why``, for ``spool inspect``); returns the new .db path."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for suffix in (*SIDE_FILES, ""):
        path = db.with_name(db.name + suffix)
        if os.path.lexists(path):
            path.rename(path.with_name(f"{path.name}.corrupt-{stamp}"))
    aside = db.with_name(f"{db.name}.corrupt-{stamp}")
    try:
        fd = os.open(aside.with_name(aside.name + WHY), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _SAFE, 0o600)
        try:
            os.write(fd, why.encode("utf-8", "backslashreplace")[:_WHY_BYTES] + b"\n")
        finally:
            os.close(fd)
    except OSError:
        pass  # the error log says it too
    return aside


def moved_aside(directory: Path) -> list[tuple[str, str | None]]:
    """Spool files moved aside as unusable (``spool-*.db.corrupt-<UTC time>``), each with its reason if
    one was written; read without following symlinks or blocking, at most `_WHY_BYTES` each."""
    found = []
    for path in sorted(directory.glob("spool-*.db.corrupt-*")):
        if path.name.endswith(WHY):
            continue
        why: str | None = None
        try:
            fd = _open_regular(path.with_name(path.name + WHY), os.O_RDONLY)
        except OSError:
            pass
        else:
            try:
                why = " ".join(os.read(fd, _WHY_BYTES).decode("utf-8", "backslashreplace").split()) or None
            finally:
                os.close(fd)
        found.append((path.name, why))
    return found


def remove(db: Path) -> None:
    """Delete ``db`` and its side files (not its lock file)."""
    for suffix in ("", "-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)


def _owner_alive(db: Path) -> bool:
    lock = lock_path(db)
    if held.get(str(lock)) == os.getpid():
        return True  # never open it: closing our descriptor would drop our own lock
    try:
        fd = _open_regular(lock, os.O_RDONLY)
    except OSError:  # none, or not a regular file (`spool_files` checks `irregular` first)
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
        odd = irregular(db)
        if odd is not None:  # never opened: it could hang the reader or lead outside the directory
            infos.append(SpoolFileInfo(db, False, None, None, None, None, None, error=odd))
            continue
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
        if (only is not None and db not in only) or irregular(db) is not None:
            continue  # not a spool's files: left for a person to look at (`spool_files` says why)
        fd = claim(db)
        if fd is None:
            continue
        try:
            try:
                conn = connect(db, "ro")
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
