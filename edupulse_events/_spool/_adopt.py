"""Adoption: a live `Spool` takes over the spool files of processes that are gone.

For every other ``spool-*.db`` in the directory whose ``.lock`` this process can lock now (its
owner is dead: POSIX locks die with their process), the file is checked read-only
(`_spool_files.problem`: regular files only, SQLite's quick_check, the format and the columns,
then every row: the column types and `Spool.check`, the publisher's subject template and
routing headers); an unsound one — a single bad row is enough: a file someone planted or
altered is not trusted in part — is moved aside, never deleted, with the reason logged and
written beside it. A sound one is attached and its rows copied, parked (to be replayed) and in
order, after this spool's own ids, in one transaction. Then its files go, the lock last. The
lock makes it exactly once, even when several processes adopt at the same time; a process
killed between the copy and the delete leaves the orphan to be adopted again (at least once:
the same ``Nats-Msg-Id``, so JetStream stores it once within its duplicate window).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SpoolError, SpoolFull
from ._files import claim, lock_path, move_aside, orphan_dbs, problem, release, remove

if TYPE_CHECKING:
    from ._store import Spool

__all__ = ["adopt_orphans"]

log = logging.getLogger("edupulse_events")
SIZE = "coalesce(sum(length(headers) + length(payload)), 0)"


def adopt_orphans(spool: Spool) -> int:
    """Adopt every orphan in ``spool``'s directory; returns the rows adopted."""
    with spool._db:  # noqa: SLF001 - the spool's own helpers
        spool._connection()  # noqa: SLF001 - not after close() or forget()
    adopted = 0
    for db in orphan_dbs(spool.directory):
        if db == spool.path or (fd := claim(db)) is None:
            continue
        try:
            adopted += _adopt(spool, db)
        finally:
            release(fd, lock_path(db), delete=not db.exists())
    return adopted


def _adopt(spool: Spool, db: Path) -> int:
    """Adopt one orphan whose lock this process holds."""
    why = problem(db, spool.check)  # read-only: a refused file is moved aside exactly as it was found
    if why is not None:
        log.error("spool file %s is not usable (%s): moved aside to %s", db, why, move_aside(db, why))
        return 0
    with spool._db:  # noqa: SLF001
        conn = spool._connection()  # noqa: SLF001
        try:
            conn.execute("ATTACH DATABASE ? AS orphan", (f"{db.resolve().as_uri()}?mode=rw",))
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {spool.path}: {type(exc).__name__}: {exc}") from exc
        try:
            count, nbytes, low, high = spool._run(conn, lambda: _copy(spool, conn))  # noqa: SLF001
        except SpoolFull as exc:
            log.error("could not adopt %s: %s (the file stays for a later adoption)", db, exc)
            return 0
        finally:
            conn.execute("DETACH DATABASE orphan")
        spool._next_id += high - low + 1 if count else 0  # noqa: SLF001
        with spool._state:  # noqa: SLF001
            spool.count += count
            spool.nbytes += nbytes
            over = spool.nbytes > spool.max_bytes
    remove(db)
    log.info("%d events adopted from %s", count, db)
    if over:
        log.warning("spool %s is over spool_max_bytes=%d after adoption", spool.path, spool.max_bytes)
    return int(count)


def _copy(spool: Spool, conn: sqlite3.Connection) -> tuple[int, int, int, int]:
    """Copy orphan.events into main.events, parked, ids kept in order after ours; (rows, bytes, min id, max id)."""
    count, nbytes, low, high = conn.execute(f"SELECT count(*), {SIZE}, min(id), max(id) FROM orphan.events").fetchone()
    conn.execute(
        "INSERT INTO main.events (id, event_id, subject, headers, payload, accepted, parked)"
        " SELECT id - ? + ?, event_id, subject, headers, payload, accepted, 1 FROM orphan.events ORDER BY id",
        (low or 0, spool._next_id),  # noqa: SLF001
    )
    return count, nbytes, low or 0, high or 0
