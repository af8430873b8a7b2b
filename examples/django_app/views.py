"""The example's views: ``POST /lessons`` publishes a `LessonPublished` whose correlation id and
tenant come from the request's event context (set by `edupulse_events.django.EventContextMiddleware`);
``POST /lessons/outbox`` saves a `Lesson` and adds its event to the transactional outbox in one
``transaction.atomic()`` block (published by the relay if, and only if, the block commits:
``edupulse-events outbox relay --db sqlite:///example.db``); ``GET /health``.

One publisher per process, from `build_from_env()` (an `InMemoryPublisher` when
``EDUPULSE_EVENT_BROKER_URL`` is unset).
"""

from __future__ import annotations

import concurrent.futures
import json
import uuid
from typing import Any

from django.db import transaction  # type: ignore[import-untyped]
from django.http import (  # type: ignore[import-untyped]  # Django ships no type hints
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    JsonResponse,
)

from edupulse_events import EventEnvelope, EventsError, InvalidEvent, LessonPublished, build_from_env
from edupulse_events.django import add_event
from edupulse_events.wsgi import request_header

RESULT_TIMEOUT = 5.0

publisher = build_from_env()


def tenant_of(request: HttpRequest) -> str | None:
    """The request's tenant: its ``X-Tenant-Id`` header, if any (the ``EDUPULSE_EVENTS_TENANT`` setting)."""
    tenant = (request_header(request.META, "X-Tenant-Id") or "").strip()  # UTF-8 as the client sent it
    return tenant or None


def _body(request: HttpRequest) -> dict[str, Any] | None:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _lesson(request: HttpRequest) -> HttpResponse | tuple[EventEnvelope, dict[str, Any]]:
    """The request's `LessonPublished` envelope (JSON body: optional ``title`` and ``author_id``;
    correlation id and tenant from the request's context) and its body, or the error response."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    body = _body(request)
    if body is None:
        return JsonResponse({"error": "the body must be a JSON object"}, status=400)
    try:
        lesson = LessonPublished(
            lesson_id=uuid.uuid4(), author_id=body.get("author_id", uuid.uuid4()), title=body.get("title", "Untitled")
        )
        return EventEnvelope.new(lesson), body
    except InvalidEvent as exc:
        return JsonResponse({"error": str(exc)}, status=400)


def publish_lesson(request: HttpRequest) -> HttpResponse:
    """Publish one `LessonPublished` (JSON body: optional ``title`` and ``author_id``); answer 201 with its ids.

    An API for other services, not a form: the project has no CSRF middleware.
    """
    made = _lesson(request)
    if isinstance(made, HttpResponse):
        return made
    envelope = made[0]
    try:
        ack = publisher.publish(envelope).result(timeout=RESULT_TIMEOUT)
    except (EventsError, TimeoutError, concurrent.futures.TimeoutError) as exc:
        return JsonResponse({"error": f"{type(exc).__name__}: {exc}"}, status=503)
    return JsonResponse(
        {
            "event_id": str(envelope.event_id),
            "correlation_id": None if envelope.correlation_id is None else str(envelope.correlation_id),
            "tenant_id": envelope.tenant_id,
            "broker_sequence": ack.broker_sequence,
        },
        status=201,
    )


def save_lesson(request: HttpRequest) -> HttpResponse:
    """Save a `Lesson` and add its `LessonPublished` to the outbox in one transaction; answer 201
    with the ids. ``{"rollback": true}`` in the body rolls the transaction back after both (409):
    neither the lesson nor the event remains."""
    from .models import Lesson

    made = _lesson(request)
    if isinstance(made, HttpResponse):
        return made
    envelope, body = made
    lesson = envelope.data
    with transaction.atomic():
        Lesson.objects.create(id=lesson.lesson_id, title=lesson.title)
        add_event(envelope)  # same transaction: published by the relay once this commits
        if body.get("rollback"):
            transaction.set_rollback(True)
    status = 409 if body.get("rollback") else 201
    return JsonResponse({"event_id": str(envelope.event_id), "lesson_id": str(lesson.lesson_id)}, status=status)


def health(request: HttpRequest) -> HttpResponse:
    """200: the server is up (nothing published)."""
    return HttpResponse("ok")
