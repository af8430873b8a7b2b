"""examples/django_app through Django's test client, and edupulse_events.django.EventContextMiddleware
itself: the envelopes a view publishes carry the request's correlation id and tenant, streaming
bodies are generated in the context, and the tenant setting is checked."""

from __future__ import annotations

import importlib
import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from edupulse_events import EventContext, EventEnvelope, InMemoryPublisher, LessonPublished, current_event_context
from edupulse_events.config import ENV_PREFIX
from edupulse_events.django import EventContextMiddleware

django = pytest.importorskip(
    "django", reason="the django extra is not installed (pip install -e '.[test]' installs it)"
)
django_exceptions = pytest.importorskip("django.core.exceptions")
django_http = pytest.importorskip("django.http")
django_test = pytest.importorskip("django.test")
django_test_utils = pytest.importorskip("django.test.utils")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CID = uuid.UUID("0191f3c2-7a4b-4c1d-8e2f-a1b2c3d4e5f6")
RID = uuid.UUID("c0ffee00-dead-4bef-8bad-f00dbaadcafe")


@pytest.fixture(scope="module")
def views() -> Iterator[ModuleType]:
    """Django set up with the example's settings (no broker configured), and the example's views module."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
            mp.delenv(name)
        mp.syspath_prepend(str(EXAMPLES))
        mp.setenv("DJANGO_SETTINGS_MODULE", "django_app.settings")
        django.setup()
        django_test_utils.setup_test_environment()
        module = importlib.import_module("django_app.views")
        try:
            yield module
        finally:
            module.publisher.close()
            django_test_utils.teardown_test_environment()


@pytest.fixture
def publisher(views: ModuleType) -> Iterator[InMemoryPublisher]:
    """The example's publisher, emptied before and after the test."""
    assert isinstance(views.publisher, InMemoryPublisher)
    views.publisher.drain()
    yield views.publisher
    views.publisher.drain()


def post(headers: dict[str, str], body: bytes = b'{"title": "Fractions"}') -> Any:
    """POST /lessons through Django's test client."""
    return django_test.Client(headers=headers).post("/lessons", body, content_type="application/json")


# --- the example project ---


def test_published_envelope_carries_the_requests_correlation_id_and_tenant(publisher: InMemoryPublisher) -> None:
    """The view's envelope has the X-Correlation-Id and X-Tenant-Id of its request, and the answer says so."""
    response = post({"X-Correlation-Id": str(CID), "X-Tenant-Id": "school-42"})
    assert response.status_code == 201, response.content
    [envelope] = publisher.drain()
    assert (envelope.correlation_id, envelope.tenant_id) == (CID, "school-42")
    assert envelope.data.title == "Fractions"
    assert response.json()["event_id"] == str(envelope.event_id)
    assert (response.json()["correlation_id"], response.json()["tenant_id"]) == (str(CID), "school-42")


def test_each_request_gets_its_own_context(publisher: InMemoryPublisher) -> None:
    """Consecutive requests (X-Request-Id, no headers, an invalid id) publish with their own values."""
    assert post({"X-Request-Id": str(RID), "X-Tenant-Id": "a"}).status_code == 201
    assert post({}).status_code == 201
    assert post({"X-Correlation-Id": "nope", "X-Tenant-Id": "b"}).status_code == 201
    assert [(e.correlation_id, e.tenant_id) for e in publisher.drain()] == [(RID, "a"), (None, None), (None, "b")]
    assert current_event_context() == EventContext()


def test_bad_requests_publish_nothing(publisher: InMemoryPublisher) -> None:
    """A GET answers 405, a body that is not a JSON object or a bad title 400; nothing is published."""
    assert django_test.Client().get("/lessons").status_code == 405
    assert post({}, b"[1]").status_code == 400
    assert post({}, b"{not json").status_code == 400
    response = post({}, b'{"title": 5}')
    assert response.status_code == 400
    assert "LessonPublished.title" in response.json()["error"]
    assert publisher.drain() == []


# --- the middleware itself ---


def lesson() -> LessonPublished:
    """A valid LessonPublished."""
    return LessonPublished(CID, RID, "Intro")


def test_streaming_body_is_generated_in_the_context(views: ModuleType) -> None:
    """Each chunk of a streaming response is produced inside the request's context, and only there."""
    envelopes: list[EventEnvelope] = []

    def chunks() -> Iterator[bytes]:
        for i in range(3):
            envelopes.append(EventEnvelope.new(lesson()))
            yield b"%d" % i

    middleware = EventContextMiddleware(lambda request: django_http.StreamingHttpResponse(chunks()))
    request = django_test.RequestFactory().get("/", headers={"X-Correlation-Id": str(CID), "X-Tenant-Id": "t"})
    response = middleware(request)
    assert envelopes == []
    seen_outside = []
    body = b""
    for chunk in response.streaming_content:
        seen_outside.append(current_event_context())
        body += chunk
    response.close()
    assert body == b"012"
    assert [(e.correlation_id, e.tenant_id) for e in envelopes] == [(CID, "t")] * 3
    assert seen_outside == [EventContext()] * 3


def test_file_response_is_left_for_the_server(views: ModuleType) -> None:
    """A FileResponse keeps its file, so the server can still send it with its file wrapper."""
    middleware = EventContextMiddleware(lambda request: django_http.FileResponse(io.BytesIO(b"data")))
    response = middleware(django_test.RequestFactory().get("/"))
    assert response.file_to_stream is not None
    assert b"".join(response.streaming_content) == b"data"
    response.close()


def test_tenant_setting_takes_a_callable_a_dotted_path_or_nothing(views: ModuleType) -> None:
    """EDUPULSE_EVENTS_TENANT: a callable or its dotted path (None: no tenant); else ImproperlyConfigured."""
    seen: list[EventContext] = []

    def view(request: Any) -> Any:
        seen.append(current_event_context())
        return None

    request = django_test.RequestFactory().get("/", headers={"X-Tenant-Id": "h"})
    with django_test.override_settings(EDUPULSE_EVENTS_TENANT=lambda request: "from-callable"):
        EventContextMiddleware(view)(request)
    with django_test.override_settings(EDUPULSE_EVENTS_TENANT="django_app.views.tenant_of"):
        EventContextMiddleware(view)(request)
    with django_test.override_settings(EDUPULSE_EVENTS_TENANT=None):
        EventContextMiddleware(view)(request)
    assert [ctx.tenant_id for ctx in seen] == ["from-callable", "h", None]
    with (
        django_test.override_settings(EDUPULSE_EVENTS_TENANT=42),
        pytest.raises(django_exceptions.ImproperlyConfigured, match="EDUPULSE_EVENTS_TENANT"),
    ):
        EventContextMiddleware(view)
