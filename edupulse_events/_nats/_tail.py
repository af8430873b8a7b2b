"""Following what arrives on a subject, or reading a stream from a point: for ``edupulse-events tail``.

This module owns the NATS side of ``tail``: connecting as a publisher with the same config
would (`NatsTransport`: its credentials, its TLS enforcement, its credential-free errors),
then either a core subscription or an ephemeral, unacknowledged pull consumer on a JetStream
stream starting at a sequence, a time, the first or only new messages, and handing each
message's bytes to a callback until the callback says stop, nothing came for ``idle_timeout``
seconds, or (``until_end``) the stream's end as it was when reading started is passed.
Decoding and printing are the command's (`_cli._tail`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, NamedTuple

import attrs
import nats.errors
import nats.js.api
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from ..config import PublisherConfig
from ..errors import BrokerError, BrokerUnavailable
from ._client import NatsTransport

__all__ = ["StartAt", "TailMessage", "tail_messages", "tail_messages_async"]

_FETCH_BATCH = 256
_POLL = 1.0  # longest single wait, so an idle deadline or a Ctrl-C is noticed within it
_TIMEOUTS = (nats.errors.TimeoutError, asyncio.TimeoutError)


class TailMessage(NamedTuple):
    """One message: its subject, its body, and its stream sequence (None from a core subscription)."""

    subject: str
    data: bytes
    sequence: int | None


class StartAt(NamedTuple):
    """Where reading a stream starts: ``sequence``, else ``time``, else only new messages
    (``new_only``), else the first message stored."""

    sequence: int | None = None
    time: datetime | None = None
    new_only: bool = False

    def consumer_config(self) -> nats.js.api.ConsumerConfig:
        """An ephemeral consumer's settings: no acks, in memory, gone after a minute unused."""
        policy = nats.js.api.DeliverPolicy
        deliver = (
            policy.BY_START_SEQUENCE
            if self.sequence is not None
            else policy.BY_START_TIME
            if self.time is not None
            else policy.NEW
            if self.new_only
            else policy.ALL
        )
        return nats.js.api.ConsumerConfig(
            deliver_policy=deliver,
            opt_start_seq=self.sequence,
            # RFC 3339 text: nats-py before 2.7 sends the field as given (a datetime would not
            # serialize); later ones pass a str through unchanged
            opt_start_time=_rfc3339(self.time) if self.sequence is None and self.time is not None else None,
            ack_policy=nats.js.api.AckPolicy.NONE,
            inactive_threshold=60.0,
            mem_storage=True,
        )


def _rfc3339(moment: datetime) -> Any:
    """``moment`` as the UTC RFC 3339 text nats-server reads (typed Any: nats-py declares a datetime)."""
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


Fetch = Callable[[float], Awaitable[list[Msg]]]


class _End(NamedTuple):
    """The end of a stream as it was when reading started: its last sequence then, and how many
    messages the consumer still has to deliver (matching its subject filter) now."""

    last: int
    pending: Callable[[], Awaitable[int]]


async def _core(nc: Client, subject: str, timeout: float) -> Fetch:
    sub = await nc.subscribe(subject)
    # the server has the subscription before on_ready is called (nats-py annotates an int timeout)
    await nc.flush(timeout=timeout)  # type: ignore[arg-type]

    async def fetch(wait: float) -> list[Msg]:
        return [await sub.next_msg(timeout=wait)]

    return fetch


async def _stream(
    nc: Client, stream: str, subject: str, start: StartAt, timeout: float, until_end: bool
) -> tuple[Fetch, _End | None]:
    js = nc.jetstream(timeout=timeout)
    try:
        # the end is taken before the consumer exists: whatever it delivers past it came later
        last = (await js.stream_info(stream)).state.last_seq if until_end else 0
        psub = await js.pull_subscribe(subject, stream=stream, config=start.consumer_config())
    except nats.js.errors.NotFoundError:
        raise BrokerError(f"JetStream stream {stream!r} does not exist") from None
    except (nats.errors.Error, *_TIMEOUTS) as exc:
        raise BrokerError(f"could not read stream {stream!r}: {exc or type(exc).__name__}") from exc

    async def fetch(wait: float) -> list[Msg]:
        try:
            return await psub.fetch(_FETCH_BATCH, timeout=wait)
        except nats.errors.ConnectionClosedError as exc:
            raise BrokerUnavailable(f"the connection closed while reading stream {stream!r}") from exc
        except nats.js.errors.ServiceUnavailableError:  # a leader election: ask again
            return []

    async def pending() -> int:
        try:
            return (await psub.consumer_info()).num_pending or 0
        except (nats.errors.Error, *_TIMEOUTS):
            return 1  # not known now: keep reading, ask again at the next idle poll

    return fetch, (_End(last, pending) if until_end else None)


async def _pump(
    fetch: Fetch, handle: Callable[[TailMessage], bool], idle_timeout: float | None, in_stream: bool, end: _End | None
) -> bool:
    loop = asyncio.get_running_loop()
    deadline = None if idle_timeout is None else loop.time() + idle_timeout
    if end is not None and await end.pending() == 0:
        return True  # nothing stored from the start point on (matching the filter)
    while True:
        wait = _POLL if deadline is None else deadline - loop.time()
        if wait <= 0:
            return False
        try:
            msgs = await fetch(min(wait, _POLL))
        except _TIMEOUTS:
            if end is not None and await end.pending() == 0:
                return True  # the messages left before the end were deleted meanwhile
            continue
        for msg in msgs:
            sequence = msg.metadata.sequence.stream if in_stream else None
            if end is not None and sequence is not None and sequence > end.last:
                return True  # stored after reading started
            if not handle(TailMessage(msg.subject, msg.data, sequence)):
                return True
            if end is not None and (sequence == end.last or msg.metadata.num_pending == 0):
                return True  # the last message stored when reading started, or nothing left at all
        if msgs and idle_timeout is not None:
            deadline = loop.time() + idle_timeout


async def tail_messages_async(
    config: PublisherConfig,
    subject: str,
    handle: Callable[[TailMessage], bool],
    *,
    stream: str | None = None,
    start: StartAt | None = None,
    idle_timeout: float | None = None,
    until_end: bool = False,
    on_ready: Callable[[], None] | None = None,
) -> bool:
    """Pass every message on ``subject`` (wildcards allowed; in a stream ``""`` is all of it) to
    ``handle`` until it returns False (then True), or none came for ``idle_timeout`` seconds
    (then False; None: never), or — with ``stream`` and ``until_end`` — the last message the
    stream held when reading started has been passed or nothing is left before it (then True).
    ``on_ready`` runs once the subscription or consumer exists.
    Raises `BrokerError` when connecting or reading fails (never a nats-py exception)."""
    cfg = attrs.evolve(config, stream=None, create_stream=False, spool_dir=None)
    transport = NatsTransport(cfg, lambda _acks: None, lambda _up: None, lambda: None)
    transport.check_only = True  # no ack inbox, no path probe: this connection never publishes
    await transport.connect(cfg.connect_timeout)
    # The transport's connection itself: one place decides how to connect (credentials, TLS).
    nc: Client = transport.client
    try:
        try:
            end = None
            if stream is None:
                fetch = await _core(nc, subject, cfg.connect_timeout)
            else:
                fetch, end = await _stream(nc, stream, subject, start or StartAt(), cfg.connect_timeout, until_end)
        except BrokerError:
            raise
        except (nats.errors.Error, *_TIMEOUTS) as exc:
            raise BrokerError(f"could not subscribe to {subject!r}: {exc or type(exc).__name__}") from exc
        if on_ready is not None:
            on_ready()
        return await _pump(fetch, handle, idle_timeout, stream is not None, end)
    finally:
        await transport.close(1.0)


def tail_messages(
    config: PublisherConfig,
    subject: str,
    handle: Callable[[TailMessage], bool],
    *,
    stream: str | None = None,
    start: StartAt | None = None,
    idle_timeout: float | None = None,
    until_end: bool = False,
    on_ready: Callable[[], None] | None = None,
) -> bool:
    """Blocking `tail_messages_async` (not from inside a running event loop; ``handle`` runs on
    this thread). A KeyboardInterrupt closes the connection and propagates."""
    return asyncio.run(
        tail_messages_async(
            config,
            subject,
            handle,
            stream=stream,
            start=start,
            idle_timeout=idle_timeout,
            until_end=until_end,
            on_ready=on_ready,
        )
    )
