"""Reading a JetStream stream back, whole: for tests, demos and audits (not the publish path)."""

from __future__ import annotations

import asyncio
import ssl

import nats
import nats.errors
import nats.js.api
import nats.js.errors

from ..errors import BrokerUnavailable

__all__ = ["StoredMessage", "read_stream", "read_stream_async"]


class StoredMessage:
    """One message read back from a JetStream stream (for tests, demos and audits)."""

    __slots__ = ("data", "headers", "sequence", "subject")

    def __init__(self, sequence: int, subject: str, headers: dict[str, str], data: bytes) -> None:
        self.sequence = sequence
        self.subject = subject
        self.headers = headers
        self.data = data

    def __repr__(self) -> str:
        return f"<StoredMessage #{self.sequence} {self.subject} {len(self.data)} bytes>"


async def read_stream_async(
    url: str,
    stream: str,
    *,
    timeout: float = 10.0,
    token: str | None = None,
    tls: ssl.SSLContext | None = None,
    at_least: int = 0,
) -> list[StoredMessage]:
    """Every message in ``stream``, oldest first, via an ephemeral pull consumer. With ``at_least``,
    first wait (within ``timeout``) until the stream holds that many: a stream stores what core
    NATS publishes to it a little after the server has read it."""
    nc = await nats.connect(
        servers=url.split(","), token=token, tls=tls, connect_timeout=2, allow_reconnect=True, max_reconnect_attempts=5
    )
    try:
        js = nc.jetstream(timeout=timeout)
        deadline = asyncio.get_running_loop().time() + timeout
        total = (await js.stream_info(stream)).state.messages
        while total < at_least and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            total = (await js.stream_info(stream)).state.messages
        out: list[StoredMessage] = []
        if total == 0:
            return out
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
                raise BrokerUnavailable(f"read {len(out)} of {total} messages from {stream} within {timeout} s")
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
