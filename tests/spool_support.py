"""Helpers of the spool storage tests (`test_spool_store.py`, `test_spool_adoption.py`): event rows,
reading a spool's rows back, orphaned spool files, child processes driven line by line, and
whether a lock is held by another process."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from edupulse_events._spool._store import Spool

ROOT = Path(__file__).resolve().parents[1]
BIG = 1 << 30
SUBJECT = b"edupulse.events.quiz"
Row = tuple[bytes, bytes, bytes, str, float]


def row(i: int, size: int = 40) -> Row:
    """An event row: subject, headers, payload, event_id, accepted (headers + payload = ``size`` bytes)."""
    return SUBJECT, b"h" * 10, b"p" * (size - 10), f"ev-{i}", 1000.0 + i


def stored(db: Path | Spool) -> list[tuple[int, str, int]]:
    """(id, event_id, parked) of every row: of a closed file through a fresh connection, of a live
    spool through its own (it holds its database exclusively)."""
    query = "SELECT id, event_id, parked FROM events ORDER BY id"
    if isinstance(db, Spool) and db._conn is None:  # noqa: SLF001 - closed: read its file
        db = db.path
    if isinstance(db, Spool):
        with db._db:  # noqa: SLF001 - reading what the spool committed
            assert db._conn is not None  # noqa: SLF001
            return db._conn.execute(query).fetchall()  # noqa: SLF001
    conn = sqlite3.connect(db)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def orphan(directory: Path, first: int, count: int) -> Path:
    """A spool file left by an owner that closed with ``count`` rows ev-<first>... in it; returns its path."""
    spool = Spool(directory, max_bytes=BIG)
    for i in range(first, first + count):
        spool.append(*row(i))
    spool.close()
    assert spool.path.exists()
    return spool.path


def child(code: str, *args: object) -> subprocess.Popen[str]:
    """A Python child running ``code`` with the repository on sys.path; ``sys.argv[2:]`` are ``args``."""
    prelude = "import sys, time\nsys.path.insert(0, sys.argv[1])\nfrom edupulse_events._spool._store import Spool\n"
    return subprocess.Popen(
        [sys.executable, "-c", prelude + code, str(ROOT), *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def say(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def hear(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def ended(proc: subprocess.Popen[str]) -> None:
    """Make sure ``proc`` is gone and reaped, its pipes closed."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def lock_held_elsewhere(lock: Path) -> bool:
    """Whether some process holds ``lock``, asked from a fresh process (this process's own locks would not show)."""
    code = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n    print('held')\n"
        "else:\n    print('free')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(lock)], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout.strip() == "held"


ADOPTER = """
spool = Spool(sys.argv[2], max_bytes=1 << 30)
print("ready", flush=True)
sys.stdin.readline()
print(spool.adopt_orphans(), flush=True)
sys.stdin.readline()
spool.close()
"""


def adopt_in_child(directory: Path) -> int:
    """Rows adopted by a Spool in a fresh process (closed after, so they stay in its own file)."""
    proc = child(ADOPTER, directory)
    try:
        assert hear(proc) == "ready"
        say(proc, "go")
        adopted = int(hear(proc))
        say(proc, "exit")
        assert proc.wait(timeout=60) == 0
        return adopted
    finally:
        ended(proc)


# --------------------------------------------------------------------------- rows
