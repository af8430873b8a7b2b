"""The only module that imports nats-py: connection, raw pipelined publishing, acks, streams.

The rest of the package talks to `NatsTransport`, which speaks in bytes and library
exceptions. Every nats-py exception is mapped here (`BrokerError`, with ``transient`` telling
the worker whether a retry can help); none escapes to callers.

Speed: publishing writes ready-made ``HPUB`` commands into the client's pending buffer and
kicks its flusher once per batch (nats-py's ``publish()`` re-validates headers and subjects
per message). JetStream acks arrive on one wildcard inbox; `AckReader` (``_acks.py``) takes
them from the bytes a read at a time, and the few it leaves to nats-py's parser are taken
from ``_process_msg`` by subscription id, skipping per-message ``Msg`` objects and tasks.
Both use nats-py internals (``_pending``, ``_pending_data_size``, ``_flush_pending``,
``_process_msg``, the parser's ``parse``/``reset``/``buf``/``state``), so the nats-py range is
pinned in setup.cfg and the test suite covers this path.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

import nats
import nats.errors
import nats.js.api
import nats.js.errors
from nats.aio.client import Client

from ._acks import Ack, AckReader, read_ack
from .config import PublisherConfig
from .errors import BrokerError

__all__ = ["NatsTransport", "broker_error", "cancel_and_wait"]

log = logging.getLogger("edupulse_events")

# on_acks([Ack, ...]): the acks of one read, in arrival order
AckCallback = Callable[[list[Ack]], None]


def broker_error(message: str, *, transient: bool, cause: BaseException | None = None) -> BrokerError:
    """A `BrokerError` marked transient (worth retrying) or permanent."""
    err = BrokerError(message)
    err.transient = transient  # type: ignore[attr-defined]
    if cause is not None:
        err.__cause__ = cause
    return err


async def cancel_and_wait(task: asyncio.Future, limit: float) -> None:
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
        return "TLS was asked for (a tls:// URL or a tls= SSLContext) but the server does not offer TLS; refusing to connect in plain text"
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


class NatsTransport:
    """One nats-py connection, owned by the publisher thread's event loop."""

    def __init__(
        self,
        config: PublisherConfig,
        on_acks: AckCallback,
        on_state: Callable[[bool], None],
        on_closed: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        self._on_acks = on_acks
        self._on_state = on_state
        self._on_closed = on_closed
        self._nc: Client = nats.NATS()
        self._prefix = b""
        self._ack_sid: int | None = None
        self._last_error: BaseException | None = None
        self._fatal: asyncio.Future | None = None
        self.max_payload: int | None = None
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._nc.is_connected

    @property
    def reply_prefix(self) -> bytes:
        """Acks for message ``seq`` arrive on ``reply_prefix + str(seq)``."""
        return self._prefix

    async def connect(self, timeout: float | None) -> None:
        """Connect (retrying servers until ``timeout``; None = forever) or raise `BrokerError`."""
        cfg = self._config
        loop = asyncio.get_running_loop()
        self._fatal = loop.create_future()
        tls_given = cfg.tls is not None
        self._refuse_plain_text()

        async def error_cb(exc: Exception) -> None:
            self._last_error = exc
            if _is_fatal(exc):
                log.error("broker %s: %s", cfg.redacted_servers, _describe(exc, tls_given))
                if not self._fatal.done():
                    self._fatal.set_result(exc)
            else:
                log.debug("broker %s: %s", cfg.redacted_servers, _describe(exc, tls_given))

        async def disconnected_cb() -> None:
            if not self._closing:
                log.warning("disconnected from broker %s", cfg.redacted_servers)
            self._on_state(False)

        async def reconnected_cb() -> None:
            self.max_payload = self._nc.max_payload
            log.info("reconnected to broker %s", cfg.redacted_servers)
            self._on_state(True)

        async def closed_cb() -> None:
            # nats-py gives up on a connection for good after some server errors (-ERR):
            # tell the worker, which builds a new one, instead of timing out forever.
            if not self._closing and self._on_closed is not None:
                log.error(
                    "broker connection %s was closed by the client library (%s)",
                    cfg.redacted_servers,
                    _describe(self._nc.last_error) if self._nc.last_error else "no error",
                )
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
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=cfg.reconnect_wait,  # type: ignore[arg-type]
                connect_timeout=min(cfg.connect_timeout, 2.0),  # type: ignore[arg-type]
                ping_interval=5,
                max_outstanding_pings=2,
                token=cfg.auth_token,
                user=cfg.user,
                password=cfg.password,
                tls=cfg.tls,
                pending_size=max(2 * 1024 * 1024, 4 * cfg.window * 1024),
            )
        )
        try:
            done, _ = await asyncio.wait({connect, self._fatal}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the worker is stopping: do not leave nats-py connecting
            await cancel_and_wait(connect, 1.0)
            raise
        if connect not in done:
            await cancel_and_wait(connect, 1.0)
            await self._abandon()
            fatal = self._fatal.done()
            # a fatal error (bad credentials or certificate) is the reason, even when nats-py's
            # next attempt failed otherwise (the server may reset the connection after -ERR)
            error = self._fatal.result() if fatal else self._last_error
            why = _describe(error, tls_given) if error is not None else "no answer"
            within = "" if fatal else f" within {timeout} s"  # a fatal error came at once: no waiting to report
            raise broker_error(
                f"could not connect to {cfg.redacted_servers}{within}: {why}", transient=not fatal, cause=error
            )
        try:
            connect.result()
        except Exception as exc:
            await self._abandon()
            raise broker_error(
                f"could not connect to {cfg.redacted_servers}: {_describe(exc, tls_given)}", transient=False, cause=exc
            ) from None
        self.max_payload = self._nc.max_payload
        try:
            await self._subscribe_acks()
            if cfg.create_stream:
                await self.ensure_stream()
        except BrokerError:
            await self.close(1.0)
            raise
        log.info("connected to broker %s", cfg.redacted_servers)
        self._on_state(True)

    def _refuse_plain_text(self) -> None:
        """Never fall back to plain text when TLS was asked for.

        nats-py upgrades to TLS only when the server's INFO says ``tls_required``: with a
        ``tls://`` URL (or a ``tls=`` context) and a server without TLS it would silently send
        the credentials and every event in clear. Checked on every (re)connection, before the
        CONNECT carrying the credentials: a server that offers TLS without requiring it
        (``allow_non_tls``) is upgraded; one without TLS is refused (a fatal `BrokerError`).
        """
        nc = self._nc
        original = nc._process_info
        config = self._config

        async def process_info(info: dict, initial_connection: bool = False) -> None:
            server = nc._current_server
            if (
                initial_connection
                and server is not None
                and _wants_tls(config, server.uri.scheme)
                and not info.get("tls_required")
            ):
                if not info.get("tls_available"):
                    raise nats.errors.SecureConnWantedError()
                info["tls_required"] = True  # the same dict nats-py reads next: it upgrades
            await original(info, initial_connection=initial_connection)

        nc._process_info = process_info  # type: ignore[method-assign]

    async def _abandon(self) -> None:
        self._closing = True
        try:
            await asyncio.wait_for(self._nc.close(), 1.0)
        except Exception:
            pass

    async def _subscribe_acks(self) -> None:
        nc = self._nc
        self._prefix = nc.new_inbox().encode() + b"."
        sub = await nc.subscribe(self._prefix.decode() + "*")
        self._ack_sid = sub._id
        original = nc._process_msg
        on_acks = self._on_acks
        sid_ = self._ack_sid
        start = len(self._prefix)

        async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
            # acks the AckReader left to nats-py's parser: with headers (a status), or split oddly
            if sid != sid_:
                await original(sid, subject, reply, data, headers)
                return
            try:
                seq = int(subject[start:])
            except ValueError:
                return
            if headers and headers[8:9] == b" ":  # inline status: "NATS/1.0 503\r\n\r\n"
                on_acks([(seq, None, None, False, {"status": headers[9:12].decode("ascii", "replace")})])
            else:
                on_acks([read_ack(seq, data)])

        nc._process_msg = process_msg  # type: ignore[method-assign]
        AckReader(nc._ps, self._prefix, sid_, on_acks)

    def write(self, commands: list[bytes]) -> None:
        """Queue ready-made protocol commands on the connection (sent by `kick`)."""
        nc = self._nc
        nc._pending.extend(commands)
        nc._pending_data_size += sum(map(len, commands))

    async def kick(self) -> None:
        """Ask the client's flusher to write what is pending (once: a request already queued
        covers it, and with a hung broker one request per batch would fill the flusher's
        bounded queue and block this loop)."""
        queue = self._nc._flush_queue
        if queue is not None and not queue.empty():
            return
        await self._nc._flush_pending()

    @property
    def backlog(self) -> int:
        """Bytes written but not yet handed to the socket (grows while the broker hangs)."""
        return self._nc._pending_data_size

    async def write_then_ping(self, commands: list[bytes]) -> asyncio.Future:
        """Write ``commands`` straight to the socket, then a PING; the returned future is done
        at its PONG, when the server has read everything before it (core NATS delivery).

        Both bypass the pending buffer on purpose: nats-py writes PINGs straight to the socket,
        so a PING after buffered commands could overtake them. The future is never cancelled
        by us (nats-py's own flush() cancels its future on timeout, and a late PONG then kills
        its read loop): the caller times the answer out itself.
        """
        nc = self._nc
        if not nc.is_connected or nc._transport is None:
            raise broker_error("not connected to the broker", transient=True)
        pong: asyncio.Future = asyncio.get_running_loop().create_future()
        try:
            nc._transport.writelines(commands)
            await nc._send_ping(pong)
        except (nats.errors.Error, OSError, AssertionError) as exc:
            raise broker_error(f"could not write to the broker: {exc!r}", transient=True, cause=exc) from None
        return pong

    async def stream_captures(self, subject: str, timeout: float) -> bool | None:
        """Whether some JetStream stream captures ``subject`` (None if the server did not say)."""
        try:
            await self._nc.jsm(timeout=timeout).find_stream_name_by_subject(subject)
            return True
        except nats.js.errors.NotFoundError:
            return False
        except Exception:
            return None

    async def ensure_stream(self) -> None:
        """Create the configured stream for the subject when it does not exist."""
        cfg = self._config
        jsm = self._nc.jsm(timeout=cfg.connect_timeout)
        try:
            try:
                await jsm.stream_info(cfg.stream)  # type: ignore[arg-type]
                return
            except nats.js.errors.NotFoundError:
                pass
            await jsm.add_stream(name=cfg.stream, subjects=[cfg.stream_subject], num_replicas=cfg.stream_replicas)
            log.info("created JetStream stream %s for subject %s", cfg.stream, cfg.stream_subject)
        except Exception as exc:
            raise broker_error(
                f"could not ensure stream {cfg.stream!r}: {exc or type(exc).__name__}", transient=False, cause=exc
            ) from None

    async def close(self, timeout: float) -> None:
        """Close the connection, waiting at most ``timeout`` seconds."""
        self._closing = True
        try:
            await asyncio.wait_for(self._nc.close(), timeout)
        except Exception:
            writer = getattr(self._nc._transport, "_io_writer", None) or getattr(self._nc._transport, "_writer", None)
            if writer is not None:  # do not leave the socket to the garbage collector
                writer.transport.abort()


class StoredMessage:
    """One message read back from a JetStream stream (for tests, demos and audits)."""

    __slots__ = ("data", "headers", "sequence", "subject")

    def __init__(self, sequence: int, subject: str, headers: dict, data: bytes) -> None:
        self.sequence = sequence
        self.subject = subject
        self.headers = headers
        self.data = data

    def __repr__(self) -> str:
        return f"<StoredMessage #{self.sequence} {self.subject} {len(self.data)} bytes>"


async def read_stream_async(
    url: str, stream: str, *, timeout: float = 10.0, token: str | None = None, tls: ssl.SSLContext | None = None
) -> list[StoredMessage]:
    """Every message in ``stream``, oldest first, via an ephemeral pull consumer."""
    nc = await nats.connect(
        servers=url.split(","), token=token, tls=tls, connect_timeout=2, allow_reconnect=True, max_reconnect_attempts=5
    )
    try:
        js = nc.jetstream(timeout=timeout)
        info = await js.stream_info(stream)
        total = info.state.messages
        out: list[StoredMessage] = []
        if total == 0:
            return out
        deadline = asyncio.get_running_loop().time() + timeout
        while True:  # consumer creation times out while a cluster elects its meta leader
            try:
                psub = await js.pull_subscribe(
                    "", stream=stream, config=nats.js.api.ConsumerConfig(ack_policy=nats.js.api.AckPolicy.NONE)
                )
                break
            except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
                if asyncio.get_running_loop().time() > deadline:
                    raise
        while len(out) < total:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise broker_error(
                    f"read {len(out)} of {total} messages from {stream} within {timeout} s", transient=True
                )
            try:
                msgs = await psub.fetch(min(1000, total - len(out)), timeout=min(remaining, 2.0))
            except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
                continue
            for msg in msgs:
                out.append(StoredMessage(msg.metadata.sequence.stream, msg.subject, dict(msg.headers or {}), msg.data))
        await psub.unsubscribe()
        return out
    finally:
        await nc.close()


def read_stream(url: str, stream: str, **kwargs: object) -> list[StoredMessage]:
    """Blocking `read_stream_async` (not from inside a running event loop)."""
    return asyncio.run(read_stream_async(url, stream, **kwargs))  # type: ignore[arg-type]
