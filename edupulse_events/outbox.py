"""The transactional outbox: an event is published if and only if the transaction that added it commits.

`Outbox` is the writer, a small synchronous function of the application's own connection: it
validates and encodes an envelope exactly as ``publish()`` does (`InvalidEvent` at the call
site) and inserts the row in the caller's open transaction; it never commits and sends nothing.
`OutboxRelay` delivers what committed: it claims whole transactions, publishes each as an atomic
batch (all of a transaction's events or none, in the order they were added; the rows as stored,
``publish_encoded(atomic=True)``, where the publisher offers it) with any `EventPublisher`, and
deletes the rows once acknowledged. ``Nats-Msg-Id`` is the
event id, so a relay that dies between the ack and the delete delivers nothing twice (within the
stream's duplicate window).

Databases: SQLite (the standard library's ``sqlite3``, WAL mode) and PostgreSQL (psycopg 3);
the writer takes a DB-API connection, a SQLAlchemy ``Connection`` or ``Session``, or (through
`edupulse_events.django.add_event`) Django's. What is guaranteed, and how: docs/outbox.md.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

import tenacity

from ._outbox._connections import dbapi_of, family_of, relay_connector
from ._outbox._otel import relay_telemetry, traceparent
from ._outbox._relay import Delivery, Outage
from ._outbox._schema import Row, check_table, ddl
from ._outbox._stores import DeadRow, Store, store_for
from ._pipeline._routing import Router
from .config import EnvelopeCodec, RetryPolicy, check_codec, check_subject, count_validator, seconds_validator
from .envelope import EventEnvelope
from .errors import BrokerUnavailable, ConfigError, OutboxDatabaseError, PublisherClosed
from .publisher import EventPublisher

__all__ = ["DEFAULT_TABLE", "DeadRow", "Outbox", "OutboxRelay", "OutboxStats"]

log = logging.getLogger("edupulse_events.outbox")

#: The outbox table's default name (its dead letters are in ``<table>_dead``).
DEFAULT_TABLE = "edupulse_outbox"
#: How long one pass of `OutboxRelay.run` reads new claims before it looks at its stop event,
#: purges and counts (seconds).
_PASS_TIME = 0.5


class Outbox:
    """Adds events to the outbox table in the caller's transaction.

    ``table`` names the table (default ``edupulse_outbox``); ``subject`` is the subject template
    and ``codec`` the codec the rows are encoded with, as a publisher's: give them the relay's
    publisher's, and it sends the rows as they are stored (rows for another template are decoded
    and routed again by the publisher, which costs what encoding them cost here).
    """

    def __init__(
        self,
        table: str = DEFAULT_TABLE,
        *,
        subject: str = "edupulse.{tenant}.{type}",
        codec: EnvelopeCodec | None = None,
    ) -> None:
        self.table = check_table(table)
        check_subject(None, None, subject)
        check_codec(None, None, codec)
        self._router = Router(subject, codec)
        self._stores: dict[str, Store] = {}

    def ddl(self, family: str) -> list[str]:
        """The statements that create the outbox's tables (``"sqlite"`` or ``"postgresql"``), each
        idempotent: for a migration tool (Alembic's ``op.execute``, Django's ``RunSQL``)."""
        return ddl(family, self.table)

    def _store(self, dbapi: Any) -> Store:
        family = family_of(dbapi)
        store = self._stores.get(family)
        if store is None:
            store = self._stores[family] = store_for(family, self.table)
        return store

    def create_table(self, conn: Any) -> None:
        """Create the outbox's tables if they do not exist, in ``conn``'s transaction (commit it).
        On SQLite, outside a transaction, this also switches the file to WAL mode, which the outbox needs."""
        dbapi = dbapi_of(conn)
        self._store(dbapi).create(dbapi)

    def add(self, conn: Any, envelope: EventEnvelope) -> None:
        """Validate and encode ``envelope`` (`InvalidEvent` now) and insert it in ``conn``'s open
        transaction. Never commits: the event is sent if and only if the caller's transaction commits."""
        item = self._router.prepare(envelope, None)
        row = Row(item.event_id, item.subject.decode(), item.headers, item.payload, time.time(), traceparent())
        dbapi = dbapi_of(conn)
        self._store(dbapi).insert(dbapi, [row])

    def add_many(self, conn: Any, envelopes: Iterable[EventEnvelope]) -> None:
        """`add` for several envelopes, in order: all validated and encoded first (the first bad one
        raises `InvalidEvent` naming its index, and nothing is inserted)."""
        items = self._router.prepare_many(envelopes, None)
        if not items:
            return
        now, parent = time.time(), traceparent()
        rows = [Row(item.event_id, item.subject.decode(), item.headers, item.payload, now, parent) for item in items]
        dbapi = dbapi_of(conn)
        self._store(dbapi).insert(dbapi, rows)

    def __repr__(self) -> str:
        return f"<Outbox table={self.table!r}>"


def _wait(stop: threading.Event, seconds: float) -> None:
    """tenacity's sleep for `OutboxRelay.run`: cut short by ``stop``."""
    stop.wait(seconds)


class OutboxStats(NamedTuple):
    """The outbox as a relay sees it: rows ``pending``, how long the oldest has waited
    (``oldest_age`` seconds, None when none waits), rows in the dead-letter table (``dead``), and
    what this relay has ``delivered`` and ``dead_lettered`` since it was built."""

    pending: int
    oldest_age: float | None
    dead: int
    delivered: int
    dead_lettered: int


class OutboxRelay:
    """Delivers committed outbox rows with ``publisher`` (a `NatsPublisher`, an `InMemoryPublisher`).

    ``db``: a database URL as SQLAlchemy writes them (``sqlite:///path/app.db``,
    ``postgresql://user@host/db``; reading one needs the ``outbox`` extra) or a callable returning a
    new DB-API connection (``sqlite3``, psycopg 3). `run_once` delivers everything committed and
    returns; `run` (or `start`, in a thread) keeps delivering until stopped.

    Settings (float seconds; `ConfigError` at construction): ``table``; ``codec`` decodes the stored
    bodies the publisher does not send as they are (default: the publisher's ``config.codec``, else
    the default codec); ``max_batch``
    events per atomic batch (default and most: the publisher's ``config.max_batch`` and
    ``max_queue``, else 1,000); ``claim``
    rows read per pass; ``poll_interval`` between looks when idle (PostgreSQL relays are woken at
    once by ``LISTEN/NOTIFY``); ``keep_delivered`` seconds to keep delivered rows (0: delete at
    once); ``wait_timeout`` for the publisher to take and acknowledge a batch, and for the database
    to settle a claim; ``db_timeout`` for
    connecting and for SQLite's locks; ``retry``: the backoff after a broker or database failure;
    ``tracer_provider``/``meter_provider`` as `PublisherConfig`'s.
    """

    def __init__(
        self,
        db: Any,
        publisher: EventPublisher,
        *,
        table: str = DEFAULT_TABLE,
        codec: EnvelopeCodec | None = None,
        max_batch: int | None = None,
        claim: int = 1000,
        poll_interval: float = 0.5,
        keep_delivered: float = 0.0,
        wait_timeout: float = 60.0,
        db_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        if not isinstance(publisher, EventPublisher):
            raise ConfigError(f"the relay takes an EventPublisher, got {type(publisher).__name__}")
        config = getattr(publisher, "config", None)
        if codec is None:
            codec = getattr(config, "codec", None)
        check_codec(None, None, codec)
        limit = min(getattr(config, "max_batch", 1000), getattr(config, "max_queue", 1000))
        if max_batch is None:
            max_batch = limit
        count_validator("max_batch")(None, None, max_batch)
        if max_batch > limit:
            raise ConfigError(
                f"max_batch ({max_batch}) is more than the publisher takes in one atomic batch ({limit}: its "
                "config.max_batch and max_queue)"
            )
        count_validator("claim")(None, None, claim)
        for name, value in (
            ("poll_interval", poll_interval),
            ("wait_timeout", wait_timeout),
            ("db_timeout", db_timeout),
        ):
            seconds_validator(name)(None, None, value)
        if isinstance(keep_delivered, bool) or not isinstance(keep_delivered, (int, float)):
            raise ConfigError(f"keep_delivered must be a number of seconds, got {keep_delivered!r}")
        if not (0 <= keep_delivered < math.inf):
            raise ConfigError(f"keep_delivered must be a finite number >= 0, got {keep_delivered!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        self.table = check_table(table)
        self._family, self._connect, self._path = relay_connector(db, timeout=db_timeout)
        self._poll_interval = poll_interval
        self._keep = float(keep_delivered)
        self._retry = retry if retry is not None else RetryPolicy(initial=0.2, maximum=30.0)
        self._store = store_for(self._family, self.table, self._connect, self._path)
        self._delivery = Delivery(
            self._store,
            publisher,
            codec,
            max_batch=max_batch,
            claim=claim,
            wait_timeout=wait_timeout,
            keep=self._keep > 0,
            telemetry=None,
        )
        self._telemetry = relay_telemetry(
            self.table,
            self._family,
            lambda: (self._delivery.delivered, self._delivery.dead),
            tracer_provider,
            meter_provider,
        )
        self._delivery.telemetry = self._telemetry
        self._purged = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one pass at a time (run_once from another thread, run)

    @property
    def family(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._family

    @property
    def atomic(self) -> bool:
        """Whether transactions go as atomic batches (False once the stream refused them)."""
        return self._delivery.atomic

    # ------------------------------------------------------------------ delivering
    def run_once(self, timeout: float | None = None) -> int:
        """Deliver every committed row (passes until a pass finds fewer rows than ``claim``, or
        ``timeout`` s have passed); returns how many were delivered. Rows the broker refused for
        good go to the dead letters (not counted). Raises `BrokerUnavailable` when the broker could
        not take a batch (what was acknowledged before is settled; the rest waits) and
        `OutboxDatabaseError` when the database failed. A SQLite relay that another holds the lock
        of delivers nothing (0)."""
        end = None if timeout is None else time.monotonic() + timeout
        total = 0
        with self._lock:
            try:
                if not self._store.exclusive():
                    log.info("outbox relay: another relay holds %s's lock; nothing delivered by this one", self.table)
                    return 0
                while True:
                    try:
                        done = self._delivery.run_pass(end)
                    except Outage as outage:
                        raise BrokerUnavailable(
                            f"outbox relay: the broker did not take a batch ({type(outage.error).__name__}: "
                            f"{outage.error}); {total} delivered by this run, the rest waits"
                        ) from outage.error
                    total += done.delivered
                    if not done.more or (end is not None and time.monotonic() >= end):
                        break
                self._purge(force=True)
                self._count()
            except OutboxDatabaseError:
                self._store.close()  # a new connection next time
                raise
        return total

    def _step(self) -> bool:
        """One pass for `run`; True if there may be more to claim at once."""
        with self._lock:
            try:
                if not self._store.exclusive():
                    return False
                done = self._delivery.run_pass(time.monotonic() + _PASS_TIME)
                self._purge(force=False)
                self._count()
            except OutboxDatabaseError:
                self._store.close()
                raise
        return done.more

    def run(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set: a pass, then (when it found less than a full claim) a
        wait for a commit (PostgreSQL ``NOTIFY``) or ``poll_interval``. A broker or database failure
        is retried with ``retry``'s exponential backoff (logged; the rows wait), never in a busy loop."""
        policy = self._retry
        failures = [0]

        def before_sleep(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            error = getattr(error, "error", error)
            failures[0] += 1
            what = "database" if isinstance(error, OutboxDatabaseError) else "broker"
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            log.warning(
                "outbox relay: %s unavailable (%s: %s); the rows wait, retrying in %.2f s (attempt %d)",
                what,
                type(error).__name__,
                " ".join(str(error).split()),
                wait,
                state.attempt_number,
            )

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type((OutboxDatabaseError, Outage)),
            wait=tenacity.wait_exponential(multiplier=policy.initial, max=policy.maximum, exp_base=policy.multiplier)
            + tenacity.wait_random(0, policy.jitter),
            stop=lambda _state: stop.is_set(),
            sleep=lambda seconds: _wait(stop, seconds),
            before_sleep=before_sleep,
            reraise=True,
        )
        self._store.prepare()
        while not stop.is_set():
            try:
                more = retrying(self._step)
            except (OutboxDatabaseError, Outage):
                break  # stopped while retrying
            if failures[0]:
                log.info("outbox relay: delivering again after %d failed attempts", failures[0])
                failures[0] = 0
            if not more:
                self._store.wait(stop, self._poll_interval)

    def start(self) -> OutboxRelay:
        """Run `run` in a daemon thread (``edupulse-outbox-relay``) until `close`."""
        with self._lock:
            if self._thread is not None:
                return self
            if self._stop.is_set():
                raise PublisherClosed("start() on a closed OutboxRelay")
            self._thread = threading.Thread(
                target=self.run, args=(self._stop,), name="edupulse-outbox-relay", daemon=True
            )
            self._thread.start()
        return self

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the thread of `start` (waiting up to ``timeout`` s for its pass to end) and close the
        relay's connections. Idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.error("outbox relay thread did not stop within %s s", timeout)
                return
        with self._lock:
            self._store.close()

    def _count(self) -> None:
        """Count the table for the pending and oldest-age gauges (only while a metrics SDK is configured)."""
        if self._telemetry is not None and self._telemetry.metering:
            self._telemetry.counts = self._store.counts()

    def _purge(self, force: bool) -> None:
        if self._keep <= 0:
            return
        now = time.monotonic()
        if force or now - self._purged >= min(60.0, self._keep):
            self._purged = now
            self._store.purge(time.time() - self._keep)

    # ------------------------------------------------------------------ looking at it
    def _side_store(self) -> Store:
        return store_for(self._family, self.table, self._connect, self._path)

    def stats(self) -> OutboxStats:
        """What the table holds now (its own connection: callable from any thread) and this relay's counters."""
        store = self._side_store()
        try:
            counts = store.counts()
        finally:
            store.close()
        if self._telemetry is not None:
            self._telemetry.counts = counts
        age = None if counts.oldest is None else max(0.0, time.time() - counts.oldest)
        return OutboxStats(counts.pending, age, counts.dead, self._delivery.delivered, self._delivery.dead)

    def dead(self, limit: int = 100) -> list[DeadRow]:
        """The first ``limit`` dead-lettered rows, oldest first, with why each failed."""
        store = self._side_store()
        try:
            return store.dead(limit)
        finally:
            store.close()

    def retry_dead(self, ids: Iterable[int] | None = None) -> int:
        """Move dead-lettered rows (``ids`` from `dead`, or all) back into the outbox, each with its
        transaction, to be delivered again (after what is pending); returns how many."""
        store = self._side_store()
        try:
            return store.retry_dead(None if ids is None else list(ids))
        finally:
            store.close()

    def __enter__(self) -> OutboxRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<OutboxRelay {self._family} table={self.table!r} delivered={self._delivery.delivered}>"
