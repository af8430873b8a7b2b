"""examples/flask_app.py through Flask's test client: the envelopes its view publishes (to the
InMemoryPublisher build_from_env() gives without a broker) carry the request's correlation id and tenant."""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import serve_once

from edupulse_events import EventEnvelope, InMemoryPublisher, current_event_context
from edupulse_events.config import ENV_PREFIX

pytest.importorskip("flask", reason="the flask extra is not installed (pip install -e '.[test]' installs it)")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flask_app.py"
CID = uuid.UUID("0191f3c2-7a4b-4c1d-8e2f-a1b2c3d4e5f6")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(scope="module")
def example() -> Iterator[ModuleType]:
    """The example module, imported with no broker configured (so its publisher is in memory)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
            mp.delenv(name)
        spec = importlib.util.spec_from_file_location("flask_app", EXAMPLE)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        mp.setitem(sys.modules, "flask_app", module)
        spec.loader.exec_module(module)
        try:
            yield module
        finally:
            module.publisher.close()


@pytest.fixture
def publisher(example: ModuleType) -> Iterator[InMemoryPublisher]:
    """The example's publisher, emptied before and after the test."""
    assert isinstance(example.publisher, InMemoryPublisher)
    example.publisher.drain()
    yield example.publisher
    example.publisher.drain()


def post(example: ModuleType, headers: dict[str, str], json: Any = None) -> Any:
    """POST /lessons through Flask's test client."""
    return example.app.test_client().post(
        "/lessons", json={"title": "Fractions"} if json is None else json, headers=headers
    )


def test_published_envelope_carries_the_requests_correlation_id_and_tenant(
    example: ModuleType, publisher: InMemoryPublisher
) -> None:
    """The view's envelope has the X-Correlation-Id and X-Tenant-Id of its request, and the answer says so."""
    response = post(example, {"X-Correlation-Id": str(CID), "X-Tenant-Id": "school-42"})
    assert response.status_code == 201, response.get_data(as_text=True)
    [envelope] = publisher.drain()
    assert isinstance(envelope, EventEnvelope)
    assert (envelope.correlation_id, envelope.tenant_id) == (CID, "school-42")
    assert envelope.data.title == "Fractions"
    assert response.get_json() == {
        "event_id": str(envelope.event_id),
        "correlation_id": str(CID),
        "tenant_id": "school-42",
        "broker_sequence": response.get_json()["broker_sequence"],
    }


def test_each_request_gets_its_own_context(example: ModuleType, publisher: InMemoryPublisher) -> None:
    """Consecutive requests with other headers (a traceparent, none at all) publish with their own values."""
    assert post(example, {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01", "X-Tenant-Id": "a"}).status_code == 201
    assert post(example, {}).status_code == 201
    assert post(example, {"X-Request-Id": "not-a-uuid", "X-Tenant-Id": "b"}).status_code == 201
    assert [(e.correlation_id, e.tenant_id) for e in publisher.drain()] == [
        (uuid.UUID(TRACE), "a"),
        (None, None),
        (None, "b"),
    ]
    assert current_event_context().tenant_id is None


def test_invalid_body_is_a_400_and_publishes_nothing(example: ModuleType, publisher: InMemoryPublisher) -> None:
    """A body that is not a JSON object, or a title that is not a string, answers 400 and publishes nothing."""
    assert post(example, {}, json=[1, 2]).status_code == 400
    response = post(example, {}, json={"title": 5})
    assert response.status_code == 400
    assert "LessonPublished.title" in response.get_json()["error"]
    assert publisher.drain() == []


def test_a_utf8_tenant_header_reaches_the_envelope_through_a_real_server(
    example: ModuleType, publisher: InMemoryPublisher
) -> None:
    """X-Tenant-Id: école-1 sent as UTF-8 bytes to the example behind a real WSGI server is the envelope's
    tenant (not the latin-1 mojibake "Ã©cole-1" a WSGI server hands over)."""
    body = b'{"title": "Fractions"}'
    request = (
        b"POST /lessons HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n"
        + "X-Tenant-Id: école-1\r\n".encode()
        + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert serve_once(example.app, request).startswith(b"HTTP/1.0 20")
    (envelope,) = publisher.drain()
    assert envelope.tenant_id == "école-1"
