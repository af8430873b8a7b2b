"""Publisher and consumer settings: one validated, immutable object each, holding every knob.

`PublisherConfig` and `ConsumerConfig` (which shares its connection fields) are checked when
they are built (bad values raise `ConfigError` there, not later in a background thread).
`PublisherConfig.from_env()` reads the ``EDUPULSE_EVENT_BROKER_*`` variables. Every server URL
is checked here the way nats-py will read it (scheme, host, port, credentials holding ``/``,
``?`` or ``#``): a URL problem is a `ConfigError` that quotes no credential. `redact_url` keeps
credentials out of logs, reprs and error messages; the config's own repr never shows a token or password.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import attrs

from .errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "MAX_SUBJECT_BYTES",
    "SPOOL_MODES",
    "ConsumerConfig",
    "EnvelopeCodec",
    "PublisherConfig",
    "RetryPolicy",
    "redact_url",
]

ENV_PREFIX = "EDUPULSE_EVENT_BROKER_"
_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")
_SCHEMES = ("nats", "tls", "ws", "wss")
SPOOL_MODES = ("write-ahead", "overflow")
_SUBJECT_FIELDS = {"type", "tenant"}
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_STREAM_NAME = re.compile(r"^[^\s.*>/\\]+$")
_INBOX_PREFIX = re.compile(r"[!-)+-\-/-=?-~]+(\.[!-)+-\-/-=?-~]+)*\Z")  # printable ASCII but '*', '.', '>'
#: Longest subject published: nats-server's default max_control_line (4096 bytes) must hold
#: "HPUB <subject> <ack inbox> <header bytes> <total bytes>"; past it the server closes the
#: connection (nats-py then gives up on it), so longer subjects are refused at the call site.
MAX_SUBJECT_BYTES = 3840
#: The ``ce-source`` of CloudEvents headers unless `PublisherConfig.cloudevents_source` says otherwise.
DEFAULT_CLOUDEVENTS_SOURCE = "urn:edupulse:events"
_CE_SOURCE = re.compile(r"[!-~]+")  # printable ASCII, no spaces: a URI-reference fits in one header line


def redact_url(url: str) -> str:
    """Return ``url`` with any user, password or token replaced by ``***``.

    Everything between ``scheme://`` and the last ``@`` of each comma-separated URL is hidden,
    without parsing: a password holding ``/``, ``?``, ``#`` or ``:`` that a URL parser would cut
    elsewhere is hidden whole too."""
    parts = []
    for one in url.split(","):
        one = one.strip()
        at = one.rfind("@")
        if at >= 0:
            scheme = one.find("://")
            start = scheme + 3 if 0 <= scheme < at else 0
            one = f"{one[:start]}***{one[at:]}"
        parts.append(one)
    return ",".join(parts)


def seconds_validator(name: str) -> Callable[[object, object, float], None]:
    def check(_inst: object, _attr: object, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number of seconds, got {type(value).__name__}")
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")

    return check


def count_validator(name: str) -> Callable[[object, object, int], None]:
    def check(_inst: object, _attr: object, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an int >= 1, got {value!r}")

    return check


@attrs.frozen
class RetryPolicy:
    """Exponential backoff with jitter for transient failures (tenacity's ``wait_exponential_jitter``).

    Retries never outlive the event's delivery deadline; ``attempt_timeout`` bounds each try
    (how long to wait for a JetStream ack or a core flush before trying again).
    """

    initial: float = attrs.field(default=0.05, validator=seconds_validator("retry.initial"))
    maximum: float = attrs.field(default=2.0, validator=seconds_validator("retry.maximum"))
    multiplier: float = attrs.field(default=2.0, validator=seconds_validator("retry.multiplier"))
    jitter: float = attrs.field(default=0.1)
    attempt_timeout: float = attrs.field(default=2.0, validator=seconds_validator("retry.attempt_timeout"))

    def __attrs_post_init__(self) -> None:
        if (
            isinstance(self.jitter, bool)
            or not isinstance(self.jitter, (int, float))
            or not (0 <= self.jitter < math.inf)
        ):
            raise ConfigError(f"retry.jitter must be a finite number >= 0, got {self.jitter!r}")
        if self.maximum < self.initial:
            raise ConfigError(f"retry.maximum ({self.maximum}) must be >= retry.initial ({self.initial})")


def _servers(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [s.strip() for s in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [str(s).strip() for s in value]
    else:
        raise ConfigError(f"servers must be a URL string or a list of URLs, got {type(value).__name__}")
    items = [s for s in items if s]
    if not items:
        raise ConfigError("servers must name at least one nats:// or tls:// URL")
    # A URL is echoed in the error only when no URL holds an "@": with credentials anywhere, a
    # parser (or the comma split) may have cut a password, and any piece of it could be echoed.
    secret = any("@" in s for s in items)
    for number, s in enumerate(items, 1):
        problem = _url_problem(s)
        if problem is not None:
            if "@" in s or not secret:
                raise ConfigError(f"not a NATS server URL: {redact_url(s)!r}: {problem}")
            raise ConfigError(
                f"not a NATS server URL: server URL {number} of {len(items)}: {problem} "
                "(a ',' in a password splits the URL list: pass the password as password= instead)"
            )
    return tuple(items)


def check_inbox_prefix(_inst: object, _attr: object, prefix: object) -> None:
    """An inbox prefix is a NATS subject without wildcards (the inbox's own tokens follow it)."""
    if not isinstance(prefix, str) or not _INBOX_PREFIX.match(prefix):
        raise ConfigError(f"inbox_prefix must be dot-separated subject tokens without wildcards, got {prefix!r}")


def _url_problem(url: str) -> str | None:
    """Why ``url`` is not a server URL nats-py can use, without quoting any part of it; or None."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return "it holds a space or a control character"
    unreadable = "its host or port cannot be read (expected scheme://[user:password@]host:port)"
    try:
        split = urlsplit(url)
    except ValueError:  # a bad [IPv6] literal
        return unreadable
    if split.scheme not in _SCHEMES:
        return "expected nats://host:port or tls://host:port (or ws://, wss://)"
    if "@" in split.path + split.query + split.fragment:
        return (
            "a '/', '?' or '#' in the user, password or token ends the URL's host part there; "
            "nats-py does not decode %-escapes, so pass such credentials as user=/password= or "
            "auth_token= (EDUPULSE_EVENT_BROKER_TOKEN) instead"
        )
    try:
        port = split.port
        host = split.hostname
    except ValueError:  # a port that is not a number in 0-65535
        return unreadable
    if not host:
        return "it names no host (expected scheme://host:port)"
    if port == 0:
        return "port 0 is not a server's port"
    if split.scheme in ("nats", "tls") and (split.path not in ("", "/") or split.query or split.fragment):
        return "a nats:// or tls:// URL has no path, query or fragment"
    return None


def check_source(source: str) -> None:
    """`ConfigError` unless ``source`` can be a ``ce-source`` header (a non-empty URI-reference)."""
    if not isinstance(source, str) or not _CE_SOURCE.fullmatch(source):
        raise ConfigError(f"cloudevents_source must be a non-empty URI-reference without spaces, got {source!r}")


@runtime_checkable
class EnvelopeCodec(Protocol):
    """What a publisher needs of its codec: `edupulse_events.Codec` is the one to give. Config sits
    below the codec in the package's layers, so it names the shape rather than the class."""

    def encode(self, envelope: Any) -> bytes: ...

    def decode(self, data: Any) -> Any: ...


def check_codec(_inst: object, _attr: object, codec: Any) -> None:
    """A codec is an `edupulse_events.Codec` (what `EnvelopeCodec` describes), or None."""
    if codec is not None and not isinstance(codec, EnvelopeCodec):
        raise ConfigError(f"codec must be an edupulse_events.Codec (or None), got {type(codec).__name__}")


def check_subject(_inst: object, _attr: object, subject: str) -> None:
    if not isinstance(subject, str) or not subject:
        raise ConfigError(f"subject must be a non-empty string, got {subject!r}")
    names = set(_PLACEHOLDER.findall(subject))
    if names - _SUBJECT_FIELDS:
        raise ConfigError(
            f"subject template {subject!r} may only use {{type}} and {{tenant}}, not {sorted(names - _SUBJECT_FIELDS)}"
        )
    probe = _PLACEHOLDER.sub("x", subject)
    if any(c in probe for c in " \t\r\n*>{}") or probe.startswith(".") or probe.endswith(".") or ".." in probe:
        raise ConfigError(f"subject {subject!r} is not a valid NATS publish subject")
    if any(c < "\x21" or c == "\x7f" or "\ud800" <= c <= "\udfff" for c in probe):
        raise ConfigError(f"subject {subject!r} holds a control character or a lone surrogate")
    if len(probe.encode()) > MAX_SUBJECT_BYTES:
        raise ConfigError(
            f"subject template of {len(subject)} characters is longer than "
            f"the {MAX_SUBJECT_BYTES} bytes a NATS subject may have"
        )


def check_auth(nkey_seed: str | None, creds_file: str | None) -> None:
    """NKey and JWT authentication need the nkeys package and valid material."""
    if nkey_seed is None and creds_file is None:
        return
    if importlib.util.find_spec("nkeys") is None:
        raise ConfigError(
            "NKey and JWT (.creds) authentication need the nkeys package: pip install 'edupulse_events[nkeys]'"
        )
    if nkey_seed is not None and not (isinstance(nkey_seed, str) and nkey_seed.startswith("SU")):
        raise ConfigError("nkey_seed must be a user NKey seed (it starts with 'SU')")
    if nkey_seed is not None and creds_file is not None:
        raise ConfigError("give nkey_seed or creds_file, not both (a .creds file holds its own seed)")
    if creds_file is not None:
        path = Path(creds_file).expanduser()
        if not path.is_file() or not os.access(path, os.R_OK):
            raise ConfigError(f"creds_file {str(path)!r} is not a readable file")
        if "-----BEGIN NATS USER JWT-----" not in path.read_text(encoding="utf-8", errors="replace"):
            raise ConfigError(f"creds_file {str(path)!r} holds no NATS user JWT")


@attrs.frozen
class PublisherConfig:
    """Everything a `NatsPublisher` needs; invalid combinations raise `ConfigError` here.

    Times are float seconds. ``subject`` may be a template using ``{type}`` (the event type
    name) and ``{tenant}`` (percent-encoded tenant id; ``_`` when there is none).
    """

    servers: tuple[str, ...] = attrs.field(converter=_servers, repr=lambda v: repr(tuple(redact_url(s) for s in v)))
    subject: str = attrs.field(validator=check_subject)
    auth_token: str | None = attrs.field(default=None, repr=lambda v: "None" if v is None else "'***'")
    user: str | None = attrs.field(default=None, repr=lambda v: "None" if v is None else "'***'")
    password: str | None = attrs.field(default=None, repr=lambda v: "None" if v is None else "'***'")
    #: NKey authentication: the user's seed (``SU...``; needs the ``nkeys`` extra).
    nkey_seed: str | None = attrs.field(default=None, repr=lambda v: "None" if v is None else "'***'")
    #: JWT authentication: a ``.creds`` file (the user's JWT and seed; needs the ``nkeys`` extra).
    creds_file: str | None = None
    jetstream: bool = True
    #: Bound of the hand-off queue, in events and in encoded bytes (back-pressure).
    max_queue: int = attrs.field(default=10_000, validator=count_validator("max_queue"))
    max_queue_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=count_validator("max_queue_bytes"))
    #: How long publish() blocks on a full queue by default before raising QueueFull.
    publish_timeout: float = attrs.field(default=5.0, validator=seconds_validator("publish_timeout"))
    #: Events outstanding at once (taken from the queue: awaiting their ack, a retry, ...);
    #: also the largest batch. It must cover what the broker takes while the publisher thread
    #: waits for the GIL (up to Python's 5 ms switch interval while a caller thread encodes):
    #: a window of 256 held JetStream well below what 4096 (nats-py's own pipelining depth is
    #: 4000) reaches (docs/performance.md).
    window: int = attrs.field(default=4096, validator=count_validator("window"))
    #: Encoded bytes outstanding at once (a lone larger event still goes, alone). Memory held for
    #: events stays within a small multiple of max_queue_bytes + window_bytes (docs/delivery.md).
    window_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=count_validator("window_bytes"))
    #: The longest ``publish_many(atomic=True)`` batch: the server's ``max_batch_size`` (1,000 by
    #: default; a longer batch is an `InvalidBatch` at the call).
    max_batch: int = attrs.field(default=1000, validator=count_validator("max_batch"))
    #: Send ``publish_many()`` batches through JetStream fast ingest (one ack per hundreds of
    #: events) where the configured ``stream`` allows it (``allow_batched``); their acks then
    #: carry no stream sequence. ``publish()`` always gets an ack of its own.
    fast_ingest: bool = True
    #: Per-event deadline from publish() to ack; past it the future fails with PublishTimeout.
    delivery_timeout: float = attrs.field(default=30.0, validator=seconds_validator("delivery_timeout"))
    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    connect_timeout: float = attrs.field(default=5.0, validator=seconds_validator("connect_timeout"))
    reconnect_wait: float = attrs.field(default=0.25, validator=seconds_validator("reconnect_wait"))
    #: Return from connect() without a broker and deliver once it comes up.
    start_without_broker: bool = False
    #: Create this JetStream stream (capturing the subject) when it does not exist.
    stream: str | None = None
    create_stream: bool = False
    stream_replicas: int = attrs.field(default=1, validator=count_validator("stream_replicas"))
    tls: ssl.SSLContext | None = attrs.field(default=None, repr=lambda v: "None" if v is None else "<SSLContext>")
    #: How long the interpreter-exit hook waits for unresolved events.
    exit_timeout: float = attrs.field(default=5.0, validator=seconds_validator("exit_timeout"))
    client_name: str = "edupulse_events"
    #: The subject prefix of the ack inbox (nats-py's ``_INBOX`` by default). Any client that
    #: sees an event sees its reply subject: give the publisher a prefix of its own and deny
    #: every other user ``publish`` on ``<prefix>.>`` to make forged acks impossible (README,
    #: Security).
    inbox_prefix: str = attrs.field(default="_INBOX", validator=check_inbox_prefix)
    #: CloudEvents binary-mode headers beside every body (``ce-id``, ``ce-type``, ...; see
    #: `_cloudevents`), with ``ce-source`` = ``cloudevents_source``.
    cloudevents: bool = False
    cloudevents_source: str = DEFAULT_CLOUDEVENTS_SOURCE
    #: A directory for the durable spool (None: no spool). See `spool_mode` and the README.
    spool_dir: str | None = None
    #: ``"write-ahead"``: every event is on disk before publish() returns, removed once
    #: acknowledged. ``"overflow"``: on disk only where it would fail or be dropped otherwise
    #: (queue full while the broker is away, deadline passed, close() or exit with it undelivered).
    spool_mode: str = "write-ahead"
    #: Bound of the spool's event bytes (beyond it publish() raises `SpoolFull`).
    spool_max_bytes: int = attrs.field(default=1 << 30, validator=count_validator("spool_max_bytes"))
    #: fsync every commit: survive power loss, not only a killed process (much slower).
    spool_fsync: bool = False
    #: OpenTelemetry providers for this publisher's spans and metrics (default: the global ones).
    tracer_provider: Any = attrs.field(default=None, repr=False)
    meter_provider: Any = attrs.field(default=None, repr=False)
    #: The `Codec` events are encoded with (None: the default one, over ``default_registry``):
    #: ``Codec(my_registry)`` publishes the event types of an application's own `EventRegistry`.
    codec: EnvelopeCodec | None = attrs.field(default=None, validator=check_codec)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.retry, RetryPolicy):
            raise ConfigError(f"retry must be a RetryPolicy, got {type(self.retry).__name__}")
        if self.stream is not None and not _STREAM_NAME.match(self.stream):
            raise ConfigError(f"stream name {self.stream!r} may not contain spaces, '.', '*', '>', '/' or '\\'")
        if self.create_stream and self.stream is None:
            raise ConfigError("create_stream=True needs stream=<name>")
        if self.tls is not None and not isinstance(self.tls, ssl.SSLContext):
            raise ConfigError(f"tls must be an ssl.SSLContext, got {type(self.tls).__name__}")
        self._check_auth()
        self._check_spool()
        if self.cloudevents:
            check_source(self.cloudevents_source)
        if self.retry.attempt_timeout > self.delivery_timeout:
            raise ConfigError(
                f"retry.attempt_timeout ({self.retry.attempt_timeout}) "
                f"must not exceed delivery_timeout ({self.delivery_timeout})"
            )

    def _check_spool(self) -> None:
        """The spool directory must exist and be writable now (not at the first publish)."""
        if self.spool_mode not in SPOOL_MODES:
            raise ConfigError(f"spool_mode must be one of {SPOOL_MODES}, got {self.spool_mode!r}")
        if self.spool_dir is None:
            return
        path = Path(self.spool_dir).expanduser()
        if not path.is_dir():
            raise ConfigError(f"spool_dir {str(path)!r} is not a directory (create it first)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"spool_dir {str(path)!r} is not writable by this process")

    def _check_auth(self) -> None:
        check_auth(self.nkey_seed, self.creds_file)

    @property
    def redacted_servers(self) -> str:
        """The server list as it may appear in logs and errors (credentials hidden)."""
        return redact_url(",".join(self.servers))

    @property
    def stream_subject(self) -> str:
        """The subject filter a stream needs to capture every subject this config publishes to."""
        return _PLACEHOLDER.sub("*", self.subject)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> PublisherConfig:
        """Build from the ``EDUPULSE_EVENT_BROKER_*`` variables.

        ``URL`` and ``SUBJECT`` (required); one way to authenticate: ``TOKEN``, ``NKEY_SEED``
        (a user NKey seed) or ``CREDS`` (a ``.creds`` file); ``STREAM`` (the JetStream stream
        that must capture the subject) and ``CREATE_STREAM`` (``1``/``true``/``yes``: create it
        when missing); ``INBOX_PREFIX`` (the ack inbox's subject prefix); ``SPOOL`` (a spool
        directory) and ``SPOOL_MODE`` (``write-ahead`` or ``overflow``). Raises `ConfigError` when a
        value is missing or invalid.
        """
        env = os.environ if environ is None else environ
        url = env.get(ENV_PREFIX + "URL", "").strip()
        subject = env.get(ENV_PREFIX + "SUBJECT", "").strip()
        if not url or not subject:
            raise ConfigError(f"{ENV_PREFIX}URL and {ENV_PREFIX}SUBJECT must both be set")
        kwargs: dict[str, Any] = {"servers": url, "subject": subject}
        for field, name in (
            ("auth_token", "TOKEN"),
            ("nkey_seed", "NKEY_SEED"),
            ("creds_file", "CREDS"),
            ("stream", "STREAM"),
            ("inbox_prefix", "INBOX_PREFIX"),
            ("spool_dir", "SPOOL"),
            ("spool_mode", "SPOOL_MODE"),
        ):
            value = env.get(ENV_PREFIX + name, "").strip()
            if value:
                kwargs[field] = value
        create = env.get(ENV_PREFIX + "CREATE_STREAM", "").strip().lower()
        if create:
            if create not in _TRUE + _FALSE:
                raise ConfigError(f"{ENV_PREFIX}CREATE_STREAM must be one of {_TRUE + _FALSE}, got {create!r}")
            kwargs["create_stream"] = create in _TRUE
        kwargs.update(overrides)
        return cls(**kwargs)


def _check_filter(_inst: object, _attr: object, subject: str | None) -> None:
    """A consumer's filter is a NATS subject that may use ``*`` and a final ``>``."""
    if subject is None:
        return
    tokens = subject.split(".") if isinstance(subject, str) else [""]
    bad = (
        not subject
        or any(not t or any(c in t for c in " \t\r\n") for t in tokens)
        or any(("*" in t and t != "*") or (">" in t and t != ">") for t in tokens)
        or ">" in tokens[:-1]
    )
    if bad:
        raise ConfigError(f"filter_subject {subject!r} is not a NATS subject filter (tokens, '*', a last '>')")


def _check_dead_letter(_inst: object, _attr: object, subject: str | None) -> None:
    if subject is not None:
        check_subject(_inst, _attr, subject)
        if "{" in subject:
            raise ConfigError(f"dead_letter_subject {subject!r} is a subject, not a template")


def _check_name(what: str) -> Callable[[object, object, str], None]:
    def check(_inst: object, _attr: object, name: str) -> None:
        if not isinstance(name, str) or not _STREAM_NAME.match(name):
            raise ConfigError(f"{what} {name!r} must be a non-empty name without spaces, '.', '*', '>', '/' or '\\'")

    return check


@attrs.frozen
class ConsumerConfig:
    """Everything a `NatsConsumer` needs; invalid values raise `ConfigError` here.

    The connection fields (``servers`` to ``inbox_prefix``) mean what they mean in
    `PublisherConfig`. Times are float seconds. The durable consumer ``durable`` on ``stream``
    is created with these settings when missing (``create=True``) or bound as it is.
    """

    servers: tuple[str, ...] = attrs.field(converter=_servers, repr=lambda v: repr(tuple(redact_url(s) for s in v)))
    stream: str = attrs.field(validator=_check_name("stream"))
    durable: str = attrs.field(validator=_check_name("durable"))
    #: Only messages on subjects matching this filter (None: all the stream holds).
    filter_subject: str | None = attrs.field(default=None, validator=_check_filter)
    #: Create the durable consumer when it does not exist (False: it must exist; bind to it).
    create: bool = True
    #: How long the server waits for an ack before it delivers a message again.
    ack_wait: float = attrs.field(default=30.0, validator=seconds_validator("ack_wait"))
    #: Deliveries of one message at most; a message failing its last one goes to the dead letter.
    max_deliver: int = attrs.field(default=5, validator=count_validator("max_deliver"))
    #: Messages delivered and not yet acknowledged, per durable (all its processes): flow control.
    max_ack_pending: int = attrs.field(default=1000, validator=count_validator("max_ack_pending"))
    #: Messages asked for per pull request in ``run()``, and held at most by one consumer.
    batch: int = attrs.field(default=100, validator=count_validator("batch"))
    max_buffered: int = attrs.field(default=200, validator=count_validator("max_buffered"))
    #: Bytes (message bodies) held at most by one consumer in ``run()``: its pull request then asks
    #: the server for no more than what is left, one request at a time. A message larger than all
    #: of it comes alone, once nothing else is held. None: ``max_buffered`` messages bound them.
    max_buffered_bytes: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(count_validator("max_buffered_bytes"))
    )
    #: Idle heartbeat of a long pull request: a silent server is noticed within twice this.
    heartbeat: float = attrs.field(default=1.0, validator=seconds_validator("heartbeat"))
    #: Redelivery delay after a handler's failure: exponential from ``backoff_initial`` up to
    #: ``backoff_maximum``, with up to ``backoff_jitter`` seconds of random jitter (tenacity).
    backoff_initial: float = attrs.field(default=1.0, validator=seconds_validator("backoff_initial"))
    backoff_maximum: float = attrs.field(default=60.0, validator=seconds_validator("backoff_maximum"))
    backoff_jitter: float = attrs.field(default=0.5)
    #: Where undecodable messages, permanent failures and messages past ``max_deliver`` go (with
    #: their original headers and the reason); a JetStream stream must capture it. None: they
    #: are terminated and logged (event id and reason) only.
    dead_letter_subject: str | None = attrs.field(default=None, validator=_check_dead_letter)
    #: The `Codec` messages are decoded with (None: the default codec).
    codec: EnvelopeCodec | None = attrs.field(default=None, validator=check_codec)
    auth_token: str | None = attrs.field(default=None, repr=lambda v: "None" if v is None else "'***'")
    user: str | None = attrs.field(default=None, repr=lambda v: "None" if v is None else "'***'")
    password: str | None = attrs.field(default=None, repr=lambda v: "None" if v is None else "'***'")
    nkey_seed: str | None = attrs.field(default=None, repr=lambda v: "None" if v is None else "'***'")
    creds_file: str | None = None
    tls: ssl.SSLContext | None = attrs.field(default=None, repr=lambda v: "None" if v is None else "<SSLContext>")
    connect_timeout: float = attrs.field(default=5.0, validator=seconds_validator("connect_timeout"))
    reconnect_wait: float = attrs.field(default=0.25, validator=seconds_validator("reconnect_wait"))
    client_name: str = "edupulse_events"
    inbox_prefix: str = attrs.field(default="_INBOX", validator=check_inbox_prefix)
    #: How long the interpreter-exit hook waits for held messages to be settled.
    exit_timeout: float = attrs.field(default=5.0, validator=seconds_validator("exit_timeout"))
    #: OpenTelemetry providers for the CONSUMER spans and the consumer's metrics (default: the global ones).
    tracer_provider: Any = attrs.field(default=None, repr=False)
    meter_provider: Any = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.tls is not None and not isinstance(self.tls, ssl.SSLContext):
            raise ConfigError(f"tls must be an ssl.SSLContext, got {type(self.tls).__name__}")
        check_auth(self.nkey_seed, self.creds_file)
        if self.backoff_maximum < self.backoff_initial:
            raise ConfigError(
                f"backoff_maximum ({self.backoff_maximum}) must be >= backoff_initial ({self.backoff_initial})"
            )
        jitter = self.backoff_jitter
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not (0 <= jitter < math.inf):
            raise ConfigError(f"backoff_jitter must be a finite number >= 0, got {jitter!r}")
        if self.max_buffered < self.batch:
            raise ConfigError(f"max_buffered ({self.max_buffered}) must be >= batch ({self.batch})")

    @property
    def redacted_servers(self) -> str:
        """The server list as it may appear in logs and errors (credentials hidden)."""
        return redact_url(",".join(self.servers))
