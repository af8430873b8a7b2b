"""The machine's ceiling: nats-server fed a pre-built byte stream on a plain socket.

No client library and no per-message Python work while timed: the same envelopes (with the
library's routing headers) are encoded into ``HPUB`` commands before the clock starts.
JetStream: each command replies to its own inbox subject, at most ``window`` (256) are
outstanding, written ``chunk`` (128) at a time as acks come back; acks are counted in the
raw bytes read. Fast ingest: the same commands in fast-ingest batches of ``batch`` (1,000)
events, each replying to its batch's control subject (ADR-50), at most two batches
outstanding; done at the last batch's end (its PubAck). Atomic: atomic batches of ``batch``
(1,000) events, the batch headers in front of the routing headers, four outstanding (what the
library's window of 4,096 allows); done at the last commit's ack. Core: the whole stream, then one PING;
done at its PONG.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

from _common import SUBJECT

from edupulse_events import EventEnvelope, encode
from edupulse_events._pipeline._routing import Router

__all__ = ["raw_atomic", "raw_core", "raw_fast_ingest", "raw_jetstream"]

_CONNECT = b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true,"protocol":1}\r\n'


def _commands(envs: list[EventEnvelope], reply: bool) -> list[bytes]:
    router = Router(SUBJECT)
    subject = SUBJECT.encode()
    out = []
    for i, env in enumerate(envs):
        body = encode(env)
        headers = router.headers(env, body, type(env.data).__name__)
        to = b" _RAW.%d" % i if reply else b""
        size = len(headers) + len(body)
        out.append(b"HPUB %s%s %d %d\r\n%s%s\r\n" % (subject, to, len(headers), size, headers, body))
    return out


def _connect(url: str, *extra: bytes) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.recv(65536)  # INFO
    sock.sendall(_CONNECT + b"".join(extra) + b"PING\r\n")
    _until(sock, b"PONG\r\n")
    return sock


def _until(sock: socket.socket, marker: bytes) -> None:
    seen = b""
    while marker not in seen:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("nats-server closed the connection")
        seen = seen[-16:] + data


def raw_jetstream(url: str, envs: list[EventEnvelope], window: int = 256, chunk: int = 128) -> float:
    """Seconds from the first byte written to the last ack read (len(envs) acks)."""
    commands = _commands(envs, reply=True)
    chunks = [(b"".join(commands[i : i + chunk]), len(commands[i : i + chunk])) for i in range(0, len(commands), chunk)]
    sock = _connect(url, b"SUB _RAW.* 1\r\n")
    n, sent, acked, next_chunk, tail = len(envs), 0, 0, 0, b""
    started = time.perf_counter()
    while acked < n:
        while next_chunk < len(chunks) and sent + chunks[next_chunk][1] - acked <= window:
            sock.sendall(chunks[next_chunk][0])
            sent += chunks[next_chunk][1]
            next_chunk += 1
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError("nats-server closed the connection")
        acked += (tail + data).count(b'"seq":') - tail.count(b'"seq":')
        tail = data[-8:]
        if b"PING\r\n" in data:
            sock.sendall(b"PONG\r\n")
    elapsed = time.perf_counter() - started
    sock.close()
    return elapsed


def raw_fast_ingest(url: str, envs: list[EventEnvelope], batch: int = 1000, outstanding: int = 2) -> float:
    """Seconds from the first byte written to the last fast-ingest batch's end."""
    commands = _commands(envs, reply=False)
    chunks = []
    for b, start in enumerate(range(0, len(commands), batch)):
        part = commands[start : start + batch]
        out = []
        for n, command in enumerate(part, 1):
            op = 0 if n == 1 else 2 if n == len(part) else 1
            reply = b" _RAW.B%d.500.fail.%d.%d.$FI" % (b, n, op)
            head, rest = command.split(b" ", 2)[1], command.split(b" ", 2)[2]
            out.append(b"HPUB " + head + reply + b" " + rest)
        chunks.append(b"".join(out))
    return _batches(url, chunks, outstanding)


def raw_atomic(url: str, envs: list[EventEnvelope], batch: int = 1000, outstanding: int = 4) -> float:
    """Seconds from the first byte written to the last atomic batch's commit ack."""
    router, subject = Router(SUBJECT), SUBJECT.encode()
    chunks = []
    for b, start in enumerate(range(0, len(envs), batch)):
        part, out = envs[start : start + batch], []
        for n, env in enumerate(part, 1):
            body = encode(env)
            routing = router.headers(env, body, type(env.data).__name__)
            commit = b"Nats-Batch-Commit: 1\r\n" if n == len(part) else b""
            headers = b"NATS/1.0\r\nNats-Batch-Id: R%d\r\nNats-Batch-Sequence: %d\r\n%s%s" % (
                b,
                n,
                commit,
                routing[10:],
            )
            reply = b" _RAW.%d" % b if commit else b""
            size = len(headers) + len(body)
            out.append(b"HPUB %s%s %d %d\r\n%s%s\r\n" % (subject, reply, len(headers), size, headers, body))
        chunks.append(b"".join(out))
    return _batches(url, chunks, outstanding)


def _batches(url: str, chunks: list[bytes], outstanding: int) -> float:
    """Write ``chunks`` (one batch each), at most ``outstanding`` unanswered; done at the last end."""
    sock = _connect(url, b"SUB _RAW.> 1\r\n")
    done, sent, tail = 0, 0, b""
    started = time.perf_counter()
    while done < len(chunks):
        while sent < len(chunks) and sent - done < outstanding:
            sock.sendall(chunks[sent])
            sent += 1
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError("nats-server closed the connection")
        if b'"err' in data:
            raise RuntimeError(f"batch refused: {data[:300]!r}")
        done += (tail + data).count(b'"count":') - tail.count(b'"count":')
        tail = data[-8:]
        if b"PING\r\n" in data:
            sock.sendall(b"PONG\r\n")
    elapsed = time.perf_counter() - started
    sock.close()
    return elapsed


def raw_core(url: str, envs: list[EventEnvelope]) -> float:
    """Seconds from the first byte written to the PONG after the last command."""
    stream = b"".join(_commands(envs, reply=False)) + b"PING\r\n"
    sock = _connect(url)
    started = time.perf_counter()
    sock.sendall(stream)
    _until(sock, b"PONG\r\n")
    elapsed = time.perf_counter() - started
    sock.close()
    return elapsed
