"""The spool's storage layer (`edupulse_events._spool`): committed ids, group commit, rows that
survive SIGKILL and are adopted exactly once, the byte and disk limits, unsound files moved aside,
fork() children that keep off their parent's spool, and the inspect/purge helpers.

Append cost (not asserted), measured on a 2-vCPU VM (ext4, another benchmark running), rows of
~400 bytes, ``synchronous=NORMAL``: one thread appending in a loop pays ~22-26 µs of CPU and
~26-30 µs wall per append, one commit each (raw sqlite3 BEGIN/INSERT/COMMIT is ~20 µs here; the
WAL checkpoint every ~800 commits costs its commit 4-15 ms). 8 threads appending at once share
~4-7 rows per commit and take ~38-45 µs wall per append in all: Python's thread hand-offs, not
SQLite, bound that (8 threads around a plain lock, one commit each, measure 34-39 µs). With
``fsync=True`` group commit pays off: ~340 µs per append alone, ~95 µs per append with 8 threads.
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edupulse_events import QueueFull, SpoolError, SpoolFull
from edupulse_events._spool import Spool, Stored, purge, spool_files
from edupulse_events._spool_files import held

ROOT = Path(__file__).resolve().parents[1]
BIG = 1 << 30
SUBJECT = b"edupulse.events.quiz"
Row = tuple[bytes, bytes, bytes, str, float]

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX locks and fork()")


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


@pytest.fixture
def spools() -> Iterator[Callable[..., Spool]]:
    """Factory: ``spools(directory, max_bytes=BIG)``; every spool is closed at teardown (rows left stay)."""
    made: list[Spool] = []

    def factory(directory: Path, max_bytes: int = BIG) -> Spool:
        made.append(Spool(directory, max_bytes=max_bytes))
        return made[-1]

    yield factory
    for spool in made:
        spool.close()


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
    prelude = "import sys, time\nsys.path.insert(0, sys.argv[1])\nfrom edupulse_events._spool import Spool\n"
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


def test_append_returns_ids_committed_and_visible_to_another_connection(
    tmp_path: Path, spools: Callable[..., Spool]
) -> None:
    """append() returns increasing ids of rows already committed: a fresh connection sees them all."""
    spool = spools(tmp_path)
    ids = [spool.append(*row(i)) for i in range(5)]
    assert ids == sorted(set(ids))
    assert stored(spool) == [(id_, f"ev-{i}", 0) for i, id_ in enumerate(ids)]
    assert (spool.count, spool.nbytes, spool.transactions) == (5, 200, 5)
    assert spool.path.name.startswith(f"spool-{os.getpid()}-")
    assert spool.path.with_suffix(".lock").exists()


def test_delete_park_and_claim_parked_keep_count_and_bytes(tmp_path: Path) -> None:
    """delete() and park() act on the ids given; claim_parked() hands parked rows out oldest first, once."""
    spool = Spool(tmp_path, max_bytes=BIG)
    ids = [spool.append(*row(i, size=40 + i)) for i in range(6)]
    spool.park([ids[4], ids[1], ids[2]])
    assert spool.parked_count() == 3
    assert [s.event_id for s in spool.claim_parked(2)] == ["ev-1", "ev-2"]
    assert spool.claim_parked(10) == [Stored(ids[4], "ev-4", SUBJECT, b"h" * 10, b"p" * 34, 1004.0)]
    assert spool.claim_parked(10) == []
    assert spool.parked_count() == 0

    spool.delete([ids[0], ids[3], ids[3], 999])  # a repeated and an unknown id are ignored
    assert (spool.count, spool.nbytes) == (4, 41 + 42 + 44 + 45)
    assert [event_id for _, event_id, _ in stored(spool)] == ["ev-1", "ev-2", "ev-4", "ev-5"]
    spool.delete(ids)
    assert (spool.count, spool.nbytes) == (0, 0)
    spool.close()
    assert list(tmp_path.iterdir()) == []  # closed empty: nothing is left behind


def test_close_is_idempotent_and_later_calls_fail(tmp_path: Path) -> None:
    """close() twice is fine; calls after it raise SpoolError; rows left stay on disk, unlocked."""
    spool = Spool(tmp_path, max_bytes=BIG)
    spool.append(*row(1))
    spool.close()
    spool.close()
    with pytest.raises(SpoolError, match="closed"):
        spool.append(*row(2))
    with pytest.raises(SpoolError, match="closed"):
        spool.delete([1])
    with pytest.raises(SpoolError, match="closed"):
        spool.claim_parked(1)
    assert stored(spool) == [(1, "ev-1", 0)]
    assert not lock_held_elsewhere(spool.path.with_suffix(".lock"))


def test_group_commit_puts_concurrent_appends_in_shared_transactions(
    tmp_path: Path, spools: Callable[..., Spool]
) -> None:
    """8 threads x 500 appends: every row is stored once under a unique id, in fewer than 4000 commits."""
    spool = spools(tmp_path)
    barrier = threading.Barrier(8)
    results: dict[int, list[int]] = {}

    def worker(n: int) -> None:
        barrier.wait()
        results[n] = [spool.append(*row(n * 1000 + i)) for i in range(500)]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [id_ for n in range(8) for id_ in results[n]]
    assert len(set(ids)) == 4000
    for n in range(8):
        assert results[n] == sorted(results[n])  # a thread's rows keep its order
    rows = stored(spool)
    assert sorted(id_ for id_, _, _ in rows) == sorted(ids)
    assert len({event_id for _, event_id, _ in rows}) == 4000
    assert (spool.count, spool.nbytes) == (4000, 4000 * 40)
    assert spool.transactions < 4000


def test_rows_whose_id_was_returned_survive_sigkill(tmp_path: Path, spools: Callable[..., Spool]) -> None:
    """A process SIGKILLed mid-append loses no row whose id it got back: a new spool adopts each exactly once."""
    code = """
spool = Spool(sys.argv[2], max_bytes=1 << 30)
i = 0
while True:
    spool.append(b"s", b"h" * 10, b"p" * 100, f"ev-{i}", time.time())
    print(f"ev-{i}", flush=True)
    i += 1
"""
    proc = child(code, tmp_path)
    printed: list[str] = []
    try:
        while len(printed) < 300:
            printed.append(hear(proc))
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        assert proc.stdout is not None
        printed += [line for line in proc.stdout.read().splitlines() if line[-1:].isdigit()]  # not a cut-off line
    finally:
        ended(proc)

    spool = spools(tmp_path)
    adopted = spool.adopt_orphans()
    counts = collections.Counter(event_id for _, event_id, _ in stored(spool))
    assert adopted == sum(counts.values()) >= len(printed)
    assert all(counts[event_id] == 1 for event_id in printed), "a printed event is missing or doubled"
    assert max(counts.values()) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(f"spool-{proc.pid}-")] == []


# --------------------------------------------------------------------------- limits


def test_spool_full_at_max_bytes_writes_nothing_and_recovers(tmp_path: Path, spools: Callable[..., Spool]) -> None:
    """Past max_bytes, append raises SpoolFull (a QueueFull) naming file and limit, writing nothing; room comes back."""
    spool = spools(tmp_path, max_bytes=100)
    first, second = spool.append(*row(1)), spool.append(*row(2))
    with pytest.raises(SpoolFull, match="spool_max_bytes=100") as caught:
        spool.append(*row(3))
    assert isinstance(caught.value, QueueFull)
    assert str(spool.path) in str(caught.value)
    assert (spool.count, spool.nbytes, len(stored(spool))) == (2, 80, 2)

    spool.delete([first])
    assert spool.append(*row(3, size=60)) > second
    assert (spool.count, spool.nbytes) == (2, 100)
    spool.delete([second])
    # append_many writes the rows that fit, in order, and stops at the first that does not
    ids = spool.append_many([row(4, size=20), row(5, size=30), row(6, size=10)], parked=True)
    assert len(ids) == 1
    assert stored(spool)[-1] == (ids[0], "ev-4", 1)
    assert (spool.count, spool.nbytes) == (2, 80)


def test_disk_full_fails_the_whole_batch_and_recovers(tmp_path: Path, spools: Callable[..., Spool]) -> None:
    """SQLITE_FULL (max_page_count) -> SpoolFull for every row of the batch, none written; fine once room returns."""
    spool = spools(tmp_path)
    spool.append(*row(0))
    conn = spool._conn  # noqa: SLF001  # a full disk, simulated on the spool's own connection
    assert conn is not None
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
    big = (SUBJECT, b"h", b"p" * 50_000, "ev-big", 1.0)

    with pytest.raises(SpoolFull, match="database or disk is full"):
        spool.append(*big)
    barrier = threading.Barrier(4)
    outcomes: list[BaseException | int] = []

    def worker() -> None:
        barrier.wait()
        try:
            outcomes.append(spool.append(*big))
        except SpoolFull as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [type(outcome) for outcome in outcomes] == [SpoolFull] * 4
    assert spool.append_many([big, big], parked=False) == []
    assert [event_id for _, event_id, _ in stored(spool)] == ["ev-0"]
    assert (spool.count, spool.nbytes) == (1, 40)

    conn.execute("PRAGMA max_page_count = 1000000")
    spool.append(*big)
    assert spool.count == 2


# --------------------------------------------------------------------------- adoption


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
    aside = sorted(p.name.split(".corrupt-")[0] for p in tmp_path.glob("*.corrupt-*"))
    assert aside == ["spool-1-deadbeef.db", "spool-2-cafebabe.db"]
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


def test_missing_directory_raises_spool_error(tmp_path: Path) -> None:
    """A directory that does not exist, or is a file, gives SpoolError naming it."""
    for bad in (tmp_path / "missing", tmp_path / "file"):
        if bad.name == "file":
            bad.touch()
        with pytest.raises(SpoolError, match=str(bad)):
            Spool(bad, max_bytes=BIG)


def test_unwritable_directory_raises_spool_error(tmp_path: Path) -> None:
    """A directory this process cannot write to gives SpoolError naming it, and nothing is left in it."""
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    try:
        if os.access(readonly, os.W_OK):
            pytest.skip("running as root: permissions do not stop writes")
        with pytest.raises(SpoolError, match=str(readonly)):
            Spool(readonly, max_bytes=BIG)
        assert list(readonly.iterdir()) == []
    finally:
        readonly.chmod(0o700)
