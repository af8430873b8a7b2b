"""`NatsTransport`: one nats-py connection, owned by the publisher thread's event loop.

It connects through `open_connection` (``_connection.py``, shared with ``tail`` and the
consumer: every nats-py failure mapped to a library error that says why, no fall-back to plain
text when TLS was asked for), creates or checks streams, and reports the connection's state to
the worker. Publishing and acks go through one of two paths, chosen
at each connection: the fast path (``_fast.py``, nats-py internals, checked and probed) or
the public path (``_public.py``, nats-py's documented API); ``_paths.py`` decides which and
says so. The path is named in each connection's log line, the publisher's ``stats()`` and ``repr``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from .._pipeline._routing import Item
from ..config import PublisherConfig
from ..errors import BrokerError, BrokerUnavailable
from ._acks import Ack, ignored, read_ack
from ._batches import FastReply, fast_head, read_fast
from ._connection import cancel_and_wait, close_connection, open_connection
from ._fast import FastPath
from ._paths import fast_path_refusal, log_public_path, nats_py_version
from ._public import PublicPath
from ._streams import ensure_stream, stream_captures

__all__ = ["NatsTransport", "cancel_and_wait", "check_broker"]

log = logging.getLogger("edupulse_events")


class Path(Protocol):
    """How events are written and acks read on a connection (`FastPath` or `PublicPath`)."""

    name: str
    resend_on_reconnect: bool

    async def start(self, timeout: float) -> bool: ...

    async def publish_js(self, items: Sequence[Item], first_seq: int) -> None: ...

    async def publish_core(self, items: Sequence[Item]) -> asyncio.Future[None]: ...

    async def publish_atomic(self, items: Sequence[Item], batch_id: bytes, seq: int, parts: int = 0) -> None: ...

    on_part: Callable[[int, bytes], None]

    async def publish_fast(self, items: Sequence[Item], head: bytes) -> None: ...

    @property
    def backlog(self) -> int: ...

    def disconnected(self) -> None: ...


class NatsTransport:
    """One nats-py connection, owned by the publisher thread's event loop."""

    def __init__(
        self,
        config: PublisherConfig,
        on_acks: Callable[[list[Ack]], None],
        on_state: Callable[[bool], None],
        on_closed: Callable[[], None],
    ) -> None:
        self._config = config
        self._on_acks = on_acks
        self._on_state = on_state
        self._on_closed = on_closed
        self._on_fast: Callable[[bytes, FastReply], None] = lambda _batch, _reply: None
        self._on_part: Callable[[int, dict[str, Any] | None], None] = lambda _seq, _error: None
        #: The fast-ingest reply inbox (``<inbox>.``), once the stream was found to allow it.
        self._fast_prefix: bytes | None = None
        self._fast_batches = 0
        #: Whether the configured stream allows fast-ingest batches (``allow_batched``): found
        #: by this connection's stream check or an earlier one's (`stream_verified`).
        self.fast_ingest = False
        self._nc = Client()
        self._path: Path | None = None
        self.max_payload: int | None = None
        self._closing = False
        #: The configured stream was found (or made) capturing the subject: by this connection, or
        #: by an earlier one of the same publisher (its check(), a thread before a crash, the
        #: process it was forked from). Not asked again: one request less per pre-fork worker; a
        #: stream that went missing since is found by the first publish ("no responders").
        self.stream_verified = False
        #: Only check what a publisher needs (`check_broker`): no ack inbox, no path probe.
        self.check_only = False

    def on_fast(self, callback: Callable[[bytes, FastReply], None]) -> None:
        """Where what the server says of fast-ingest batches goes (the worker's sender)."""
        self._on_fast = callback

    @property
    def fast_ready(self) -> bool:
        """Whether fast-ingest batches can be sent on this connection now."""
        return self._fast_prefix is not None and self._path is not None

    @property
    def client(self) -> Client:
        """The nats-py connection itself (for readers in this package, e.g. ``tail``)."""
        return self._nc

    @property
    def path(self) -> str | None:
        """ "fast" or "public" once connected; None before."""
        return self._path.name if self._path is not None else None

    @property
    def resend_on_reconnect(self) -> bool:
        return self._path is not None and self._path.resend_on_reconnect

    @property
    def backlog(self) -> int:
        """Bytes written but not yet handed to the socket (grows while the broker hangs)."""
        return self._path.backlog if self._path is not None else 0

    async def publish_js(self, items: Sequence[Item], first_seq: int) -> None:
        """Publish ``items`` to JetStream; acks come to ``on_acks`` by sequence (from ``first_seq``)."""
        if self._path is None:
            raise BrokerUnavailable("not connected to the broker")
        await self._path.publish_js(items, first_seq)

    async def publish_atomic(self, items: Sequence[Item], batch_id: bytes, seq: int, parts: int = 0) -> None:
        """Publish ``items`` as one JetStream atomic batch ``batch_id``; its commit's ack comes to
        ``on_acks`` as publish sequence ``seq``; with ``parts``, every other event is answered
        too, as publish sequences ``parts``, ``parts + 1``, ... (to ``on_part``)."""
        if self._path is None:
            raise BrokerUnavailable("not connected to the broker")
        await self._path.publish_atomic(items, batch_id, seq, parts)

    def on_part(self, callback: Callable[[int, dict[str, Any] | None], None]) -> None:
        """Where the answers to the events of verbose atomic batches go: staged (None) or an error."""
        self._on_part = callback

    def _part(self, seq: int, body: bytes) -> None:
        if not body:  # staged
            self._on_part(seq, None)
            return
        ack = read_ack(seq, body, self._config.stream)
        if ack is None or ack[4] is None:
            ignored(seq, body)
            return
        self._on_part(seq, ack[4])

    async def publish_fast(self, items: Sequence[Item]) -> bytes:
        """Publish ``items`` (two or more) as one fast-ingest batch; what the server says of it
        comes to ``on_fast`` with the batch id returned (flow acks, its end, or an error)."""
        if self._path is None or self._fast_prefix is None:
            raise BrokerUnavailable("not connected to the broker")
        self._fast_batches += 1
        batch_id = b"%x" % self._fast_batches
        await self._path.publish_fast(items, fast_head(self._fast_prefix, batch_id))
        return batch_id

    async def _start_fast_ingest(self) -> None:
        """Subscribe to the fast-ingest replies (a rare message each: nats-py's own callback)."""
        prefix = self._nc.new_inbox() + "."
        start = len(prefix)
        on_fast = self._on_fast

        async def on_reply(msg: Msg) -> None:
            # <batch id>.<flow>.<gap>.<event>.<op>.$FI
            tokens = msg.subject[start:].split(".")
            if not msg.data:  # nothing to say (an R>1 stream's leader may send it)
                return
            batch_id, event = tokens[0], tokens[3] if len(tokens) == 6 else ""
            reply = read_fast(msg.data, int(event)) if 0 < len(event) < 20 and event.isdigit() else None
            if reply is None:
                ignored(msg.subject[start:].encode(), msg.data)
            else:
                on_fast(batch_id.encode(), reply)

        await self._nc.subscribe(prefix + ">", cb=on_reply)
        self._fast_prefix = prefix.encode()

    async def publish_core(self, items: Sequence[Item]) -> asyncio.Future[None]:
        """Publish ``items`` to core NATS; the returned future is done once the server read them."""
        if self._path is None:
            raise BrokerUnavailable("not connected to the broker")
        return await self._path.publish_core(items)

    async def connect(self, timeout: float | None) -> None:
        """Connect (retrying servers until ``timeout``; None = forever) or raise `BrokerError`."""
        cfg = self._config

        def disconnected() -> None:
            if self._path is not None:
                self._path.disconnected()
            self._on_state(False)

        def reconnected() -> None:
            self.max_payload = self._nc.max_payload
            self._on_state(True)

        def closed() -> None:
            self._on_state(False)
            self._on_closed()

        def abandoned() -> None:
            self._closing = True

        await open_connection(
            self._nc,
            cfg,
            timeout,
            # Room for the whole window and the sweep's resends: a publish never forces a flush
            # (which, cancelled, kills the flusher of nats-py before 2.10).
            pending_size=2 * cfg.window_bytes + 4 * 1024 * 1024,
            closing=lambda: self._closing,
            on_disconnected=disconnected,
            on_reconnected=reconnected,
            on_closed=closed,
            on_abandoned=abandoned,
        )
        self.max_payload = self._nc.max_payload
        try:
            if not self.check_only:
                await self._choose_path()
            if cfg.stream is not None and not self.stream_verified:
                self.fast_ingest = await ensure_stream(self._nc, cfg)
                self.stream_verified = True
            if self.fast_ingest and cfg.fast_ingest and not self.check_only:
                await self._start_fast_ingest()
        except BrokerError:
            await self.close(1.0)
            raise
        path = self.path  # None for a check: no path chosen
        if path is None:
            log.info("connected to broker %s", cfg.redacted_servers)
        else:  # one line: each costs a pre-fork worker on its first connection (docs/performance.md)
            label = "fast path" if path == "fast" else "nats-py's public API"
            log.info("connected to broker %s (nats-py %s, %s)", cfg.redacted_servers, nats_py_version(), label)
        self._on_state(True)

    async def _choose_path(self) -> None:
        probe_timeout = min(self._config.connect_timeout, 2.0)
        why = fast_path_refusal()
        try:
            if why is None:
                fast = FastPath(self._nc, self._on_acks, self._config.stream)
                if await fast.start(probe_timeout):
                    fast.on_part = self._part
                    self._path = fast
                    return
                why = "the fast path's probe failed"
            public = PublicPath(self._nc, self._on_acks, self._config.stream)
            public.on_part = self._part
            await public.start(probe_timeout)
        except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
            raise BrokerUnavailable(f"could not subscribe to the ack inbox: {exc!r}") from exc
        self._path = public
        log_public_path(why)

    async def stream_captures(self, subject: str, timeout: float) -> bool | None:
        """Whether some JetStream stream captures ``subject`` (None if the server did not say)."""
        return await stream_captures(self._nc, subject, timeout)

    async def close(self, timeout: float) -> None:
        """Close the connection, waiting at most ``timeout`` seconds."""
        self._closing = True
        await close_connection(self._nc, timeout)


def check_broker(config: PublisherConfig, timeout: float) -> None:
    """Connect once as a publisher would (credentials, TLS, the stream), then close, from a
    short-lived thread with its own loop: no thread or connection stays behind (so a pre-fork
    server's master can check before it forks). Raises `BrokerError` saying why it failed."""
    outcome: concurrent.futures.Future[None] = concurrent.futures.Future()

    async def check() -> None:
        transport = NatsTransport(config, lambda _acks: None, lambda _up: None, lambda: None)
        transport.check_only = True
        await transport.connect(timeout)
        await transport.close(1.0)

    def run() -> None:
        try:
            asyncio.run(check())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome.set_exception(exc)
        else:
            outcome.set_result(None)

    thread = threading.Thread(target=run, name="edupulse-broker-check", daemon=True)
    thread.start()
    thread.join(timeout + 5.0)
    if not outcome.done():
        raise BrokerUnavailable(f"could not check {config.redacted_servers} within {timeout} s")
    outcome.result()
