"""Loopback plumbing shared by the server and the cluster: ports, probes and polling.

Owns the one address everything listens on (:data:`HOST`, 127.0.0.1), :func:`free_port`
(a port held for its caller until :func:`release_port`, so no other process takes it meanwhile,
and never handed out twice in a process), the HTTP monitoring requests (plain
``http.client``, so no proxy settings apply), the client-port INFO probe, and the
deadline-bounded poll interval every wait loop in this package sleeps on.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import ServerError

HOST = "127.0.0.1"
POLL = 0.02  # seconds between readiness polls
HTTP_TIMEOUT = 0.5  # per monitoring request; a paused server must not stall a poll loop

_reserved_lock = threading.Lock()
_reserved_ports: set[int] = set()
_held: dict[int, socket.socket] = {}


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing else takes until :func:`release_port`.

    The port is held by a socket of this process, bound to it (``SO_REUSEADDR``) but not
    listening: other processes looking for a free port the same way (another pytest-xdist worker,
    another test run on the machine) and the kernel's choice of local port for an outgoing
    connection pass it by, so it stays free for its caller even while a server on it is stopped,
    killed or restarting; a server that binds with ``SO_REUSEADDR`` (nats-server, PostgreSQL,
    gunicorn, uWSGI) listens on it all the same, and a client connecting while nothing listens is
    refused. The servers of this package release the ports they were given when they close; a
    port is never handed out twice in a process.
    """
    for _ in range(200):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        except BaseException:  # pragma: no cover - the bind itself failed
            sock.close()
            raise
        with _reserved_lock:
            if port not in _reserved_ports:
                _reserved_ports.add(port)
                _held[port] = sock
                return port
        sock.close()
    raise ServerError("could not find a free TCP port on 127.0.0.1")  # pragma: no cover


def release_port(port: int | None) -> None:
    """Stop holding ``port`` (from :func:`free_port`); nothing for a port this process does not hold."""
    if port is None:
        return
    with _reserved_lock:
        sock = _held.pop(port, None)
    if sock is not None:
        sock.close()


def _http_get(port: int, path: str, timeout: float) -> tuple[int, bytes]:
    """GET http://127.0.0.1:<port><path> without any proxy; returns (status, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def http_ok(port: int, path: str, timeout: float = HTTP_TIMEOUT) -> bool:
    """True when the monitoring endpoint answers 200 within ``timeout`` seconds."""
    try:
        status, _ = _http_get(port, path, timeout)
    except (OSError, http.client.HTTPException):
        return False
    return status == 200


def get_json(port: int, path: str, timeout: float = HTTP_TIMEOUT) -> Any | None:
    """Monitoring JSON, or None when the server does not answer (down, paused, starting)."""
    try:
        status, body = _http_get(port, path, timeout)
    except (OSError, http.client.HTTPException):
        return None
    if status != 200:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def accepts_clients(port: int, alive: Callable[[], bool]) -> bool:
    """True when the client port answers with the INFO line every NATS server sends first.

    Reads in short slices and gives up as soon as ``alive()`` is false, so a server that died
    while something else holds its port is noticed at once.
    """
    try:
        with socket.create_connection((HOST, port), timeout=HTTP_TIMEOUT) as sock:
            sock.settimeout(POLL)
            data = b""
            deadline = time.monotonic() + HTTP_TIMEOUT
            while b"\r\n" not in data and len(data) < 65536:
                try:
                    chunk = sock.recv(4096)
                except TimeoutError:
                    if not alive() or time.monotonic() > deadline:
                        return False
                    continue
                if not chunk:
                    return False
                data += chunk
            return data.startswith(b"INFO ")
    except OSError:
        return False


def wait(deadline: float) -> bool:
    """Sleep one poll interval (Event-based, deadline-bounded); False once the deadline passed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    threading.Event().wait(min(POLL, remaining))
    return True
