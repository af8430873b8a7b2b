"""Reading JetStream acks straight from the socket's bytes, a run of them at a time.

The publisher thread receives one ack per event on one wildcard inbox. nats-py's protocol
parser handles each message with several regular expressions, a dict, two copies and an
awaited coroutine; for the common ack (``{"stream":"S","seq":N}``) `AckReader` matches the
whole message with one regular expression and hands every ack of a read to the publisher
in one call. Anything else — other subscriptions, PING/PONG/INFO/-ERR, acks with headers
(status 503) or in another JSON shape — goes to nats-py's own parser in the same order, so
the connection behaves exactly as without it. A message cut across two reads is kept and
completed by the next read (and dropped when nats-py resets the parser for a new
connection). It replaces ``parse`` and ``reset`` on the client's parser object: nats-py
internals, used only on the fast path, which checks and probes them at each connection
(``_nats/_fast.py``).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["Ack", "AckReader"]

#: (publish sequence, stream or None, stream sequence or None, duplicate, error dict or None)
Ack = tuple[int, str | None, int | None, bool, dict[str, Any] | None]

log = logging.getLogger("edupulse_events")
_CONTROL_LINE = 1  # nats.protocol.parser.AWAITING_CONTROL_LINE


def read_ack(seq: int, body: bytes) -> Ack:
    """An ack of any JSON shape (duplicates, errors, a JetStream domain)."""
    try:
        ack = orjson.loads(body)
    except orjson.JSONDecodeError:
        ack = None
    if not isinstance(ack, dict):
        return (seq, None, None, False, {"code": 0, "description": "unreadable ack"})
    if "error" in ack:
        return (
            seq,
            None,
            None,
            False,
            ack["error"] if isinstance(ack["error"], dict) else {"code": 0, "description": "unreadable ack"},
        )
    stream, sseq = ack.get("stream"), ack.get("seq")
    return (
        seq,
        stream if isinstance(stream, str) else None,
        sseq if type(sseq) is int else None,
        ack.get("duplicate") is True,
        None,
    )


@functools.lru_cache(maxsize=8)
def ack_matchers(sid: int) -> tuple[Callable[..., re.Match[bytes] | None], Callable[..., re.Match[bytes] | None]]:
    """The matchers of an ack's control line, and of the common ack whole (group 3 is the body,
    whose length is checked), for subscription ``sid``. Only the subscription id is matched
    exactly: the server delivers nothing else on it, so the subject is read up to its last dot
    (the publish sequence follows). Kept per sid, so that a process compiles them once instead
    of on every connection (with the inbox in the pattern: ~0.3 ms, ~0.7 in a forked worker;
    reading the subject this way costs ~25 ns more per ack, 2-3 %: `bench_acks.py`)."""
    head = rb"MSG [^ ]*\.(\d+) " + str(sid).encode() + rb" (\d+)\r\n"
    common = re.compile(head + rb'(\{"stream":"([A-Za-z0-9_-]+)","seq":(\d+)\})\r\n').match
    return common, re.compile(head).match


class AckReader:
    """Takes the acks for subscription ``sid`` (subjects: the inbox, a dot, the publish sequence) out of
    the byte stream before nats-py's parser sees it; ``on_acks`` gets them in arrival order."""

    def __init__(self, parser: Any, sid: int, on_acks: Callable[[list[Ack]], None], max_line: int = 4096) -> None:
        self._parser = parser
        self._max_line = max_line  # nats.protocol.parser.MAX_CONTROL_LINE_SIZE
        self._original = parser.parse
        self._on_acks = on_acks
        self._common, self._line = ack_matchers(sid)
        self._streams: dict[bytes, str] = {}
        self._tail = b""
        self._reset = parser.reset
        parser.parse = self.parse
        parser.reset = self.reset

    def reset(self) -> None:
        """nats-py resets its parser for a new connection: drop what was kept from the old one."""
        self._tail = b""
        self._reset()

    async def parse(self, data: bytes = b"") -> None:
        ps = self._parser
        if ps.state != _CONTROL_LINE:  # nats-py's parser is in the middle of a message
            await self._original(data)
            self._take_back()
            return
        if ps.buf:  # a reconnect left a partial line there: start from it
            data = bytes(ps.buf) + data
            ps.buf.clear()
        if self._tail:
            data = self._tail + data
            self._tail = b""
        pos = self._read_acks(data)
        if pos == len(data):
            return
        rest = data[pos:] if pos else data
        if self._partial(rest):
            self._tail = rest
            return
        await self._original(rest)
        self._take_back()

    def _read_acks(self, data: bytes) -> int:
        """Hand on the acks at the start of ``data``; return where the first other message starts."""
        common, line, streams = self._common, self._line, self._streams
        acks: list[Ack] = []
        pos, end = 0, len(data)
        while pos < end:
            m = common(data, pos)
            if m is not None and int(m[2]) == m.end(3) - m.start(3):
                name = m[4]
                stream = streams.get(name)
                if stream is None:
                    stream = streams[name] = name.decode()
                acks.append((int(m[1]), stream, int(m[5]), False, None))
                pos = m.end()
                continue
            m = line(data, pos)
            if m is None:
                break
            start = m.end()
            stop = start + int(m[2])
            if data[stop : stop + 2] != b"\r\n":  # cut short (or malformed: nats-py's parser says so)
                break
            acks.append(read_ack(int(m[1]), data[start:stop]))
            pos = stop + 2
        if acks:
            try:
                self._on_acks(acks)
            except Exception:
                log.exception("handling %d acks failed", len(acks))
        return pos

    def _partial(self, rest: bytes) -> bool:
        """Whether ``rest`` is the start of a message still arriving (kept for the next read)."""
        if b"\r\n" not in rest:
            return len(rest) < self._max_line
        m = self._line(rest)
        return m is not None and len(rest) < m.end() + int(m[2]) + 2

    def _take_back(self) -> None:
        """After nats-py's parser ran: a partial control line it kept is read here next time."""
        ps = self._parser
        if ps.state == _CONTROL_LINE and ps.buf and len(ps.buf) < self._max_line:
            self._tail = bytes(ps.buf)
            ps.buf.clear()
