"""Security (issue 4): token and user/password auth, TLS with a private CA, no plain-text
fallback when TLS was asked for, and credentials never shown in logs, reprs or errors."""

from __future__ import annotations

import logging
import ssl
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme
from helpers import LogWatcher, envelope, read_stream

from edupulse_events import BrokerError, ConfigError, NatsPublisher, PublisherConfig
from edupulse_events.testing import NatsServer

STREAM = "SECURE"
SUBJECT = "secure.events"
TOKEN = "tok-9f3b-SECRET-a71c"
USER = "svc-publisher"
PASSWORD = "pw-42d8-SECRET-e0b5"


def connect(url: str, **kwargs: Any) -> NatsPublisher:
    kwargs.setdefault("connect_timeout", 5.0)
    return NatsPublisher.connect(url, SUBJECT, stream=STREAM, create_stream=True, **kwargs)


def publish_one(pub: NatsPublisher) -> int | None:
    return pub.publish(envelope()).result(timeout=10).broker_sequence


def failed_connect(url: str, **kwargs: object) -> tuple[BrokerError, float]:
    start = time.monotonic()
    with pytest.raises(BrokerError) as info:
        connect(url, **kwargs)
    return info.value, time.monotonic() - start


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """PEM files of a server certificate for 127.0.0.1 and localhost, signed by ``ca``."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return str(cert_path), str(key_path)


@pytest.fixture
def tls_server(make_server: Callable[..., NatsServer], server_cert_files: tuple[str, str]) -> NatsServer:
    cert, key = server_cert_files
    return make_server(tls_cert=cert, tls_key=key)


@pytest.fixture
def all_logs() -> Iterator[LogWatcher]:
    """Every log record of every logger (nats-py and asyncio too) at DEBUG."""
    watcher = LogWatcher()
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(watcher)
    try:
        yield watcher
    finally:
        root.removeHandler(watcher)
        root.setLevel(old_level)


# --------------------------------------------------------------------------- token


def test_right_token_publishes(make_server: Callable[..., NatsServer]) -> None:
    """With the server's token the publisher connects and its events are stored."""
    server = make_server(token=TOKEN)
    with connect(server.url, auth_token=TOKEN) as pub:
        assert publish_one(pub) == 1
    assert len(read_stream(server.url, STREAM, token=TOKEN)) == 1


@pytest.mark.parametrize("token", ["wrong-token", None], ids=["wrong", "missing"])
def test_wrong_or_missing_token_fails_fast(make_server: Callable[..., NatsServer], token: str | None) -> None:
    """A wrong or missing token raises BrokerError saying authentication failed, well within the connect timeout."""
    server = make_server(token=TOKEN)
    err, elapsed = failed_connect(server.url, auth_token=token, connect_timeout=5.0)
    assert "authentication failed" in str(err)
    assert elapsed < 2.5
    assert not err.retryable


# --------------------------------------------------------------------------- user / password


def test_user_password_in_url(make_server: Callable[..., NatsServer]) -> None:
    """nats://user:pass@host:port authenticates; a wrong password in the URL fails with an authentication error."""
    server = make_server(user=USER, password=PASSWORD)
    with connect(f"nats://{USER}:{PASSWORD}@127.0.0.1:{server.port}") as pub:
        assert publish_one(pub) == 1
    err, elapsed = failed_connect(f"nats://{USER}:not-{PASSWORD}@127.0.0.1:{server.port}")
    assert "authentication failed" in str(err)
    assert elapsed < 2.5


def test_user_password_in_config(make_server: Callable[..., NatsServer]) -> None:
    """user= and password= in the config authenticate; without them, or with a wrong password, BrokerError."""
    server = make_server(user=USER, password=PASSWORD)
    with connect(server.url, user=USER, password=PASSWORD) as pub:
        assert publish_one(pub) == 1
    for kwargs in ({"user": USER, "password": "nope"}, {}):
        err, elapsed = failed_connect(server.url, **kwargs)
        assert "authentication failed" in str(err)
        assert elapsed < 2.5


# --------------------------------------------------------------------------- TLS


def test_tls_with_trusted_ca(tls_server: NatsServer, ca: trustme.CA) -> None:
    """A tls:// URL with an SSLContext trusting the server's CA connects over TLS and publishes."""
    assert tls_server.url.startswith("tls://")
    ctx = client_context(ca)
    with connect(tls_server.url, tls=ctx) as pub:
        assert publish_one(pub) == 1
        connz = tls_server.monitor("/connz")
        assert connz is not None
        [conn] = connz["connections"]
        assert conn.get("tls_version")
    assert len(read_stream(tls_server.url, STREAM, tls=ctx)) == 1


def test_tls_with_another_ca_fails_with_certificate_error(tls_server: NatsServer) -> None:
    """A context trusting a different CA fails fast with a BrokerError about the certificate."""
    err, elapsed = failed_connect(tls_server.url, tls=client_context(trustme.CA()), connect_timeout=5.0)
    assert "certificate" in str(err)
    assert "verification failed" in str(err)
    assert elapsed < 2.5


def test_plain_url_to_tls_server_fails_clearly(tls_server: NatsServer) -> None:
    """nats:// without a TLS context to a TLS-required server fails fast, saying the server requires TLS."""
    plain = tls_server.url.replace("tls://", "nats://")
    err, elapsed = failed_connect(plain, connect_timeout=5.0)
    assert "requires TLS" in str(err)
    assert "certificate" in str(err)
    assert elapsed < 2.5


def test_tls_url_to_plain_server_is_refused(make_server: Callable[..., NatsServer], ca: trustme.CA) -> None:
    """tls:// URL or tls= context: no plain-text fallback; a non-TLS server is refused before credentials are sent."""
    server = make_server(token=TOKEN)
    tls_url = server.url.replace("nats://", "tls://")
    for url, kwargs in (
        (tls_url, {}),
        (tls_url, {"tls": client_context(ca)}),
        (server.url, {"tls": client_context(ca)}),
    ):
        err, elapsed = failed_connect(url, auth_token=TOKEN, connect_timeout=5.0, **kwargs)
        assert "does not offer TLS" in str(err)
        assert elapsed < 2.5


def test_tls_url_upgrades_when_server_allows_plain_text(
    make_server: Callable[..., NatsServer], server_cert_files: tuple[str, str], ca: trustme.CA
) -> None:
    """A server that offers TLS without requiring it (allow_non_tls) is still reached over TLS with a tls:// URL."""
    cert, key = server_cert_files
    server = make_server(tls_cert=cert, tls_key=key, extra_config="allow_non_tls: true")
    with connect(server.url, tls=client_context(ca)) as pub:
        assert publish_one(pub) == 1
        connz = server.monitor("/connz")
        assert connz is not None
        [conn] = connz["connections"]
        assert conn.get("tls_version")


# --------------------------------------------------------------------------- secrets stay secret


def test_secrets_never_in_logs_reprs_or_errors(make_server: Callable[..., NatsServer], all_logs: LogWatcher) -> None:
    """Tokens and passwords (URL or config) appear in no DEBUG log record, repr, str, error or its cause chain."""
    token_server = make_server(token=TOKEN)
    user_server = make_server(user=USER, password=PASSWORD)
    down = make_server(start=False)
    shown: list[str] = []

    def look(obj: object) -> None:
        shown.extend([repr(obj), str(obj)])

    def look_error(url: str, **kwargs: object) -> None:
        err, _ = failed_connect(url, connect_timeout=1.0, **kwargs)
        shown.append("".join(traceback.format_exception(err)))

    url_with_password = f"nats://{USER}:{PASSWORD}@127.0.0.1:{user_server.port}"
    url_with_token = f"nats://{TOKEN}@127.0.0.1:{token_server.port}"
    for pub in (
        connect(token_server.url, auth_token=TOKEN),
        connect(url_with_token),
        connect(url_with_password),
        connect(user_server.url, user=USER, password=PASSWORD),
    ):
        with pub:
            publish_one(pub)
            look(pub)
            look(pub.config)
            look(pub.stats())
    look(
        PublisherConfig(
            servers=[url_with_password, url_with_token], subject=SUBJECT, auth_token=TOKEN, password=PASSWORD, user=USER
        )
    )
    look_error(token_server.url, auth_token=f"x{TOKEN}")
    look_error(f"nats://{USER}:{PASSWORD}x@127.0.0.1:{user_server.port}")
    look_error(f"nats://{USER}:{PASSWORD}@127.0.0.1:{down.port}")
    look_error(down.url, auth_token=TOKEN)
    with pytest.raises(ConfigError) as bad_url:
        PublisherConfig(servers=f"http://{USER}:{PASSWORD}@127.0.0.1:1", subject=SUBJECT)
    shown.append("".join(traceback.format_exception(bad_url.value)))
    assert all_logs.wait_for("authentication failed")
    everything = "\n".join(shown) + "\n" + all_logs.text
    assert "connected to broker" in everything
    assert "***@127.0.0.1" in everything
    for secret in (TOKEN, PASSWORD):
        assert secret not in everything
