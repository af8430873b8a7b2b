"""Adoption of dead processes' spool files (`edupulse_events._spool._store.Spool.adopt_orphans`): exactly once even with
two adopters at once, fresh ids in order, unsound files moved aside, live owners left alone, fork()
children that keep off their parent's spool, and the inspect/purge helpers (`spool_files`, `purge`).
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from spool_support import (
    ADOPTER,
    BIG,
    adopt_in_child,
    child,
    ended,
    hear,
    lock_held_elsewhere,
    orphan,
    row,
    say,
    stored,
)

from edupulse_events import SpoolError, SpoolFull
from edupulse_events._spool._files import held
from edupulse_events._spool._store import Spool, purge, spool_files

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX locks and fork()")


def test_unsound_files_are_moved_aside_and_adoption_goes_on(
    tmp_path: Path, spools: Callable[..., Spool], caplog: pytest.LogCaptureFixture
) -> None:
    """Random bytes and a foreign SQLite file go to *.corrupt-<UTC>, an ERROR each; a good orphan is adopted."""
    caplog.set_level(logging.INFO, logger="edupulse_events")
    corrupt = tmp_path / "spool-1-deadbeef.db"
    corrupt.write_bytes(os.urandom(8192))
    foreign = tmp_path / "spool-2-cafebabe.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    for db in (corrupt, foreign):
        db.with_suffix(".lock").touch()  # no process holds it
    good = orphan(tmp_path, 0, 7)

    spool = spools(tmp_path)
    assert spool.adopt_orphans() == 7
    aside = sorted(p.name.split(".corrupt-")[0] for p in tmp_path.glob("*.corrupt-*") if p.suffix != ".why")
    assert aside == ["spool-1-deadbeef.db", "spool-2-cafebabe.db"]
    whys = sorted(p.read_text() for p in tmp_path.glob("*.corrupt-*.why"))  # the reasons, beside them
    assert [w.split(":")[0] for w in whys] == ["DatabaseError", "not an edupulse spool"]
    assert [p for p in (corrupt, foreign, good) if p.exists() or p.with_suffix(".lock").exists()] == []
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert any(str(corrupt) in e and "not a database" in e for e in errors)
    assert any(str(foreign) in e and "not an edupulse spool" in e for e in errors)
    assert f"7 events adopted from {good}" in caplog.messages
    assert [(e, p) for _, e, p in stored(spool)] == [(f"ev-{i}", 1) for i in range(7)]
    assert (spool.count, spool.nbytes, spool.parked_count()) == (7, 280, 7)
    assert spool.adopt_orphans() == 0  # the moved-aside files are left alone


def test_adopted_rows_get_fresh_ids_and_replay_in_order(
    tmp_path: Path, spools: Callable[..., Spool], caplog: pytest.LogCaptureFixture
) -> None:
    """Adopted rows take ids above any this spool gave out (none reused), keep their order, may pass max_bytes."""
    caplog.set_level(logging.INFO, logger="edupulse_events")
    spool = spools(tmp_path, max_bytes=100)
    ids = [spool.append(*row(100 + i)) for i in range(2)]
    spool.delete([ids[1]])  # the highest id is gone; it must not come back
    orphan(tmp_path, 0, 4)
    assert spool.adopt_orphans() == 4
    assert (spool.count, spool.nbytes) == (5, 200)
    assert any(r.levelno == logging.WARNING and "spool_max_bytes=100" in r.getMessage() for r in caplog.records)
    claimed = spool.claim_parked(10)
    assert [s.event_id for s in claimed] == [f"ev-{i}" for i in range(4)]
    assert min(s.id for s in claimed) > ids[1]
    with pytest.raises(SpoolFull):
        spool.append(*row(200))
    spool.delete([s.id for s in claimed])
    assert spool.append(*row(201)) > max(s.id for s in claimed)


def test_a_db_without_lock_file_is_adopted_only_once_old(tmp_path: Path, spools: Callable[..., Spool]) -> None:
    """A .db without its .lock may be being created: left alone under 5 s old, adopted after."""
    db = orphan(tmp_path, 0, 3)
    db.with_suffix(".lock").unlink()
    spool = spools(tmp_path)
    assert spool.adopt_orphans() == 0
    old = time.time() - 10
    os.utime(db, (old, old))
    assert spool.adopt_orphans() == 3
    assert not db.exists()
    assert not db.with_suffix(".lock").exists()


def test_a_live_owners_spool_is_not_adopted_until_it_exits(tmp_path: Path, spools: Callable[..., Spool]) -> None:
    """Another process's open spool stays its own (adopt, purge); once it closes with rows left, they are adopted."""
    code = """
spool = Spool(sys.argv[2], max_bytes=1 << 30)
for i in range(5):
    spool.append(b"s", b"h", b"p" * 30, f"live-{i}", time.time())
print(spool.path, flush=True)
sys.stdin.readline()
spool.close()
"""
    proc = child(code, tmp_path)
    spool = spools(tmp_path)
    try:
        theirs = Path(hear(proc))
        assert spool.adopt_orphans() == 0
        info = {i.path: i for i in spool_files(tmp_path)}[theirs]
        assert (info.owner_alive, info.count, info.error) == (True, None, None)  # held exclusively
        assert purge(tmp_path) == 0
        assert theirs.exists()
        say(proc, "exit")
        assert proc.wait(timeout=60) == 0
    finally:
        ended(proc)
    assert spool.adopt_orphans() == 5
    assert sorted(e for _, e, _ in stored(spool)) == [f"live-{i}" for i in range(5)]


def test_two_processes_adopting_at_once_take_each_orphan_once(tmp_path: Path) -> None:
    """Two processes run adopt_orphans together over 6 orphans: every row is adopted exactly once in all."""
    for n in range(6):
        orphan(tmp_path, n * 100, 40)
    procs = [child(ADOPTER, tmp_path) for _ in range(2)]
    try:
        assert [hear(proc) for proc in procs] == ["ready", "ready"]
        for proc in procs:  # both wait on this line: released together
            say(proc, "go")
        adopted = [int(hear(proc)) for proc in procs]
        for proc in procs:
            say(proc, "exit")
        assert [proc.wait(timeout=60) for proc in procs] == [0, 0]
    finally:
        for proc in procs:
            ended(proc)
    assert sum(adopted) == 240
    # the adopters closed with their rows left: what is on disk now is every row, once
    counts = collections.Counter(event_id for db in tmp_path.glob("spool-*.db") for _, event_id, _ in stored(db))
    assert sorted(counts) == sorted(f"ev-{n * 100 + i}" for n in range(6) for i in range(40))
    assert set(counts.values()) == {1}


def test_forked_child_forgets_the_spool_and_holds_no_lock(tmp_path: Path) -> None:
    """After fork() the child's forget() stops its use, it holds no lock; the parent's spool is its own till close."""
    spool = Spool(tmp_path, max_bytes=BIG)
    for i in range(3):
        spool.append(*row(i))
    lock = spool.path.with_suffix(".lock")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe and always _exits
        try:
            spool.forget()
            spool.close()  # a no-op once forgotten
            try:
                spool.append(*row(9))
                report = "appended"
            except SpoolError:
                report = "refused"
            fd = os.open(lock, os.O_RDWR)  # closing it later drops only this child's locks: none
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                report += " lock-free-for-child"
            except OSError:
                report += " lock-held-by-parent"
            os.write(write_fd, report.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        report = os.read(read_fd, 1000).decode()
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    try:
        assert os.waitstatus_to_exitcode(status) == 0
        assert report == "refused lock-held-by-parent"
        spool.append(*row(3))  # the child left the parent's spool alone
        assert adopt_in_child(tmp_path) == 0
        assert lock_held_elsewhere(lock)
    finally:
        spool.close()
    assert adopt_in_child(tmp_path) == 4


# --------------------------------------------------------------------------- inspect, purge, errors


def test_spool_files_and_purge_leave_live_spools_alone(tmp_path: Path, spools: Callable[..., Spool]) -> None:
    """spool_files() reports each file; purge() deletes only orphaned ones; neither drops this process's own lock."""
    live = spools(tmp_path)
    live.append(*row(1))
    live.append(*row(2))
    gone = Spool(tmp_path, max_bytes=BIG)
    gone_ids = [gone.append(*row(i, size=50)) for i in range(10, 13)]
    gone.park([gone_ids[0]])
    gone.close()
    corrupt = tmp_path / "spool-1-deadbeef.db"
    corrupt.write_bytes(b"not a database at all" * 100)
    corrupt.with_suffix(".lock").touch()
    live_lock = live.path.with_suffix(".lock")

    infos = {info.path: info for info in spool_files(tmp_path)}
    assert set(infos) == {live.path, gone.path, corrupt}
    assert (infos[live.path].owner_alive, infos[live.path].count, infos[live.path].error) == (True, None, None)
    info = infos[gone.path]
    assert (info.owner_alive, info.count, info.nbytes, info.parked) == (False, 3, 150, 1)
    assert (info.oldest, info.newest, info.error) == (1010.0, 1012.0, None)
    assert not infos[corrupt].owner_alive
    assert "not a database" in (infos[corrupt].error or "")
    assert lock_held_elsewhere(live_lock)

    assert purge(tmp_path) == 3
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(live.path.stem)] == []
    assert lock_held_elsewhere(live_lock)
    assert live.adopt_orphans() == 0
    live.append(*row(3))
    assert live.count == 3
    mine = [key for key, pid in held.items() if pid == os.getpid() and key.startswith(str(tmp_path))]
    assert mine == [str(live_lock)]
