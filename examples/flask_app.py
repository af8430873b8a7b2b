"""A small Flask app whose view publishes a `LessonPublished` carrying the request's context.

The app's WSGI callable is wrapped with `edupulse_events.wsgi.EventContextMiddleware`, so every
request runs inside an `event_context`: the correlation id comes from the ``X-Correlation-Id``,
``X-Request-Id`` or ``traceparent`` header, the tenant from ``X-Tenant-Id``. The view calls
``EventEnvelope.new(lesson)`` without passing either, and the envelope carries both.

One publisher per process, from `build_from_env()` (an `InMemoryPublisher` when
``EDUPULSE_EVENT_BROKER_URL`` is unset; with the README's broker variables, the README's stream).
Run it with (``pip install -e '.[flask]'``)::

    flask --app examples/flask_app.py run
    curl -X POST localhost:5000/lessons -H 'Content-Type: application/json' -H 'X-Tenant-Id: school-42' \\
         -H 'X-Correlation-Id: 0191f3c2-7a4b-4c1d-8e2f-a1b2c3d4e5f6' -d '{"title": "Fractions"}'

Routes: ``POST /lessons`` with a JSON body ``{"title": ..., "author_id": ...}`` (both optional)
publishes one event and answers ``201`` with its ids once the broker has acknowledged it;
``400`` for an invalid body, ``503`` when publishing fails.
"""

from __future__ import annotations

import concurrent.futures
import uuid
from typing import TYPE_CHECKING, Any

from flask import Flask, request

from edupulse_events import EventEnvelope, EventsError, InvalidEvent, LessonPublished, build_from_env
from edupulse_events.wsgi import EventContextMiddleware, request_header

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

RESULT_TIMEOUT = 5.0

app = Flask(__name__)
publisher = build_from_env()


def tenant_of(environ: WSGIEnvironment) -> str | None:
    """The request's tenant: its ``X-Tenant-Id`` header, if any."""
    tenant = (request_header(environ, "X-Tenant-Id") or "").strip()  # UTF-8 as the client sent it
    return tenant or None


# wrap the WSGI callable (not the Flask object), as Flask's docs do for WSGI middleware
app.wsgi_app = EventContextMiddleware(app.wsgi_app, tenant=tenant_of)  # type: ignore[method-assign]


@app.post("/lessons")
def publish_lesson() -> tuple[dict[str, Any], int]:
    """Publish one `LessonPublished`; its correlation id and tenant come from the request's context."""
    body = request.get_json(silent=True) or {}
    if not isinstance(body, dict):
        return {"error": "the body must be a JSON object"}, 400
    try:
        lesson = LessonPublished(
            lesson_id=uuid.uuid4(), author_id=body.get("author_id", uuid.uuid4()), title=body.get("title", "Untitled")
        )
        envelope = EventEnvelope.new(lesson)
    except InvalidEvent as exc:
        return {"error": str(exc)}, 400
    try:
        ack = publisher.publish(envelope).result(timeout=RESULT_TIMEOUT)
    except (EventsError, TimeoutError, concurrent.futures.TimeoutError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}, 503
    return {
        "event_id": str(envelope.event_id),
        "correlation_id": None if envelope.correlation_id is None else str(envelope.correlation_id),
        "tenant_id": envelope.tenant_id,
        "broker_sequence": ack.broker_sequence,
    }, 201
