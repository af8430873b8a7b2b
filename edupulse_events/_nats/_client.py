"""`NatsTransport`: one nats-py connection, owned by the publisher thread's event loop.

It connects (mapping every nats-py failure to a library error that says why), refuses to
fall back to plain text when TLS was asked for, creates or checks streams, and reports the
connection's state to the worker. Publishing and acks go through one of two paths, chosen
at each connection: the fast path (``_fast.py``, nats-py internals, checked and probed) or
the public path (``_public.py``, nats-py's documented API); ``_paths.py`` decides which and
says so. The path is named in each connection's log line, the publisher's ``stats()`` and ``repr``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from .._pipeline._routing import Item
from ..config import PublisherConfig
from ..errors import BrokerError, BrokerUnavailable
from ._acks import Ack, ignored, read_ack
from ._batches import FastReply, fast_head, read_fast
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


async def cancel_and_wait(task: asyncio.Future[Any], limit: float) -> None:
    """Cancel ``task`` and wait (at most ``limit`` seconds) until it has ended. nats-py's
    connect loop swallows a cancellation that lands while it closes a failed attempt, and
    then goes on connecting: cancel again until the task is done."""
    deadline = asyncio.get_running_loop().time() + limit
    while not task.done():
        task.cancel()
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return
        await asyncio.wait({task}, timeout=min(0.05, remaining))
    if not task.cancelled():
        task.exception()  # retrieved: a failed attempt is not "never retrieved"


def _describe(exc: BaseException, tls_given: bool = True) -> str:
    """A short, credential-free description of a connection error.

    ``tls_given=False`` (no ``tls=`` SSLContext in the config) adds a hint to TLS errors: the
    server asked for TLS and only the system's CAs were trusted.
    """
    text = str(exc) or type(exc).__name__
    hint = (
        ""
        if tls_given
        else " (the server requires TLS and no tls= SSLContext was given: pass one that trusts the server's CA)"
    )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message or text}{hint}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {text}{hint}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if "Authorization Violation" in text or "Authentication" in text or isinstance(exc, nats.errors.AuthorizationError):
        return "authentication failed (Authorization Violation)"
    if isinstance(exc, nats.errors.SecureConnWantedError):
        return (
            "TLS was asked for (a tls:// URL or a tls= SSLContext) but the server does not offer TLS; "
            "refusing to connect in plain text"
        )
    if "secure connection" in text.lower() or isinstance(
        exc, (nats.errors.SecureConnRequiredError, nats.errors.SecureConnFailedError)
    ):
        return f"TLS required/failed: {text}"
    return text


def _is_fatal(exc: BaseException) -> bool:
    """Errors that retrying the connection cannot fix (bad credentials, bad certificates, no TLS)."""
    text = str(exc)
    return (
        isinstance(
            exc, (ssl.SSLCertVerificationError, nats.errors.AuthorizationError, nats.errors.SecureConnWantedError)
        )
        or "Authorization Violation" in text
        or "Authentication" in text
    )


def _wants_tls(config: PublisherConfig, scheme: str) -> bool:
    """Whether a connection to a server with this URL scheme must be encrypted."""
    return scheme == "tls" or (config.tls is not None and scheme == "nats")


_signatures: dict[Any, tuple[str, ...]] = {}


def _parameters(method: Any) -> tuple[str, ...]:
    """The parameter names of a (bound) method, read once per function: inspecting a signature
    costs each pre-fork worker time on its first connection (docs/performance.md)."""
    key = getattr(method, "__func__", method)
    if key not in _signatures:
        try:
            _signatures[key] = tuple(inspect.signature(method).parameters)
        except (TypeError, ValueError):
            _signatures[key] = ()
    return _signatures[key]


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
        self._last_error: BaseException | None = None
        self._fatal: asyncio.Future[BaseException] | None = None
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
        loop = asyncio.get_running_loop()
        fatal: asyncio.Future[BaseException] = loop.create_future()
        self._fatal = fatal
        tls_given = cfg.tls is not None
        self._refuse_plain_text()

        async def error_cb(exc: Exception) -> None:
            self._last_error = exc
            if _is_fatal(exc):
                log.error("broker %s: %s", cfg.redacted_servers, _describe(exc, tls_given))
                if not fatal.done():
                    fatal.set_result(exc)
            else:
                log.debug("broker %s: %s", cfg.redacted_servers, _describe(exc, tls_given))

        async def disconnected_cb() -> None:
            if not self._closing:
                log.warning("disconnected from broker %s", cfg.redacted_servers)
            if self._path is not None:
                self._path.disconnected()
            self._on_state(False)

        async def reconnected_cb() -> None:
            self.max_payload = self._nc.max_payload
            log.info("reconnected to broker %s", cfg.redacted_servers)
            self._on_state(True)

        async def closed_cb() -> None:
            # nats-py gives up on a connection for good after some server errors (-ERR):
            # tell the worker, which builds a new one, instead of timing out forever.
            if not self._closing:
                last = self._nc.last_error
                why = _describe(last) if last is not None else "no error"
                log.error("broker connection %s was closed by the client library (%s)", cfg.redacted_servers, why)
                self._on_state(False)
                self._on_closed()

        connect = asyncio.ensure_future(
            self._nc.connect(
                servers=list(cfg.servers),
                error_cb=error_cb,
                disconnected_cb=disconnected_cb,
                reconnected_cb=reconnected_cb,
                closed_cb=closed_cb,
                name=cfg.client_name,
                inbox_prefix=cfg.inbox_prefix,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=cfg.reconnect_wait,  # type: ignore[arg-type]  # nats-py annotates int
                connect_timeout=min(cfg.connect_timeout, 2.0),  # type: ignore[arg-type]  # likewise
                ping_interval=5,
                max_outstanding_pings=2,
                token=cfg.auth_token,
                user=cfg.user,
                password=cfg.password,
                nkeys_seed_str=cfg.nkey_seed,
                user_credentials=cfg.creds_file,
                tls=cfg.tls,
                # Room for the whole window and the sweep's resends: a publish never forces a flush
                # (which, cancelled, kills the flusher of nats-py before 2.10).
                pending_size=2 * cfg.window_bytes + 4 * 1024 * 1024,
            )
        )
        try:
            waits: set[asyncio.Future[Any]] = {connect, fatal}
            done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the worker is stopping: do not leave nats-py connecting
            await cancel_and_wait(connect, 1.0)
            raise
        if connect not in done:
            await cancel_and_wait(connect, 1.0)
            await self._abandon()
            # a fatal error (bad credentials or certificate) is the reason, even when nats-py's
            # next attempt failed otherwise (the server may reset the connection after -ERR)
            error = fatal.result() if fatal.done() else self._last_error
            why = _describe(error, tls_given) if error is not None else "no answer"
            if fatal.done():  # it came at once: no waiting to report
                raise BrokerError(f"could not connect to {cfg.redacted_servers}: {why}") from error
            raise BrokerUnavailable(f"could not connect to {cfg.redacted_servers} within {timeout} s: {why}") from error
        try:
            connect.result()
        except Exception as exc:
            await self._abandon()
            raise BrokerError(f"could not connect to {cfg.redacted_servers}: {_describe(exc, tls_given)}") from exc
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

    def _refuse_plain_text(self) -> None:
        """Never fall back to plain text when TLS was asked for.

        nats-py upgrades to TLS only when the server's INFO says ``tls_required``: with a
        ``tls://`` URL (or a ``tls=`` context) and a server without TLS it would silently send
        the credentials and every event in clear. Checked on every (re)connection, before the
        CONNECT carrying the credentials: a server that offers TLS without requiring it
        (``allow_non_tls``) is upgraded; one without TLS is refused (a fatal `BrokerError`).
        """
        nc = self._nc
        original = getattr(nc, "_process_info", None)  # the one place nats-py reads the server's INFO
        config = self._config
        wants_tls = any(_wants_tls(config, urlsplit(url).scheme) for url in config.servers)
        params = _parameters(original) if original is not None else ()
        if original is None or params[:2] != ("info", "initial_connection"):
            if wants_tls:  # without the check TLS could silently be skipped: refuse instead
                raise BrokerError(
                    f"nats-py {nats_py_version()} reads the server's INFO differently than "
                    "expected; refusing to connect, since TLS could not be enforced"
                )
            return

        def check(info: dict[str, Any], initial_connection: bool) -> None:
            server = nc._current_server  # noqa: SLF001
            wanted = initial_connection and server is not None and _wants_tls(config, server.uri.scheme)
            if wanted and not info.get("tls_required"):
                if not info.get("tls_available"):
                    raise nats.errors.SecureConnWantedError()
                info["tls_required"] = True  # the same dict nats-py reads next: it upgrades

        # nats-py before 2.10 calls it without await: the wrapper must be of the same kind.
        if inspect.iscoroutinefunction(original):

            async def process_info(info: dict[str, Any], initial_connection: bool = False) -> None:
                check(info, initial_connection)
                await original(info, initial_connection=initial_connection)

            nc._process_info = process_info  # type: ignore[method-assign]  # noqa: SLF001
        else:

            def process_info_sync(info: dict[str, Any], initial_connection: bool = False) -> None:
                check(info, initial_connection)
                original(info, initial_connection=initial_connection)

            nc._process_info = process_info_sync  # type: ignore[assignment,method-assign]  # noqa: SLF001

    async def _abandon(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):  # a half-open connection may fail to close in any way
            await asyncio.wait_for(self._nc.close(), 1.0)

    async def stream_captures(self, subject: str, timeout: float) -> bool | None:
        """Whether some JetStream stream captures ``subject`` (None if the server did not say)."""
        return await stream_captures(self._nc, subject, timeout)

    async def close(self, timeout: float) -> None:
        """Close the connection, waiting at most ``timeout`` seconds."""
        self._closing = True
        try:
            await asyncio.wait_for(self._nc.close(), timeout)
        except Exception:  # noqa: BLE001 - closing a broken connection may fail in any way
            transport = getattr(self._nc, "_transport", None)
            writer = getattr(transport, "_io_writer", None) or getattr(transport, "_writer", None)
            if writer is not None:  # do not leave the socket to the garbage collector
                writer.transport.abort()


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
