"""Which database a caller's connection talks to, and the DB-API connection under it.

`Outbox.add` takes the application's own connection: a DB-API connection (``sqlite3``, psycopg 3),
a SQLAlchemy ``Connection`` or ``Session``, or the DB-API connection Django holds (what
`edupulse_events.django.add_event` passes). Each is turned into its database family and the DB-API
connection that runs the transaction, so one store per family serves them all. SQLAlchemy and
Django are never imported here: their objects are recognized by their methods.

The relay opens its own connections (`relay_connector`): from a URL as SQLAlchemy writes them
(``sqlite:///path``, ``postgresql://user@host/db``, ``postgresql+psycopg://...``), parsed by
SQLAlchemy (the ``outbox`` extra) and opened with ``sqlite3`` or psycopg directly, or from a
callable that returns a DB-API connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError

__all__ = ["Connector", "dbapi_of", "family_of", "relay_connector", "sqlite_path"]

#: Opens a new DB-API connection for the relay.
Connector = Callable[[], Any]


def family_of(dbapi: Any) -> str:
    """``"sqlite"`` or ``"postgresql"`` for a DB-API connection; `ConfigError` for another kind."""
    if isinstance(dbapi, sqlite3.Connection):
        return "sqlite"
    module = type(dbapi).__module__.split(".")[0]
    if module == "psycopg":
        return "postgresql"
    raise ConfigError(
        f"the outbox takes a sqlite3 or psycopg 3 connection, a SQLAlchemy Connection or Session "
        f"(on either), got {type(dbapi).__module__}.{type(dbapi).__qualname__}"
    )


def dbapi_of(conn: Any) -> Any:
    """The DB-API connection running ``conn``'s transaction. A SQLAlchemy ``Session`` gives its
    connection (beginning the session's transaction, as its own first statement would); a SQLAlchemy
    ``Connection`` begins a transaction if none is open (its own autobegin: what it would do for
    a statement of its own), so the caller's ``commit()`` commits the outbox rows too."""
    if isinstance(conn, sqlite3.Connection):
        return conn
    kind = type(conn)
    if kind.__module__.startswith("sqlalchemy."):
        if hasattr(conn, "get_bind") and hasattr(conn, "connection"):  # orm.Session
            conn = conn.connection()
        if hasattr(conn, "in_transaction") and hasattr(conn, "begin"):  # engine.Connection
            if not conn.in_transaction():
                conn.begin()
            return conn.connection.dbapi_connection
        raise ConfigError(f"the outbox takes a SQLAlchemy Connection or Session, got {kind.__qualname__}")
    return conn


def relay_connector(db: object, *, timeout: float) -> tuple[str, Connector, str | None]:
    """The relay's database: its family, how to open a connection, and (SQLite) the file's path.

    ``db`` is a URL (``sqlite:///path`` or ``postgresql://...``; SQLAlchemy parses it) or a
    callable returning a new DB-API connection. ``timeout`` bounds connecting and (SQLite) waiting
    for a lock."""
    if callable(db):
        probe = db()
        try:
            family = family_of(probe)
            path = sqlite_path(probe) if family == "sqlite" else None
        finally:
            probe.close()
        return family, db, path
    if not isinstance(db, str):
        raise ConfigError(f"the relay takes a database URL or a callable returning a connection, got {db!r}")
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError
    except ImportError:
        raise ConfigError(
            "a database URL needs SQLAlchemy to read it (pip install 'edupulse_events[outbox]'), "
            "or pass a callable that returns a connection"
        ) from None
    try:
        url = make_url(db)
    except ArgumentError as exc:
        raise ConfigError(f"not a database URL: {' '.join(str(exc).split())}") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        path = url.database
        if not path or path == ":memory:":
            raise ConfigError("the outbox needs a SQLite database file (the relay and the application share it)")
        return "sqlite", lambda: sqlite3.connect(path, timeout=timeout, isolation_level=None), path
    if backend == "postgresql":
        # whatever driver the URL names (+psycopg, +psycopg2), the relay connects with psycopg 3
        params: dict[str, Any] = {"connect_timeout": max(1, round(timeout))}
        for key, value in (
            ("host", url.host),
            ("port", url.port),
            ("user", url.username),
            ("password", url.password),
            ("dbname", url.database),
        ):
            if value is not None:
                params[key] = value
        params.update({k: v for k, v in url.query.items() if isinstance(v, str)})

        def connect() -> Any:
            import psycopg

            return psycopg.connect(**params)

        return "postgresql", connect, None
    raise ConfigError(f"the outbox knows sqlite and postgresql databases, not {backend!r}")


def sqlite_path(conn: sqlite3.Connection) -> str:
    """The file of ``conn``'s main database; `ConfigError` for an in-memory one."""
    for _seq, name, path in conn.execute("PRAGMA database_list").fetchall():
        if name == "main":
            if path:
                return str(path)
            break
    raise ConfigError("the outbox needs a SQLite database file (the relay and the application share it)")
