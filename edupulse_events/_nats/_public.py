"""The public path: the same job through nats-py's documented API only.

Used when the installed nats-py does not have the internals the fast path needs, or they do
not behave as the fast path expects (``_fast.py``). Each event is one ``publish(subject,
body, reply=…, headers=…)``; acks arrive on one wildcard inbox subscription with a
callback, and are handed on a loop iteration's worth at a time. A core batch is confirmed by
a marker message published after it to that same inbox: the server handles one
connection's messages in order, so when the marker comes back everything before it was read
(a PING through ``flush()`` could overtake commands still in the client's buffer). The
inbox is checked as on the fast path (`_acks.read_ack`): malformed acks are ignored, and a
marker counts only with the random body it was sent with.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from .._pipeline._routing import Item
from ..errors import BrokerUnavailable
from ._acks import Ack, ignored, read_ack, valid_status
from ._batches import batch_headers, fast_op

__all__ = ["PublicPath", "header_dict"]

_MARKER = "m"  # core batch markers arrive on "<prefix>m<key>", acks on "<prefix><sequence>"
_PART = "b"  # the events of a verbose atomic batch answer on "<prefix>b<sequence>"


def header_dict(block: bytes) -> dict[str, str]:
    """The routing header block (``NATS/1.0\\r\\nName: value\\r\\n…\\r\\n``) as nats-py's dict."""
    out: dict[str, str] = {}
    for line in block.decode().split("\r\n")[1:]:
        if line:
            name, _, value = line.partition(": ")
            out[name] = value
    return out


class PublicPath:
    """Publishing and acks through nats-py's public API."""

    name = "public"
    #: nats-py keeps what was buffered during a disconnect and sends it once reconnected;
    #: events lost with the old socket are resent when their attempt times out.
    resend_on_reconnect = False

    def __init__(self, nc: Client, on_acks: Callable[[list[Ack]], None], stream: str | None = None) -> None:
        self._nc = nc
        self.on_acks = on_acks
        #: Answers to the events of verbose atomic batches (publish sequence, body).
        self.on_part: Callable[[int, bytes], None] = lambda _seq, _body: None
        self._stream = stream
        self._prefix = ""
        self._acks: list[Ack] = []
        #: Core batches awaiting their marker: key -> (future, the marker's random body).
        self._markers: dict[str, tuple[asyncio.Future[None], bytes]] = {}
        self._key = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, timeout: float) -> bool:
        self._loop = asyncio.get_running_loop()
        self._prefix = self._nc.new_inbox() + "."
        await self._nc.subscribe(self._prefix + "*", cb=self._on_msg)
        return True

    async def _on_msg(self, msg: Msg) -> None:
        token = msg.subject[len(self._prefix) :]
        if token.startswith(_PART) and 1 < len(token) < 21 and token[1:].isascii() and token[1:].isdigit():
            self.on_part(int(token[1:]), msg.data)
            return
        if token.startswith(_MARKER):
            entry = self._markers.get(token[1:])
            if entry is None or msg.data != entry[1]:
                ignored(token.encode(), msg.data)
                return
            del self._markers[token[1:]]
            if not entry[0].done():
                entry[0].set_result(None)
            return
        if not (0 < len(token) < 20 and token.isascii() and token.isdigit()):
            ignored(token.encode(), msg.data)
            return
        seq = int(token)
        status = (msg.headers or {}).get("Status")
        ack: Ack | None
        if status is not None and not msg.data:
            ack = (seq, None, None, False, {"status": status}) if valid_status(status) else None
        else:
            ack = read_ack(seq, msg.data, self._stream)
        if ack is None:
            ignored(seq, msg.data)
            return
        if not self._acks:
            assert self._loop is not None
            self._loop.call_soon(self._hand_on)
        self._acks.append(ack)

    def _hand_on(self) -> None:
        acks, self._acks = self._acks, []
        self.on_acks(acks)

    async def publish_js(self, items: Sequence[Item], first_seq: int) -> None:
        publish, prefix = self._nc.publish, self._prefix
        try:
            for seq, item in enumerate(items, first_seq):
                await publish(
                    item.subject.decode(), item.payload, reply=f"{prefix}{seq}", headers=header_dict(item.headers)
                )
        except (nats.errors.Error, OSError) as exc:
            raise BrokerUnavailable(f"could not publish to the broker: {exc!r}") from exc

    async def publish_fast(self, items: Sequence[Item], head: bytes) -> None:
        publish, prefix, last = self._nc.publish, head.decode(), len(items)
        try:
            for n, item in enumerate(items, 1):
                reply = f"{prefix}{n}.{fast_op(n, last)}.$FI"
                await publish(item.subject.decode(), item.payload, reply=reply, headers=header_dict(item.headers))
        except (nats.errors.Error, OSError) as exc:
            raise BrokerUnavailable(f"could not publish to the broker: {exc!r}") from exc

    async def publish_atomic(self, items: Sequence[Item], batch_id: bytes, seq: int, parts: int = 0) -> None:
        publish, last = self._nc.publish, len(items)
        try:
            for n, item in enumerate(items, 1):
                headers = header_dict(batch_headers(item.headers, batch_id, n, n == last))
                reply = f"{self._prefix}{seq}" if n == last else f"{self._prefix}b{parts + n - 1}" if parts else ""
                await publish(item.subject.decode(), item.payload, reply=reply, headers=headers)
        except (nats.errors.Error, OSError) as exc:
            raise BrokerUnavailable(f"could not publish to the broker: {exc!r}") from exc

    async def publish_core(self, items: Sequence[Item]) -> asyncio.Future[None]:
        nc = self._nc
        if not nc.is_connected:
            raise BrokerUnavailable("not connected to the broker")
        self._key += 1
        key = str(self._key)
        marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        body = os.urandom(8).hex().encode()  # a stranger who knows the inbox cannot guess it
        self._markers[key] = (marker, body)
        try:
            for item in items:
                await nc.publish(item.subject.decode(), item.payload, headers=header_dict(item.headers))
            await nc.publish(f"{self._prefix}{_MARKER}{key}", body)
        except (nats.errors.Error, OSError) as exc:
            self._markers.pop(key, None)
            raise BrokerUnavailable(f"could not publish to the broker: {exc!r}") from exc
        return marker

    @property
    def backlog(self) -> int:
        return self._nc.pending_data_size

    def disconnected(self) -> None:
        """Markers of batches on the lost connection may never come back: the sender's timer
        or the reconnect settles those batches, so forget them."""
        for marker, _body in self._markers.values():
            if not marker.done():
                marker.set_exception(BrokerUnavailable("the connection to the broker was lost"))
                marker.exception()  # retrieved: the sender reads it from its done-callback
        self._markers.clear()
