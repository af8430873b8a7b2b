"""Shared test helpers: sample envelopes, reading a stream back, waiting on log records."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import nats
from nats.js.api import StreamConfig

from edupulse_events import EncodedEvent, EventEnvelope, LessonPublished, PaymentProcessed
from edupulse_events._nats import StoredMessage, read_stream
from edupulse_events._pipeline._routing import Router

__all__ = [
    "LogWatcher",
    "StoredMessage",
    "add_stream",
    "broker_env",
    "encoded",
    "envelope",
    "envelopes",
    "raw_messages",
    "read_stream",
    "run_cli",
    "serve_once",
]


def envelope(
    i: int = 0,
    tenant: str | None = "school-1",
    *,
    correlation_id: uuid.UUID | str | None = None,
    causation_id: uuid.UUID | str | None = None,
    personally_identifiable: bool = False,
) -> EventEnvelope:
    """A small valid envelope; odd ``i`` gives a PaymentProcessed, even a LessonPublished."""
    if i % 2:
        data: object = PaymentProcessed(uuid.uuid4(), uuid.uuid4(), i)
    else:
        data = LessonPublished(uuid.uuid4(), uuid.uuid4(), f"lesson {i}")
    return EventEnvelope.new(
        data,
        correlation_id=correlation_id,
        causation_id=causation_id,
        tenant_id=tenant,
        personally_identifiable=personally_identifiable,
    )


def envelopes(
    n: int,
    tenant: str | None = "school-1",
    *,
    correlation_id: uuid.UUID | str | None = None,
    causation_id: uuid.UUID | str | None = None,
    personally_identifiable: bool = False,
) -> list[EventEnvelope]:
    """``n`` distinct envelopes (the keywords as for :func:`envelope`)."""
    return [
        envelope(
            i,
            tenant,
            correlation_id=correlation_id,
            causation_id=causation_id,
            personally_identifiable=personally_identifiable,
        )
        for i in range(n)
    ]


class LogWatcher(logging.Handler):
    """Collects edupulse_events log records; `wait_for(pattern)` blocks until one matches."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return "\n".join(r.getMessage() for r in self.records)

    def wait_for(self, pattern: str, timeout: float = 10.0) -> bool:
        rx = re.compile(pattern)
        with self._cond:
            return self._cond.wait_for(lambda: any(rx.search(r.getMessage()) for r in self.records), timeout)

    def __enter__(self) -> LogWatcher:
        logger = logging.getLogger("edupulse_events")
        self._old_level = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("edupulse_events")
        logger.removeHandler(self)
        logger.setLevel(self._old_level)


def iter_ids(messages: list[StoredMessage]) -> Iterator[str]:
    """The Nats-Msg-Id of each stored message."""
    return (m.headers.get("Nats-Msg-Id", "") for m in messages)


def broker_env(**broker: str) -> dict[str, str]:
    """This environment without EDUPULSE_EVENT_BROKER_* variables, plus ``broker`` (URL=..., ...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDUPULSE_EVENT_BROKER_")}
    env.update({f"EDUPULSE_EVENT_BROKER_{name}": value for name, value in broker.items()})
    return env


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m edupulse_events ARGS`` in a subprocess (``env``: its whole environment; None: this
    one without EDUPULSE_EVENT_BROKER_* variables); whatever happens, it prints no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "edupulse_events", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=broker_env() if env is None else dict(env),
        cwd=cwd,
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def serve_once(app: Any, request: bytes) -> bytes:
    """Send raw ``request`` bytes to ``app`` behind a real WSGI server (wsgiref, which decodes header
    bytes as latin-1 as PEP 3333 says) on a loopback port; return the raw response."""

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    with make_server("127.0.0.1", 0, app, handler_class=Quiet) as server:
        thread = threading.Thread(target=server.handle_request, daemon=True)
        thread.start()
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as sock:
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        thread.join(10)
    return b"".join(chunks)


def encoded(envelopes: list[EventEnvelope], subject: str) -> list[EncodedEvent]:
    """``envelopes`` encoded and routed as a publisher with the subject template ``subject`` (and
    `Outbox.add`) writes them."""
    router = Router(subject)
    items = [router.prepare(env, None) for env in envelopes]
    return [EncodedEvent(i.event_id, i.subject.decode(), i.headers, i.payload) for i in items]


def raw_messages(url: str, stream: str, count: int) -> list[tuple[str, bytes, bytes]]:
    """The first ``count`` messages of ``stream`` as stored: (subject, header block, body), the
    header block without the lines an atomic batch adds (``Nats-Batch-*``)."""
    import base64

    async def get() -> list[tuple[str, bytes, bytes]]:
        nc = await nats.connect(url)
        try:
            jsm = nc.jsm()
            out = []
            for seq in range(1, count + 1):
                msg = await jsm.get_msg(stream, seq)
                lines = base64.b64decode(msg.hdrs or b"").split(b"\r\n")
                block = b"\r\n".join(line for line in lines if not line.startswith(b"Nats-Batch-"))
                out.append((msg.subject or "", block, msg.data or b""))
            return out
        finally:
            await nc.close()

    return asyncio.run(get())


def add_stream(url: str, name: str, subjects: list[str], **config: Any) -> None:
    """Create JetStream stream ``name`` capturing ``subjects`` on the server at ``url`` (``config``:
    more `StreamConfig` fields, e.g. ``allow_atomic=True``)."""

    async def add() -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().add_stream(StreamConfig(name=name, subjects=subjects, **config))
        finally:
            await nc.close()

    asyncio.run(add())
