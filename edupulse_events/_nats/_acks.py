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
(``_fast.py`` beside it).

The ack inbox is a trust boundary: any client that sees a published message sees its reply
subject and may publish to it. So nothing that arrives there can raise out of the reader
(numbers are bounded before they are converted), and an ack counts only if it is well formed
(`read_ack`): this publisher's stream (where one is configured; otherwise a valid stream
name), a stream sequence from 1 to 2**64-1, a boolean ``duplicate``, or an error object with
an integer status code. Anything else is dropped and logged (`ignored`, at most once per
`IGNORED_LOG_INTERVAL`): its event stays in flight until a real answer or its deadline.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["IGNORED_LOG_INTERVAL", "Ack", "AckReader", "ack_matchers", "ignored", "read_ack", "valid_status"]

#: (publish sequence, stream or None, stream sequence or None, duplicate, error dict or None)
Ack = tuple[int, str | None, int | None, bool, dict[str, Any] | None]

log = logging.getLogger("edupulse_events")
_CONTROL_LINE = 1  # nats.protocol.parser.AWAITING_CONTROL_LINE


#: A JetStream stream name as nats-server allows it (no whitespace, '.', '*', '>', path separators).
_STREAM_NAME = re.compile(r"[^\x00-\x20\x7f.*>/\\]{1,255}\Z")
_MAX_SEQ = (1 << 64) - 1
#: Seconds between two log lines about ignored acks (the ones in between are counted).
IGNORED_LOG_INTERVAL = 10.0
#: Distinct stream names kept decoded per reader (a stranger could send endless new ones).
_STREAMS_KEPT = 16


def read_ack(seq: int, body: bytes, stream: str | None = None) -> Ack | None:
    """The ack of publish ``seq`` in any shape the server sends (a domain, a duplicate, an error
    object); None if ``body`` is not one: not JSON, not an object, a stream other than ``stream``
    (any valid name when None), a sequence that is not an integer from 1 to 2**64-1, a
    ``duplicate`` that is not a boolean, an error without an integer status code."""
    try:
        ack = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(ack, dict):
        return None
    if "error" in ack:
        error = ack["error"]
        return (seq, None, None, False, error) if _is_error(error) else None
    name, sseq, duplicate = ack.get("stream"), ack.get("seq"), ack.get("duplicate", False)
    if type(sseq) is not int or not 0 < sseq <= _MAX_SEQ or type(duplicate) is not bool:
        return None
    if not isinstance(name, str) or (name != stream if stream is not None else not _STREAM_NAME.match(name)):
        return None
    return (seq, name, sseq, duplicate, None)


def _is_error(error: Any) -> bool:
    """Whether ``error`` is a JetStream error object: an HTTP-like ``code``, an integer
    ``err_code`` and a text ``description`` where present (what `_retry.refusal` reads)."""
    if not isinstance(error, dict):
        return False
    code, err_code, description = error.get("code"), error.get("err_code", 0), error.get("description", "")
    return type(code) is int and 100 <= code <= 999 and type(err_code) is int and isinstance(description, str)


def valid_status(status: str) -> bool:
    """Whether a status header's code is three digits (as the server writes it)."""
    return len(status) == 3 and status.isascii() and status.isdigit()


class _Ignored:
    """Acks that were dropped as malformed: logged at most once per `IGNORED_LOG_INTERVAL`."""

    def __init__(self) -> None:
        self.count = 0
        self._unlogged = 0
        self._next = 0.0

    def __call__(self, seq: int | bytes, body: bytes) -> None:
        self.count += 1
        self._unlogged += 1
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + IGNORED_LOG_INTERVAL
        count, self._unlogged = self._unlogged, 0
        log.warning(
            "ignored %d malformed message(s) on the ack inbox (the latest, for publish %r: %r): their events "
            "stay in flight until the broker answers or their deadline; is another client publishing to it?",
            count,
            seq if isinstance(seq, int) else seq[:40].decode("ascii", "backslashreplace"),
            body[:100],
        )


#: Records a malformed message on an ack inbox (any publisher of this process).
ignored = _Ignored()


@functools.lru_cache(maxsize=8)
def ack_matchers(sid: int) -> tuple[Callable[..., re.Match[bytes] | None], Callable[..., re.Match[bytes] | None]]:
    """The matchers of an ack's control line, and of the common ack whole (group 3 is the body,
    whose length is checked), for subscription ``sid``. Only the subscription id is matched
    exactly: the server delivers nothing else on it, so the subject is read up to its last dot
    (the publish sequence follows). Kept per sid, so that a process compiles them once instead
    of on every connection (`bench_acks.py` measures both). Every number has a bounded length
    (publish sequence 19 digits, size 10, stream sequence 19), so none that a stranger sends
    reaches ``int()`` too long; an ack that does not fit is read by `read_ack`, or by nats-py."""
    head = rb"MSG [^ ]*\.(\d{1,19}) " + str(sid).encode() + rb" (\d{1,10})\r\n"
    common = re.compile(head + rb'(\{"stream":"([A-Za-z0-9_-]{1,255})","seq":([1-9]\d{0,18})\})\r\n').match
    return common, re.compile(head).match


class AckReader:
    """Takes the acks for subscription ``sid`` (subjects: the inbox, a dot, the publish sequence) out of
    the byte stream before nats-py's parser sees it; ``on_acks`` gets the well-formed ones (for
    ``stream``, when given: see `read_ack`) in arrival order, the rest go to `ignored`."""

    def __init__(
        self,
        parser: Any,
        sid: int,
        on_acks: Callable[[list[Ack]], None],
        max_line: int = 4096,
        stream: str | None = None,
    ) -> None:
        self._parser = parser
        self._max_line = max_line  # nats.protocol.parser.MAX_CONTROL_LINE_SIZE
        self._original = parser.parse
        self._on_acks = on_acks
        self._common, self._line = ack_matchers(sid)
        #: Stream names as read, decoded once; with a configured stream, only that one.
        self._streams: dict[bytes, str] = {} if stream is None else {stream.encode(): stream}
        self._stream = stream
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
                    stream = self._new_stream(name)
                    if stream is None:  # another stream's name: not an answer to this publisher
                        ignored(int(m[1]), m[3])
                        pos = m.end()
                        continue
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
            seq, body = int(m[1]), data[start:stop]
            ack = read_ack(seq, body, self._stream)
            if ack is None:
                ignored(seq, body)
            else:
                acks.append(ack)
            pos = stop + 2
        if acks:
            try:
                self._on_acks(acks)
            except Exception:
                log.exception("handling %d acks failed", len(acks))
        return pos

    def _new_stream(self, name: bytes) -> str | None:
        """A stream name not seen yet: decoded (and kept, up to a few), or None where another
        stream is configured."""
        if self._stream is not None:
            return None
        stream = name.decode()
        if len(self._streams) < _STREAMS_KEPT:
            self._streams[name] = stream
        return stream

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
