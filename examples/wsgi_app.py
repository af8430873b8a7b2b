"""A plain WSGI app that publishes one `LessonPublished` per request (the README's "A WSGI app").

One publisher per process, built at import time by `build_from_env()` (before a pre-fork
server forks is fine: each worker connects on its first publish). Run it under gunicorn or
uWSGI as `examples/README.md` shows. Routes:

- ``GET /health``: ``200 ok`` (publishes nothing; a readiness probe).
- ``POST`` or ``GET /publish``: publishes one `LessonPublished` for tenant ``school-42``.
  With ``?wait=1`` it waits for the broker's ack (``.result(timeout=5)``) and answers
  ``201`` with the stream sequence (body and ``X-Broker-Sequence``); otherwise it answers
  ``202`` at once (fire-and-forget: the event is delivered in the background, and at exit
  the publisher is closed within ``exit_timeout``). A failed publish answers ``503``.

Every answer carries ``X-Worker-Pid``; ``/publish`` answers carry ``X-Event-Id``, the
envelope's ``event_id`` (the stored message's ``Nats-Msg-Id``).

Environment: ``EDUPULSE_EVENT_BROKER_URL`` and ``EDUPULSE_EVENT_BROKER_SUBJECT`` (read by
`build_from_env`), ``EDUPULSE_EXAMPLE_STREAM`` (the JetStream stream ensured at start,
created if missing; default ``EDUPULSE_EVENT_BROKER_STREAM``, else ``EDUPULSE``: the README's
stream, which captures ``edupulse.*.*`` — a second stream on those subjects would be refused),
``EDUPULSE_EXAMPLE_WINDOW`` (the publisher's ``window``, default the library's: the tests that
kill a worker use a small one), and ``EDUPULSE_EXAMPLE_NO_PUBLISH=1``
(build each envelope but publish nothing: the baseline for measuring what publishing costs).
The ``edupulse_events`` log goes to stderr at INFO, with the pid.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import sys
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from edupulse_events import EventEnvelope, EventPublisher, EventsError, LessonPublished, build_from_env

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

TENANT = "school-42"
RESULT_TIMEOUT = 5.0
NO_PUBLISH = os.environ.get("EDUPULSE_EXAMPLE_NO_PUBLISH", "").strip() == "1"
STREAM = (
    os.environ.get("EDUPULSE_EXAMPLE_STREAM", "").strip()
    or os.environ.get("EDUPULSE_EVENT_BROKER_STREAM", "").strip()
    or "EDUPULSE"
)
WINDOW: dict[str, Any] = (
    {"window": int(os.environ["EDUPULSE_EXAMPLE_WINDOW"])} if os.environ.get("EDUPULSE_EXAMPLE_WINDOW") else {}
)


def _log_to_stderr() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s"))
    logger = logging.getLogger("edupulse_events")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


_log_to_stderr()
publisher: EventPublisher | None = None if NO_PUBLISH else build_from_env(stream=STREAM, create_stream=True, **WINDOW)


def _answer(
    start_response: StartResponse, status: str, body: str, headers: Iterable[tuple[str, str]] = ()
) -> list[bytes]:
    data = body.encode()
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(data))),
            ("X-Worker-Pid", str(os.getpid())),
            *headers,
        ],
    )
    return [data]


def _publish(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    wait = parse_qs(environ.get("QUERY_STRING", "")).get("wait", ["0"])[-1] == "1"
    lesson = LessonPublished(lesson_id=uuid.uuid4(), author_id=uuid.uuid4(), title="Fractions")
    envelope = EventEnvelope.new(lesson, tenant_id=TENANT)
    event_id = ("X-Event-Id", str(envelope.event_id))
    if publisher is None:
        return _answer(start_response, "202 Accepted", "publishing disabled\n", [event_id])
    try:
        future = publisher.publish(envelope)
        if not wait:
            return _answer(start_response, "202 Accepted", "accepted\n", [event_id])
        ack = future.result(timeout=RESULT_TIMEOUT)
    except (EventsError, TimeoutError, concurrent.futures.TimeoutError) as exc:
        return _answer(start_response, "503 Service Unavailable", f"{type(exc).__name__}: {exc}\n", [event_id])
    sequence = str(ack.broker_sequence)
    return _answer(
        start_response, "201 Created", f"stored as #{sequence}\n", [event_id, ("X-Broker-Sequence", sequence)]
    )


def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI entry point: ``/health`` and ``/publish`` (see the module docstring)."""
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "GET")
    if path == "/health" and method in ("GET", "HEAD"):
        return _answer(start_response, "200 OK", "ok\n")
    if path == "/publish" and method in ("GET", "POST"):
        return _publish(environ, start_response)
    return _answer(start_response, "404 Not Found", "not found\n")
