"""`Inbox.prune` on SQLite and PostgreSQL: it forgets this inbox's event ids older than the age
given (by the database's clock) and nothing else; a forgotten id counts as new again. The Django
helpers (`edupulse_events.django`): an event handled once in a ``transaction.atomic()`` block."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edupulse_events import Inbox


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """(family, an open connection) with the inbox table created; closed after the test."""
    connection: Any
    if request.param == "sqlite":
        connection = sqlite3.connect(tmp_path / "app.db")
    else:
        import psycopg

        connection = psycopg.connect(request.getfixturevalue("postgres_url"), autocommit=True)
    Inbox("badges").create_table(connection)
    yield request.param, connection
    connection.close()


def _age(family: str, connection: Any, event_ids: list[str], hours: int) -> None:
    """Make the rows of ``event_ids`` look recorded ``hours`` ago."""
    marks = ", ".join(["?" if family == "sqlite" else "%s"] * len(event_ids))
    then = (
        f"datetime('now', '-{hours} hours')" if family == "sqlite" else f"CURRENT_TIMESTAMP - INTERVAL '{hours} hours'"
    )
    if family == "sqlite":
        with connection:
            connection.execute(f"UPDATE edupulse_inbox SET handled_at = {then} WHERE event_id IN ({marks})", event_ids)
    else:
        connection.execute(f"UPDATE edupulse_inbox SET handled_at = {then} WHERE event_id IN ({marks})", event_ids)


def test_prune_forgets_only_this_inboxs_old_ids(database: tuple[str, Any]) -> None:
    """Ids recorded 2 h ago go with older_than=1 h; recent ones and another inbox's old ones stay; a
    forgotten id is applied again."""
    family, connection = database
    badges, reports = Inbox("badges"), Inbox("reports")
    for event_id in ("a1", "a2", "a3", "a4"):
        assert badges.handle(connection, event_id, lambda: None)
    assert reports.handle(connection, "a1", lambda: None)
    _age(family, connection, ["a1", "a2"], hours=2)  # reports' a1 too: another inbox, kept
    assert badges.prune(connection, older_than=3600.0) == 2
    assert [badges.seen(connection, i) for i in ("a1", "a2", "a3", "a4")] == [False, False, True, True]
    assert reports.seen(connection, "a1")
    applied: list[str] = []
    assert badges.handle(connection, "a1", lambda: applied.append("a1"))  # forgotten: new again
    assert not badges.handle(connection, "a3", lambda: applied.append("a3"))
    assert applied == ["a1"]
    assert badges.prune(connection, older_than=3600.0) == 0
    assert badges.prune(connection, older_than=1800) == 0  # seconds as an int too


def test_prune_on_postgresql_ignores_the_sessions_time_zone(postgres_url: str) -> None:
    """Rows recorded by a session at UTC-10 are not old to a session at UTC+14 (times with time zone)."""
    import psycopg

    with (
        psycopg.connect(postgres_url, autocommit=True) as west,
        psycopg.connect(postgres_url, autocommit=True) as east,
    ):
        west.execute("SET TIME ZONE 'Pacific/Honolulu'")
        east.execute("SET TIME ZONE 'Pacific/Kiritimati'")
        inbox = Inbox("badges")
        inbox.create_table(west)
        assert inbox.handle(west, "w1", lambda: None)
        assert inbox.prune(east, older_than=3600.0) == 0
        assert inbox.seen(east, "w1")


@pytest.mark.parametrize("older_than", [0, -1.0, float("nan"), float("inf"), True, "3600"])
def test_prune_refuses_a_bad_age(older_than: object) -> None:
    """older_than must be a finite number of seconds > 0: ValueError naming it, nothing deleted."""
    connection = sqlite3.connect(":memory:")
    inbox = Inbox("badges")
    inbox.create_table(connection)
    inbox.handle(connection, "a1", lambda: None)
    with pytest.raises(ValueError, match="older_than"):
        inbox.prune(connection, older_than=older_than)  # type: ignore[arg-type]
    assert inbox.seen(connection, "a1")
    connection.close()


DJANGO_SCRIPT = textwrap.dedent(
    """
    import json, sys, types, uuid
    import django
    from django.conf import settings

    settings.configure(DATABASES={"default": json.loads(sys.argv[1])}, INSTALLED_APPS=[], USE_TZ=True)
    django.setup()
    from django.db import connection, transaction
    from edupulse_events import ConfigError, Inbox
    from edupulse_events.django import claim_event, create_inbox_table, handle_event_once

    create_inbox_table(None, types.SimpleNamespace(connection=connection))
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE badges (event_id TEXT)")
    inbox = Inbox("badges")
    first, second, third = (str(uuid.uuid4()) for _ in range(3))


    def grant(event_id, fail=False):
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO badges VALUES (%s)", [event_id])
        if fail:
            raise RuntimeError("the handler failed after its insert")


    out = [handle_event_once(inbox, first, lambda: grant(first)), handle_event_once(inbox, first, lambda: grant(first))]
    try:
        handle_event_once(inbox, second, lambda: grant(second, fail=True))
    except RuntimeError:
        out.append(inbox.seen(connection.connection, second))
    out.append(handle_event_once(inbox, second, lambda: grant(second)))
    try:
        claim_event(inbox, third)
    except ConfigError as exc:
        out.append("atomic" in str(exc))
    with transaction.atomic():
        out.append(claim_event(inbox, third))
        transaction.set_rollback(True)
    out.append(inbox.seen(connection.connection, third))
    with connection.cursor() as cursor:
        cursor.execute("SELECT event_id FROM badges ORDER BY event_id")
        out.append(sorted(row[0] for row in cursor.fetchall()) == sorted([first, second]))
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("family", ["sqlite", "postgresql"])
def test_django_handles_each_event_once(family: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """edupulse_events.django: handle_event_once applies an event once and rolls back its record with a failing
    effect; claim_event needs an atomic block and its record goes with the block's rollback."""
    pytest.importorskip("django")
    if family == "sqlite":
        database: dict[str, object] = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "app.db")}
    else:
        url = urllib.parse.urlsplit(request.getfixturevalue("postgres_url"))
        database = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": url.path.lstrip("/"),
            "USER": url.username,
            "HOST": url.hostname,
            "PORT": url.port,
        }
    proc = subprocess.run(
        [sys.executable, "-c", DJANGO_SCRIPT, json.dumps(database)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # first: applied, then skipped; second: a failed effect leaves no record, then applied;
    # third: refused outside atomic(), claimed inside one, gone with its rollback; the effects once each
    assert json.loads(proc.stdout) == [True, False, False, True, True, True, False, True]
