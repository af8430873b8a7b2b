"""CloudEvents on the wire (`PublisherConfig.cloudevents`): the binary content mode's headers
beside every body, so CloudEvents consumers read our messages unchanged (NATS headers carry the
attributes as the HTTP binding does: ``ce-`` names, values percent-encoded where not plain).

==========================  ============================================================
``ce-specversion``          ``1.0``
``ce-id``                   the event_id
``ce-source``               ``cloudevents_source`` (a URI-reference; default ``urn:edupulse:events``)
``ce-type``                 the event type name, as the wire's ``data.type`` (``LessonPublished``)
``ce-time``                 ``created_at`` in RFC 3339, UTC, with its nanoseconds
``ce-subject``              the NATS subject the event is published to (percent-encoded)
``ce-tenantid``             the tenant id (absent when None)
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
import re
from urllib.parse import quote

from ..codec import Codec
from ..config import PublisherConfig
from ..envelope import EventEnvelope
from ..errors import ConfigError
from ._routing import Router, tenant_token

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

DEFAULT_SOURCE = "urn:edupulse:events"
_SOURCE = re.compile(r"[!-~]+")  # printable ASCII, no spaces: a URI-reference fits in one header line
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def check_source(source: str) -> None:
    """`ConfigError` unless ``source`` can be a ``ce-source`` header (a non-empty URI-reference)."""
    if not isinstance(source, str) or not _SOURCE.fullmatch(source):
        raise ConfigError(f"cloudevents_source must be a non-empty URI-reference without spaces, got {source!r}")


def router_for(config: PublisherConfig) -> Router:
    """The plain `Router`, or a `CloudEventsRouter` when ``config.cloudevents``."""
    if config.cloudevents:
        return CloudEventsRouter(config.subject, config.cloudevents_source, config.codec)
    return Router(config.subject, config.codec)


def _time(secs: int, nanos: int) -> str:
    stamp = _EPOCH + datetime.timedelta(seconds=secs)
    return f"{stamp:%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"


def _id(value: object) -> str:
    return quote(str(value), safe="-:.")


class CloudEventsRouter(Router):
    """A `Router` whose header blocks also carry the CloudEvents attributes."""

    def __init__(self, subject_template: str, source: str, codec: Codec | None = None) -> None:
        super().__init__(subject_template, codec)
        check_source(source)
        self._source = source.encode()

    def headers(self, envelope: EventEnvelope, payload: bytes, type_name: str) -> bytes:
        """`Router.headers`, then the CloudEvents attributes (`Router.prepare` checks the size)."""
        block = super().headers(envelope, payload, type_name)
        lines = [
            b"ce-specversion: 1.0",
            b"ce-id: " + payload[13:49],  # the event_id (Router.headers checked the layout)
            b"ce-source: " + self._source,
            b"ce-type: " + type_name.encode(),
            b"ce-time: " + _time(envelope.created_at.secs, envelope.created_at.nanos).encode(),
            # its % too: consumers percent-decode
            b"ce-subject: " + _id(self.subject(envelope, type_name).decode()).encode(),
        ]
        if envelope.tenant_id is not None:
            lines.append(b"ce-tenantid: " + tenant_token(envelope.tenant_id).encode())
        if envelope.correlation_id is not None:
            lines.append(b"ce-correlationid: " + _id(envelope.correlation_id).encode())
        if envelope.causation_id is not None:
            lines.append(b"ce-causationid: " + _id(envelope.causation_id).encode())
        lines.append(b"ce-personallyidentifiable: " + (b"true" if envelope.personally_identifiable else b"false"))
        lines.append(b"content-type: application/json")
        return block[:-2] + b"\r\n".join(lines) + b"\r\n\r\n"  # the block ends with its blank line
