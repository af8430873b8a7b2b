"""`EventContextMiddleware` for Django: each request runs inside an :func:`event_context` with
its correlation id (from the headers, as :func:`edupulse_events.wsgi.correlation_id_from_environ`
reads them) and its tenant, so the envelopes a view creates carry both.

Add ``"edupulse_events.django.EventContextMiddleware"`` to ``MIDDLEWARE``. The tenant comes from
the optional setting ``EDUPULSE_EVENTS_TENANT``: a callable, or the dotted path of one, taking
the ``HttpRequest`` and returning the tenant id (a str) or ``None``. Without it the tenant is
``None``.

The transactional outbox: `add_event` (and `add_events`) add envelopes to the outbox table in the
current ``transaction.atomic()`` block of a Django database connection, so the events are
published if and only if that block commits (`edupulse_events.outbox`); `create_outbox_tables`
is the ``RunPython`` function of a migration that creates the table (in a migration with
``atomic = False``, so a SQLite file can be switched to WAL mode).

The inbox, for consumers that run Django code (a management command calling
`NatsConsumer.run`): `handle_event_once` runs the handler's effect and records the event id in
one ``transaction.atomic()`` block, so a redelivered event changes nothing; `claim_event` is that
record inside the caller's own block; `create_inbox_table` is the migration step for its table.

Django is imported only when the middleware is built or an event added (importing this module
needs no Django).
Unlike the WSGI middleware, this one runs the view in the server's own context (Django keeps
per-context state, such as its cache connections, that must outlive a request). A streaming
response's body is generated after the middleware returns, so each step of it runs inside the
request's event context again; a ``FileResponse`` is left as it is (reading a file runs no
application code, and the server may send it with ``sendfile()``). Synchronous only: under
ASGI, Django runs it in a thread, and an asynchronous streaming body is left as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import attrs

from .consumer import Inbox
from .context import EventContext, event_context
from .envelope import EventEnvelope
from .errors import ConfigError
from .outbox import Outbox
from .wsgi import correlation_id_from_environ

__all__ = [
    "TENANT_SETTING",
    "EventContextMiddleware",
    "add_event",
    "add_events",
    "claim_event",
    "create_inbox_table",
    "create_outbox_tables",
    "handle_event_once",
]

T = TypeVar("T")

_outbox = Outbox()

#: The Django setting naming the tenant callable (or its dotted path).
TENANT_SETTING = "EDUPULSE_EVENTS_TENANT"


def _tenant_callable() -> Callable[[Any], str | None] | None:
    from django.conf import settings  # type: ignore[import-untyped]  # Django ships no type hints
    from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
    from django.utils.module_loading import import_string  # type: ignore[import-untyped]

    tenant = getattr(settings, TENANT_SETTING, None)
    if isinstance(tenant, str):
        tenant = import_string(tenant)
    if tenant is not None and not callable(tenant):
        raise ImproperlyConfigured(f"{TENANT_SETTING} must be a callable or its dotted path, got {tenant!r}")
    return tenant


def _steps_within(context: EventContext, content: Iterator[bytes]) -> Iterator[bytes]:
    """``content``'s items, each produced inside ``context`` (and yielded outside it)."""
    values = attrs.asdict(context, recurse=False)
    while True:
        with event_context(**values):
            try:
                chunk = next(content)
            except StopIteration:
                return
        yield chunk


class EventContextMiddleware:
    """Django middleware: the request's view (and a streaming body's generation) runs inside an
    :func:`event_context` with the request's correlation id and tenant.

    The tenant callable is the application's code: what it raises (or an invalid tenant,
    ``InvalidEvent``) fails the request. Headers that do not parse are ignored (logged at
    debug level by :mod:`edupulse_events.wsgi`).
    """

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.tenant = _tenant_callable()

    def __call__(self, request: Any) -> Any:
        """Handle one request inside its event context."""
        correlation_id = correlation_id_from_environ(request.META)
        tenant_id = None if self.tenant is None else self.tenant(request)
        with event_context(correlation_id=correlation_id, tenant_id=tenant_id) as context:
            response = self.get_response(request)
        if (
            getattr(response, "streaming", False)
            and not getattr(response, "is_async", False)
            and getattr(response, "file_to_stream", None) is None
        ):
            response.streaming_content = _steps_within(context, iter(response.streaming_content))
        return response


def _atomic_connection(using: str, what: str = "add_event") -> Any:
    """The DB-API connection of Django's database ``using``, inside a ``transaction.atomic()`` block."""
    from django.db import connections  # type: ignore[import-untyped]

    connection = connections[using]
    if not connection.in_atomic_block:
        raise ConfigError(
            f"{what}() outside transaction.atomic() would commit on its own: "
            "call it inside the block that saves the rows it is about"
        )
    connection.ensure_connection()
    return connection.connection


def add_event(envelope: EventEnvelope, *, outbox: Outbox | None = None, using: str = "default") -> None:
    """Add ``envelope`` to the outbox in the current ``transaction.atomic()`` block of the database
    ``using``: validated and encoded now (`InvalidEvent`), published by the relay if the block
    commits. `ConfigError` outside an atomic block. ``outbox``: another table than the default."""
    (outbox or _outbox).add(_atomic_connection(using), envelope)


def add_events(envelopes: Iterable[EventEnvelope], *, outbox: Outbox | None = None, using: str = "default") -> None:
    """`add_event` for several envelopes, in order (all validated before any is added)."""
    (outbox or _outbox).add_many(_atomic_connection(using, "add_events"), envelopes)


def create_outbox_tables(apps: Any, schema_editor: Any) -> None:
    """A migration's ``RunPython`` step: create the outbox's tables on the migrated database
    (idempotent). Give the migration ``atomic = False`` so a SQLite database is switched to WAL mode."""
    connection = schema_editor.connection
    connection.ensure_connection()
    _outbox.create_table(connection.connection)


def claim_event(inbox: Inbox, event_id: object, *, using: str = "default") -> bool:
    """`Inbox.claim` in the current ``transaction.atomic()`` block of the database ``using``: True
    the first time (do the work in the same block), False when the event was handled before (skip
    it). The record commits with the block, or not at all. `ConfigError` outside an atomic block."""
    return inbox.claim(_atomic_connection(using, "claim_event"), event_id)


def handle_event_once(inbox: Inbox, event_id: object, apply: Callable[[], T], *, using: str = "default") -> bool:
    """`Inbox.handle` for Django: in one ``transaction.atomic()`` block of the database ``using``
    (a savepoint inside an outer block), record ``event_id`` and run ``apply()`` (True), or do
    nothing when the event was handled before (False). ``apply`` raising rolls both back."""
    from django.db import transaction

    with transaction.atomic(using=using):
        if not claim_event(inbox, event_id, using=using):
            return False
        apply()
    return True


def create_inbox_table(apps: Any, schema_editor: Any) -> None:
    """A migration's ``RunPython`` step: create the inbox table (``edupulse_inbox``, which every
    `Inbox` with the default ``table`` shares) on the migrated database, if it does not exist. Give
    the migration ``atomic = False``, as for `create_outbox_tables`."""
    connection = schema_editor.connection
    connection.ensure_connection()
    Inbox("django").create_table(connection.connection)
