"""One ``nats-server`` process on loopback: :class:`NatsServer`.

Owns a single server's life: choosing its ports, its temporary directory (config, log and
default JetStream store), spawning the process, waiting until it is ready, stopping, killing,
pausing and restarting it on the same ports and store, and single-node monitoring probes.
Option checks and the config text live in :mod:`._config`; spawning, signalling and the
safety net that kills a forgotten process live in :mod:`._process`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ServerError
from ._binary import resolve_binary
from ._config import ServerOptions
from ._net import HOST, HTTP_TIMEOUT, accepts_clients, free_port, get_json, http_ok, release_port, wait
from ._process import ProcState, finalize, hard_kill, log_tail, reap, spawn, wait_stopped

_LOG_TAIL_LINES = 40


class NatsServer:
    """One nats-server process on 127.0.0.1 (see :mod:`edupulse_events.testing`).

    All options are keyword-only and validated here (:class:`~edupulse_events.errors.ConfigError`;
    :class:`ServerNotFound` when there is no binary). Nothing runs until :meth:`start` (or ``with``).

    - ``port`` / ``http_port``: client and monitoring ports; ``None`` picks free ones now, kept
      for restarts (monitoring is always on: readiness uses ``/healthz``).
    - ``jetstream``: on by default; the store is ``store_dir`` if given (kept), else a directory
      inside this object's temp dir (removed by :meth:`close`). nats-server itself adds a
      ``jetstream/`` level below it.
    - ``token`` or ``user`` + ``password``: client authorization.
    - ``tls_cert`` + ``tls_key`` (PEM files): TLS required for clients, :attr:`url` is ``tls://``;
      ``tls_ca`` + ``tls_verify=True``: clients must present a certificate signed by that CA.
    - ``max_payload``: bytes, 1..64 MiB. ``server_name``: shown in INFO/monitoring.
    - ``cluster_name`` / ``cluster_port`` / ``routes``: route listener on 127.0.0.1 and route
      URLs (what :class:`NatsCluster` sets; a clustered JetStream node needs ``server_name``).
    - ``extra_config``: raw nats-server config text appended to the generated file.
    - ``binary``: the executable; default :func:`nats_server_binary`.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        jetstream: bool = True,
        store_dir: str | os.PathLike[str] | None = None,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_verify: bool = False,
        max_payload: int | None = None,
        server_name: str | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[str] | None = None,
        http_port: int | None = None,
        extra_config: str = "",
        binary: str | os.PathLike[str] | None = None,
    ) -> None:
        opts = ServerOptions.check(
            port=port,
            http_port=http_port,
            cluster_port=cluster_port,
            jetstream=jetstream,
            store_dir=store_dir,
            token=token,
            user=user,
            password=password,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_ca=tls_ca,
            tls_verify=tls_verify,
            max_payload=max_payload,
            server_name=server_name,
            cluster_name=cluster_name,
            routes=routes,
            extra_config=extra_config,
        )
        self._opts = opts
        self._binary = resolve_binary(binary)

        # Everything below owns resources; nothing above may fail after this point.
        self._port = opts.port if opts.port is not None else free_port()
        self._http_port = opts.http_port if opts.http_port is not None else free_port()
        self._cluster_port: int | None = None
        if opts.clustered:
            self._cluster_port = opts.cluster_port or free_port()
        self._tmpdir = tempfile.mkdtemp(prefix="edupulse-nats-")
        if store_dir is None:
            self._store_dir: Path | None = Path(self._tmpdir, "store") if jetstream else None
        else:
            self._store_dir = Path(store_dir).expanduser().resolve()
        self._config_path = Path(self._tmpdir, "nats-server.conf")
        self._log_path = Path(self._tmpdir, "nats-server.log")
        self._log_path.touch()
        self._log_offset = 0
        self._started_once = False
        self._closed = False
        self._paused = False
        self._lock = threading.RLock()
        self._state = ProcState(self._tmpdir)
        self._finalizer = weakref.finalize(self, finalize, self._state)

    # ----------------------------------------------------------------- properties

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:PORT``, or ``tls://127.0.0.1:PORT`` when TLS is configured."""
        scheme = "tls" if self._opts.tls_cert else "nats"
        return f"{scheme}://{HOST}:{self._port}"

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        """Client port (kept across restarts)."""
        return self._port

    @property
    def http_port(self) -> int:
        """HTTP monitoring port on 127.0.0.1 (``/healthz``, ``/varz``, ``/jsz`` ...)."""
        return self._http_port

    @property
    def monitor_url(self) -> str:
        return f"http://{HOST}:{self._http_port}"

    @property
    def cluster_port(self) -> int | None:
        """Route port on 127.0.0.1 when clustered, else None."""
        return self._cluster_port

    @property
    def route_url(self) -> str | None:
        return None if self._cluster_port is None else f"nats-route://{HOST}:{self._cluster_port}"

    @property
    def server_name(self) -> str | None:
        return self._opts.server_name

    @property
    def jetstream(self) -> bool:
        return self._opts.jetstream

    @property
    def store_dir(self) -> str | None:
        """JetStream store directory (None without JetStream)."""
        return None if self._store_dir is None else str(self._store_dir)

    @property
    def config_path(self) -> str:
        return str(self._config_path)

    @property
    def log_path(self) -> str:
        return str(self._log_path)

    @property
    def pid(self) -> int | None:
        """Pid of the running (possibly paused) process, else None."""
        proc = self._state.live_proc()
        return None if proc is None else proc.pid

    @property
    def running(self) -> bool:
        """True while the process is alive, including while paused."""
        return self._state.live_proc() is not None

    @property
    def paused(self) -> bool:
        return self._paused and self.running

    @property
    def closed(self) -> bool:
        return self._closed

    def log_text(self) -> str:
        """Everything the server wrote so far (all runs, restarts included)."""
        try:
            return self._log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        name = f" {self.server_name}" if self.server_name else ""
        return f"<NatsServer{name} {self.url} {state}>"

    def config_text(self) -> str:
        """The nats-server config file this object writes before each start."""
        return self._opts.render(
            port=self._port,
            http_port=self._http_port,
            cluster_port=self._cluster_port,
            store_dir=self._store_dir,
        )

    # ----------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 10.0) -> NatsServer:
        """Start the process and wait until it is ready; returns self.

        Ready means: the client port answers with INFO, ``/healthz`` is ok and, with JetStream,
        ``/healthz?js-enabled-only=true`` is ok. Raises :class:`ServerError` (with the tail of the
        server log) when the process exits or ``timeout`` seconds pass; the process is then killed.
        A first start that finds an auto-chosen port taken retries (twice) on fresh ports.
        """
        with self._lock:
            if self._closed:
                raise ServerError(f"{self!r} is closed")
            if self.running:
                raise ServerError(f"{self!r} is already running")
            deadline = time.monotonic() + timeout
            attempts = 1 if self._started_once else 3
            for attempt in range(1, attempts + 1):
                self._spawn()
                try:
                    self._wait_ready(deadline, timeout)
                    break
                except ServerError as exc:
                    self._kill_quietly()
                    if attempt == attempts or not self._repick_ports():
                        raise exc from None
            self._started_once = True
            return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop gracefully (SIGTERM, resuming a paused process first), SIGKILL after ``timeout``.

        Waits for the process to exit. Safe to call when not running.
        """
        with self._lock:
            proc = self._state.proc
            if proc is None:
                return
            if proc.poll() is None:
                try:
                    proc.terminate()
                    if self._paused:
                        os.kill(proc.pid, signal.SIGCONT)  # the pending SIGTERM is delivered now
                except ProcessLookupError:  # pragma: no cover - raced with exit
                    pass
                if not reap(proc, timeout):
                    hard_kill(proc)
            self._paused = False
            self._state.proc = None

    def kill(self) -> None:
        """Crash the server: SIGKILL and wait for the exit. No-op when not running."""
        with self._lock:
            self._kill_quietly()

    def restart(self, timeout: float = 10.0) -> NatsServer:
        """Start again on the same ports with the same JetStream store (stopping it first if running)."""
        with self._lock:
            self.stop()
            return self.start(timeout=timeout)

    def pause(self) -> None:
        """SIGSTOP: the process stays alive and keeps its sockets but answers nothing.

        Returns once the kernel reports the process stopped (at most about a second).
        """
        with self._lock:
            proc = self._require_running("pause")
            os.kill(proc.pid, signal.SIGSTOP)
            self._paused = True
            wait_stopped(proc)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        with self._lock:
            os.kill(self._require_running("resume").pid, signal.SIGCONT)
            self._paused = False

    def close(self) -> None:
        """Stop the server and remove its temporary directory (and default store). Idempotent."""
        with self._lock:
            if self._closed:
                return
            try:
                self.stop()
            finally:
                self._closed = True
                self._finalizer()  # kills anything left and removes the temp dir
                for port in (self._port, self._http_port, self._cluster_port):
                    release_port(port)  # held since free_port() chose it, through every restart

    def __enter__(self) -> NatsServer:
        if not self.running:
            try:
                self.start()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------- monitoring

    def monitor(self, path: str, timeout: float = HTTP_TIMEOUT) -> Any | None:
        """GET a monitoring endpoint (e.g. ``"/varz"``, ``"/jsz?streams=true"``) as JSON.

        Returns None when the server does not answer in ``timeout`` seconds or says non-200.
        """
        if not path.startswith("/"):
            raise ValueError("path must start with '/'")
        return get_json(self._http_port, path, timeout)

    def healthy(self, *, js_enabled_only: bool = False) -> bool:
        """One ``/healthz`` probe (no waiting)."""
        query = "?js-enabled-only=true" if js_enabled_only else ""
        return http_ok(self._http_port, "/healthz" + query)

    # ----------------------------------------------------------------- internals

    def _require_running(self, what: str) -> subprocess.Popen[bytes]:
        proc = self._state.live_proc()
        if proc is None:
            raise ServerError(f"cannot {what}: {self!r} is not running")
        return proc

    def _spawn(self) -> None:
        if self._store_dir is not None:
            self._store_dir.mkdir(parents=True, exist_ok=True)
        self._config_path.write_text(self.config_text(), encoding="utf-8")
        self._paused = False
        self._state.proc, self._log_offset = spawn(
            self._binary,
            self._config_path,
            self._log_path,
            cwd=self._tmpdir,
            restart=self._started_once,
        )

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        proc = self._state.proc
        assert proc is not None
        client_ok = health_ok = False
        while True:
            if proc.poll() is not None:
                raise ServerError(
                    f"nats-server exited with code {proc.returncode} during start "
                    f"({self.url}); log tail:\n{self._log_tail()}"
                )
            if not client_ok:
                client_ok = accepts_clients(self._port, lambda: proc.poll() is None)
            if client_ok and not health_ok:
                health_ok = self.healthy(js_enabled_only=self.jetstream)
            if client_ok and health_ok:
                return
            if not wait(deadline):
                what = "client port" if not client_ok else "/healthz"
                raise ServerError(
                    f"nats-server ({self.url}) not ready within {timeout:g}s "
                    f"(waiting for {what}); log tail:\n{self._log_tail()}"
                )

    def _kill_quietly(self) -> None:
        proc = self._state.proc
        if proc is not None:
            hard_kill(proc)
        self._paused = False
        self._state.proc = None

    def _repick_ports(self) -> bool:
        """After 'address already in use' on a first start: fresh ports for the auto-chosen ones.

        Only the ports the log names as taken are replaced, and only if this object chose them;
        the route port is never replaced (the other cluster nodes' routes point at it).
        """
        taken = "\n".join(line for line in self._log_tail(400).splitlines() if "address already in use" in line)
        client = f"{HOST}:{self._port}" in taken
        http = f"{HOST}:{self._http_port}" in taken
        if self._cluster_port is not None and f"{HOST}:{self._cluster_port}" in taken:
            return False
        if (client and self._opts.port is not None) or (http and self._opts.http_port is not None):
            return False
        if client:
            release_port(self._port)
            self._port = free_port()
        if http:
            release_port(self._http_port)
            self._http_port = free_port()
        return client or http

    def _log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines the server wrote since its latest (re)start."""
        return log_tail(self._log_path, self._log_offset, lines)
