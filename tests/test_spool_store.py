"""The spool's storage layer (`edupulse_events._spool._store`): committed ids, group commit, rows that
survive SIGKILL, the byte and disk limits, closing, and an unusable directory. Adoption, unsound
files, fork() and the inspect/purge helpers are `test_spool_adoption.py`'s.

Append cost (not asserted; 2-vCPU VM, rows of ~400 bytes): one thread appending in a loop pays one
commit per row, ~11 µs (exclusive locking, ``synchronous=OFF``); threads appending at once share
a few rows per commit, bounded by Python's thread hand-offs rather than SQLite. With ``fsync=True``
group commit pays off: ~340 µs per append alone, ~95 µs per append with 8 threads.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from spool_support import BIG, SUBJECT, child, ended, hear, lock_held_elsewhere, row, stored

from edupulse_events import QueueFull, SpoolError, SpoolFull
from edupulse_events._spool._store import Spool, Stored

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX locks and fork()")


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
