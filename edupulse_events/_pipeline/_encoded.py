"""Events already encoded: what an outbox row or a spooled row holds, checked and queued as it is.

- `EncodedEvent`: one event as a router wrote it (the subject, the NATS header block, the body
  the codec wrote, and the event id): what `Outbox.add` stores, what ``publish_encoded()`` takes.
- `RowCheck`: why such a row is not one a publisher with a given subject template could have
  written (or None): the subject fits the template (no other subject, no wildcard), and the
  header block holds only the routing headers `_routing` (and, with ``cloudevents``,
  `_cloudevents`) write and the trace-context ones `_engine._otel` adds, each once, consistent
  with that subject and the row's event id. The spool checks the rows it adopts with it; the
  publishers check encoded events with it.
- `encoded_items`: encoded events checked (`RowCheck`, and the body against the header block:
  the codec's layout, the same event id and correlation id) and turned into `Item`, without
  decoding or encoding anything: the bytes queued are the bytes given.

Speed: a `RowCheck` remembers the plain header blocks it passed, by subject and by their lines
other than the two that change with every event (``Nats-Msg-Id`` and
``Edupulse-Correlation-Id``, whose values must then be a UUID, the first the row's event id): a
row like one seen before costs two UUID matches and a few slices instead of parsing its block.
A block with any other header (CloudEvents' ids and times, trace context) is checked in full.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple
from urllib.parse import unquote

from ..codec import ENVELOPE_LAYOUT
from ..errors import InvalidEvent
from ..futures import new_future
from ._cloudevents import HEADERS as CLOUDEVENTS_HEADERS
from ._routing import HEADERS as ROUTING_HEADERS
from ._routing import PAUSE_EVERY, Item, tenant_from_token

__all__ = ["TRACE_HEADERS", "EncodedEvent", "RowCheck", "encoded_items"]


class EncodedEvent(NamedTuple):
    """One event as a publisher sends it: its ``event_id`` (the ``Nats-Msg-Id``), its ``subject``,
    the NATS ``headers`` block and the ``body`` the codec wrote — what `Outbox.add` stores in a row,
    and what ``publish_encoded()`` takes. Build it only from what this library wrote: the publisher
    checks that the subject and headers are ones it could have written, not what the body says."""

    event_id: str
    subject: str
    headers: bytes
    body: bytes


_FIELD = re.compile(r"\{(type|tenant)\}")
_TYPE = rb"[A-Za-z_][A-Za-z0-9_]*"  # a registered event type name (`events.register_event`)
_TENANT = rb"_|_empty|[A-Za-z0-9%-]+"  # what `_routing.tenant_token` makes
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UUID_BYTES = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_VALUE = re.compile(rb"[!-~]*")  # every value the routers write: printable ASCII, no spaces (maybe empty)
#: What `_otel` adds with OpenTelemetry's default propagators (W3C trace context and baggage);
#: `RowCheck` also allows the fields of the global propagator configured when it is built.
TRACE_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})
_TRACE_VALUE = re.compile(rb"[ -~]*")

_ID_LINE = b"NATS/1.0\r\nNats-Msg-Id: "
_ID_LEN = len(_ID_LINE)
_CORRELATION = b"Edupulse-Correlation-Id: "
_CORRELATION_LEN = len(_CORRELATION)
_CORRELATION_TAIL = len(_CORRELATION) + 36 + 4  # the line, its UUID, "\r\n" and the block's end "\r\n"
_PASSED_LIMIT = 4096  # (subject, block) pairs a RowCheck remembers; emptied when it gets there


def _propagator_fields() -> frozenset[bytes]:
    """The header names the configured OpenTelemetry propagator writes (none without opentelemetry-api)."""
    if "opentelemetry" not in sys.modules and importlib.util.find_spec("opentelemetry") is None:
        return frozenset()
    try:
        from opentelemetry import propagate

        return frozenset(name.encode() for name in propagate.get_global_textmap().fields)
    except Exception:  # noqa: BLE001 - a propagator of the application's that cannot say: the defaults
        return frozenset()


class RowCheck:
    """Why a stored row (event_id, subject, headers) is not one this publisher could have written,
    or None: the subject fits ``template`` (its ``{type}``/``{tenant}`` as the router fills them),
    and the header block is ``NATS/1.0`` with the routing headers only (``ce-*`` too with
    ``cloudevents``), each once, ``Nats-Msg-Id`` = the event id, type and tenant = the subject's."""

    def __init__(self, template: str, *, cloudevents: bool) -> None:
        self.template = template
        self.cloudevents = cloudevents
        self._allowed = ROUTING_HEADERS | CLOUDEVENTS_HEADERS if cloudevents else ROUTING_HEADERS
        self._trace = (TRACE_HEADERS | _propagator_fields()) - self._allowed
        parts: list[bytes] = []
        seen: set[str] = set()
        last = 0
        for match in _FIELD.finditer(template):
            parts.append(re.escape(template[last : match.start()].encode()))
            name = match.group(1)
            pattern = _TYPE if name == "type" else _TENANT
            parts.append(b"(?P=%s)" % name.encode() if name in seen else b"(?P<%s>%s)" % (name.encode(), pattern))
            seen.add(name)
            last = match.end()
        parts.append(re.escape(template[last:].encode()))
        self._subject = re.compile(b"".join(parts))
        #: (subject, the block without its per-event ids) of plain blocks that passed the full check.
        self.passed: set[tuple[bytes, bytes]] = set()

    def __call__(self, event_id: str, subject: bytes, headers: bytes) -> str | None:
        key = _key(event_id.encode(), headers)
        if key is not None and (subject, key) in self.passed:
            return None if _UUID.fullmatch(event_id) else "its event id is not a UUID"
        why = self._check(event_id, subject, headers)
        if why is None and key is not None and self._plain(headers):
            passed = self.passed
            if len(passed) >= _PASSED_LIMIT:
                passed.clear()
            passed.add((subject, key))
        return why

    @staticmethod
    def _plain(headers: bytes) -> bool:
        """Whether ``headers`` (a block that passed) holds the routing headers only."""
        return all(line.partition(b": ")[0] in ROUTING_HEADERS for line in headers[10:-4].split(b"\r\n"))

    def _check(self, event_id: str, subject: bytes, headers: bytes) -> str | None:
        if not _UUID.fullmatch(event_id):
            return "its event id is not a UUID"
        match = self._subject.fullmatch(subject)
        if match is None:
            return f"subject {subject[:200]!r} does not fit this publisher's subject template {self.template!r}"
        if not headers.startswith(b"NATS/1.0\r\n") or not headers.endswith(b"\r\n\r\n") or len(headers) < 14:
            return f"headers {headers[:60]!r} are not a NATS/1.0 header block"
        values: dict[bytes, bytes] = {}
        for line in headers[10:-4].split(b"\r\n"):
            name, sep, value = line.partition(b": ")
            trace = name in self._trace
            if not sep or not (trace or name in self._allowed):
                return f"header {name[:60]!r} is not one this publisher writes"
            if name in values:
                return f"header {name!r} appears twice"
            if not (_TRACE_VALUE if trace else _VALUE).fullmatch(value):
                return f"header {name!r} has the value {value[:60]!r}"
            values[name] = value
        own = event_id.encode()
        if values.get(b"Nats-Msg-Id") != own or values.get(b"ce-id", own) != own:
            return "its Nats-Msg-Id header is not its event id"
        if values.get(b"Edupulse-Pii") not in (b"true", b"false"):
            return "its Edupulse-Pii header is missing or not true/false"
        kind = values.get(b"Edupulse-Event-Type", b"")
        if not re.fullmatch(_TYPE, kind) or kind != match.groupdict().get("type", kind):
            return f"its Edupulse-Event-Type header {kind[:60]!r} does not match its subject"
        tenant = values.get(b"Edupulse-Tenant")
        token = match.groupdict().get("tenant")
        if token is not None and (None if tenant is None else unquote(tenant.decode())) != tenant_from_token(
            token.decode()
        ):
            return f"its Edupulse-Tenant header {tenant!r} does not match its subject"
        return None


def _key(own: bytes, headers: bytes) -> bytes | None:
    """``headers`` without its per-event ids, when it begins with the ``Nats-Msg-Id`` line of
    the event id ``own`` and any ``Edupulse-Correlation-Id`` line (last) holds a UUID; else None."""
    start = _ID_LEN + len(own)
    if headers[_ID_LEN:start] != own or headers[:_ID_LEN] != _ID_LINE or headers[-4:] != b"\r\n\r\n":
        return None
    end = len(headers) - _CORRELATION_TAIL
    if headers[end : end + _CORRELATION_LEN] == _CORRELATION:
        if not _UUID_BYTES.fullmatch(headers, end + _CORRELATION_LEN, len(headers) - 4):
            return None
        return headers[start : end + _CORRELATION_LEN]
    return headers[start:]


_PREFIX, _EVENT_ID, _CAUSATION_AT = ENVELOPE_LAYOUT.prefix, ENVELOPE_LAYOUT.event_id, ENVELOPE_LAYOUT.causation_at
_CORRELATION_KEY = ENVELOPE_LAYOUT.correlation_key
_AFTER_NULL, _AFTER_UUID = ENVELOPE_LAYOUT.correlation_at_null, ENVELOPE_LAYOUT.correlation_at_uuid
_HEADER_CORRELATION = b"\r\n" + _CORRELATION
_PREFIX_LEN, _KEY_LEN, _N = len(_PREFIX), len(_CORRELATION_KEY), ord("n")
_SHORTEST = _AFTER_UUID + 37  # a body shorter than this is checked the long way


def _fast_key(own: bytes, headers: bytes, body: bytes) -> bytes | None:
    """`_key`, for a block whose correlation line, if any, is last, and whose body begins with
    the same event id and correlation id (the codec's layout); else None (the long way decides)."""
    key = _key(own, headers)
    if key is None or len(body) < _SHORTEST or body[:_PREFIX_LEN] != _PREFIX or body[_EVENT_ID] != own:
        return None
    at = _AFTER_NULL if body[_CAUSATION_AT] == _N else _AFTER_UUID
    if body[at - _KEY_LEN : at] != _CORRELATION_KEY:
        return None
    if key[-_CORRELATION_LEN:] == _CORRELATION:  # the header's correlation id is the block's last 40 bytes
        return key if body[at] != _N and body[at + 1 : at + 37] == headers[-40:-4] else None
    return key if body[at] == _N and _HEADER_CORRELATION not in key else None


def _body_mismatch(event_id: str, headers: bytes, body: bytes) -> str | None:
    """Why ``body`` is not the envelope ``headers`` were written for (the codec's layout, the
    same event id, the same correlation id), or None."""
    if body[: len(_PREFIX)] != _PREFIX or body[_EVENT_ID] != event_id.encode():
        return "its body is not the codec's encoding of this event id"
    at = _AFTER_NULL if body[_CAUSATION_AT : _CAUSATION_AT + 1] == b"n" else _AFTER_UUID
    if body[at - len(_CORRELATION_KEY) : at] != _CORRELATION_KEY:
        return "its body is not the codec's encoding of an envelope"
    correlation = None if body[at : at + 1] == b"n" else body[at + 1 : at + 37]
    line = headers.find(_HEADER_CORRELATION)
    given = None if line < 0 else headers[line + len(_HEADER_CORRELATION) : line + len(_HEADER_CORRELATION) + 36]
    if correlation != given:
        return "its Edupulse-Correlation-Id header is not its body's correlation id"
    return None


def encoded_items(
    events: Sequence[EncodedEvent],
    check: RowCheck,
    max_payload: int | None,
    condition: threading.Condition | None = None,
    pause: Callable[[], object] | None = None,
) -> list[Item]:
    """``events`` as items to queue, in order, their bytes as given: the first one that is not an
    `EncodedEvent` of this publisher (``check``, the body against its header block, a CloudEvents
    publisher's ``ce-`` headers, ``max_payload``) raises `InvalidEvent` naming its index
    (``events[i]: ...``), and then none is queued. ``pause`` as in `Router.prepare_many`."""
    cloudevents = check.cloudevents
    passed = check.passed  # the plain blocks `check` passed (a CloudEvents publisher needs its ce- lines)
    uuid = _UUID_BYTES.fullmatch
    items: list[Item] = []
    append = items.append
    for index, event in enumerate(events):
        if not isinstance(event, EncodedEvent):
            raise InvalidEvent(f"events[{index}]: publish_encoded() takes EncodedEvent, got {type(event).__name__}")
        event_id, subject, headers, body = event
        if not (
            isinstance(event_id, str)
            and isinstance(subject, str)
            and isinstance(headers, bytes)
            and isinstance(body, bytes)
        ):
            raise InvalidEvent(
                f"events[{index}]: an EncodedEvent holds (str, str, bytes, bytes), got "
                f"({', '.join(type(value).__name__ for value in event)})"
            )
        encoded_subject = subject.encode()
        own = event_id.encode()
        key = None if cloudevents else _fast_key(own, headers, body)
        if key is None or (encoded_subject, key) not in passed or not uuid(own):
            why = check(event_id, encoded_subject, headers) or _body_mismatch(event_id, headers, body)
            if why is None and cloudevents and b"\r\nce-specversion: " not in headers:
                why = "it has no ce- headers, which this publisher (cloudevents=True) sends with every event"
            if why is not None:
                raise InvalidEvent(f"events[{index}]: event {event_id[:60]!r}: {why}")
        item = Item(new_future(condition), encoded_subject, headers, body, event_id)
        if max_payload is not None and item.size > max_payload:
            raise InvalidEvent(
                f"events[{index}]: event {event_id} is {item.size} bytes with headers, "
                f"more than the server's max_payload of {max_payload} bytes"
            )
        append(item)
        if pause is not None and not len(items) % PAUSE_EVERY:
            pause()
    return items
