"""Opening one nats-py connection the way every part of the library does: the publisher's
transport (``_client.py``), ``tail`` (``_tail.py``) and the consumer (``_pull.py``).

`open_connection` connects with the settings' credentials and TLS, refuses to fall back to
plain text when TLS was asked for (`refuse_plain_text`), retries servers until a timeout,
stops at once on errors no retry can fix (bad credentials or certificates), and maps every
nats-py failure to a `BrokerError` whose message says why without quoting a credential.
`ConnectionSettings` is what it reads: `PublisherConfig` and `ConsumerConfig` both have it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import ssl
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import nats
import nats.errors
from nats.aio.client import Client

from ..errors import BrokerError, BrokerUnavailable
from ._paths import nats_py_version

__all__ = [
    "ConnectionSettings",
    "cancel_and_wait",
    "close_connection",
    "describe",
    "open_connection",
    "refuse_plain_text",
]

log = logging.getLogger("edupulse_events")


class ConnectionSettings(Protocol):
    """What connecting reads from a config (`PublisherConfig`, `ConsumerConfig`)."""

    @property
    def servers(self) -> tuple[str, ...]: ...
    @property
    def auth_token(self) -> str | None: ...
    @property
    def user(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...
    @property
    def nkey_seed(self) -> str | None: ...
    @property
    def creds_file(self) -> str | None: ...
    @property
    def tls(self) -> ssl.SSLContext | None: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def reconnect_wait(self) -> float: ...
    @property
    def client_name(self) -> str: ...
    @property
    def inbox_prefix(self) -> str: ...
    @property
    def redacted_servers(self) -> str: ...


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


def describe(exc: BaseException, tls_given: bool = True) -> str:
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


def _wants_tls(config: ConnectionSettings, scheme: str) -> bool:
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


def refuse_plain_text(nc: Client, config: ConnectionSettings) -> None:
    """Never fall back to plain text when TLS was asked for.

    nats-py upgrades to TLS only when the server's INFO says ``tls_required``: with a
    ``tls://`` URL (or a ``tls=`` context) and a server without TLS it would silently send
    the credentials and every event in clear. Checked on every (re)connection, before the
    CONNECT carrying the credentials: a server that offers TLS without requiring it
    (``allow_non_tls``) is upgraded; one without TLS is refused (a fatal `BrokerError`).
    """
    original = getattr(nc, "_process_info", None)  # the one place nats-py reads the server's INFO
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


def _ignore() -> None:
    return None


async def open_connection(
    nc: Client,
    cfg: ConnectionSettings,
    timeout: float | None,
    *,
    pending_size: int = 2 * 1024 * 1024,
    closing: Callable[[], bool] = lambda: False,
    on_disconnected: Callable[[], None] = _ignore,
    on_reconnected: Callable[[], None] = _ignore,
    on_closed: Callable[[], None] = _ignore,
    on_abandoned: Callable[[], None] = _ignore,
) -> None:
    """Connect ``nc`` (retrying servers until ``timeout``; None = forever) or raise `BrokerError`
    (`BrokerUnavailable` when no server answered in time). Reconnects for ever after that;
    ``closing()`` tells the callbacks whether the owner is closing on purpose (then quiet);
    ``on_closed`` runs when nats-py gave up on the connection by itself; ``on_abandoned`` before
    a failed attempt is closed."""
    loop = asyncio.get_running_loop()
    fatal: asyncio.Future[BaseException] = loop.create_future()
    last_error: list[BaseException] = []
    tls_given = cfg.tls is not None
    abandoned = False
    refuse_plain_text(nc, cfg)

    async def error_cb(exc: Exception) -> None:
        last_error[:] = [exc]
        if _is_fatal(exc):
            log.error("broker %s: %s", cfg.redacted_servers, describe(exc, tls_given))
            if not fatal.done():
                fatal.set_result(exc)
        else:
            log.debug("broker %s: %s", cfg.redacted_servers, describe(exc, tls_given))

    async def disconnected_cb() -> None:
        if not closing() and not abandoned:
            log.warning("disconnected from broker %s", cfg.redacted_servers)
        on_disconnected()

    async def reconnected_cb() -> None:
        log.info("reconnected to broker %s", cfg.redacted_servers)
        on_reconnected()

    async def closed_cb() -> None:
        # nats-py gives up on a connection for good after some server errors (-ERR):
        # tell the owner, which builds a new one, instead of timing out forever.
        if not closing() and not abandoned:
            last = nc.last_error
            why = describe(last) if last is not None else "no error"
            log.error("broker connection %s was closed by the client library (%s)", cfg.redacted_servers, why)
            on_closed()

    async def abandon() -> None:
        nonlocal abandoned
        abandoned = True
        on_abandoned()
        with contextlib.suppress(Exception):  # a half-open connection may fail to close in any way
            await asyncio.wait_for(nc.close(), 1.0)

    connect = asyncio.ensure_future(
        nc.connect(
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
            pending_size=pending_size,
        )
    )
    try:
        waits: set[asyncio.Future[Any]] = {connect, fatal}
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the owner is stopping: do not leave nats-py connecting
        await cancel_and_wait(connect, 1.0)
        raise
    if connect not in done:
        await cancel_and_wait(connect, 1.0)
        await abandon()
        # a fatal error (bad credentials or certificate) is the reason, even when nats-py's
        # next attempt failed otherwise (the server may reset the connection after -ERR)
        error = fatal.result() if fatal.done() else (last_error[0] if last_error else None)
        why = describe(error, tls_given) if error is not None else "no answer"
        if fatal.done():  # it came at once: no waiting to report
            raise BrokerError(f"could not connect to {cfg.redacted_servers}: {why}") from error
        raise BrokerUnavailable(f"could not connect to {cfg.redacted_servers} within {timeout} s: {why}") from error
    try:
        connect.result()
    except Exception as exc:
        await abandon()
        raise BrokerError(f"could not connect to {cfg.redacted_servers}: {describe(exc, tls_given)}") from exc


async def close_connection(nc: Client, timeout: float) -> None:
    """Close ``nc``, waiting at most ``timeout`` seconds; past it (or on any failure) abort the socket."""
    try:
        await asyncio.wait_for(nc.close(), timeout)
    except Exception:  # noqa: BLE001 - closing a broken connection may fail in any way
        transport = getattr(nc, "_transport", None)
        writer = getattr(transport, "_io_writer", None) or getattr(transport, "_writer", None)
        if writer is not None:  # do not leave the socket to the garbage collector
            writer.transport.abort()
