"""The consumer's NATS side: a durable JetStream pull consumer, its fetches, acks and dead letters.

`PullConsumer` lives on the consumer thread's event loop. It connects through `open_connection`
(the publisher's credentials, TLS enforcement and credential-free errors), creates the durable
consumer or binds to it (refusing one that is a push consumer or filters other subjects than
asked), checks that a stream captures the dead-letter subject, and then:

- `fetch` asks for up to ``batch`` messages for up to ``wait`` seconds (an idle heartbeat on long
  waits) and returns them as `Delivery` tuples (bytes and metadata, no nats-py type): an empty
  list when none came, a leader election or a reconnection under way (nats-py's ``fetch``);
- `stream` keeps pull requests outstanding on an inbox of its own for as long as its caller says
  there is room, and hands over the messages of each socket read as they come (the way nats.go's
  ``Consume`` does): no waiting for a whole batch, and the next request is on its way while the
  last one's messages are handled (nats-py's ``fetch`` waits for each message in turn);
- `respond` writes acks (``+ACK``, ``-NAK {"delay": ns}``, ``+TERM reason``, ``+WPI``) to the
  messages' reply subjects, many per wake-up of the loop;
- `dead_letter` publishes a message to the dead-letter subject through JetStream (waiting for the
  stream's ack) with its original headers, the reason and where it came from; its ``Nats-Msg-Id``
  is the stream and sequence it came from, so two processes dead-lettering the same message store
  it once;
- `watch_max_deliveries` follows the server's ``MAX_DELIVERIES`` advisories for the durable:
  a message whose last delivery expired unacknowledged (a consumer that died holding it) is read
  from the stream by its sequence and handed over to be dead-lettered too.

Every nats-py failure becomes a `BrokerError` (`BrokerUnavailable` when a retry can help).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import nats.errors
import nats.js
import nats.js.api
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from ..config import ConsumerConfig
from ..errors import BrokerError, BrokerUnavailable, ConfigError
from ._connection import close_connection, open_connection
from ._paths import fast_path_refusal, nats_py_version
from ._streams import stream_captures

__all__ = ["DEAD_LETTER_HEADERS", "Delivery", "PullConsumer", "check_nats_py", "nak_payload", "term_payload"]

log = logging.getLogger("edupulse_events")
#: The 409 that ends a pull request whose next message does not fit in its ``max_bytes``.
_MAX_BYTES = "Message Size Exceeds MaxBytes"

ACK = b"+ACK"
PROGRESS = b"+WPI"
_TIMEOUTS = (nats.errors.TimeoutError, asyncio.TimeoutError)
#: Headers a dead letter carries beside the original message's own.
DEAD_LETTER_HEADERS = (
    "Edupulse-Dead-Letter-Reason",
    "Edupulse-Dead-Letter-Stream",
    "Edupulse-Dead-Letter-Sequence",
    "Edupulse-Dead-Letter-Subject",
    "Edupulse-Dead-Letter-Consumer",
    "Edupulse-Dead-Letter-Deliveries",
)
_MAX_REASON = 1024


def check_nats_py() -> None:
    """`ConfigError` unless the installed nats-py pulls with idle heartbeats (2.9 and later), which
    the consumer needs to tell a quiet stream from a lost server."""
    fetch = getattr(getattr(nats.js.JetStreamContext, "PullSubscription", None), "fetch", None)
    if fetch is None or "heartbeat" not in inspect.signature(fetch).parameters:
        raise ConfigError(
            f"NatsConsumer needs nats-py 2.9 or later (pull fetch with idle heartbeats); "
            f"nats-py {nats_py_version()} is installed"
        )


def nak_payload(delay: float | None) -> bytes:
    """A negative ack, redelivered after ``delay`` seconds (None or 0: at once)."""
    if not delay:
        return b"-NAK"
    return b"-NAK " + json.dumps({"delay": int(delay * 1_000_000_000)}).encode()


def term_payload(reason: str | None) -> bytes:
    """A termination, with ``reason`` (one line) for the server's advisory."""
    return b"+TERM" if not reason else b"+TERM " + _one_line(reason).encode()


def _one_line(text: str) -> str:
    """``text`` fit for a header value or a control line: printable, one line, bounded."""
    clean = "".join(c if c.isprintable() else " " for c in text)
    return clean[:_MAX_REASON]


class Delivery(NamedTuple):
    """One delivered message: its bytes and what JetStream says about it."""

    subject: str
    data: bytes
    headers: dict[str, str] | None
    reply: str
    stream_sequence: int
    consumer_sequence: int
    num_delivered: int
    num_pending: int
    timestamp: float


def _delivery(msg: Msg) -> Delivery:
    """The delivery's metadata read from its reply subject: ``$JS.ACK.<stream>.<consumer>.
    <delivered>.<stream seq>.<consumer seq>.<ns>.<pending>`` (or the form with a domain and
    an account hash before the stream), by hand where it has one of the two shapes (nats-py's
    ``metadata`` costs a few µs more per message), else by nats-py."""
    reply = msg.reply
    tokens = reply.split(".")
    base = 2 if len(tokens) == 9 else 4 if len(tokens) >= 11 else -1
    if base > 0 and tokens[0] == "$JS" and tokens[1] == "ACK":
        try:
            return Delivery(
                msg.subject,
                msg.data,
                msg.headers,
                reply,
                int(tokens[base + 3]),
                int(tokens[base + 4]),
                int(tokens[base + 2]),
                int(tokens[base + 6]),
                int(tokens[base + 5]) / 1e9,
            )
        except ValueError:
            pass
    meta = msg.metadata
    stamp = meta.timestamp
    return Delivery(
        msg.subject,
        msg.data,
        msg.headers,
        msg.reply,
        meta.sequence.stream,
        meta.sequence.consumer,
        meta.num_delivered or 1,
        meta.num_pending or 0,
        stamp.timestamp() if stamp is not None else 0.0,
    )


class PullConsumer:
    """One connection and one durable pull consumer, on the consumer thread's loop."""

    def __init__(self, config: ConsumerConfig, on_closed: Callable[[], None]) -> None:
        self._config = config
        self._nc = Client()
        self._sub: Any = None
        self._closing = False
        self._on_closed = on_closed
        self._advisories: Any = None
        self.max_deliver: int | None = None
        self._requested = 0
        self._streaming = False
        self._closing_sub: Any = None
        self._late: set[asyncio.Task[None]] = set()
        #: Acks written into nats-py's buffer directly (see `respond`).
        self._raw = fast_path_refusal() is None

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    async def open(self, timeout: float) -> None:
        """Connect, create or bind the durable, check the dead-letter subject; or `BrokerError`."""
        cfg = self._config
        await open_connection(
            self._nc, cfg, timeout, closing=lambda: self._closing, on_closed=self._on_closed, on_abandoned=self._abandon
        )
        try:
            await self._bind(timeout)
            if cfg.dead_letter_subject is not None:
                captured = await stream_captures(self._nc, cfg.dead_letter_subject, timeout)
                if captured is False:
                    raise BrokerError(
                        f"no JetStream stream captures the dead-letter subject {cfg.dead_letter_subject!r}: "
                        "add a stream for it (dead letters must be stored, not dropped)"
                    )
        except BaseException:
            await self.close(1.0)
            raise
        log.info("consuming %s/%s from %s", cfg.stream, cfg.durable, cfg.redacted_servers)

    def _abandon(self) -> None:
        self._closing = True

    async def _bind(self, timeout: float) -> None:
        cfg = self._config
        js = self._nc.jetstream(timeout=timeout)
        try:
            try:
                info = await js.consumer_info(cfg.stream, cfg.durable)
            except nats.js.errors.NotFoundError as exc:
                if exc.err_code == 10059:  # JSStreamNotFoundErr
                    raise BrokerError(f"JetStream stream {cfg.stream!r} does not exist") from None
                if not cfg.create:
                    raise BrokerError(
                        f"durable consumer {cfg.durable!r} does not exist on stream {cfg.stream!r} (create=False)"
                    ) from None
                info = await js.add_consumer(
                    cfg.stream,
                    nats.js.api.ConsumerConfig(
                        durable_name=cfg.durable,
                        filter_subject=cfg.filter_subject,
                        ack_policy=nats.js.api.AckPolicy.EXPLICIT,
                        ack_wait=cfg.ack_wait,
                        max_deliver=cfg.max_deliver,
                        max_ack_pending=cfg.max_ack_pending,
                    ),
                )
                log.info("created durable consumer %s on stream %s", cfg.durable, cfg.stream)
            existing = info.config
            if existing.deliver_subject:
                raise BrokerError(
                    f"consumer {cfg.durable!r} on stream {cfg.stream!r} is a push consumer, not a pull one"
                )
            if cfg.filter_subject is not None and existing.filter_subject not in (cfg.filter_subject,):
                raise BrokerError(
                    f"durable consumer {cfg.durable!r} filters {existing.filter_subject!r}, "
                    f"not {cfg.filter_subject!r}: use another durable name, or delete the consumer first"
                )
            self.max_deliver = existing.max_deliver if existing.max_deliver and existing.max_deliver > 0 else None
            self._sub = await js.pull_subscribe_bind(
                cfg.durable, cfg.stream, inbox_prefix=cfg.inbox_prefix.encode() + b"."
            )
        except BrokerError:
            raise
        except nats.js.errors.NotFoundError:
            raise BrokerError(f"JetStream stream {cfg.stream!r} does not exist") from None
        except (nats.errors.Error, *_TIMEOUTS) as exc:
            raise BrokerUnavailable(
                f"could not set up consumer {cfg.durable!r} on stream {cfg.stream!r}: {exc or type(exc).__name__}"
            ) from exc

    async def fetch(self, batch: int, wait: float) -> list[Delivery]:
        """Up to ``batch`` messages, waiting up to ``wait`` s for the first; [] when none came."""
        hb = self._config.heartbeat
        try:
            msgs = await self._sub.fetch(batch, timeout=wait, heartbeat=hb if wait > 2 * hb else None)
        except _TIMEOUTS:
            return []
        except nats.js.errors.ServiceUnavailableError:  # a leader election: ask again
            return []
        except nats.errors.ConnectionClosedError as exc:
            raise BrokerUnavailable(f"the connection closed while reading {self._config.stream!r}") from exc
        except nats.js.errors.APIError as exc:
            if exc.code in (408, 409, 503):  # request expired or conflicted (e.g. max waiting): ask again
                return []
            raise BrokerError(f"fetching from {self._config.durable!r}: {exc}") from exc
        except nats.errors.Error as exc:
            raise BrokerUnavailable(f"fetching from {self._config.durable!r}: {exc or type(exc).__name__}") from exc
        return [_delivery(msg) for msg in msgs if msg.reply]

    async def stream(
        self,
        room: Callable[[], int],
        deliver: Callable[[list[Delivery]], None],
        wake: asyncio.Event,
        poll: float,
        byte_room: Callable[[], int] | None = None,
        byte_limit: int | None = None,
    ) -> None:
        """Pull until cancelled or `end_stream`: while ``room()`` (messages the caller can take
        now) allows, keep up to two requests of up to ``batch`` outstanding, each expiring after
        ``poll`` s; give ``deliver`` the messages of each read. ``wake`` is set by the caller when
        room opens. Messages that arrive after the end are nak'ed at once.

        With ``byte_room`` (bytes the caller can take now, of ``byte_limit`` in all) one request
        at a time, asking for ``max_bytes`` of what is left. When the next message does not fit
        (the server's 409 "Message Size Exceeds MaxBytes", nothing delivered) the next request
        waits for more room; if nothing is held, the message is asked for alone, without a limit,
        so that no message larger than the limit stops the consumer."""
        cfg, nc = self._config, self._nc
        loop = asyncio.get_running_loop()
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{cfg.stream}.{cfg.durable}"
        inbox = nc.new_inbox()
        group: list[Delivery] = []
        self._requested = 0
        last_request = loop.time()
        accepting = True
        asked = 0  # the messages the last request asked for (bytes mode: one request at a time)
        starved: int | None = None  # the byte room in which the next message did not fit

        def flush_group() -> None:
            batch = group[:]
            group.clear()
            if accepting:
                deliver(batch)
            else:  # after the end (a request that outlived its expiry): give them back now
                task = loop.create_task(self.respond([(d.reply, b"-NAK") for d in batch]))
                self._late.add(task)
                task.add_done_callback(self._late.discard)

        async def on_msg(msg: Msg) -> None:
            nonlocal starved
            reply = msg.reply
            if reply:
                if not group:
                    loop.call_soon(flush_group)
                group.append(_delivery(msg))
                self._requested -= 1
                return
            status = (msg.headers or {}).get("Status", "")
            if status == "100":  # idle heartbeat
                return
            why = (msg.headers or {}).get("Description")
            if status in ("404", "408") or why == _MAX_BYTES:  # the request ended: the rest is not coming
                left = (msg.headers or {}).get("Nats-Pending-Messages")
                self._requested -= int(left) if left and left.isdigit() else self._requested
                if why == _MAX_BYTES and byte_room is not None and left == str(asked):  # nothing came
                    starved = byte_room()
            else:  # 409 (leadership change, max waiting...), 503: start over with new requests
                log.debug("pull request on %s ended: %s %s", cfg.durable, status, why)
                self._requested = 0
            self._requested = max(0, self._requested)
            wake.set()

        if self._closing_sub is not None:  # the last stream's inbox: its requests have expired
            with contextlib.suppress(Exception):
                await self._closing_sub.unsubscribe()
        sub = await nc.subscribe(inbox, cb=on_msg)
        try:
            half = max(1, cfg.batch // 2)
            while self._streaming:
                wake.clear()
                if self._requested > 0 and loop.time() - last_request > poll + 2.0:
                    self._requested = 0  # lost with a connection, or never answered: ask again
                free = room() - self._requested
                if byte_room is not None:
                    request = self._bytes_request(free, byte_room(), byte_limit, starved, poll)
                    if request is not None and nc.is_connected:
                        asked, body = request
                        starved = None
                        self._requested += asked
                        last_request = loop.time()
                        await nc.publish(subject, body, reply=inbox)
                        continue
                elif self._requested <= half and free >= min(cfg.batch, half) and nc.is_connected:
                    n = min(cfg.batch, free)
                    body = b'{"batch":%d,"expires":%d}' % (n, int(poll * 1e9))
                    self._requested += n
                    last_request = loop.time()
                    await nc.publish(subject, body, reply=inbox)
                    continue
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), poll)
            # Requests still outstanding end within poll s (the server's 408). Until then their
            # messages are delivered as usual (the caller naks what it will not handle): a nak now
            # would send a message straight back to the same waiting request, a delivery burnt each time.
            end = last_request + poll + 1.0
            while self._requested > 0 and loop.time() < end:
                wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), end - loop.time())
            await asyncio.sleep(0)  # the last read's group
        finally:
            self._streaming = False
            accepting = False
            if group:
                flush_group()
            self._closing_sub = sub

    def _bytes_request(
        self, free: int, byte_room: int, byte_limit: int | None, starved: int | None, poll: float
    ) -> tuple[int, bytes] | None:
        """The next pull request in bytes mode (how many messages, its body), or None while it must wait."""
        if self._requested > 0 or free < 1:
            return None
        expires = int(poll * 1e9)
        if starved is not None and starved >= (byte_limit or 0):  # larger than the limit: alone
            return 1, b'{"batch":1,"expires":%d}' % expires
        if byte_room < 1 or (starved is not None and byte_room <= starved):
            return None
        n = min(self._config.batch, free)
        return n, b'{"batch":%d,"max_bytes":%d,"expires":%d}' % (n, byte_room, expires)

    def begin_stream(self) -> None:
        """Before `stream` is scheduled: an `end_stream` from then on is kept, even before it runs."""
        self._streaming = True

    def end_stream(self) -> None:
        """`stream` returns at its next look (messages still arriving are nak'ed)."""
        self._streaming = False

    async def respond(self, responses: Sequence[tuple[str, bytes]]) -> None:
        """Write each ``(reply subject, ack payload)``; a lost connection loses them (redelivery follows).

        Where the publisher's fast path may be used (`fast_path_refusal`), the ``PUB`` commands go
        straight into nats-py's pending buffer with one kick of its flusher per batch, as the
        publisher's fast path writes events; else through ``publish()``, one call each."""
        nc = self._nc
        if self._raw:
            if nc.is_closed:
                log.warning("acks to %s not sent (connection closed): those messages come again", self._config.durable)
                return
            pieces = [b"PUB %s %d\r\n%s\r\n" % (reply.encode(), len(payload), payload) for reply, payload in responses]
            nc._pending.extend(pieces)  # noqa: SLF001
            nc._pending_data_size += sum(map(len, pieces))  # noqa: SLF001
            queue = nc._flush_queue  # noqa: SLF001
            if queue is None or queue.empty():
                await nc._flush_pending()  # noqa: SLF001
            return
        publish = nc.publish
        try:
            for reply, payload in responses:
                await publish(reply, payload)
        except nats.errors.Error as exc:  # closed or draining: the server redelivers after ack_wait
            log.warning("acks to %s not sent (%s): those messages come again", self._config.durable, exc)

    async def dead_letter(self, delivery: Delivery, reason: str, timeout: float) -> None:
        """Store ``delivery`` under the dead-letter subject with ``reason``; or `BrokerError`."""
        cfg = self._config
        assert cfg.dead_letter_subject is not None
        headers = dict(delivery.headers or {})
        if "Nats-Msg-Id" in headers:
            headers["Edupulse-Original-Msg-Id"] = headers.pop("Nats-Msg-Id")
        headers.update(
            zip(
                DEAD_LETTER_HEADERS,
                (
                    _one_line(reason) or "-",
                    cfg.stream,
                    str(delivery.stream_sequence),
                    delivery.subject,
                    cfg.durable,
                    str(delivery.num_delivered),
                ),
                strict=True,
            )
        )
        headers["Nats-Msg-Id"] = f"dead-letter.{cfg.stream}.{delivery.stream_sequence}"
        js = self._nc.jetstream(timeout=timeout)
        try:
            await js.publish(cfg.dead_letter_subject, delivery.data, timeout=timeout, headers=headers)
        except (nats.errors.Error, *_TIMEOUTS) as exc:
            raise BrokerUnavailable(
                f"could not store the dead letter of {cfg.stream}#{delivery.stream_sequence}: "
                f"{exc or type(exc).__name__}"
            ) from exc

    async def watch_max_deliveries(self, found: Callable[[Delivery], None]) -> None:
        """Call ``found`` with each message the server gave up on after ``max_deliver`` deliveries
        (read back from the stream; one that is gone by then is logged)."""
        cfg = self._config
        subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{cfg.stream}.{cfg.durable}"

        async def advisory(msg: Msg) -> None:
            try:
                body = json.loads(msg.data)
                sequence, deliveries = int(body["stream_seq"]), int(body.get("deliveries", 0))
                stored = await self._nc.jsm(timeout=cfg.connect_timeout).get_msg(cfg.stream, sequence)
            except (ValueError, KeyError, TypeError):
                log.error("unreadable MAX_DELIVERIES advisory for %s: %r", cfg.durable, msg.data[:200])
                return
            except (nats.errors.Error, *_TIMEOUTS) as exc:
                log.error(
                    "message %s#%s reached max_deliver on %s and could not be read back (%s): not dead-lettered",
                    cfg.stream,
                    body.get("stream_seq"),
                    cfg.durable,
                    exc or type(exc).__name__,
                )
                return
            found(
                Delivery(stored.subject or "", stored.data or b"", stored.headers, "", sequence, 0, deliveries, 0, 0.0)
            )

        self._advisories = await self._nc.subscribe(subject, cb=advisory)

    async def flush(self, timeout: float) -> bool:
        """Wait until the server has read everything written (acks included); False if it did not in time."""
        try:
            if self._raw and self._nc.is_connected:  # nats-py's PING goes straight to the socket:
                await asyncio.wait_for(self._nc._flush_pending(force_flush=True), timeout)  # noqa: SLF001 - acks first
            await self._nc.flush(timeout=max(1, round(timeout)))
        except (nats.errors.Error, *_TIMEOUTS):
            return False
        return True

    async def close(self, timeout: float) -> None:
        self._closing = True
        if self._late:  # naks of messages that came after a stream ended
            await asyncio.wait(set(self._late), timeout=timeout / 2)
        await close_connection(self._nc, timeout)
