"""Machine-readable descriptions of the wire, generated from the event registry.

Owns :func:`json_schema` (one JSON Schema, draft 2020-12, for the envelope with every
registered event type) and :func:`asyncapi` (an AsyncAPI 3.0.0 document: the subject
template as a channel, the send operation, one message per event type with the headers the
publisher sends). Per-field schemas come from each registered class's field specs (the
:class:`~edupulse_events.events.WireType` of its attrs field types), so an event type added
with ``register_event`` is described like the built-in four; ``python -m edupulse_events
schema jsonschema|asyncapi`` prints them (``_cli._schema``).

The schema holds to what the codec accepts (WIRE.md "Decoding"): integer ranges (u32, i64,
...), finite numbers, the UUID forms the Rust ``uuid`` crate reads, ``created_at`` as
``{secs_since_epoch, nanos_since_epoch}`` with no other key and no carry past 2**63-1
seconds, ``data`` as ``{"type": <name>, "payload": {...}}`` with a known, case-sensitive tag
and an object payload, missing ``Option`` fields meaning null, unknown keys allowed
elsewhere. It cannot say what a JSON parser hides or JSON Schema has no word for, which the
codec still refuses: ``100.0``, ``1e2`` and ``-0`` in integer fields (JSON Schema counts
them as integers), repeated keys, lone surrogate escapes, serde's stricter reading of a
payload that comes before its tag, and whatever a custom event's own ``__init__`` checks.
It describes the objects serde writes: serde_json would also read the envelope,
``created_at`` and ``data`` given as arrays of their fields, which the schema refuses.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import attrs

from ._version import __version__
from .config import DEFAULT_CLOUDEVENTS_SOURCE, check_source, check_subject
from .envelope import I64_MAX, NANOS_PER_SEC, EventEnvelope
from .events import EventRegistry, EventType, WireType, default_registry, wire_type

__all__ = ["DEFAULT_SUBJECT", "asyncapi", "json_schema"]

DEFAULT_SUBJECT = "edupulse.{tenant}.{type}"
"""The subject template the demo publishes to (one token for the tenant, one for the type)."""

_DRAFT = "https://json-schema.org/draft/2020-12/schema"
_F64_MAX = sys.float_info.max
_U32_MAX = 2**32 - 1
_HEX = "[0-9a-fA-F]"
_HYPHENATED = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
_CANONICAL = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
# Each form has one length: maxLength also shuts out a trailing newline, which `$` lets
# through in Python's regex dialect (not in ECMA 262's).
_UUID_FORMS = (
    (f"^{_HYPHENATED}$", 36),
    (f"^\\{{{_HYPHENATED}\\}}$", 38),
    (f"^urn:uuid:{_HYPHENATED}$", 45),
    (f"^{_HEX}{{32}}$", 32),
)


class _Builder:
    """Builds the schemas, with ``$ref`` targets under ``prefix`` (``#/$defs/`` in a JSON
    Schema, ``#/components/schemas/`` in AsyncAPI) and fixed-length tuples written for
    draft 2020-12 (``prefixItems``) or draft 07 (AsyncAPI's Schema Object)."""

    def __init__(self, registry: EventRegistry, prefix: str, *, draft07: bool) -> None:
        self.registry = registry
        self.prefix = prefix
        self.draft07 = draft07

    def ref(self, name: str) -> dict[str, Any]:
        return {"$ref": self.prefix + name}

    def field(self, wt: WireType) -> dict[str, Any]:
        """The schema of one value of wire type ``wt`` (as the codec reads it)."""
        kind = wt.kind
        if kind == "uuid":
            return self.ref("Uuid")
        if kind in ("str", "bool"):
            return {"type": "string" if kind == "str" else "boolean"}
        if kind == "int":
            lo, hi = wt.args
            return {"type": "integer", "minimum": lo, "maximum": hi, "$comment": wt.label}
        if kind == "float":  # finite only: a number past the f64 range is read as infinity and refused
            return {"type": "number", "minimum": -_F64_MAX, "maximum": _F64_MAX, "$comment": "f64"}
        if kind == "optional":
            inner = self.field(wt.args[0])
            if isinstance(inner.get("type"), str):
                return {**inner, "type": [inner["type"], "null"]}
            return {"anyOf": [inner, {"type": "null"}]}
        if kind == "map":
            return {"type": "object", "additionalProperties": {"type": "string"}}
        if kind in ("list", "tuple"):
            return {"type": "array", "items": self.field(wt.args[0])}
        items = [self.field(w) for w in wt.args]  # a fixed-length tuple
        if self.draft07:
            return {"type": "array", "items": items, "additionalItems": False, "minItems": len(items)}
        return {"type": "array", "prefixItems": items, "items": False, "minItems": len(items)}

    def payload(self, entry: EventType) -> dict[str, Any]:
        """The ``data.payload`` object of a registered event type (unknown keys allowed)."""
        schema: dict[str, Any] = {"title": entry.name}
        doc = _doc(entry.cls)
        if doc:
            schema["description"] = doc
        schema["type"] = "object"
        schema["properties"] = {fs.name: self.field(fs.wire) for fs in entry.fields}
        # serde knows no Python default: every field but an Option one must be present
        schema["required"] = [fs.name for fs in entry.fields if fs.wire.kind != "optional"]
        return schema

    def data(self, entries: list[EventType]) -> dict[str, Any] | bool:
        """``data``: ``{"type": <name>, "payload": {...}}``, one branch per event type."""
        if not entries:
            return False  # nothing is registered: no document decodes
        return {
            "description": "The event, adjacently tagged: `type` is its type name (case-sensitive), "
            "`payload` its fields, always an object. Unknown keys are ignored.",
            "type": "object",
            "properties": {"type": {"enum": [e.name for e in entries]}},
            "required": ["type", "payload"],
            "oneOf": [
                {"properties": {"type": {"const": e.name}, "payload": self.ref(e.name + "Payload")}} for e in entries
            ],
        }

    def envelope(self, entries: list[EventType], title: str) -> dict[str, Any]:
        """The envelope object whose ``data`` is one of ``entries``."""
        properties: dict[str, Any] = {}
        required: list[str] = []
        for a in attrs.fields(attrs.resolve_types(EventEnvelope)):
            optional, description = False, _ENVELOPE_FIELDS[a.name]
            if a.name == "created_at":
                schema: Any = self.ref("Timestamp")
            elif a.name == "data":
                schema = self.data(entries)
            else:
                wt = wire_type(a.type)
                schema, optional = self.field(wt), wt.kind == "optional"
                description += " A missing key means null." if optional else ""
            if isinstance(schema, dict) and "description" not in schema:
                schema = {**schema, "description": description}
            properties[a.name] = schema
            if not optional:
                required.append(a.name)
        return {
            "title": title,
            "description": "One EduPulse event with its metadata, as the Rust service's serde writes and reads it "
            "(UTF-8 JSON; keys in this order when written). Unknown keys are ignored.",
            "type": "object",
            "properties": properties,
            "required": required,
        }

    def definitions(self) -> dict[str, Any]:
        """The shared schemas: ``Uuid``, ``Timestamp`` and ``<Name>Payload`` per event type."""
        defs: dict[str, Any] = {"Uuid": _uuid_schema(), "Timestamp": _timestamp_schema()}
        for entry in self.registry:
            defs[entry.name + "Payload"] = self.payload(entry)
        return defs


_ENVELOPE_FIELDS = {
    "event_id": "The event's id (written lowercase, hyphenated); JetStream de-duplicates on it.",
    "causation_id": "The id of the event that caused this one, or null.",
    "correlation_id": "The id shared by every event of one request or workflow, or null.",
    "tenant_id": "The tenant (school) the event belongs to, or null.",
    "created_at": "When the event was created.",
    "personally_identifiable": "True when the event is about a person (GDPR).",
    "data": "The event.",
}


def _doc(cls: type) -> str:
    """The first paragraph of the class's own docstring (not one inherited), or ``""``."""
    doc = cls.__doc__
    return inspect.cleandoc(doc).split("\n\n")[0].replace("\n", " ") if isinstance(doc, str) else ""


def _uuid_schema() -> dict[str, Any]:
    return {
        "description": "A UUID: serde writes it lowercase and hyphenated; it reads any letter case, "
        "hyphenated, 32 hex digits, {braced} or after a lowercase urn:uuid: prefix, nothing around it.",
        "type": "string",
        "anyOf": [{"pattern": pattern, "maxLength": length} for pattern, length in _UUID_FORMS],
    }


def _timestamp_schema() -> dict[str, Any]:
    # the nanoseconds (a u32) carry into the seconds when read, which must stay <= 2**63-1
    carry = [
        {
            "if": {"properties": {"secs_since_epoch": {"const": I64_MAX - k}}, "required": ["secs_since_epoch"]},
            "then": {"properties": {"nanos_since_epoch": {"type": "integer", "maximum": (k + 1) * NANOS_PER_SEC - 1}}},
        }
        for k in range(_U32_MAX // NANOS_PER_SEC)
    ]
    return {
        "description": "Rust's SystemTime as serde writes it: seconds and nanoseconds since "
        "1970-01-01T00:00:00Z (never earlier). Nanoseconds of 10**9 or more carry into the seconds when read.",
        "type": "object",
        "properties": {
            "secs_since_epoch": {"type": "integer", "minimum": 0, "maximum": I64_MAX},
            "nanos_since_epoch": {
                "type": "integer",
                "minimum": 0,
                "maximum": _U32_MAX,
                "description": "Written as 0..=999999999.",
            },
        },
        "required": ["secs_since_epoch", "nanos_since_epoch"],
        "additionalProperties": False,
        "allOf": carry,
    }


def json_schema(registry: EventRegistry | None = None) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) for the wire envelope carrying any event type registered
    in ``registry`` (default: the default registry); see the module docstring for what it
    holds to and what it cannot say."""
    reg = default_registry if registry is None else registry
    builder = _Builder(reg, "#/$defs/", draft07=False)
    return {"$schema": _DRAFT, **builder.envelope(list(reg), "EventEnvelope"), "$defs": builder.definitions()}


def asyncapi(
    subject: str = DEFAULT_SUBJECT,
    *,
    jetstream: bool = True,
    registry: EventRegistry | None = None,
    host: str = "localhost:4222",
    cloudevents: bool = False,
    cloudevents_source: str = DEFAULT_CLOUDEVENTS_SOURCE,
) -> dict[str, Any]:
    """An AsyncAPI 3.0.0 document for a publisher on ``subject`` (a template using
    ``{tenant}`` and ``{type}``, or a fixed subject) at NATS server ``host``: one channel, a
    ``send`` operation (with JetStream: its PubAck reply), one message per event type in
    ``registry`` with the routing headers (and the CloudEvents ones when ``cloudevents``).
    ``ConfigError`` for a subject or source the publisher would refuse."""

    check_subject(None, None, subject)
    if cloudevents:
        check_source(cloudevents_source)
    reg = default_registry if registry is None else registry
    builder = _Builder(reg, "#/components/schemas/", draft07=True)
    schemas = builder.definitions()
    messages: dict[str, Any] = {}
    for entry in reg:
        schemas[entry.name + "Envelope"] = builder.envelope([entry], f"EventEnvelope of {entry.name}")
        messages[entry.name] = {
            "name": entry.name,
            "title": entry.name,
            "summary": _doc(entry.cls) or f"A {entry.name} event.",
            "contentType": "application/json",
            "headers": _headers(entry.name, jetstream, cloudevents, cloudevents_source),
            "payload": builder.ref(entry.name + "Envelope"),
        }
    channel: dict[str, Any] = {
        "address": subject,
        "title": "EduPulse events",
        "description": "Every event is published to this subject"
        + (" (a template: one token per parameter)." if "{" in subject else ".")
        + (" A JetStream stream captures it." if jetstream else " Core NATS: no stream, no acknowledgement."),
        "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
    }
    parameters = _parameters(subject, reg)
    if parameters:
        channel["parameters"] = parameters
    operation: dict[str, Any] = {
        "action": "send",
        "channel": {"$ref": "#/channels/events"},
        "title": "Publish an event",
        "summary": "The publisher sends each event once per attempt, with the same Nats-Msg-Id on every attempt.",
        "messages": [{"$ref": f"#/channels/events/messages/{name}"} for name in messages],
    }
    channels: dict[str, Any] = {"events": channel}
    if jetstream:
        channels["pubAck"] = {
            "address": None,
            "title": "JetStream acknowledgements",
            "description": "The reply subject of each publish (an _INBOX subject of the publisher's connection).",
            "messages": {"PubAck": {"$ref": "#/components/messages/PubAck"}},
        }
        operation["reply"] = {
            "channel": {"$ref": "#/channels/pubAck"},
            "messages": [{"$ref": "#/channels/pubAck/messages/PubAck"}],
        }
        messages["PubAck"] = _pub_ack()
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "EduPulse domain events",
            "version": __version__,
            "description": "The events EduPulse services publish to NATS: a JSON envelope (the Rust service's serde "
            "format) per message, with routing headers beside it so consumers can route without parsing the body.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": host,
                "protocol": "nats",
                "description": "A NATS server" + (" with JetStream." if jetstream else "."),
            }
        },
        "channels": channels,
        "operations": {"publishEvent": operation},
        "components": {"schemas": schemas, "messages": messages},
    }


def _parameters(subject: str, reg: EventRegistry) -> dict[str, Any]:
    """The channel parameters ``subject`` uses (``{tenant}``, ``{type}``), in AsyncAPI's form."""
    out: dict[str, Any] = {}
    if "{tenant}" in subject:
        out["tenant"] = {
            "description": "tenant_id as one subject token: itself when it holds only ASCII letters, digits "
            "and '-'; otherwise its UTF-8 percent-encoded (also '_', '.' and '~'); `_empty` for an empty "
            "tenant_id and `_` for null. It is derived from the payload's tenant_id; the Edupulse-Tenant "
            "header carries the tenant_id itself (as a header value), not this token.",
        }
    if "{type}" in subject:
        out["type"] = {
            "description": "The event type name: the payload's data.type and the Edupulse-Event-Type header.",
            "enum": list(reg.names),
            "location": "$message.payload#/data/type",
        }
    return out


_TENANT_HEADER = (
    "The tenant_id as a header value: UTF-8 with space, '\"', '%' and every character outside printable "
    "ASCII percent-encoded (the CloudEvents NATS binding's rule; a reader decodes it once); an empty value "
    "for an empty tenant_id; absent when null."
)


def _text(description: str, **schema: Any) -> dict[str, Any]:
    return {"type": "string", **schema, "description": description}


def _headers(name: str, jetstream: bool, cloudevents: bool, source: str) -> dict[str, Any]:
    """The NATS headers the publisher sends beside an event of type ``name`` (``_routing``,
    ``_cloudevents``)."""
    dedup = "JetStream de-duplicates on it" if jetstream else "core NATS ignores it; JetStream would de-duplicate"
    properties: dict[str, Any] = {
        "Nats-Msg-Id": _text(f"The event_id (canonical form); {dedup}.", pattern=_CANONICAL, maxLength=36),
        "Edupulse-Event-Type": _text("The event type name (data.type).", const=name),
        "Edupulse-Tenant": _text(_TENANT_HEADER),
        "Edupulse-Pii": _text("The personally_identifiable flag.", enum=["true", "false"]),
        "Edupulse-Correlation-Id": _text(
            "The correlation_id (canonical form); absent when null.", pattern=_CANONICAL, maxLength=36
        ),
    }
    required = ["Nats-Msg-Id", "Edupulse-Event-Type", "Edupulse-Pii"]
    if cloudevents:
        uuid = {"pattern": _CANONICAL, "maxLength": 36}
        properties.update(
            {
                "ce-specversion": _text("CloudEvents binary content mode.", const="1.0"),
                "ce-id": _text("The event_id.", **uuid),
                "ce-source": _text("The publisher's cloudevents_source.", const=source),
                "ce-type": _text("The event type name.", const=name),
                "ce-time": _text(
                    "created_at in RFC 3339, UTC, with nanoseconds.",
                    pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z$",
                ),
                "ce-subject": _text("The subject the event was published to, percent-encoded."),
                "ce-tenantid": _text(_TENANT_HEADER),
                "ce-correlationid": _text("The correlation_id; absent when null.", **uuid),
                "ce-causationid": _text("The causation_id; absent when null.", **uuid),
                "ce-personallyidentifiable": _text("The personally_identifiable flag.", enum=["true", "false"]),
                "content-type": _text("The body's media type.", const="application/json"),
            }
        )
        required += ["ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time", "ce-subject"]
        required += ["ce-personallyidentifiable", "content-type"]
    return {"type": "object", "properties": properties, "required": required}


def _pub_ack() -> dict[str, Any]:
    return {
        "name": "PubAck",
        "title": "JetStream publish acknowledgement",
        "summary": "The stream stored the event (or had it already: duplicate), or an error.",
        "contentType": "application/json",
        "payload": {
            "type": "object",
            "properties": {
                "stream": {"type": "string"},
                "seq": {"type": "integer", "minimum": 0},
                "duplicate": {"type": "boolean"},
                "domain": {"type": "string"},
                "error": {
                    "type": "object",
                    "properties": {
                        "code": {"type": "integer"},
                        "err_code": {"type": "integer"},
                        "description": {"type": "string"},
                    },
                },
            },
        },
    }
