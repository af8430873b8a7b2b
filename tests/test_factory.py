"""build_from_env(): a connected NatsPublisher when the broker is configured, an InMemoryPublisher
(with a warning) when it is not, and BrokerError (or, when asked, a logged fallback) when it is down."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from helpers import LogWatcher, envelope, read_stream

from edupulse_events import BrokerError, ConfigError, InMemoryPublisher, NatsPublisher, PublisherState, build_from_env
from edupulse_events.testing import NatsServer

STREAM = "FACTORY"
SUBJECT = "factory.events"
TOKEN = "factory-SECRET-token-5e1f"
URL = "EDUPULSE_EVENT_BROKER_URL"
SUBJ = "EDUPULSE_EVENT_BROKER_SUBJECT"
TOK = "EDUPULSE_EVENT_BROKER_TOKEN"
FALLBACK = "EDUPULSE_EVENT_BROKER_FALLBACK"


def test_configured_broker_gives_working_nats_publisher(make_server: Callable[..., NatsServer]) -> None:
    """URL, SUBJECT and TOKEN set: a connected NatsPublisher authenticating with the token, whose events are stored."""
    server = make_server(token=TOKEN)
    env = {URL: f" {server.url} ", SUBJ: SUBJECT, TOK: TOKEN}
    with LogWatcher() as logs:
        pub = build_from_env(env, stream=STREAM, create_stream=True)
    try:
        assert isinstance(pub, NatsPublisher)
        assert pub.config.auth_token == TOKEN
        assert pub.config.subject == SUBJECT
        assert pub.publish(envelope()).result(timeout=10).broker_sequence == 1
    finally:
        pub.close(5)
    assert len(read_stream(server.url, STREAM, token=TOKEN)) == 1
    assert "InMemoryPublisher" not in logs.text
    assert TOKEN not in logs.text


def test_reads_os_environ_by_default(make_server: Callable[..., NatsServer], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping, build_from_env reads os.environ."""
    server = make_server()
    monkeypatch.setenv(URL, server.url)
    monkeypatch.setenv(SUBJ, SUBJECT)
    monkeypatch.delenv(TOK, raising=False)
    with build_from_env(stream=STREAM, create_stream=True) as pub:
        assert isinstance(pub, NatsPublisher)
        assert pub.publish(envelope()).result(timeout=10).broker_sequence == 1


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({}, f"{URL} and {SUBJ} not set"),
        ({URL: "nats://127.0.0.1:4222"}, f"{SUBJ} not set"),
        ({SUBJ: SUBJECT}, f"{URL} not set"),
        ({URL: "   ", SUBJ: SUBJECT, TOK: TOKEN}, f"{URL} not set"),
    ],
    ids=["none", "url-only", "subject-only", "blank-url"],
)
def test_unconfigured_gives_in_memory_publisher_and_warning(env: dict[str, str], missing: str) -> None:
    """With URL or SUBJECT (or both) unset or blank: an InMemoryPublisher, and a warning naming what is missing."""
    with LogWatcher() as logs:
        pub = build_from_env(env)
    assert isinstance(pub, InMemoryPublisher)
    warnings = [r for r in logs.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert missing in warnings[0].getMessage()
    assert "NOT reach a broker" in warnings[0].getMessage()
    env_ = envelope()
    assert pub.publish(env_).result(timeout=0).stream == "memory"
    assert pub.drain() == [env_]


def test_in_memory_fallback_never_blocks_an_application() -> None:
    """An unconfigured application's in-memory publisher keeps the latest max_queue events, never blocking publish()."""
    pub = build_from_env({}, max_queue=50)
    assert isinstance(pub, InMemoryPublisher)
    start = time.monotonic()
    for _ in range(120):
        pub.publish(envelope(), timeout=0)
    assert time.monotonic() - start < 2.0
    assert len(pub) == 50
    assert pub.discarded == 70


def test_configured_but_unreachable_raises_broker_error_fast(make_server: Callable[..., NatsServer]) -> None:
    """A configured broker that is down raises BrokerError within connect_timeout; there is no silent fallback."""
    down = make_server(start=False)
    start = time.monotonic()
    with LogWatcher() as logs, pytest.raises(BrokerError, match="could not connect"):
        build_from_env({URL: down.url, SUBJ: SUBJECT, TOK: TOKEN}, connect_timeout=0.5)
    assert time.monotonic() - start < 3.0
    assert "InMemoryPublisher" not in logs.text
    assert not [t for t in threading.enumerate() if t.name.startswith("edupulse-publisher") and t.is_alive()]


def test_wrong_token_raises_broker_error(make_server: Callable[..., NatsServer]) -> None:
    """A wrong EDUPULSE_EVENT_BROKER_TOKEN raises BrokerError saying authentication failed, never showing the token."""
    server = make_server(token=TOKEN)
    with pytest.raises(BrokerError, match="authentication failed") as info:
        build_from_env({URL: server.url, SUBJ: SUBJECT, TOK: "not-" + TOKEN}, connect_timeout=5.0)
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize("value", ["memory", " MEMORY "])
def test_fallback_memory_gives_in_memory_publisher_and_error(
    make_server: Callable[..., NatsServer], value: str
) -> None:
    """With EDUPULSE_EVENT_BROKER_FALLBACK=memory an unreachable broker gives an InMemoryPublisher, logging an error."""
    down = make_server(start=False)
    with LogWatcher() as logs:
        pub = build_from_env({URL: down.url, SUBJ: SUBJECT, FALLBACK: value}, connect_timeout=0.5)
    assert isinstance(pub, InMemoryPublisher)
    errors = [r.getMessage() for r in logs.records if r.levelname == "ERROR" and "falling back" in r.getMessage()]
    assert len(errors) == 1
    assert "could not connect" in errors[0]
    assert "NOT reach a broker" in errors[0]
    assert "publisher closed" not in logs.text  # the publisher that never connected is not "closed" later either
    assert pub.publish(envelope()).result(timeout=0).broker_sequence == 1


def test_other_fallback_values_still_raise(make_server: Callable[..., NatsServer]) -> None:
    """Any FALLBACK value other than memory keeps the BrokerError."""
    down = make_server(start=False)
    with pytest.raises(BrokerError):
        build_from_env({URL: down.url, SUBJ: SUBJECT, FALLBACK: "none"}, connect_timeout=0.3)


@pytest.mark.parametrize(
    "env",
    [{URL: "http://127.0.0.1:4222", SUBJ: SUBJECT}, {URL: "nats://127.0.0.1:4222", SUBJ: "bad subject"}],
    ids=["not-a-nats-url", "bad-subject"],
)
def test_invalid_settings_raise_config_error(env: dict[str, str]) -> None:
    """An invalid URL or subject raises ConfigError, even with FALLBACK=memory."""
    with pytest.raises(ConfigError):
        build_from_env({**env, FALLBACK: "memory"})


def test_checks_the_broker_then_leaves_nothing_running_until_the_first_publish(nats_server: NatsServer) -> None:
    """build_from_env() connects once to check, then holds no thread or socket (a pre-fork master may fork);
    the first publish() in the process connects."""
    before = set(threading.enumerate())
    pub = build_from_env({URL: nats_server.url, SUBJ: SUBJECT}, stream=STREAM, create_stream=True)
    try:
        assert isinstance(pub, NatsPublisher)
        assert pub.state is PublisherState.NEW
        assert set(threading.enumerate()) <= before
        assert server_sees_no_connection(nats_server)  # the check's connection is closed
        assert (nats_server.monitor("/jsz?streams=true") or {}).get("streams") == 1  # the check created it
        assert pub.publish(envelope()).result(timeout=10).broker_sequence == 1
        assert pub.stats().state == "running"
    finally:
        pub.close(5)


def server_sees_no_connection(nats: NatsServer, timeout: float = 5.0) -> bool:
    """Whether the server's /connz reports no client within ``timeout`` (it notices a closed socket
    on its own schedule, a moment after the client closed it)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        connz = nats.monitor("/connz")
        if connz is not None and connz["num_connections"] == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        pause.wait(0.02)
