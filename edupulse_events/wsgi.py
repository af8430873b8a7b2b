"""`EventContextMiddleware`: WSGI middleware that runs each request inside an :func:`event_context`,
so the envelopes its code creates carry the request's correlation id and tenant.

The correlation id comes from the request's headers (:func:`correlation_id_from_environ`):
``X-Correlation-Id`` if it is a UUID, else ``X-Request-Id`` if it is a UUID, else the trace-id of
a W3C ``traceparent`` header (32 hex digits read as a UUID), else none. A header that does not
parse is ignored (logged at debug level); it never fails the request.

Each request runs in its own ``contextvars.Context``, a copy of the caller's (as an asyncio task
does): the application call, every step of a lazily generated body and the body's ``close()``
all run in it, whichever thread or context the server iterates the body from, and nothing the
request sets (the event context, or the application's own context variables) leaks into the
server's thread or the next request. The event context stays open until the server closes the
body (or, for a body without ``close()``, until it is exhausted). A list body and the server's
``wsgi.file_wrapper`` are returned unwrapped (so the server can still set ``Content-Length`` or
use ``sendfile()``); a file wrapper's ``close()`` then runs outside the context. Pure WSGI
(PEP 3333). Django keeps state meant to outlive a request (its cache connections) in context
variables, so for Django use the middleware of :mod:`edupulse_events.django` instead.

Header values reach a WSGI application as the server decoded their bytes: as latin-1 (PEP 3333),
so a UTF-8 tenant such as ``école-1`` arrives as ``Ã©cole-1``. :func:`request_header` gives a
header back as the client wrote it; a ``tenant`` callable should read its header with it.
"""

from __future__ import annotations

import contextvars
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ._frozen import parse_uuid, short_repr
from .context import EventContext, event_context

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["EventContextMiddleware", "correlation_id_from_environ", "request_header"]

log = logging.getLogger(__name__)

# W3C Trace Context: version "-" trace-id "-" parent-id "-" flags, lowercase hex; a later version
# may append fields after the flags. Version ff and all-zero ids are invalid.
_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.ASCII)
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16
_MAX_UUID_TEXT = 45  # "urn:uuid:" + 36, the longest form a UUID string takes


def request_header(environ: Mapping[str, Any], name: str) -> str | None:
    """The value of the request header ``name`` (e.g. ``"X-Tenant-Id"``) as the client wrote it,
    or None when the request has none.

    WSGI servers hand header values over as text decoded from latin-1 (PEP 3333): the bytes of a
    UTF-8 value come back as UTF-8 here, and a value that is not UTF-8 stays as the server gave it.
    ``environ`` is the WSGI environ (Django: ``request.META``).
    """
    key = name.upper().replace("-", "_")
    value = environ.get(key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key)
    if value is None:
        return None
    text = str(value)
    try:
        return text.encode("latin-1").decode("utf-8")
    except UnicodeError:  # not latin-1 text (a server that decoded otherwise), or not UTF-8 bytes
        return text


def _uuid_header(environ: Mapping[str, Any], key: str, name: str) -> UUID | None:
    value = environ.get(key)
    if value is None:
        return None
    text = str(value).strip()
    parsed = parse_uuid(text) if len(text) <= _MAX_UUID_TEXT else None
    if parsed is None:
        log.debug("ignoring the %s header: not a UUID: %s", name, short_repr(text))
    return parsed


def _traceparent(environ: Mapping[str, Any]) -> UUID | None:
    value = environ.get("HTTP_TRACEPARENT")
    if value is None:
        return None
    text = str(value).strip()
    m = _TRACEPARENT_RE.fullmatch(text) if len(text) <= 512 else None
    if m is None or m[1] == "ff" or (m[1] == "00" and m[5]) or m[2] == _ZERO_TRACE or m[3] == _ZERO_PARENT:
        log.debug("ignoring the traceparent header: not a W3C traceparent: %s", short_repr(text))
        return None
    return UUID(hex=m[2])


def correlation_id_from_environ(environ: Mapping[str, Any]) -> UUID | None:
    """The correlation id a request's headers give (WSGI ``environ`` keys, e.g. ``HTTP_X_REQUEST_ID``).

    The first of: ``X-Correlation-Id`` as a UUID, ``X-Request-Id`` as a UUID, the trace-id of a
    valid W3C ``traceparent``; ``None`` when none of them gives one. Values that do not parse
    are skipped and logged at debug level.
    """
    return (
        _uuid_header(environ, "HTTP_X_CORRELATION_ID", "X-Correlation-Id")
        or _uuid_header(environ, "HTTP_X_REQUEST_ID", "X-Request-Id")
        or _traceparent(environ)
    )


class _Body:
    """The application's response body, iterated and closed inside the request's context."""

    def __init__(
        self, context: contextvars.Context, block: AbstractContextManager[EventContext], result: Iterable[bytes]
    ) -> None:
        self._context = context
        self._block: AbstractContextManager[EventContext] | None = block
        self._result = result
        self._closed = False
        self._iterator = context.run(iter, result)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return self._context.run(next, self._iterator)
        except StopIteration:
            if not hasattr(self._result, "close"):  # nothing of the application runs after this
                self._leave()
            raise

    def close(self) -> None:
        """Close the application's body, then the request's event context (once; both in the request's context)."""
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                self._context.run(close)
        finally:
            self._leave()

    def _leave(self) -> None:
        block, self._block = self._block, None
        if block is not None:
            self._context.run(block.__exit__, None, None, None)


class EventContextMiddleware:
    """Wrap a WSGI application so that each request runs in an :func:`event_context` with the
    request's correlation id (:func:`correlation_id_from_environ`) and tenant.

    ``tenant(environ)``, when given, returns the request's tenant id (a str, or ``None``); it is
    the application's code, so what it raises (or an invalid tenant, ``InvalidEvent``) fails
    the request. Without it the tenant is ``None``. Other fields are inherited from the context
    the server calls the middleware in. Thread-safe: the middleware keeps no per-request state.
    """

    def __init__(self, app: WSGIApplication, *, tenant: Callable[[WSGIEnvironment], str | None] | None = None) -> None:
        self.app = app
        self.tenant = tenant

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Run the application for one request inside its own context and event context."""
        correlation_id = correlation_id_from_environ(environ)
        tenant_id = None if self.tenant is None else self.tenant(environ)
        block = event_context(correlation_id=correlation_id, tenant_id=tenant_id)
        context = contextvars.copy_context()
        context.run(block.__enter__)
        try:
            result = context.run(self.app, environ, start_response)
        except BaseException as exc:
            context.run(block.__exit__, type(exc), exc, exc.__traceback__)
            raise
        if type(result) in (list, tuple) or _is_file_wrapper(environ, result):
            # nothing of the application runs while the server sends these, and returned as
            # they are, the server can still set Content-Length from a list or send a file with
            # sendfile(); the price: a file wrapper's close() runs outside the request's context
            context.run(block.__exit__, None, None, None)
            return result
        try:
            return _Body(context, block, result)
        except BaseException as exc:  # iter() of the application's body failed
            _abandon(context, result, block, exc)
            raise


def _is_file_wrapper(environ: WSGIEnvironment, result: object) -> bool:
    wrapper = environ.get("wsgi.file_wrapper")
    return isinstance(wrapper, type) and isinstance(result, wrapper)


def _abandon(
    context: contextvars.Context,
    result: object,
    block: AbstractContextManager[EventContext],
    exc: BaseException,
) -> None:
    try:
        close = getattr(result, "close", None)
        if close is not None:
            context.run(close)
    finally:
        context.run(block.__exit__, type(exc), exc, exc.__traceback__)
