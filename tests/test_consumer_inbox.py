"""`Inbox.prune` on SQLite and PostgreSQL: it forgets this inbox's event ids older than the age
given (by the database's clock) and nothing else; a forgotten id counts as new again."""

from __future__ import annotations

import sqlite3
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
