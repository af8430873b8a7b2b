"""Loopback plumbing shared by the server and the cluster: ports, probes and polling.

Owns the one address everything listens on (:data:`HOST`, 127.0.0.1), :func:`free_port`
(never hands out the same port twice in a process), the HTTP monitoring requests (plain
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


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 and was not handed out before in this process."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        with _reserved_lock:
            if port not in _reserved_ports:
                _reserved_ports.add(port)
                return port
    raise ServerError("could not find a free TCP port on 127.0.0.1")  # pragma: no cover


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
