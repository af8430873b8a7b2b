"""JetStream batch publishing on the wire (ADR-50, nats-server 2.12+): atomic batch headers, and
fast-ingest reply subjects and control messages.

An atomic batch is the events of one ``publish_many(atomic=True)``, each sent with
``Nats-Batch-Id`` (one id per attempt) and ``Nats-Batch-Sequence`` (1, 2, ...) before its own
headers, the last with ``Nats-Batch-Commit: 1``; the server stages them and, at the commit,
stores all of them contiguously or none, answering the commit alone with
``{"stream", "seq" (the last event's), "batch", "count"}`` or an error (``_engine/_retry.py``,
`batch_refusal`, says what each means for the batch).

A fast-ingest batch (a stream with ``allow_batched``; 2.14+) carries no headers of its own: each
event's reply subject says ``<inbox>.<batch id>.<flow>.<gap mode>.<n>.<op>.$FI``, and the server
answers on it, now and then: a flow ack ``{"type":"ack","seq":n,"msgs":N}`` (events up to ``n``
stored; the next after ``N`` more), at the end the PubAck ``{"stream","seq","batch","count"}``,
or an error. The gap mode is ``fail``: a lost event ends the batch where it is (``count``), and
the events after it are sent again.
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypeGuard

import orjson

__all__ = ["BATCH_HEADERS", "FAST_FLOW", "FastReply", "batch_headers", "fast_head", "fast_op", "read_fast"]

_STATUS_LINE = b"NATS/1.0\r\n"
#: The most bytes the batch headers add to an event's (an id of up to 64 bytes, a 4-digit
#: sequence, the commit): what an event of an atomic batch must leave below max_payload.
BATCH_HEADERS = len(b"Nats-Batch-Id: \r\nNats-Batch-Sequence: 1000\r\nNats-Batch-Commit: 1\r\n") + 64


def batch_headers(headers: bytes, batch_id: bytes, n: int, commit: bool) -> bytes:
    """``headers`` (an event's header block) with the atomic batch headers of its ``n``-th event
    in front of its own (and the commit, on the last)."""
    if not headers.startswith(_STATUS_LINE):  # pragma: no cover - the Router writes every block
        raise ValueError("not a NATS header block")
    commit_line = b"Nats-Batch-Commit: 1\r\n" if commit else b""
    return b"%sNats-Batch-Id: %s\r\nNats-Batch-Sequence: %d\r\n%s%s" % (
        _STATUS_LINE,
        batch_id,
        n,
        commit_line,
        headers[len(_STATUS_LINE) :],
    )


# --------------------------------------------------------------------------- fast ingest
#: Ack every this many events (the server's cap; it asks for fewer while several batches are open).
FAST_FLOW = 500
_OP_START, _OP_APPEND, _OP_COMMIT = 0, 1, 2
_MAX_SEQ = (1 << 64) - 1


def fast_head(inbox: bytes, batch_id: bytes) -> bytes:
    """What every reply subject of fast-ingest batch ``batch_id`` begins with:
    ``<inbox><batch id>.<flow>.fail.``; ``<n>.<op>.$FI`` follows (`fast_op`)."""
    return b"%s%s.%d.fail." % (inbox, batch_id, FAST_FLOW)


def fast_op(n: int, last: int) -> int:
    """The op of the ``n``-th of ``last`` events (``last`` >= 2): the first starts the batch,
    the last commits it (stored with it), the others append."""
    return _OP_START if n == 1 else _OP_COMMIT if n == last else _OP_APPEND


class FastReply(NamedTuple):
    """What the server said about a fast-ingest batch, on the reply subject of its ``event``-th
    event: ``kind`` "ack" (events up to ``seq`` stored), "end" (the batch is over: its first
    ``stored`` events stored, the last at stream sequence ``seq``, 0 if all were duplicates),
    "error" (the batch ended at that event, refused with ``error``), "err" (event ``seq`` was
    refused with ``error``; the end follows), or "gap" (events were lost; the end follows)."""

    kind: str
    seq: int
    stored: int
    error: dict[str, Any] | None
    event: int


def _uint(value: Any) -> TypeGuard[int]:
    return type(value) is int and 0 <= value <= _MAX_SEQ


def _error(error: Any) -> bool:
    return isinstance(error, dict) and type(error.get("code")) is int and type(error.get("err_code", 0)) is int


def read_fast(body: bytes, event: int) -> FastReply | None:
    """A fast-ingest control message (ADR-50's BatchFlowAck/Gap/Err, or the final PubAck or
    error) that came on the reply subject of the batch's ``event``-th event, or None if ``body``
    is none of them (dropped: the inbox is a trust boundary)."""
    try:
        reply = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(reply, dict):
        return None
    kind, seq = reply.get("type"), reply.get("seq")
    if kind == "ack":
        return FastReply("ack", seq, 0, None, event) if _uint(seq) else None
    if kind == "gap":
        return FastReply("gap", 0, 0, None, event)
    if kind == "err":
        error = reply.get("error")
        return FastReply("err", seq, 0, error, event) if _uint(seq) and _error(error) else None
    if kind is not None:
        return None
    error = reply.get("error")
    if error is not None:
        return FastReply("error", 0, 0, error, event) if _error(error) else None
    stored = reply.get("count")
    if not (_uint(seq) and _uint(stored) and isinstance(reply.get("stream"), str)):
        return None
    return FastReply("end", seq, stored, None, event)
