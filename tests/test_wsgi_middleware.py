"""edupulse_events.wsgi.EventContextMiddleware under plain WSGI: headers to envelope fields, the
tenant callable, lazy bodies and close(), errors, and requests that never see each other's context."""

from __future__ import annotations

import io
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from wsgiref.handlers import SimpleHandler
from wsgiref.util import FileWrapper, setup_testing_defaults

import pytest
from helpers import serve_once

from edupulse_events import EventContext, EventEnvelope, LessonPublished, current_event_context
from edupulse_events.wsgi import EventContextMiddleware, correlation_id_from_environ, request_header

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

CID = uuid.UUID("0191f3c2-7a4b-4c1d-8e2f-a1b2c3d4e5f6")
RID = uuid.UUID("c0ffee00-dead-4bef-8bad-f00dbaadcafe")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
EMPTY = EventContext()


def lesson() -> LessonPublished:
    """A valid LessonPublished."""
    return LessonPublished(CID, RID, "Intro")


def environ_with(headers: dict[str, str]) -> dict[str, Any]:
    """A complete WSGI environ (wsgiref's test defaults) with these request headers."""
    environ: dict[str, Any] = {"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()}
    setup_testing_defaults(environ)
    return environ


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], object]:
    """A start_response that accepts anything."""
    return lambda data: None


class Recorder:
    """A WSGI app whose lazily generated body creates an envelope per chunk and one in its finally block."""

    def __init__(self, chunks: int = 2) -> None:
        self.chunks = chunks
        self.envelopes: list[EventEnvelope] = []
        self.environs: list[WSGIEnvironment] = []

    def __call__(self, environ: WSGIEnvironment, start: StartResponse) -> Iterator[bytes]:
        self.environs.append(environ)
        self.envelopes.append(EventEnvelope.new(lesson()))
        return self.body(start)

    def body(self, start: StartResponse) -> Iterator[bytes]:
        start("200 OK", [("Content-Type", "text/plain")])  # lazily, as WSGI allows
        try:
            for i in range(self.chunks):
                self.envelopes.append(EventEnvelope.new(lesson()))
                yield b"chunk %d\n" % i
        finally:
            self.envelopes.append(EventEnvelope.new(lesson()))


def close(body: object) -> None:
    """Close a WSGI body as a server does, when it has close()."""
    closer = getattr(body, "close", None)
    if closer is not None:
        closer()


def run(app: WSGIApplication, headers: dict[str, str]) -> bytes:
    """Call ``app`` as a server does: iterate the body, then close it."""
    body = app(environ_with(headers), start_response)
    try:
        return b"".join(body)
    finally:
        close(body)


class ListHandler(logging.Handler):
    """A logging handler that keeps the records it gets."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Correlation-Id": str(CID), "X-Request-Id": str(RID), "traceparent": TRACEPARENT}, CID),
        ({"X-Correlation-Id": "not-a-uuid", "X-Request-Id": str(RID), "traceparent": TRACEPARENT}, RID),
        ({"X-Request-Id": "req-17", "traceparent": TRACEPARENT}, uuid.UUID(TRACE)),
        ({"X-Correlation-Id": f"  {CID.hex.upper()}  "}, CID),
        ({"X-Correlation-Id": f"urn:uuid:{CID}"}, CID),
        ({"X-Request-Id": f"{{{RID}}}"}, RID),
        ({"traceparent": f"01-{TRACE}-00f067aa0ba902b7-01-future-field"}, uuid.UUID(TRACE)),
        ({"X-Correlation-Id": str(CID) + ", " + str(RID)}, None),
        ({"X-Correlation-Id": "0" * 10_000}, None),
        ({"traceparent": f"ff-{TRACE}-00f067aa0ba902b7-01"}, None),
        ({"traceparent": f"00-{'0' * 32}-00f067aa0ba902b7-01"}, None),
        ({"traceparent": f"00-{TRACE}-{'0' * 16}-01"}, None),
        ({"traceparent": f"00-{TRACE.upper()}-00f067aa0ba902b7-01"}, None),
        ({"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01-extra"}, None),
        ({"traceparent": f"00-{TRACE[:-1]}-00f067aa0ba902b7-01"}, None),
        ({}, None),
    ],
)
def test_correlation_id_from_headers(headers: dict[str, str], expected: uuid.UUID | None) -> None:
    """X-Correlation-Id, else X-Request-Id, else traceparent's trace-id (each if valid) is the correlation id."""
    assert correlation_id_from_environ(environ_with(headers)) == expected
    app = Recorder()
    assert run(EventContextMiddleware(app), headers) == b"chunk 0\nchunk 1\n"
    assert [env.correlation_id for env in app.envelopes] == [expected] * 4


def test_invalid_headers_are_logged_at_debug_and_never_fail_the_request() -> None:
    """Unparsable correlation headers are each logged at debug level, shortened, and the request succeeds."""
    handler = ListHandler()
    logger = logging.getLogger("edupulse_events.wsgi")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        app = Recorder()
        headers = {"X-Correlation-Id": "x" * 500, "X-Request-Id": "req-1", "traceparent": "garbage"}
        assert run(EventContextMiddleware(app), headers)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    messages = [r.getMessage() for r in handler.records]
    assert all(r.levelno == logging.DEBUG for r in handler.records)
    assert [m.split(":")[0] for m in messages] == [
        "ignoring the X-Correlation-Id header",
        "ignoring the X-Request-Id header",
        "ignoring the traceparent header",
    ]
    assert all(len(m) < 200 for m in messages)
    assert app.envelopes[0].correlation_id is None


def test_tenant_comes_from_the_callable() -> None:
    """tenant(environ) gives the tenant id of every envelope the request creates; without it the tenant is None."""
    app = Recorder()
    run(EventContextMiddleware(app, tenant=lambda environ: environ.get("HTTP_X_TENANT_ID")), {"X-Tenant-Id": "s-42"})
    run(EventContextMiddleware(app), {"X-Tenant-Id": "s-42"})
    assert [env.tenant_id for env in app.envelopes] == ["s-42"] * 4 + [None] * 4


def test_a_failing_tenant_callable_fails_the_request() -> None:
    """What the tenant callable raises, or an invalid tenant, reaches the server (application code)."""

    def broken(environ: WSGIEnvironment) -> str | None:
        raise LookupError("no tenant")

    with pytest.raises(LookupError, match="no tenant"):
        run(EventContextMiddleware(Recorder(), tenant=broken), {})
    with pytest.raises(ValueError, match=r"event_context\.tenant_id must be a str, got int"):
        run(EventContextMiddleware(Recorder(), tenant=lambda environ: 42), {})  # type: ignore[arg-type,return-value]
    assert current_event_context() == EMPTY


def test_lazy_body_runs_in_the_context_and_nothing_leaks() -> None:
    """Every step of a lazily generated body sees the request's context; the server's context never changes."""
    app = Recorder(chunks=3)
    body = EventContextMiddleware(app)(environ_with({"X-Correlation-Id": str(CID)}), start_response)
    seen_by_server = [current_event_context()]
    for _ in body:
        seen_by_server.append(current_event_context())
    close(body)
    assert [env.correlation_id for env in app.envelopes] == [CID] * 5  # the call, three chunks, the finally block
    assert seen_by_server == [EMPTY] * 4
    assert current_event_context() == EMPTY


class ClosingBody:
    """A body whose close() records the context it ran in."""

    def __init__(self) -> None:
        self.closed_in: list[EventContext] = []

    def __iter__(self) -> Iterator[bytes]:
        yield b"body"

    def close(self) -> None:
        self.closed_in.append(current_event_context())


def test_close_runs_in_the_context_once() -> None:
    """The middleware's close() closes the app's body once, in the context, however often the server calls it."""
    body = ClosingBody()
    wrapped = EventContextMiddleware(lambda environ, start: body)(
        environ_with({"X-Request-Id": str(RID)}), start_response
    )
    assert list(wrapped) == [b"body"]
    assert body.closed_in == []  # exhausted, but the context stays open until close()
    close(wrapped)
    close(wrapped)
    assert [ctx.correlation_id for ctx in body.closed_in] == [RID]


def test_close_before_exhaustion_runs_the_apps_cleanup_in_the_context() -> None:
    """A body closed early (client gone) runs the app's finally block inside the context."""
    app = Recorder(chunks=5)
    body = iter(EventContextMiddleware(app)(environ_with({"X-Request-Id": str(RID)}), start_response))
    assert next(body) == b"chunk 0\n"
    close(body)
    assert [env.correlation_id for env in app.envelopes] == [RID] * 3


def test_body_iterated_from_another_thread_still_sees_the_context() -> None:
    """A server that iterates and closes the body in another thread than the call's still gives it the context."""
    app = Recorder()
    body = EventContextMiddleware(app)(environ_with({"X-Correlation-Id": str(CID)}), start_response)
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(b"".join, body).result(timeout=10) == b"chunk 0\nchunk 1\n"
        pool.submit(close, body).result(timeout=10)
    assert [env.correlation_id for env in app.envelopes] == [CID] * 4


def test_interleaved_requests_on_one_thread_keep_their_own_context() -> None:
    """Two lazy responses iterated alternately on one thread each see only their own request's values."""
    app = Recorder(chunks=2)
    mw = EventContextMiddleware(app, tenant=lambda environ: environ["HTTP_X_TENANT_ID"])
    first = iter(mw(environ_with({"X-Correlation-Id": str(CID), "X-Tenant-Id": "a"}), start_response))
    second = iter(mw(environ_with({"X-Correlation-Id": str(RID), "X-Tenant-Id": "b"}), start_response))
    order = [first, second, first, second]
    for body in order:
        next(body)
    for body in (second, first):
        close(body)
    by_tenant = {(env.tenant_id, env.correlation_id) for env in app.envelopes}
    assert by_tenant == {("a", CID), ("b", RID)}
    assert len(app.envelopes) == 8


class NoCloseBody:
    """A body iterable without close(): its items are produced lazily."""

    def __init__(self, envelopes: list[EventEnvelope]) -> None:
        self.envelopes = envelopes

    def __iter__(self) -> Iterator[bytes]:
        for i in range(2):
            self.envelopes.append(EventEnvelope.new(lesson()))
            yield b"%d" % i


def test_body_without_close_is_iterated_in_the_context() -> None:
    """A lazy body without close() runs in the context; closing the middleware's body is still allowed."""
    envelopes: list[EventEnvelope] = []

    def app(environ: WSGIEnvironment, start: StartResponse) -> Iterable[bytes]:
        start("200 OK", [])
        return NoCloseBody(envelopes)

    assert run(EventContextMiddleware(app, tenant=lambda environ: "t"), {}) == b"01"
    assert [env.tenant_id for env in envelopes] == ["t", "t"]


def test_lists_and_file_wrappers_are_returned_as_they_are() -> None:
    """A list body (Content-Length) and the server's file wrapper (sendfile) pass through unwrapped."""
    listed = [b"hello"]
    environ = environ_with({})
    environ["wsgi.file_wrapper"] = FileWrapper
    wrapped = FileWrapper(io.BytesIO(b"file"))
    assert EventContextMiddleware(lambda environ, start: listed)(environ, start_response) is listed
    assert EventContextMiddleware(lambda environ, start: wrapped)(environ, start_response) is wrapped
    assert current_event_context() == EMPTY


def test_app_raising_in_its_call_leaves_no_context_behind() -> None:
    """An exception from the application's call propagates and the server's context is unchanged."""

    def app(environ: WSGIEnvironment, start: StartResponse) -> Iterable[bytes]:
        raise RuntimeError("view failed")

    with pytest.raises(RuntimeError, match="view failed"):
        EventContextMiddleware(app)(environ_with({"X-Correlation-Id": str(CID)}), start_response)
    assert current_event_context() == EMPTY


class BrokenIterable:
    """A body whose __iter__ raises, and whose close() records that it was called."""

    def __init__(self) -> None:
        self.closed_in: list[EventContext] = []

    def __iter__(self) -> Iterator[bytes]:
        raise OSError("cannot start the body")

    def close(self) -> None:
        self.closed_in.append(current_event_context())


def test_body_that_cannot_be_iterated_is_closed() -> None:
    """When iter() of the body fails, the middleware closes it (in the context) and lets the error through."""
    body = BrokenIterable()
    with pytest.raises(OSError, match="cannot start the body"):
        EventContextMiddleware(lambda environ, start: body)(environ_with({"X-Request-Id": str(RID)}), start_response)
    assert [ctx.correlation_id for ctx in body.closed_in] == [RID]


def test_under_wsgiref_handler() -> None:
    """Run through wsgiref's real handler (which iterates, then closes): headers in, envelopes carry the context."""
    app = Recorder()
    environ = environ_with({"X-Correlation-Id": str(CID)})
    out, err = io.BytesIO(), io.StringIO()
    handler = SimpleHandler(io.BytesIO(), out, err, environ, multithread=False)
    handler.run(EventContextMiddleware(app, tenant=lambda environ: "school-42"))
    assert out.getvalue().startswith(b"HTTP/1.0 200 OK\r\n")
    assert out.getvalue().endswith(b"chunk 0\nchunk 1\n")
    assert err.getvalue() == ""
    assert [(env.correlation_id, env.tenant_id) for env in app.envelopes] == [(CID, "school-42")] * 4


def test_middleware_is_shared_by_threads() -> None:
    """One middleware serves concurrent requests in several threads, each with its own context."""
    app = Recorder(chunks=1)
    mw = EventContextMiddleware(app, tenant=lambda environ: environ["HTTP_X_TENANT_ID"])
    started = threading.Barrier(4, timeout=10)

    def request(i: int) -> None:
        body = iter(mw(environ_with({"X-Tenant-Id": f"t{i}"}), start_response))
        started.wait()
        list(body)
        close(body)

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(request, i) for i in range(4)]:
            future.result(timeout=10)
    tenants = sorted(env.tenant_id or "" for env in app.envelopes)
    assert tenants == sorted(f"t{i}" for i in range(4) for _ in range(3))


def test_request_header_gives_utf8_values_back_as_the_client_sent_them() -> None:
    """A UTF-8 X-Tenant-Id ("école-1", "学校") through a real WSGI server reads back unchanged, not as
    latin-1 mojibake; a header that is not UTF-8 stays as the server gave it; a missing one is None."""
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen["tenant"] = request_header(environ, "X-Tenant-Id")
        seen["raw"] = environ.get("HTTP_X_TENANT_ID")
        seen["latin"] = request_header(environ, "X-Latin")
        seen["missing"] = request_header(environ, "X-Missing")
        seen["type"] = request_header(environ, "Content-Type")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    for tenant in ("école-1", "学校"):
        request = (
            b"GET / HTTP/1.0\r\nHost: x\r\nContent-Type: text/plain\r\nX-Tenant-Id: "
            + tenant.encode()
            + b"\r\nX-Latin: caf\xe9\r\n\r\n"
        )
        assert serve_once(app, request).startswith(b"HTTP/1.0 200")
        assert seen["raw"] != tenant  # the server's latin-1 text: what the middleware's users got before
        assert seen["tenant"] == tenant
        assert seen["latin"] == "café"
        assert seen["missing"] is None
        assert seen["type"] == "text/plain"


def test_the_tenant_of_a_non_ascii_header_reaches_the_envelope() -> None:
    """EventContextMiddleware with a tenant callable using request_header: the envelope created in the view
    carries the UTF-8 tenant of the request, through a real WSGI server."""
    tenants: list[str | None] = []

    def view(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        tenants.append(EventEnvelope.new(LessonPublished(uuid.uuid4(), uuid.uuid4(), "x")).tenant_id)
        start_response("200 OK", [])
        return [b"ok"]

    app = EventContextMiddleware(view, tenant=lambda environ: request_header(environ, "X-Tenant-Id"))
    serve_once(app, "GET / HTTP/1.0\r\nX-Tenant-Id: école-1\r\n\r\n".encode())
    assert tenants == ["école-1"]
