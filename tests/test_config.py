"""PublisherConfig: validated at construction, read from the environment, never shows secrets."""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable

import pytest

from edupulse_events import Codec, ConfigError, EventRegistry, PublisherConfig, RetryPolicy
from edupulse_events.config import redact_url


def test_defaults_are_sane() -> None:
    """A config with only servers and subject gets finite, documented defaults."""
    cfg = PublisherConfig(servers="nats://127.0.0.1:4222", subject="edupulse.events")
    assert cfg.servers == ("nats://127.0.0.1:4222",)
    assert cfg.jetstream is True
    assert cfg.max_queue == 10_000
    assert cfg.window == 4096
    assert 0 < cfg.publish_timeout < 60
    assert 0 < cfg.delivery_timeout < 600


def test_cluster_url_list_is_split() -> None:
    """A comma-separated URL becomes one entry per server."""
    cfg = PublisherConfig(servers="nats://a:1, nats://b:2,tls://c:3", subject="s")
    assert cfg.servers == ("nats://a:1", "nats://b:2", "tls://c:3")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"servers": ""}, "at least one"),
        ({"servers": "http://x:1"}, "not a NATS server URL"),
        ({"subject": ""}, "subject"),
        ({"subject": "a..b"}, "not a valid NATS publish subject"),
        ({"subject": "a.*"}, "not a valid NATS publish subject"),
        ({"subject": "edupulse.{user}"}, "{type} and {tenant}"),
        ({"max_queue": 0}, "max_queue"),
        ({"max_queue": True}, "max_queue"),
        ({"window": -1}, "window"),
        ({"publish_timeout": 0}, "publish_timeout"),
        ({"delivery_timeout": float("inf")}, "delivery_timeout"),
        ({"connect_timeout": "5"}, "connect_timeout"),
        ({"create_stream": True}, "needs stream"),
        ({"stream": "a.b", "create_stream": True}, "stream name"),
        ({"tls": "yes"}, "SSLContext"),
        ({"delivery_timeout": 1.0, "retry": RetryPolicy(attempt_timeout=2.0)}, "attempt_timeout"),
    ],
)
def test_invalid_settings_fail_at_construction(kwargs: dict[str, object], needle: str) -> None:
    """Each invalid setting raises ConfigError (a ValueError) naming the problem."""
    base: dict[str, object] = {"servers": "nats://127.0.0.1:4222", "subject": "s"}
    base.update(kwargs)
    with pytest.raises(ConfigError, match=needle.replace("{", r"\{").replace("}", r"\}").replace("*", r"\*")) as info:
        PublisherConfig(**base)  # type: ignore[arg-type]  # deliberately ill-typed: the runtime checks are tested
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 0}, {"maximum": 0.01, "initial": 0.1}, {"jitter": -1}, {"attempt_timeout": float("nan")}],
)
def test_retry_policy_is_validated(kwargs: dict[str, float]) -> None:
    """RetryPolicy rejects non-positive, inverted or non-finite values."""
    with pytest.raises(ConfigError):
        RetryPolicy(**kwargs)


def test_from_env_reads_the_three_variables() -> None:
    """from_env takes URL, SUBJECT and TOKEN from the given mapping."""
    env = {
        "EDUPULSE_EVENT_BROKER_URL": "nats://127.0.0.1:4222",
        "EDUPULSE_EVENT_BROKER_SUBJECT": "edupulse.{tenant}.{type}",
        "EDUPULSE_EVENT_BROKER_TOKEN": "s3cret-token",
    }
    cfg = PublisherConfig.from_env(env, max_queue=5)
    assert cfg.servers == ("nats://127.0.0.1:4222",)
    assert cfg.subject == "edupulse.{tenant}.{type}"
    assert cfg.auth_token == "s3cret-token"
    assert cfg.max_queue == 5
    assert cfg.stream_subject == "edupulse.*.*"


def test_from_env_requires_url_and_subject() -> None:
    """Missing URL or SUBJECT is a ConfigError, not a half-configured publisher."""
    with pytest.raises(ConfigError, match="must both be set"):
        PublisherConfig.from_env({"EDUPULSE_EVENT_BROKER_URL": "nats://127.0.0.1:1"})


def test_repr_hides_credentials() -> None:
    """Token, password, URL credentials and the TLS context never appear in the repr."""
    cfg = PublisherConfig(
        servers="nats://alice:pw-in-url@127.0.0.1:4222",
        subject="s",
        auth_token="tok-secret",
        user="bob",
        password="pw-secret",
        tls=ssl.create_default_context(),
    )
    text = repr(cfg) + cfg.redacted_servers
    for secret in ("tok-secret", "pw-secret", "pw-in-url", "alice", "bob"):
        assert secret not in text
    assert "127.0.0.1:4222" in text


def test_redact_url_keeps_host_and_port() -> None:
    """redact_url replaces userinfo only."""
    assert redact_url("nats://u:p@h:4222,nats://h2:4223") == "nats://***@h:4222,nats://h2:4223"
    assert redact_url("tls://token@h:1") == "tls://***@h:1"


#: Passwords with the characters that end a URL's host part ('/', '?', '#'), and a ',' that splits
#: the URL list; each piece is distinctive so that any fragment of it shows in a message.
_RESERVED_PASSWORDS = ["Alpha7/Bravo8", "Alpha7#Bravo8", "Alpha7?Bravo8", "Alpha7:99/Bravo8", "Alpha7,Bravo8"]


def _secret_free(text: str) -> bool:
    return "Alpha7" not in text and "Bravo8" not in text


@pytest.mark.parametrize("password", _RESERVED_PASSWORDS)
def test_reserved_characters_in_a_url_password_are_a_config_error_that_echoes_nothing(password: str) -> None:
    """A '/', '?', '#' or ',' in the URL's password: ConfigError from PublisherConfig, from_env,
    build_from_env and NatsPublisher.connect, with no piece of the password in it or its chain."""
    from edupulse_events import NatsPublisher, build_from_env

    url = f"nats://svc:{password}@127.0.0.1:4222"
    env = {"EDUPULSE_EVENT_BROKER_URL": url, "EDUPULSE_EVENT_BROKER_SUBJECT": "s"}
    attempts: list[Callable[[], object]] = [
        lambda: PublisherConfig(servers=url, subject="s"),
        lambda: PublisherConfig.from_env(env),
        lambda: build_from_env(env),
        lambda: NatsPublisher.connect(url, "s", connect_timeout=1.0),
    ]
    for attempt in attempts:
        with pytest.raises(ConfigError) as info:
            attempt()
        error: BaseException | None = info.value
        assert "not a NATS server URL" in str(info.value)
        while error is not None:
            assert _secret_free(str(error) + repr(error)), error
            error = error.__cause__ or error.__context__
    if "," not in password:  # in a list a ',' splits nothing: that URL is fine
        with pytest.raises(ConfigError) as info:
            PublisherConfig(servers=[url], subject="s")
        assert _secret_free(str(info.value))


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("nats://127.0.0.1:99999", "port cannot be read"),
        ("nats://127.0.0.1:http", "port cannot be read"),
        ("nats://[::1:4222", "cannot be read"),
        ("nats://127.0.0.1:0", "port 0"),
        ("nats://svc:pw@", "names no host"),
        ("nats://127.0.0.1:4222/path", "no path, query or fragment"),
        ("nats://127.0.0.1:4222?x=1", "no path, query or fragment"),
        ("nats://127.0.0.1 :4222", "space or a control character"),
        ("ftp://127.0.0.1:4222", "expected nats://host:port"),
    ],
)
def test_every_url_problem_is_a_config_error(url: str, needle: str) -> None:
    """Bad ports, unreadable hosts, a path or query, spaces, other schemes: ConfigError (not a bare ValueError)."""
    with pytest.raises(ConfigError, match=re.escape(needle)):
        PublisherConfig(servers=url, subject="s")


def test_redact_url_hides_a_password_a_parser_would_cut() -> None:
    """Everything before the last '@' is hidden, however a URL parser would split it."""
    assert redact_url("nats://svc:Alpha7/Bravo8@h:1") == "nats://***@h:1"
    assert redact_url("nats://svc:Alpha7#x@y@h:1,nats://h2:2") == "nats://***@h:1,nats://h2:2"


ENV = {"EDUPULSE_EVENT_BROKER_URL": "nats://h:4222", "EDUPULSE_EVENT_BROKER_SUBJECT": "s"}


def test_codec_is_a_codec_or_none() -> None:
    """codec= takes an edupulse_events.Codec (default None: the default codec); anything else is a ConfigError."""
    codec = Codec(EventRegistry())
    assert PublisherConfig(servers="nats://h:4222", subject="s").codec is None
    assert PublisherConfig(servers="nats://h:4222", subject="s", codec=codec).codec is codec
    assert PublisherConfig.from_env(ENV, codec=codec).codec is codec
    for bad in (EventRegistry(), "json", object()):
        with pytest.raises(ConfigError, match=f"codec must be an edupulse_events.Codec .*got {type(bad).__name__}"):
            PublisherConfig(servers="nats://h:4222", subject="s", codec=bad)  # type: ignore[arg-type]
