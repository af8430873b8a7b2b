"""JetStream batch publishing on the wire (ADR-50, nats-server 2.12+): the atomic batch headers.

An atomic batch is the events of one ``publish_many(atomic=True)``, each sent with
``Nats-Batch-Id`` (one id per attempt) and ``Nats-Batch-Sequence`` (1, 2, ...) before its own
headers, the last with ``Nats-Batch-Commit: 1``; the server stages them and, at the commit,
stores all of them contiguously or none, answering the commit alone with
``{"stream", "seq" (the last event's), "batch", "count"}`` or an error (``_engine/_retry.py``,
`batch_refusal`, says what each means for the batch).
"""

from __future__ import annotations

__all__ = ["BATCH_HEADERS", "batch_headers"]

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
