"""`edupulse-events spool inspect|replay|purge DIR` run as a subprocess, on spool files left by real
child processes that died with events on disk, against real nats-server processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import broker_env, read_stream, run_cli

from edupulse_events.testing import NatsServer

ROOT = Path(__file__).resolve().parents[1]
STREAM = "CLI_SPOOL"
SUBJECT = "edupulse.{tenant}.{type}"

#: A publisher that dies (os._exit) with events on disk: connected to a broker the test then
#: stops (with a stream), or never connected at all (no stream, start_without_broker).
DYING = textwrap.dedent(
    """
    import os, sys
    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
    from helpers import envelope
    from edupulse_events import NatsPublisher
    url, spool, stream = sys.argv[2:5]
    pub = NatsPublisher.connect(
        url, "edupulse.{tenant}.{type}", stream=stream or None, create_stream=bool(stream),
        spool_dir=spool, start_without_broker=not stream,
    )
    print("ready", flush=True)
    n = int(sys.stdin.readline())  # how many events: sent once the test took the broker away
    for i in range(n):
        env = envelope(i)
        pub.publish(env)  # write-ahead: on disk once this returns
        print(env.event_id, flush=True)
    os._exit(0)  # dies without close(): the spool file stays, orphaned, with every event
    """
)

#: A process that owns a spool file (one row in it) until the test ends it.
LIVE = textwrap.dedent(
    """
    import sys, time
    from edupulse_events._spool._store import Spool
    spool = Spool(sys.argv[1], max_bytes=1 << 20)
    spool.append(b"edupulse.school-1.LessonPublished", b"", b"{}", "live-event", time.time())
    print(spool.path, flush=True)
    sys.stdin.read()
    """
)


def end(proc: subprocess.Popen[str]) -> None:
    """SIGKILL ``proc`` by its pid if it still runs, and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10.0)


def cli(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("spool", *args, stdin=stdin, env=env)


def orphans(
    spool: Path, counts: list[int], url: str, *, stream: str = "", broker_away: Callable[[], None] = lambda: None
) -> list[tuple[Path, list[str]]]:
    """One dying publisher per count, all alive at once (none adopts another's file): once each is
    ready ``broker_away()`` runs, then each publishes its count of events and dies. Returns each
    orphaned spool file with the ids of the events in it."""
    children: list[subprocess.Popen[str]] = []
    try:
        for _ in counts:
            child = subprocess.Popen(
                [sys.executable, "-c", DYING, str(ROOT), url, str(spool), stream],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            children.append(child)
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n"
        broker_away()
        results = []
        for child, n in zip(children, counts, strict=True):
            assert child.stdin is not None
            child.stdin.write(f"{n}\n")
            child.stdin.flush()
        for child, n in zip(children, counts, strict=True):
            assert child.stdout is not None
            ids = [child.stdout.readline().strip() for _ in range(n)]
            assert child.wait(30.0) == 0
            [db] = spool.glob(f"spool-{child.pid}-*.db")
            results.append((db, ids))
        return results
    finally:
        for child in children:
            end(child)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture
def live_owner(spool: Path) -> Iterator[Path]:
    """A spool file in ``spool`` whose owner process is alive (ended at teardown)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LIVE, str(spool)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        yield Path(proc.stdout.readline().strip())
    finally:
        end(proc)


@pytest.fixture
def nowhere(make_server: Callable[..., NatsServer]) -> str:
    """The URL of a nats-server that is not running (its port is reserved, nothing listens)."""
    return make_server(start=False).url


def test_inspect_lists_an_orphan_with_its_count_and_a_live_owners_file_as_in_use(
    spool: Path, live_owner: Path, nowhere: str
) -> None:
    """inspect: a dead publisher's file with its events and ages, a live one's as in use, a corrupt one's error."""
    [(db, ids)] = orphans(spool, [7], nowhere)
    (spool / "spool-999999-0badf00d.db").write_bytes(b"not a database " * 100)
    proc = cli("inspect", str(spool))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["FILE", "OWNER", "EVENTS", "PARKED", "BYTES", "OLDEST", "NEWEST"]
    [orphan] = [line for line in lines if line.startswith(db.name)]
    assert re.fullmatch(rf"{db.name}\s+gone\s+7\s+0\s+[\d,]+\s+\d+s\s+\d+s", orphan), orphan
    [live] = [line for line in lines if line.startswith(live_owner.name)]
    pid = live_owner.name.split("-")[1]
    assert re.fullmatch(rf"{live_owner.name}\s+{pid}\s+in use by its live owner .*", live), live
    [corrupt] = [line for line in lines if line.startswith("spool-999999-0badf00d.db")]
    assert "unreadable: " in corrupt
    assert "gone" in corrupt
    assert lines[-1].startswith("total: 7 events, ")
    assert lines[-1].endswith("1 in use; 1 unreadable")
    assert len(lines) == 5
    assert len(ids) == 7


def test_inspect_json_lists_the_same_files(spool: Path, live_owner: Path, nowhere: str) -> None:
    """inspect --json: one object per file, counts for the orphan, nulls and in_use for the live owner's."""
    [(db, _)] = orphans(spool, [4], nowhere)
    proc = cli("inspect", str(spool), "--json")
    assert proc.returncode == 0, proc.stderr
    by_name = {entry["file"]: entry for entry in json.loads(proc.stdout)}
    assert set(by_name) == {db.name, live_owner.name}
    orphan, live = by_name[db.name], by_name[live_owner.name]
    assert (orphan["owner_alive"], orphan["in_use"], orphan["events"], orphan["parked"]) == (False, False, 4, 0)
    assert orphan["bytes"] > 0
    assert orphan["oldest"] <= orphan["newest"]
    assert orphan["error"] is None
    assert 0 <= orphan["oldest_age_seconds"] < 600
    assert orphan["owner_pid"] == int(db.name.split("-")[1])
    assert (live["owner_alive"], live["in_use"], live["events"], live["bytes"]) == (True, True, None, None)


def test_replay_delivers_every_orphaned_event_once(nats_server: NatsServer, spool: Path) -> None:
    """replay: two publishers died with events spooled while the broker was down; each event reaches the stream once."""
    dead = orphans(spool, [40, 30], nats_server.url, stream=STREAM, broker_away=nats_server.stop)
    nats_server.start()
    returned = [event_id for _, ids in dead for event_id in ids]
    proc = cli(
        "replay", str(spool), "--url", nats_server.url, "--subject", SUBJECT, "--stream", STREAM, "--timeout", "60"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "replayed: 70 events delivered" in proc.stdout.splitlines()
    assert "remaining: 0 events in 0 files" in proc.stdout.splitlines()
    stored = Counter(m.headers["Nats-Msg-Id"] for m in read_stream(nats_server.url, STREAM, timeout=30.0))
    assert stored == Counter(returned)
    assert set(stored.values()) == {1}
    assert len(returned) == 70
    assert sorted(p.name for p in spool.iterdir()) == []


def test_replay_from_the_environment_leaves_a_live_owners_file_alone(
    nats_server: NatsServer, spool: Path, live_owner: Path
) -> None:
    """replay with EDUPULSE_EVENT_BROKER_* settings: the orphan is delivered, the live owner's file is untouched."""
    [(db, ids)] = orphans(spool, [12], nats_server.url, stream=STREAM, broker_away=nats_server.stop)
    nats_server.start()
    env = broker_env(URL=nats_server.url, SUBJECT=SUBJECT, STREAM=STREAM)
    proc = cli("replay", str(spool), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"to {nats_server.url}" in proc.stdout
    assert "replayed: 12 events delivered" in proc.stdout
    assert "1 in use by a live owner" in proc.stdout
    stored = Counter(m.headers["Nats-Msg-Id"] for m in read_stream(nats_server.url, STREAM, timeout=30.0))
    assert stored == Counter(ids)
    assert not db.exists()
    assert live_owner.exists()


def test_replay_with_an_unreachable_broker_fails_in_one_line(spool: Path, nowhere: str) -> None:
    """replay to a broker nobody listens on: exit 1, one line on stderr without the token, the orphan kept as it was."""
    [(db, _)] = orphans(spool, [5], nowhere)
    secret_url = nowhere.replace("nats://", "nats://s3cr3t-token@")
    proc = cli("replay", str(spool), "--url", secret_url, "--subject", SUBJECT, "--timeout", "1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "could not connect" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "s3cr3t" not in proc.stderr + proc.stdout
    assert "remaining: 5 events in 1 file" in proc.stdout
    assert db.exists()


def test_purge_answering_no_deletes_nothing(spool: Path, live_owner: Path, nowhere: str) -> None:
    """purge without --yes shows the orphan, asks, and on "n" deletes nothing."""
    [(db, _)] = orphans(spool, [6], nowhere)
    proc = cli("purge", str(spool), stdin="n\n")
    assert proc.returncode == 0, proc.stderr
    assert f"  {db.name}: 6 events" in proc.stdout.splitlines()
    assert "Delete 6 events in 1 file? [y/N] " in proc.stdout
    assert proc.stdout.splitlines()[-1].endswith("nothing deleted")
    assert db.exists()
    assert live_owner.exists()


def test_purge_answering_yes_deletes_the_orphan(spool: Path, nowhere: str) -> None:
    """purge without --yes deletes the orphaned file once the answer is "y"."""
    [(db, _)] = orphans(spool, [3], nowhere)
    proc = cli("purge", str(spool), stdin="y\n")
    assert proc.returncode == 0, proc.stderr
    assert f"deleted 3 events in 1 file: {db.name}" in proc.stdout
    assert list(spool.iterdir()) == []


def test_purge_yes_deletes_orphans_but_never_a_live_owners_file(spool: Path, live_owner: Path, nowhere: str) -> None:
    """purge --yes deletes every orphaned file without asking, and keeps the live owner's."""
    dead = orphans(spool, [5, 2], nowhere)
    proc = cli("purge", str(spool), "--yes")
    assert proc.returncode == 0, proc.stderr
    assert "[y/N]" not in proc.stdout
    assert "1 in use by a live owner: kept" in proc.stdout
    assert "deleted 7 events in 2 files: " in proc.stdout
    assert not any(db.exists() for db, _ in dead)
    assert live_owner.exists()
    again = cli("purge", str(spool), "--yes")
    assert again.returncode == 0
    assert "nothing deleted" in again.stdout


@pytest.mark.parametrize("command", [["inspect"], ["inspect", "--json"], ["replay"], ["purge", "--yes"]])
def test_a_dir_that_is_not_a_directory_exits_2(tmp_path: Path, command: list[str]) -> None:
    """Every spool command on a missing path or a plain file: exit 2, one line on stderr, no traceback."""
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "missing", tmp_path / "file"):
        proc = cli(command[0], str(path), *command[1:])
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.splitlines() == [f"edupulse-events spool {command[0]}: {str(path)!r} is not a directory"]
        assert proc.stdout == ""


@pytest.mark.parametrize("command", [[], ["inspect"], ["replay"], ["purge"]])
def test_help_on_each_command(command: list[str]) -> None:
    """--help on the group and on each command exits 0 with its usage."""
    proc = cli(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ")
    assert " ".join(["spool", *command]) in proc.stdout.splitlines()[0]
