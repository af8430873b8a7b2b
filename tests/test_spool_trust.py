"""The spool directory as a trust boundary: files planted in it (foreign subjects, wildcards, forged
headers, symlinks, FIFOs, a suspect WAL) are never published, followed, hung on or rewritten, the
files a spool makes are 0600, and a directory others own or may write is refused; replay and
adoption run against real nats-server processes, ``spool inspect|purge`` as subprocesses."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import LogWatcher, add_stream, broker_env, envelope, read_stream
from spool_support import BIG, orphan

from edupulse_events import ConfigError, NatsPublisher
from edupulse_events._pipeline._routing import Router
from edupulse_events._spool._store import Spool, spool_files
from edupulse_events.testing import NatsServer

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX files")

SUBJECT = "edupulse.{tenant}.{type}"
STREAM = "TRUST"
FORGED = b"Edupulse-Admin: true\r\n"


def plant(directory: Path, rows: list[tuple[bytes, bytes, bytes, str]]) -> Path:
    """A spool file whose owner is gone holding ``rows`` (subject, headers, payload, event_id); its path."""
    spool = Spool(directory, max_bytes=BIG)
    for subject, headers, payload, event_id in rows:
        spool.append(subject, headers, payload, event_id, 1000.0)
    spool.close()
    return spool.path


def good_rows(n: int) -> list[tuple[bytes, bytes, bytes, str]]:
    """Rows exactly as a publisher with `SUBJECT` writes them."""
    items = [Router(SUBJECT).prepare(envelope(), None) for _ in range(n)]
    return [(item.subject, item.headers, item.payload, item.event_id) for item in items]


def attacks() -> dict[str, tuple[bytes, bytes, bytes, str]]:
    """One crafted row per attack, each otherwise what a publisher writes."""
    (_subject, headers, payload, event_id), (s2, h2, p2, e2), (s3, h3, p3, e3) = good_rows(3)
    return {
        "foreign subject": (b"pwned.injected", headers, payload, event_id),
        "wildcard subject": (s2.rsplit(b".", 1)[0] + b".>", h2, p2, e2),
        "forged header": (s3, h3[:-2] + FORGED + b"\r\n", p3, e3),
    }


def aside(directory: Path) -> dict[str, str]:
    """Moved-aside .db files -> the reason written beside them."""
    return {
        p.name.split(".corrupt-")[0]: p.with_name(p.name + ".why").read_text()
        for p in directory.glob("spool-*.db.corrupt-*")
        if p.suffix != ".why"
    }


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir(mode=0o700)
    return path


def test_replay_publishes_no_row_of_a_planted_file_and_moves_it_aside_with_the_reason(
    nats_server: NatsServer, spool: Path
) -> None:
    """spool replay: files with a foreign or wildcard subject or a forged header are moved aside, reasons shown."""
    add_stream(nats_server.url, STREAM, ["edupulse.>", "pwned.>"])
    good = good_rows(3)
    plant(spool, good)
    planted = {plant(spool, [row]).name: why for why, row in attacks().items()}
    env = broker_env(URL=nats_server.url, SUBJECT=SUBJECT, STREAM=STREAM)
    proc = subprocess.run(
        [sys.executable, "-m", "edupulse_events", "spool", "replay", str(spool), "--timeout", "30"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    stored = read_stream(nats_server.url, STREAM, timeout=30.0)
    assert sorted(m.headers["Nats-Msg-Id"] for m in stored) == sorted(row[3] for row in good), proc.stdout
    assert not [m for m in stored if not m.subject.startswith("edupulse.") or "Edupulse-Admin" in m.headers]
    reasons = aside(spool)
    assert sorted(reasons) == sorted(planted)
    assert "pwned.injected" in reasons[next(n for n, w in planted.items() if w == "foreign subject")]
    assert "does not fit" in reasons[next(n for n, w in planted.items() if w == "wildcard subject")]
    assert "Edupulse-Admin" in reasons[next(n for n, w in planted.items() if w == "forged header")]
    assert proc.returncode == 1, proc.stdout + proc.stderr  # something was not replayed
    assert "moved aside as unusable" in proc.stdout
    inspect = subprocess.run(
        [sys.executable, "-m", "edupulse_events", "spool", "inspect", str(spool)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    for name in planted:
        assert any(name in line and "must not be published" in line for line in inspect.stdout.splitlines())


def test_a_publisher_adopting_a_planted_file_publishes_none_of_it(nats_server: NatsServer, spool: Path) -> None:
    """A publisher's adoption: a planted row for pwned.injected is not sent; the file is logged and moved aside."""
    add_stream(nats_server.url, "PWNED", ["pwned.>"])
    [(_, headers, payload, event_id)] = good_rows(1)
    bad = plant(spool, [(b"pwned.injected", headers, payload, event_id)])
    with (
        LogWatcher() as logs,
        NatsPublisher.connect(nats_server.url, SUBJECT, stream=STREAM, create_stream=True, spool_dir=str(spool)) as pub,
    ):
        pub.publish(envelope()).result(10.0)
        assert pub.drain_spool(10.0)
    assert read_stream(nats_server.url, "PWNED", timeout=10.0) == []
    assert bad.name in logs.text
    assert "does not fit this publisher's subject template" in logs.text
    assert list(aside(spool)) == [bad.name]


def test_a_dangling_lock_symlink_never_creates_a_file_outside_the_directory(tmp_path: Path, spool: Path) -> None:
    """An orphan whose .lock is a dangling symlink: adoption and purge create nothing at its target."""
    db = orphan(spool, 0, 2)
    target = tmp_path / "outside"
    db.with_suffix(".lock").unlink()
    db.with_suffix(".lock").symlink_to(target)
    os.utime(db, (1e9, 1e9))  # old: not a file its owner is still creating
    adopter = Spool(spool, max_bytes=BIG)
    try:
        adopter.adopt_orphans()
    finally:
        adopter.close()
    subprocess.run(
        [sys.executable, "-m", "edupulse_events", "spool", "purge", "--yes", str(spool)],
        capture_output=True,
        timeout=60,
        env=broker_env(),
        check=True,
    )
    assert not os.path.lexists(target)
    assert db.with_suffix(".lock").is_symlink()


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask_022")
def test_spool_files_are_created_0600(spool: Path) -> None:
    """Under a 022 umask a spool's .db, -wal and .lock are readable by their owner only (event bodies hold PII)."""
    store = Spool(spool, max_bytes=BIG)
    try:
        store.append(*good_rows(1)[0][:3], "e", 1.0)
        files = sorted(p for p in spool.iterdir())
        assert {p.name.rsplit(".", 1)[1] for p in files} == {"db", "db-wal", "lock"}
        assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o600" for p in files}
    finally:
        store.close()


def _other_owner(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    os.chown(path, 65534, 65534)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        (lambda p: p.chmod(0o770), "mode 0770: writable by its group"),
        (lambda p: p.chmod(0o1777), "mode 1777: writable by its group or by other users"),
        (_other_owner, "owned by uid 65534, not by this process's uid"),
    ],
    ids=["group-writable", "sticky-world-writable", "another-owner"],
)
def test_a_directory_others_own_or_may_write_is_refused(
    nats_server: NatsServer, spool: Path, how: Callable[[Path], None], message: str
) -> None:
    """A spool_dir not ours, or writable by group/others (sticky /tmp-style too): ConfigError why, nothing written."""
    how(spool)
    with pytest.raises(ConfigError, match=message):
        Spool(spool, max_bytes=BIG)
    with pytest.raises(ConfigError, match=str(spool)):
        NatsPublisher.connect(nats_server.url, SUBJECT, spool_dir=str(spool))
    assert list(spool.iterdir()) == []


def test_inspect_and_purge_end_on_fifos_in_the_directory(spool: Path) -> None:
    """spool inspect / purge --yes with FIFOs as a .db, a .lock and a -wal: each ends at once, FIFOs left alone."""
    os.mkfifo(spool / "spool-1-deadbeef.db")
    os.utime(spool / "spool-1-deadbeef.db", (1e9, 1e9))
    locked = orphan(spool, 0, 2)
    locked.with_suffix(".lock").unlink()
    os.mkfifo(locked.with_suffix(".lock"))
    walled = orphan(spool, 10, 2)
    os.mkfifo(walled.with_name(walled.name + "-wal"))
    fifos = [p for p in spool.iterdir() if stat.S_ISFIFO(p.lstat().st_mode)]
    assert len(fifos) == 3
    for command in (["inspect"], ["inspect", "--json"], ["purge", "--yes"]):
        proc = subprocess.run(
            [sys.executable, "-m", "edupulse_events", "spool", *command, str(spool)],
            capture_output=True,
            text=True,
            timeout=30,  # TimeoutExpired: it hung
            env=broker_env(),
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        for fifo in fifos:  # named as the file that makes its .db one never to open
            assert f"{fifo.name} is not a regular file (a FIFO)" in proc.stdout, proc.stdout
    assert [p for p in fifos if not stat.S_ISFIFO(p.lstat().st_mode)] == []
    assert all(info.error for info in spool_files(spool))


SUSPECT = textwrap.dedent(
    """
    import os, sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('format', 'someone-elses-1')")
    for i in range(20):
        conn.execute("INSERT INTO meta VALUES (?, ?)", (f"k{i}", "v" * 500))
    os._exit(0)  # killed: the WAL is left, never checkpointed
    """
)


def test_the_corruption_check_never_writes_to_a_suspect_file(spool: Path) -> None:
    """A foreign file with a truncated WAL left by a killed process: moved aside byte for byte as found."""
    db = spool / "spool-1-deadbeef.db"
    subprocess.run([sys.executable, "-c", SUSPECT, str(db)], check=True, timeout=60)
    wal = db.with_name(db.name + "-wal")
    with wal.open("r+b") as f:
        f.truncate(wal.stat().st_size - 100)  # cut inside its last frame
    db.with_suffix(".lock").touch()
    found = {p.name: p.read_bytes() for p in (db, wal)}
    adopter = Spool(spool, max_bytes=BIG)
    try:
        assert adopter.adopt_orphans() == 0
    finally:
        adopter.close()
    moved = {
        p.name.split(".corrupt-")[0]: p.read_bytes()
        for p in spool.glob("spool-1-deadbeef.db*.corrupt-*")
        if p.suffix != ".why"
    }
    assert {name: moved.get(name) == data for name, data in found.items()} == dict.fromkeys(found, True)
    assert "not an edupulse spool" in aside(spool)[db.name]


def test_row_check_accepts_what_the_routers_write_and_nothing_else() -> None:
    """RowCheck: the routers' own rows pass (plain, CloudEvents, no tenant, fixed subject); each forgery fails."""
    from edupulse_events._pipeline._cloudevents import CloudEventsRouter
    from edupulse_events._pipeline._encoded import RowCheck

    plain = RowCheck(SUBJECT, cloudevents=False)
    for router, check in [
        (Router(SUBJECT), plain),
        (CloudEventsRouter(SUBJECT, "urn:x"), RowCheck(SUBJECT, cloudevents=True)),
        (Router("edupulse.events"), RowCheck("edupulse.events", cloudevents=False)),
    ]:
        for env in (envelope(), envelope(tenant=None)):
            item = router.prepare(env, None)
            assert check(item.event_id, item.subject, item.headers) is None, item.headers
    item = Router(SUBJECT).prepare(envelope(), None)
    e, s, h = item.event_id, item.subject, item.headers
    other = Router(SUBJECT).prepare(envelope(tenant="school-2"), None)
    ce = CloudEventsRouter(SUBJECT, "urn:x").prepare(envelope(), None)
    forgeries = {
        "foreign subject": (e, b"pwned.injected", h),
        "wildcard *": (e, b"edupulse.*.LessonPublished", h),
        "wildcard >": (e, b"edupulse.>", h),
        "extra token": (e, s + b".x", h),
        "forged header": (e, s, h[:-2] + FORGED + b"\r\n"),
        "ce-* without cloudevents": (ce.event_id, ce.subject, ce.headers),
        "duplicate Nats-Msg-Id": (e, s, h[:-2] + b"Nats-Msg-Id: " + e.encode() + b"\r\n\r\n"),
        "another event's id": (other.event_id, s, h),
        "subject of another tenant": (e, other.subject, h),
        "not a header block": (e, s, b"HTTP/1.1\r\n\r\n"),
        "header line without a colon": (e, s, h[:-2] + b"Edupulse-Pii\r\n\r\n"),
        "event id not a UUID": ("ev-1", s, h),
    }
    passed = [name for name, row in forgeries.items() if plain(*row) is None]
    assert passed == []
