"""The example WSGI app (``examples/wsgi_app.py``) under real pre-fork servers.

gunicorn and uWSGI run as subprocesses on 127.0.0.1 (each in its own process group, stopped by
its own pid), concurrent HTTP clients publish through them, and the stream is read back: every
2xx answer's event is stored exactly once, through worker recycling, reloads and graceful stops,
for views that wait for the ack (201) and fire-and-forget ones (202).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import read_stream
from servers_support import (
    DELIVERY_LAG,
    GUNICORN_WORKERS,
    HAVE_GUNICORN,
    REQUESTS,
    STOP_TIMEOUT,
    STREAM,
    UWSGI,
    UWSGI_ACCEPTING,
    UWSGI_APPS,
    UWSGI_RECYCLED,
    UWSGI_RESPAWNED,
    Load,
    Serve,
    WsgiServer,
    drive,
    gunicorn_argv,
    server_env,
    stored_count,
    uwsgi_argv,
    wait_stored,
)

from edupulse_events.testing import NatsServer, free_port

pytestmark = [
    pytest.mark.servers,
    pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="pre-fork servers need POSIX"),
]

needs_gunicorn = pytest.mark.skipif(
    not HAVE_GUNICORN, reason="gunicorn is not installed (pip install -e '.[test]' installs it)"
)
needs_uwsgi = pytest.mark.skipif(
    UWSGI is None, reason="uwsgi is not installed (pip install -e '.[test]' builds it; it needs a C compiler)"
)


def check_stream(nats: NatsServer, load: Load, *, every_request_ok: bool) -> None:
    """Every 2xx answer's event is stored exactly once (a 201's at the sequence it reported);
    with ``every_request_ok`` every request got a 2xx and nothing else is stored."""
    stored = read_stream(nats.url, STREAM, timeout=30.0)
    counts = Counter(m.headers.get("Nats-Msg-Id", "") for m in stored)
    doubled = [event_id for event_id, n in counts.items() if n > 1]
    assert not doubled, f"stored more than once: {doubled[:10]}"
    sequence_of = {m.headers.get("Nats-Msg-Id", ""): m.sequence for m in stored}
    answered = {r.event_id or "": r for r in load.ok}
    assert "" not in answered, "a 2xx answer without X-Event-Id"
    missing = [event_id for event_id in answered if event_id not in sequence_of]
    assert not missing, f"{len(missing)} of {len(answered)} 2xx answers have no stored event: {missing[:10]}"
    wrong = [r for i, r in answered.items() if r.sequence is not None and sequence_of[i] != r.sequence]
    assert not wrong, f"201 answers naming another sequence than the stored one: {wrong[:5]}"
    if every_request_ok:
        failed = [r for r in load.replies if not r.ok]
        assert not failed, f"{len(failed)} requests failed, e.g. {failed[:3]}"
        assert len(stored) == len(answered) == len(load.replies)


@pytest.fixture
def serve(nats_server: NatsServer, tmp_path: Path) -> Iterator[Serve]:
    """Factory: ``serve("gunicorn" | "uwsgi", *options)`` starts the example app under that server
    (ready: every worker spawned, ``/health`` answers); every server is stopped at teardown."""
    servers: list[WsgiServer] = []

    def start(kind: str, *options: str) -> WsgiServer:
        port = free_port()
        if kind == "gunicorn":
            argv, ready = gunicorn_argv(port, *options), [GUNICORN_WORKERS]
            fifo = None
        else:
            fifo = tmp_path / f"uwsgi-{len(servers)}.fifo"
            argv, ready = uwsgi_argv(port, "--master-fifo", str(fifo), *options), [UWSGI_ACCEPTING]
            if "--lazy-apps" in options:
                ready.append(UWSGI_APPS)
        log = tmp_path / f"{kind}-{len(servers)}.log"
        server = WsgiServer(argv, server_env(nats_server), port, log, ready, fifo)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


def assert_publishers_closed(server: WsgiServer, load: Load) -> None:
    """Each worker that served a request closed its publisher at exit, every event acknowledged."""
    log = server.log_text()
    closed = re.findall(
        r"\[(\d+)\] edupulse_events \w+ publisher closed: \d+ events acknowledged, 0 failed, none left", log
    )
    assert load.pids <= {int(pid) for pid in closed}, log


def stop_cleanly(server: WsgiServer, load: Load) -> None:
    """A graceful stop: the master exits 0, each worker's exit hook closed its publisher with every
    event acknowledged, and the library logged no error."""
    server.begin_graceful_stop()
    code = server.wait_exit(STOP_TIMEOUT)
    log = server.log_text()
    assert code == 0, f"exit code {code}:\n{log}"
    problems = [line for line in log.splitlines() if re.search(r"edupulse_events (ERROR|CRITICAL)|Traceback", line)]
    assert not problems, "\n".join(problems) + "\n" + log
    assert_publishers_closed(server, load)


def run_steady(server: WsgiServer, nats: NatsServer, wait: bool, n: int = REQUESTS) -> Load:
    """``n`` requests; all answered 2xx, and (fire-and-forget too) stored while the server runs."""
    load = drive(server.port, n, wait=wait)
    assert len(load.ok) == n, f"{n - len(load.ok)} failed, e.g. {[r for r in load.replies if not r.ok][:3]}"
    lag = wait_stored(nats, n)
    assert lag is not None, (
        f"{n - stored_count(nats)} of {n} events not in the stream {DELIVERY_LAG} s after their 2xx "
        f"(the server still running):\n{server.log_text()}"
    )
    return load


WAITS = [pytest.param(True, id="201-wait"), pytest.param(False, id="202-fire-and-forget")]


# --------------------------------------------------------------------------- gunicorn


GUNICORN_STEADY = [
    pytest.param((), id="no-preload"),
    pytest.param(("--preload",), id="preload"),
    pytest.param(("--max-requests", "50", "--max-requests-jitter", "10"), id="max-requests-50"),
]


@needs_gunicorn
@pytest.mark.parametrize("wait", WAITS)
@pytest.mark.parametrize("options", GUNICORN_STEADY)
def test_gunicorn_stores_every_answered_event_once(
    serve: Serve, nats_server: NatsServer, options: tuple[str, ...], wait: bool
) -> None:
    """gunicorn, 4 sync workers (preloaded or not, recycled every ~50 requests): every 2xx event is stored once."""
    server = serve("gunicorn", *options)
    load = run_steady(server, nats_server, wait)
    if "--max-requests" in options:
        assert len(load.pids) > 4 + REQUESTS // 100, f"workers were not recycled: {len(load.pids)} pids"
    stop_cleanly(server, load)
    check_stream(nats_server, load, every_request_ok=True)


@needs_gunicorn
@pytest.mark.parametrize("wait", WAITS)
def test_gunicorn_sighup_reload_during_load_loses_nothing(serve: Serve, nats_server: NatsServer, wait: bool) -> None:
    """SIGHUP (new workers, old ones stopped gracefully) in the middle of the load: every 2xx event is stored once."""
    server = serve("gunicorn")
    before = server.log_count(GUNICORN_WORKERS[0])
    load = drive(server.port, REQUESTS, wait=wait, at=(REQUESTS // 3, lambda: server.signal(signal.SIGHUP)))
    server.wait_log(lambda: server.log_count(GUNICORN_WORKERS[0]) >= before + 4, "4 new workers after SIGHUP")
    assert len(load.ok) == REQUESTS, [r for r in load.replies if not r.ok][:3]
    stop_cleanly(server, load)
    check_stream(nats_server, load, every_request_ok=True)


@needs_gunicorn
@pytest.mark.parametrize("wait", WAITS)
def test_gunicorn_sigterm_during_load_stores_every_answered_event(
    serve: Serve, nats_server: NatsServer, wait: bool
) -> None:
    """SIGTERM in the middle of the load: gunicorn stops gracefully and every event that got a 2xx is stored."""
    server = serve("gunicorn")
    load = drive(server.port, REQUESTS, wait=wait, at=(REQUESTS // 2, lambda: server.signal(signal.SIGTERM)))
    assert server.wait_exit(STOP_TIMEOUT) == 0, server.log_text()
    assert REQUESTS // 3 < len(load.ok) < REQUESTS, f"the stop did not land during the load: {len(load.ok)} 2xx"
    assert_publishers_closed(server, load)
    check_stream(nats_server, load, every_request_ok=False)


# --------------------------------------------------------------------------- uWSGI


UWSGI_STEADY = [
    pytest.param((), id="default"),  # the app imported once, in the master; workers forked without hooks
    pytest.param(("--enable-threads",), id="default-enable-threads"),
    pytest.param(("--lazy-apps",), id="lazy-apps"),
    pytest.param(("--py-call-osafterfork",), id="py-call-osafterfork"),
    pytest.param(("--py-call-uwsgi-fork-hooks",), id="py-call-uwsgi-fork-hooks"),
    pytest.param(("--max-requests", "50", "--min-worker-lifetime", "0"), id="max-requests-50"),
]


@needs_uwsgi
@pytest.mark.parametrize("wait", WAITS)
@pytest.mark.parametrize("options", UWSGI_STEADY)
def test_uwsgi_stores_every_answered_event_once(
    serve: Serve, nats_server: NatsServer, options: tuple[str, ...], wait: bool
) -> None:
    """uWSGI master + 4 workers (app in master or workers, fork hooks or not, recycled): every 2xx stored once."""
    server = serve("uwsgi", *options)
    assert "python threads support enabled" in server.log_text(), (
        "this uWSGI runs without Python threads (before 2.0.27 they are off unless --enable-threads): "
        "the publisher thread only runs while a request executes, so fire-and-forget events wait for "
        "the next request and fail with PublishTimeout after delivery_timeout"
    )
    load = run_steady(server, nats_server, wait)
    if "--max-requests" in options:
        assert len(load.pids) > 4 + REQUESTS // 100, f"workers were not recycled: {len(load.pids)} pids"

        # a stop must not race a respawn (the master sleeps before some; a new worker runs the
        # master's signal handlers until it sets its own): let every respawned worker get ready
        def respawned() -> bool:
            respawns = server.log_count(UWSGI_RESPAWNED)
            return respawns >= server.log_count(UWSGI_RECYCLED) and server.log_count(UWSGI_ACCEPTING[0]) >= 4 + respawns

        server.wait_log(respawned, "every recycled worker respawned and accepting")
    stop_cleanly(server, load)
    check_stream(nats_server, load, every_request_ok=True)


@needs_uwsgi
@pytest.mark.parametrize("wait", WAITS)
def test_uwsgi_sighup_graceful_reload_during_load_loses_nothing(
    serve: Serve, nats_server: NatsServer, wait: bool
) -> None:
    """SIGHUP (graceful reload: workers finish their request, the master re-execs) mid-load: every 2xx stored once."""
    server = serve("uwsgi")
    load = drive(server.port, REQUESTS, wait=wait, at=(REQUESTS // 3, lambda: server.signal(signal.SIGHUP)))
    server.wait_log(lambda: server.log_count(UWSGI_ACCEPTING[0]) >= 8, "4 new workers accepting after the reload")
    assert len(load.pids) > 4, "the reload did not land during the load"
    stop_cleanly(server, load)
    check_stream(nats_server, load, every_request_ok=False)


@needs_uwsgi
@pytest.mark.parametrize("wait", WAITS)
def test_uwsgi_graceful_shutdown_during_load_stores_every_answered_event(
    serve: Serve, nats_server: NatsServer, wait: bool
) -> None:
    """A graceful shutdown (master FIFO ``q``) during the load: every event that got a 2xx is stored."""
    server = serve("uwsgi")
    load = drive(server.port, REQUESTS, wait=wait, at=(REQUESTS // 2, server.begin_graceful_stop))
    assert server.wait_exit(STOP_TIMEOUT) == 0, server.log_text()
    assert REQUESTS // 3 < len(load.ok) < REQUESTS, f"the stop did not land during the load: {len(load.ok)} 2xx"
    assert_publishers_closed(server, load)
    check_stream(nats_server, load, every_request_ok=False)


@needs_uwsgi
def test_uwsgi_sigterm_during_load_stores_every_acknowledged_event(serve: Serve, nats_server: NatsServer) -> None:
    """SIGTERM + --die-on-term (uWSGI 2.0 kills busy workers, no exit hooks) mid-load: every 201's event is stored."""
    server = serve("uwsgi")
    load = drive(server.port, REQUESTS, wait=True, at=(REQUESTS // 2, lambda: server.signal(signal.SIGTERM)))
    assert server.wait_exit(STOP_TIMEOUT) is not None, server.log_text()
    assert REQUESTS // 3 < len(load.ok) < REQUESTS, f"the stop did not land during the load: {len(load.ok)} 2xx"
    check_stream(nats_server, load, every_request_ok=False)
