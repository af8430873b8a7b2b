"""CloudEvents on the wire (`PublisherConfig.cloudevents`): the binary content mode's headers
beside every body, so CloudEvents consumers read our messages unchanged (the NATS binding,
3.1.3: ``ce-`` names; values as `_routing.header_value` writes them, which a consumer's SDK
percent-decodes once).

==========================  ============================================================
``ce-specversion``          ``1.0``
``ce-id``                   the event_id
``ce-source``               ``cloudevents_source`` (a URI-reference; default ``urn:edupulse:events``)
``ce-type``                 the event type name, as the wire's ``data.type`` (``LessonPublished``)
``ce-time``                 ``created_at`` in RFC 3339, UTC, with its nanoseconds
``ce-subject``              the NATS subject the event is published to (its ``%`` as ``%25``)
``ce-tenantid``             the tenant id (an empty value for ""; absent when None)
``ce-correlationid``        the correlation id (absent when None)
``ce-causationid``          the causation id (absent when None)
``ce-personallyidentifiable``  ``true`` / ``false``
``content-type``            ``application/json`` (the body is the envelope as ever)
==========================  ============================================================

`CloudEventsRouter` adds them; publishers without the option use the plain `Router` and pay
nothing for it.
"""

from __future__ import annotations

import datetime

from ..codec import ENVELOPE_LAYOUT
from ..config import DEFAULT_CLOUDEVENTS_SOURCE, EnvelopeCodec, PublisherConfig, check_source
from ..envelope import EventEnvelope
from ._routing import Router, header_value

__all__ = ["DEFAULT_SOURCE", "HEADERS", "CloudEventsRouter", "check_source", "router_for"]

#: The header names `CloudEventsRouter` adds to `Router`'s.
HEADERS = frozenset(
    {
        b"ce-specversion",
        b"ce-id",
        b"ce-source",
        b"ce-type",
        b"ce-time",
        b"ce-subject",
        b"ce-tenantid",
        b"ce-correlationid",
        b"ce-causationid",
        b"ce-personallyidentifiable",
        b"content-type",
    }
)

DEFAULT_SOURCE = DEFAULT_CLOUDEVENTS_SOURCE
_EVENT_ID = ENVELOPE_LAYOUT.event_id
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def router_for(config: PublisherConfig) -> Router:
    """The plain `Router`, or a `CloudEventsRouter` when ``config.cloudevents``."""
    if config.cloudevents:
        return CloudEventsRouter(config.subject, config.cloudevents_source, config.codec)
    return Router(config.subject, config.codec)


def _time(secs: int, nanos: int) -> str:
    stamp = _EPOCH + datetime.timedelta(seconds=secs)
    return f"{stamp:%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"


class CloudEventsRouter(Router):
    """A `Router` whose header blocks also carry the CloudEvents attributes."""

    def __init__(self, subject_template: str, source: str, codec: EnvelopeCodec | None = None) -> None:
        super().__init__(subject_template, codec)
        check_source(source)
        self._source = source.encode()

    def headers(self, envelope: EventEnvelope, payload: bytes, type_name: str) -> bytes:
        """`Router.headers`, then the CloudEvents attributes (`Router.prepare` checks the size)."""
        block = super().headers(envelope, payload, type_name)
        lines = [
            b"ce-specversion: 1.0",
            b"ce-id: " + payload[_EVENT_ID],  # the event_id (Router.headers checked the layout)
            b"ce-source: " + self._source,
            b"ce-type: " + type_name.encode(),
            b"ce-time: " + _time(envelope.created_at.secs, envelope.created_at.nanos).encode(),
            b"ce-subject: " + header_value(self.subject(envelope, type_name).decode()).encode(),
        ]
        if envelope.tenant_id is not None:
            lines.append(b"ce-tenantid: " + header_value(envelope.tenant_id).encode())
        if envelope.correlation_id is not None:
            lines.append(b"ce-correlationid: " + header_value(str(envelope.correlation_id)).encode())
        if envelope.causation_id is not None:
            lines.append(b"ce-causationid: " + header_value(str(envelope.causation_id)).encode())
        lines.append(b"ce-personallyidentifiable: " + (b"true" if envelope.personally_identifiable else b"false"))
        lines.append(b"content-type: application/json")
        return block[:-2] + b"\r\n".join(lines) + b"\r\n\r\n"  # the block ends with its blank line
