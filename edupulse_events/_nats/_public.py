"""The public path: the same job through nats-py's documented API only.

Used when the installed nats-py does not have the internals the fast path needs, or they do
not behave as the fast path expects (``_fast.py``). Each event is one ``publish(subject,
body, reply=…, headers=…)``; acks arrive on one wildcard inbox subscription with a
callback, and are handed on a loop iteration's worth at a time. A core batch is confirmed by
a marker message published after it to that same inbox: the server handles one
connection's messages in order, so when the marker comes back everything before it was read
(a PING through ``flush()`` could overtake commands still in the client's buffer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from .._acks import Ack, read_ack
from .._routing import Item
from ..errors import BrokerUnavailable

__all__ = ["PublicPath", "header_dict"]

_MARKER = "m"  # core batch markers arrive on "<prefix>m<key>", acks on "<prefix><sequence>"


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

    def __init__(self, nc: Client, on_acks: Callable[[list[Ack]], None]) -> None:
        self._nc = nc
        self.on_acks = on_acks
        self._prefix = ""
        self._acks: list[Ack] = []
        self._markers: dict[int, asyncio.Future[None]] = {}
        self._key = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, timeout: float) -> bool:
        self._loop = asyncio.get_running_loop()
        self._prefix = self._nc.new_inbox() + "."
        await self._nc.subscribe(self._prefix + "*", cb=self._on_msg)
        return True

    async def _on_msg(self, msg: Msg) -> None:
        token = msg.subject[len(self._prefix) :]
        if token.startswith(_MARKER):
            marker = self._markers.pop(int(token[1:]), None)
            if marker is not None and not marker.done():
                marker.set_result(None)
            return
        try:
            seq = int(token)
        except ValueError:
            return
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is not None and not msg.data:
            ack: Ack = (seq, None, None, False, {"status": status})
        else:
            ack = read_ack(seq, msg.data)
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

    async def publish_core(self, items: Sequence[Item]) -> asyncio.Future[None]:
        nc = self._nc
        if not nc.is_connected:
            raise BrokerUnavailable("not connected to the broker")
        self._key += 1
        marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._markers[self._key] = marker
        try:
            for item in items:
                await nc.publish(item.subject.decode(), item.payload, headers=header_dict(item.headers))
            await nc.publish(f"{self._prefix}{_MARKER}{self._key}", b"")
        except (nats.errors.Error, OSError) as exc:
            self._markers.pop(self._key, None)
            raise BrokerUnavailable(f"could not publish to the broker: {exc!r}") from exc
        return marker

    @property
    def backlog(self) -> int:
        return self._nc.pending_data_size

    def disconnected(self) -> None:
        """Markers of batches on the lost connection may never come back: the sender's timer
        or the reconnect settles those batches, so forget them."""
        for marker in self._markers.values():
            if not marker.done():
                marker.set_exception(BrokerUnavailable("the connection to the broker was lost"))
                marker.exception()  # retrieved: the sender reads it from its done-callback
        self._markers.clear()
