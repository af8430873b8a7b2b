"""What a caller thread does to an event before it is queued: validate, encode, route.

`Router.prepare` turns an envelope into an `Item`: its body (the codec's bytes), its subject
and the routing headers sent beside every body (so consumers can route without parsing
JSON), plus its future:

==========================  ====================================================
``Nats-Msg-Id``             the event_id (JetStream de-duplicates on it)
``Edupulse-Event-Type``     the event type name, e.g. ``QuizSubmitted``
``Edupulse-Tenant``         the tenant id as a header value (`header_value`); empty if ""; absent if None
``Edupulse-Pii``            ``true`` or ``false`` (the GDPR flag)
``Edupulse-Correlation-Id`` the correlation id; absent if None
==========================  ====================================================

Speed: the ids are copied from the encoded body, which always begins with them in canonical
form (``str(UUID)`` is Python code) where the codec's ``ENVELOPE_LAYOUT`` says, and the middle
of the header block is cached per tenant and type.

Header values follow the CloudEvents NATS binding (3.1.3.2) for ``Edupulse-Tenant`` and every
``ce-*`` header alike: UTF-8 text with space, ``"``, ``%`` and every character outside printable
ASCII percent-encoded (upper-case hex), decoded once by a reader; nothing else is changed, so a
tenant ``school.1`` is ``school.1`` there, and ``""`` is an empty value. The subject token
(`tenant_token`) is a different thing: it must be one non-empty token, so it also encodes
``.``, ``_`` and ``~``, and writes ``_empty`` for ``""`` and ``_`` for None.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, unquote

from ..codec import ENVELOPE_LAYOUT, Codec, encode
from ..config import MAX_SUBJECT_BYTES, EnvelopeCodec
from ..envelope import EventEnvelope
from ..errors import InvalidBatch, InvalidEvent
from ..events import event_type_name, wire_name_of
from ..futures import PublishFuture, new_future

__all__ = ["HEADERS", "Group", "Item", "Router", "check_atomic", "header_value", "tenant_from_token", "tenant_token"]

#: The header names `Router` writes (what a spooled row may carry: `_spooling.RowCheck`).
HEADERS = frozenset(
    {b"Nats-Msg-Id", b"Edupulse-Event-Type", b"Edupulse-Tenant", b"Edupulse-Pii", b"Edupulse-Correlation-Id"}
)

_PLAIN = re.compile(r"[A-Za-z0-9\-]+")
_FIELD = re.compile(r"\{(type|tenant)\}")
_CACHE_LIMIT = 4096  # tenants repeat: small, hot caches, emptied when they reach this size
#: `prepare_many` calls its ``pause`` after this many envelopes (a small fraction of the switch interval).
PAUSE_EVERY = 256


class Item:
    """One prepared event on its way to the broker (bytes only: no Python objects of the caller)."""

    __slots__ = (
        "attempts",
        "bulk",
        "deadline",
        "event_id",
        "future",
        "group",
        "headers",
        "mark",
        "payload",
        "replay",
        "sent_at",
        "size",
        "spool_id",
        "subject",
    )

    def __init__(self, future: PublishFuture, subject: bytes, headers: bytes, payload: bytes, event_id: str) -> None:
        self.future = future
        self.subject = subject
        self.headers = headers
        self.payload = payload
        self.size = len(headers) + len(payload)
        self.event_id = event_id
        #: Delivery deadline (time.monotonic()), stamped when the queue accepts the event.
        self.deadline = 0.0
        self.attempts = 0
        self.sent_at = 0.0
        #: Running byte total when queued (`BatchQueue`'s O(1) byte accounting).
        self.mark = 0
        #: Its row in the spool (0: not on disk), and whether it came from there (no caller waits).
        self.spool_id = 0
        self.replay = False
        #: The atomic batch it belongs to (None: an event on its own).
        self.group: Group | None = None
        #: Queued by ``publish_many()`` (not atomic): it may go through fast ingest.
        self.bulk = False


class Group:
    """The events of one ``publish_many(atomic=True)``: stored together, in order, or not at all.

    Wherever the publisher thread keeps events waiting (in flight, for a retry, parked), a group
    is there as its last event, the one that carries the commit (`Group.last`); the others wait
    here. It resolves whole: every future with its own ack, or every one with the same error.
    """

    __slots__ = ("items", "last", "refused", "resend", "verbose")

    def __init__(self, items: list[Item], resend: bool = False) -> None:
        self.items = items
        self.last = items[-1]
        #: It may have been published before, whole (a process died before learning the outcome):
        #: a stream that holds its ids already (10201) stored it.
        self.resend = resend
        #: Every event asks for an answer (after the server abandoned an attempt: to learn why).
        self.verbose = False
        #: The first event the server refused while staging it, and its error (verbose attempts).
        self.refused: tuple[Item, dict[str, Any]] | None = None
        for item in items:
            item.group = self


_TOKENS: dict[str | None, str] = {}


def tenant_token(tenant: str | None) -> str:
    """The tenant as one subject token: percent-encoded, ``_empty`` for "", ``_`` for None."""
    token = _TOKENS.get(tenant)
    if token is not None:
        return token
    if tenant is None:
        return "_"
    if not tenant:
        token = "_empty"
    elif _PLAIN.fullmatch(tenant):
        token = tenant
    else:
        token = quote(tenant, safe="-").replace("_", "%5F").replace(".", "%2E").replace("~", "%7E")
    if len(tenant) <= 256:
        if len(_TOKENS) >= _CACHE_LIMIT:
            _TOKENS.clear()
        _TOKENS[tenant] = token
    return token


def tenant_from_token(token: str) -> str | None:
    """The tenant a subject token stands for (`tenant_token` undone)."""
    return None if token == "_" else "" if token == "_empty" else unquote(token)


#: Printable ASCII but '"' and '%': what a header value keeps as it is (space is not printable here).
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')
_HEADER_PLAIN = re.compile(r"[!#-$&-~]*")


def header_value(text: str) -> str:
    """``text`` as a NATS header value, as the CloudEvents NATS binding says (3.1.3.2): space,
    ``"``, ``%`` and everything outside printable ASCII percent-encoded as UTF-8 bytes."""
    return text if _HEADER_PLAIN.fullmatch(text) else quote(text, safe=_HEADER_SAFE)


_MIDDLES: dict[str | None, dict[str, tuple[bytes, bytes]]] = {}  # tenant -> type -> (pii false, true)


def _middle(type_name: str, tenant: str | None) -> tuple[bytes, bytes]:
    """The header lines after ``Nats-Msg-Id`` and before ``Edupulse-Correlation-Id``, for
    ``Edupulse-Pii`` false and true."""
    t = "" if tenant is None else f"Edupulse-Tenant: {header_value(tenant)}\r\n"
    false, true = (
        f"\r\nEdupulse-Event-Type: {type_name}\r\n{t}Edupulse-Pii: {flag}\r\n".encode() for flag in ("false", "true")
    )
    if tenant is None or len(tenant) <= 256:
        if len(_MIDDLES) >= _CACHE_LIMIT:
            _MIDDLES.clear()
        _MIDDLES.setdefault(tenant, {})[type_name] = (false, true)
    return false, true


_PREFIX, _EVENT_ID, _CAUSATION_AT = ENVELOPE_LAYOUT.prefix, ENVELOPE_LAYOUT.event_id, ENVELOPE_LAYOUT.causation_at
_CORRELATION_KEY = ENVELOPE_LAYOUT.correlation_key
_AFTER_NULL, _AFTER_UUID = ENVELOPE_LAYOUT.correlation_at_null, ENVELOPE_LAYOUT.correlation_at_uuid
_KEY_LEN, _PREFIX_LEN, _UUID_LEN = len(_CORRELATION_KEY), len(_PREFIX), _EVENT_ID.stop - _EVENT_ID.start
_N = ord("n")  # a null id's first byte


class Router:
    """Turns an envelope into (subject, header block, body) in the caller's thread, encoding
    with ``codec`` (default: the default codec, over ``default_registry``)."""

    def __init__(self, subject_template: str, codec: EnvelopeCodec | None = None) -> None:
        self._template = subject_template
        self._encode = encode if codec is None else codec.encode
        #: This package's own codec writes the ids where `ENVELOPE_LAYOUT` says, whatever the
        #: envelope (its hook refuses one whose ids are not UUIDs): only another codec's bytes
        #: are checked for it, event by event.
        self._layout_checked = not (codec is None or type(codec) is Codec)
        self._fixed = None if _FIELD.search(subject_template) else subject_template.encode()

    def subject(self, envelope: EventEnvelope, type_name: str) -> bytes:
        if self._fixed is not None:
            return self._fixed
        fields = {"type": type_name, "tenant": tenant_token(envelope.tenant_id)}
        subject = _FIELD.sub(lambda m: fields[m.group(1)], self._template).encode()
        if len(subject) > MAX_SUBJECT_BYTES:  # the server would drop the connection, not just this event
            raise InvalidEvent(
                f"the subject for this event would be {len(subject)} bytes "
                f"(tenant_id of {len(envelope.tenant_id or '')} characters), "
                f"more than the {MAX_SUBJECT_BYTES} bytes a NATS subject may have"
            )
        return subject

    def headers(self, envelope: EventEnvelope, payload: bytes, type_name: str) -> bytes:
        """The header block for ``envelope``, whose encoded body ``payload`` begins
        ``{"event_id":"…","causation_id":null|"…","correlation_id":null|"…"``: the ids are
        copied from there."""
        at = _AFTER_NULL if payload[_CAUSATION_AT] == _N else _AFTER_UUID
        if self._layout_checked and (
            payload[at - _KEY_LEN : at] != _CORRELATION_KEY or payload[:_PREFIX_LEN] != _PREFIX
        ):
            raise AssertionError(f"not the codec's envelope layout: {payload[:140]!r}")
        by_type = _MIDDLES.get(envelope.tenant_id)
        pair = by_type.get(type_name) if by_type is not None else None
        if pair is None:
            pair = _middle(type_name, envelope.tenant_id)
        middle = pair[envelope.personally_identifiable]
        if payload[at] == _N:
            return b"NATS/1.0\r\nNats-Msg-Id: " + payload[_EVENT_ID] + middle + b"\r\n"
        return b"NATS/1.0\r\nNats-Msg-Id: %s%sEdupulse-Correlation-Id: %s\r\n\r\n" % (
            payload[_EVENT_ID],
            middle,
            payload[at + 1 : at + 1 + _UUID_LEN],
        )

    def prepare(
        self,
        envelope: EventEnvelope,
        max_payload: int | None,
        condition: threading.Condition | None = None,
    ) -> Item:
        """Validate and encode; bad input raises `InvalidEvent` here, in the caller's thread."""
        if type(envelope) is not EventEnvelope and not isinstance(envelope, EventEnvelope):
            raise InvalidEvent(f"publish() takes an EventEnvelope, got {type(envelope).__name__}")
        # A copy, on purpose: orjson returns its 1 KiB output buffer shrunk in place (malloc'd
        # memory), and thousands of those held in the queue fragment the heap (measured: more CPU
        # and page faults per event, docs/performance.md); the copy is an exact-size block of Python's own
        # allocator, and orjson's buffer is reused at once. (``tobytes()`` makes the same copy as
        # ``bytes(memoryview(...))``, for less.)
        payload = memoryview(self._encode(envelope)).tobytes()
        data = envelope.data  # encoded: its type is registered, so it has a wire name
        type_name = wire_name_of(type(data)) or event_type_name(data)
        headers = self.headers(envelope, payload, type_name)
        event_id = payload[_EVENT_ID].decode()  # the layout: our codec's, or checked by headers()
        subject = self._fixed
        if subject is None:
            subject = self.subject(envelope, type_name)
        item = Item(new_future(condition), subject, headers, payload, event_id)
        if max_payload is not None and item.size > max_payload:
            raise InvalidEvent(
                f"event {event_id} is {item.size} bytes with headers, "
                f"more than the server's max_payload of {max_payload} bytes"
            )
        return item

    def prepare_many(
        self,
        envelopes: Iterable[EventEnvelope],
        max_payload: int | None,
        condition: threading.Condition | None = None,
        pause: Callable[[], object] | None = None,
    ) -> list[Item]:
        """`prepare` every envelope, in order; the first bad one raises `InvalidEvent` naming its
        index (``envelopes[i]: ...``), and then none is prepared for queueing. ``pause`` is
        called after every `PAUSE_EVERY` envelopes (see `Worker.hand_over`)."""
        prepare = self.prepare
        items: list[Item] = []
        append = items.append
        try:
            for envelope in envelopes:
                append(prepare(envelope, max_payload, condition))
                if pause is not None and not len(items) % PAUSE_EVERY:
                    pause()
        except InvalidEvent as exc:
            raise InvalidEvent(f"envelopes[{len(items)}]: {exc}") from exc
        return items


def check_atomic(items: list[Item], limit: int, max_payload: int | None = None, batch_headers: int = 0) -> None:
    """`InvalidBatch` unless ``items`` can be one atomic batch: 1 to ``limit`` events (the server's
    ``max_batch_size``), no event id twice (the server would refuse the whole batch), each within
    the server's ``max_payload`` (when known) with the ``batch_headers`` bytes a batch adds to it."""
    if not items:
        raise InvalidBatch("an atomic batch needs at least one event")
    if len(items) > limit:
        raise InvalidBatch(
            f"an atomic batch of {len(items)} events is longer than the server allows ({limit}: the server's "
            "jetstream max_batch_size, PublisherConfig.max_batch): split it, or publish it without atomic=True"
        )
    if len({item.event_id for item in items}) < len(items):
        seen: set[str] = set()
        for item in items:
            if item.event_id in seen:
                raise InvalidBatch(
                    f"event {item.event_id} is twice in one atomic batch (the server refuses the whole batch)"
                )
            seen.add(item.event_id)
    if max_payload is not None and max(item.size for item in items) + batch_headers > max_payload:
        index, item = next((i, item) for i, item in enumerate(items) if item.size + batch_headers > max_payload)
        raise InvalidBatch(
            f"envelopes[{index}]: event {item.event_id} is {item.size} bytes with headers, and in an atomic batch "
            f"up to {batch_headers} more: over the server's max_payload of {max_payload} bytes"
        )
