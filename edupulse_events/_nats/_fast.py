"""The fast path: ready-made protocol bytes into nats-py's buffers, acks read from the raw bytes.

nats-py's ``publish()`` re-validates subject and headers and rebuilds the command for every
message, and its parser makes a message object and awaits a coroutine for every ack. Here
a batch becomes ``HPUB`` commands appended (as pieces: the body is never copied) to the
client's pending buffer, with one kick of its flusher per batch; `AckReader` (``_acks.py``)
takes the acks from the bytes a read at a time, and the few it leaves to nats-py's parser
(acks with a status header, or cut oddly) are taken from ``_process_msg`` by subscription id.

These are nats-py internals. `check_internals` tells, before a connection is made, whether
the ones used are there with the shapes expected; `FastPath.probe` then sends two messages
to its own ack inbox through them and must see both come back as acks. Either failing
means the public path (``_public.py``) is used instead.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.protocol import parser as nats_parser

from .._pipeline._routing import Item
from ..errors import BrokerUnavailable
from ._acks import Ack, AckReader, ack_matchers, ignored, read_ack, valid_status
from ._batches import batch_headers, fast_op

__all__ = ["FastPath", "check_internals", "prepare_acks"]

log = logging.getLogger("edupulse_events")


_WANTED: dict[str, tuple[str, ...]] = {
    "_process_msg": ("sid", "subject", "reply", "data", "headers"),
    "_flush_pending": ("force_flush",),
    "_send_ping": ("future",),
}
_checked: dict[tuple[Any, ...], str | None] = {}


def check_internals() -> str | None:
    """Why the fast path cannot be used with the installed nats-py (None: it can). The answer
    is kept for as long as the client and parser classes keep the same methods: each pre-fork
    worker inherits it instead of inspecting them again on its first connection (docs/performance.md)."""
    key = tuple(vars(Client).get(name) for name in (*_WANTED, "_process_info", "__init__")) + tuple(
        vars(nats_parser.Parser).get(name) for name in ("parse", "reset", "__init__")
    )
    if key not in _checked:
        _checked.clear()
        _checked[key] = _check_internals()
    return _checked[key]


def _check_internals() -> str | None:
    nc = Client()
    for name, params in _WANTED.items():
        method = getattr(nc, name, None)
        if method is None or not inspect.iscoroutinefunction(method):
            return f"nats-py has no coroutine Client.{name}"
        if tuple(inspect.signature(method).parameters)[: len(params)] != params:
            return f"Client.{name} takes {tuple(inspect.signature(method).parameters)}, expected {params}"
    if not isinstance(getattr(nc, "_pending", None), list) or not isinstance(
        getattr(nc, "_pending_data_size", None), int
    ):
        return "Client._pending is not a list of bytes with Client._pending_data_size"
    if not hasattr(nc, "_flush_queue") or not hasattr(nc, "_transport"):
        return "nats-py has no Client._flush_queue or Client._transport"
    # 2.10 made _process_info a coroutine and the flusher survive a cancelled flush: the client
    # shape the fast path is built and tested against (older releases take the public path).
    if not inspect.iscoroutinefunction(getattr(nc, "_process_info", None)):
        return "Client._process_info is not a coroutine (nats-py before 2.10)"
    if getattr(nats_parser, "AWAITING_CONTROL_LINE", None) != 1 or getattr(nats_parser, "MAX_CONTROL_LINE_SIZE", 0) < 1:
        return "nats.protocol.parser's states differ"
    ps: Any = getattr(nc, "_ps", None)
    for attr in ("parse", "reset"):
        if not callable(getattr(ps, attr, None)):
            return f"the protocol parser has no {attr}()"
    if not inspect.iscoroutinefunction(ps.parse) or not isinstance(getattr(ps, "buf", None), bytearray):
        return "the protocol parser's parse() or buf differ"
    if not hasattr(ps, "state"):
        return "the protocol parser keeps no state"
    return None


def prepare_acks() -> None:
    """Compile the matchers a first connection's ack inbox needs: it is the connection's first
    subscription (sid 1) once the stream was checked (by `check()`, or before a fork)."""
    ack_matchers(1)


class FastPath:
    """Publishing and acks through nats-py internals (checked by `check_internals` and `probe`)."""

    name = "fast"
    #: Commands of a lost connection are dropped at the disconnect (`disconnected`), so what
    #: awaited an ack is resent at once on the new one.
    resend_on_reconnect = True

    def __init__(self, nc: Client, on_acks: Callable[[list[Ack]], None], stream: str | None = None) -> None:
        self._nc = nc
        self.on_acks = on_acks
        #: Answers to the events of verbose atomic batches (publish sequence, body).
        self.on_part: Callable[[int, bytes], None] = lambda _seq, _body: None
        #: The stream whose acks count (None: any stream's); see `read_ack`.
        self._stream = stream
        self._prefix = b""
        self._reader: AckReader | None = None
        self._originals: dict[str, Any] = {}

    async def start(self, timeout: float) -> bool:
        """Subscribe to the ack inbox, take over the parser, and probe; False: use the public path."""
        nc = self._nc
        self._prefix = nc.new_inbox().encode() + b"."
        sub = await nc.subscribe(self._prefix.decode() + "*")
        sid = sub._id  # noqa: SLF001 - the fast path matches acks by subscription id
        self._install(sid)
        if await self.probe(timeout):
            return True
        self._uninstall()
        await sub.unsubscribe()
        return False

    def _install(self, sid: int) -> None:
        nc = self._nc
        original = nc._process_msg  # noqa: SLF001 - see the module docstring
        start = len(self._prefix)

        async def process_msg(sid_: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
            # acks the AckReader left to nats-py's parser: with headers (a status), or split oddly
            if sid_ != sid:
                await original(sid_, subject, reply, data, headers)
                return
            token = subject[start:]  # a publish sequence, unless a stranger chose the subject
            if token[:1] == b"b" and _is_seq(token[1:]):  # an event of a verbose atomic batch
                self.on_part(int(token[1:]), data)
                return
            ack = status_ack(int(token), data, headers, self._stream) if _is_seq(token) else None
            if ack is None:
                ignored(token, data)
                return
            self.on_acks([ack])

        self._originals = {"_process_msg": original, "parse": nc._ps.parse, "reset": nc._ps.reset}  # noqa: SLF001
        nc._process_msg = process_msg  # type: ignore[method-assign,assignment]  # noqa: SLF001 - the hook
        parser = nc._ps  # noqa: SLF001
        self._reader = AckReader(parser, sid, self._deliver, nats_parser.MAX_CONTROL_LINE_SIZE, self._stream)

    def _deliver(self, acks: list[Ack]) -> None:
        self.on_acks(acks)

    async def probe(self, timeout: float) -> bool:
        """Send an ack-shaped message, plain and with a header, to the ack inbox through the
        fast write path; both must come back through the fast read path within ``timeout``."""
        loop = asyncio.get_running_loop()
        seen: asyncio.Future[None] = loop.create_future()
        count = 0
        target = self.on_acks
        name = self._stream or "probe"
        body = b'{"stream":"%s","seq":1}' % name.encode()  # publish sequence 0 is never an event's

        def on_probe(acks: list[Ack]) -> None:
            nonlocal count
            count += sum(1 for ack in acks if ack[0] == 0 and ack[1] == name)
            if count >= 2 and not seen.done():
                seen.set_result(None)

        self.on_acks = on_probe
        subject = self._prefix + b"0"
        header = b"NATS/1.0\r\nEdupulse-Probe: 1\r\n\r\n"
        try:
            await self._pend(
                [
                    b"PUB %s %d\r\n%s\r\n" % (subject, len(body), body),
                    b"HPUB %s %d %d\r\n%s%s\r\n" % (subject, len(header), len(header) + len(body), header, body),
                ]
            )
            await asyncio.wait_for(seen, timeout)
            return True
        except (asyncio.TimeoutError, AttributeError, TypeError, ValueError, nats.errors.Error) as exc:
            log.warning("nats-py fast path probe failed (%r): using nats-py's public API", exc)
            return False
        finally:
            self.on_acks = target

    def _uninstall(self) -> None:
        nc = self._nc
        if "_process_msg" in self._originals:
            nc._process_msg = self._originals["_process_msg"]  # type: ignore[method-assign]  # noqa: SLF001
            parser: Any = nc._ps  # noqa: SLF001 - putting nats-py's own methods back
            parser.parse = self._originals["parse"]
            parser.reset = self._originals["reset"]

    async def _pend(self, pieces: list[bytes], size: int | None = None) -> None:
        """Add ``pieces`` (``size`` bytes of commands; None: counted here) to the client's pending
        buffer and kick its flusher."""
        nc = self._nc
        nc._pending.extend(pieces)  # noqa: SLF001
        nc._pending_data_size += sum(map(len, pieces)) if size is None else size  # noqa: SLF001
        await self._kick()

    async def _kick(self) -> None:
        """Ask the client's flusher to write what is pending (once: a request already queued
        covers it, and with a hung broker one request per batch would fill the flusher's
        bounded queue and block this loop)."""
        nc = self._nc
        queue = nc._flush_queue  # noqa: SLF001
        if queue is not None and not queue.empty():
            return
        await nc._flush_pending()  # noqa: SLF001

    async def publish_js(self, items: Sequence[Item], first_seq: int) -> None:
        """Write one HPUB per event, replying to ``prefix + sequence`` (from ``first_seq`` up)."""
        prefix = self._prefix
        pieces: list[bytes] = []
        append = pieces.append
        size = 0
        for seq, item in enumerate(items, first_seq):
            line = b"HPUB %s %s%d %d %d\r\n" % (item.subject, prefix, seq, len(item.headers), item.size)
            append(line)
            append(item.headers)
            append(item.payload)
            append(b"\r\n")
            size += len(line) + item.size + 2
        await self._pend(pieces, size)

    async def publish_atomic(self, items: Sequence[Item], batch_id: bytes, seq: int, parts: int = 0) -> None:
        """One atomic batch: the batch headers put in front of each event's own, the commit on
        the last, which replies to ``prefix + seq``; with ``parts``, the others reply too, to
        ``prefix + "b" + (parts, parts + 1, ...)`` (`on_part`)."""
        prefix, last = self._prefix, len(items)
        pieces: list[bytes] = []
        append = pieces.append
        size = 0
        for n, item in enumerate(items, 1):
            headers = batch_headers(item.headers, batch_id, n, n == last)
            total = len(headers) + len(item.payload)
            if n < last and parts:
                line = b"HPUB %s %sb%d %d %d\r\n" % (item.subject, prefix, parts + n - 1, len(headers), total)
            elif n < last:
                line = b"HPUB %s %d %d\r\n" % (item.subject, len(headers), total)
            else:
                line = b"HPUB %s %s%d %d %d\r\n" % (item.subject, prefix, seq, len(headers), total)
            append(line)
            append(headers)
            append(item.payload)
            append(b"\r\n")
            size += len(line) + total + 2
        await self._pend(pieces, size)

    async def publish_fast(self, items: Sequence[Item], head: bytes) -> None:
        """Write one HPUB per event, each replying to its fast-ingest subject (``head``, then its
        number and op: `_batches.fast_op`)."""
        pieces: list[bytes] = []
        append = pieces.append
        size = 0
        last = len(items)
        for n, item in enumerate(items, 1):
            op = 1 if 1 < n < last else fast_op(n, last)
            line = b"HPUB %s %s%d.%d.$FI %d %d\r\n" % (item.subject, head, n, op, len(item.headers), item.size)
            append(line)
            append(item.headers)
            append(item.payload)
            append(b"\r\n")
            size += len(line) + item.size + 2
        await self._pend(pieces, size)

    async def publish_core(self, items: Sequence[Item]) -> asyncio.Future[None]:
        """Write ``items`` straight to the socket, then a PING; the returned future is done at
        its PONG, when the server has read everything before it.

        Both bypass the pending buffer on purpose: nats-py writes PINGs straight to the socket,
        so a PING after buffered commands could overtake them. The future is never cancelled
        by us (a cancelled one makes a late PONG kill nats-py's read loop): the caller times
        the answer out itself.
        """
        nc = self._nc
        transport = nc._transport  # noqa: SLF001
        if not nc.is_connected or transport is None:
            raise BrokerUnavailable("not connected to the broker")
        pong: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pieces: list[bytes] = []
        for item in items:
            pieces += (b"HPUB %s %d %d\r\n" % (item.subject, len(item.headers), item.size), item.headers, item.payload)
            pieces.append(b"\r\n")
        try:
            transport.writelines(pieces)
            await nc._send_ping(pong)  # noqa: SLF001
        except (nats.errors.Error, OSError, AssertionError) as exc:
            raise BrokerUnavailable(f"could not write to the broker: {exc!r}") from exc
        return pong

    @property
    def backlog(self) -> int:
        """Bytes written but not yet handed to the socket (grows while the broker hangs)."""
        return self._nc._pending_data_size  # noqa: SLF001

    def disconnected(self) -> None:
        """The connection is lost: drop the commands not sent on it. The publisher resends
        what awaited an ack once reconnected (keeping them would send each twice and hold
        their bytes twice); nats-py re-creates its subscriptions itself."""
        nc = self._nc
        nc._pending = []  # noqa: SLF001
        nc._pending_data_size = 0  # noqa: SLF001


def _is_seq(token: bytes) -> bool:
    """Whether a subject's last token can be a publish sequence (ASCII digits, at most 19)."""
    return 0 < len(token) < 20 and token.isdigit()


def status_ack(seq: int, data: bytes, headers: bytes | None, stream: str | None = None) -> Ack | None:
    """An ack that came with headers: "NATS/1.0 503" alone is "no responders"; a status with a
    JSON body (429 and 10167) is that body's error. None: neither (see `read_ack`)."""
    if headers and headers[8:9] == b" " and not data:
        status = headers[9:12].decode("ascii", "replace")
        return (seq, None, None, False, {"status": status}) if valid_status(status) else None
    return read_ack(seq, data, stream)
