"""The example WSGI app (``examples/wsgi_app.py``) under real pre-fork servers.

gunicorn and uWSGI run as subprocesses on 127.0.0.1 (each in its own process group, stopped by
its own pid), concurrent HTTP clients publish through them, and the stream is read back: every
2xx answer's event is stored exactly once, through worker recycling, reloads and graceful stops,
for views that wait for the ack (201) and fire-and-forget ones (202), and through a SIGKILLed
worker when the publishers spool to disk (without a spool that worker's events are lost: the control).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

import pytest
from helpers import read_stream
from servers_support import (
    CLIENTS,
    DELIVERY_LAG,
    GUNICORN_KILLED,
    REQUESTS,
    SPOOL_ADOPTED,
    SPOOL_LEFT,
    SPOOL_VARIABLE,
    KillWorker,
    Load,
    drive,
    spool_leftovers,
    stored_count,
    wait_stored,
)
from wsgi_servers import (
    GUNICORN_WORKERS,
    HAVE_GUNICORN,
    STOP_TIMEOUT,
    STREAM,
    UWSGI,
    UWSGI_ACCEPTING,
    UWSGI_APPS,
    UWSGI_RECYCLED,
    UWSGI_RESPAWNED,
    WINDOW,
    Serve,
    WsgiServer,
    gunicorn_argv,
    server_env,
    uwsgi_argv,
)

from edupulse_events.testing import NatsServer, free_port, release_port

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


def missing_events(nats: NatsServer, load: Load) -> list[str]:
    """The event ids of 2xx answers that the stream does not hold."""
    stored = {m.headers.get("Nats-Msg-Id", "") for m in read_stream(nats.url, STREAM, timeout=30.0)}
    return [r.event_id or "" for r in load.ok if r.event_id not in stored]


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
    """Factory: ``serve("gunicorn" | "uwsgi", *options, env={...})`` starts the example app under that
    server (``env``: variables added to its environment; ready: every worker spawned, ``/health``
    answers); every server is stopped at teardown."""
    servers: list[WsgiServer] = []

    def start(kind: str, *options: str, env: Mapping[str, str] | None = None) -> WsgiServer:
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
        server = WsgiServer(argv, {**server_env(nats_server), **(env or {})}, port, log, ready, fifo)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
            release_port(server.port)


def assert_publishers_closed(server: WsgiServer, load: Load, killed: Collection[int] = ()) -> None:
    """Each worker that served a request (but the ``killed`` ones) closed its publisher at exit,
    every event acknowledged."""
    log = server.log_text()
    closed = re.findall(
        r"\[(\d+)\] edupulse_events \w+ publisher closed: \d+ events acknowledged, 0 failed, none left", log
    )
    assert load.pids - set(killed) <= {int(pid) for pid in closed}, log


def stop_cleanly(server: WsgiServer, load: Load, killed: Collection[int] = ()) -> None:
    """A graceful stop: the master exits 0, each worker's exit hook (but those of the ``killed``
    ones) closed its publisher with every event acknowledged, and the library logged no error."""
    server.begin_graceful_stop()
    code = server.wait_exit(STOP_TIMEOUT)
    log = server.log_text()
    assert code == 0, f"exit code {code}:\n{log}"
    problems = [line for line in log.splitlines() if re.search(r"edupulse_events (ERROR|CRITICAL)|Traceback", line)]
    assert not problems, "\n".join(problems) + "\n" + log
    assert_publishers_closed(server, load, killed)


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


#: A third of the way in, the kill's pause takes ~WINDOW + 50 of the victim's requests (~1,200 in
#: all): some load is left after it.
KILL_REQUESTS = 3 * REQUESTS
LEFT_IN_SPOOL = (
    "events were left on disk after the graceful stop: a worker (the replacement that adopted the killed "
    "worker's file?) exited without delivering spooled events; they wait for the next start in that directory"
)


def run_with_killed_worker(
    serve: Serve, nats: NatsServer, env: Mapping[str, str] | None = None
) -> tuple[WsgiServer, KillWorker]:
    """gunicorn, 4 sync workers, fire-and-forget load; a third of the way in one worker is SIGKILLed
    with events in its memory only (`KillWorker`), gunicorn respawns it and the load goes on (the
    replacement serves requests); then a graceful stop. Returns the server and the kill (``kill.load``:
    the replies)."""
    server = serve("gunicorn", env=env)
    kill = KillWorker(server.port, nats, Load())
    load = drive(server.port, KILL_REQUESTS, wait=False, at=(KILL_REQUESTS // 3, kill), load=kill.load)
    assert kill.pid is not None
    killed = GUNICORN_KILLED.format(pid=kill.pid)
    server.wait_log(lambda: server.log_count(killed) == 1, f"gunicorn reaping the SIGKILLed worker {kill.pid}")
    assert server.log_count(GUNICORN_WORKERS[0]) == 5, f"one worker booted in place of {kill.pid}"
    stop_cleanly(server, load, killed={kill.pid})
    return server, kill


@needs_gunicorn
def test_gunicorn_sigkilled_worker_with_spool_loses_nothing(
    serve: Serve, nats_server: NatsServer, tmp_path: Path
) -> None:
    """With a spool, a worker SIGKILLed mid-load: its replacement adopts its file; every 2xx stored once, none left."""
    spool = tmp_path / "spool"
    spool.mkdir()
    server, kill = run_with_killed_worker(serve, nats_server, {SPOOL_VARIABLE: str(spool)})
    server_log = server.log_text()
    left_on_exit = re.findall(SPOOL_LEFT, server_log)
    leftovers = spool_leftovers(spool)
    assert not left_on_exit, f"{LEFT_IN_SPOOL}: {left_on_exit}\n{server_log}"
    assert not leftovers, f"{LEFT_IN_SPOOL}: {leftovers}\n{server_log}"
    adopted = re.findall(SPOOL_ADOPTED.format(pid=kill.pid), server_log)
    assert len(adopted) == 1, f"the killed worker's spool file was adopted {len(adopted)} times:\n{server_log}"
    # answered while nothing could be acknowledged (but the few requests already running at the pause)
    assert int(adopted[0][1]) >= kill.accepted - CLIENTS, (
        f"{adopted[0][1]} events adopted; the worker had answered {kill.accepted} with the broker paused"
    )
    check_stream(nats_server, kill.load, every_request_ok=False)


@needs_gunicorn
def test_gunicorn_sigkilled_worker_without_spool_loses_events(serve: Serve, nats_server: NatsServer) -> None:
    """Control for the spool test: without a spool, the same SIGKILL loses the worker's fire-and-forget events."""
    _, kill = run_with_killed_worker(serve, nats_server)
    missing = missing_events(nats_server, kill.load)
    assert missing, f"no 2xx event is missing after a SIGKILL with {kill.accepted - WINDOW}+ events in memory"
    victims = {r.event_id for r in kill.load.ok if r.pid == kill.pid}
    assert set(missing) <= victims, f"events of live workers are missing: {sorted(set(missing) - victims)[:10]}"


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
