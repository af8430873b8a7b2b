"""NKey and JWT (.creds) authentication against real nats-servers configured for them, from code and from
the EDUPULSE_EVENT_BROKER_* variables; secrets never appear in reprs, logs or errors."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nkeys  # type: ignore[import-untyped]  # the nkeys package ships no type information
import pytest
from helpers import LogWatcher, envelope

from edupulse_events import BrokerError, ConfigError, NatsPublisher, PublisherConfig, build_from_env
from edupulse_events.testing import NatsServer

SUBJECT = "auth.events"


def new_seed(prefix: int) -> bytes:
    return bytes(nkeys.encode_seed(os.urandom(32), prefix))


def public_key(seed: bytes) -> str:
    return str(nkeys.from_seed(seed).public_key.decode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed_jwt(issuer_seed: bytes, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A NATS JWT (v2 claims) for ``subject``, signed by ``issuer_seed``."""
    key = nkeys.from_seed(issuer_seed)
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": key.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    claims["jti"] = base64.b32encode(hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()).decode()
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(key.sign(f'{head}.{body}'.encode()))}"


def creds_text(user_jwt: str, user_seed: bytes) -> str:
    return (
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n------END USER NKEY SEED------\n"
    )


@pytest.fixture
def nkey_server(make_server: Callable[..., NatsServer]) -> tuple[NatsServer, str]:
    """A server whose one user authenticates with an NKey; returns it and that user's seed."""
    seed = new_seed(nkeys.PREFIX_BYTE_USER)
    server = make_server(extra_config=f'authorization {{ users = [ {{ nkey: "{public_key(seed)}" }} ] }}')
    return server, seed.decode()


@pytest.fixture
def jwt_server(make_server: Callable[..., NatsServer], tmp_path: Path) -> tuple[NatsServer, Path, Path]:
    """A server in operator (JWT) mode with one JetStream-enabled account; returns it, a user's
    .creds file, and a .creds file of a user that account never signed."""
    operator, account, system = (
        new_seed(p) for p in (nkeys.PREFIX_BYTE_OPERATOR, nkeys.PREFIX_BYTE_ACCOUNT, nkeys.PREFIX_BYTE_ACCOUNT)
    )
    user, stranger = new_seed(nkeys.PREFIX_BYTE_USER), new_seed(nkeys.PREFIX_BYTE_USER)
    unlimited = {"subs": -1, "data": -1, "payload": -1, "conn": -1}
    js_limits = {**unlimited, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    operator_jwt = signed_jwt(operator, public_key(operator), "O", {"type": "operator"})
    account_jwt = signed_jwt(operator, public_key(account), "A", {"type": "account", "limits": js_limits})
    system_jwt = signed_jwt(operator, public_key(system), "SYS", {"type": "account", "limits": unlimited})
    user_claims = {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
    other = new_seed(nkeys.PREFIX_BYTE_ACCOUNT)  # an account the server does not know
    good, bad = tmp_path / "user.creds", tmp_path / "stranger.creds"
    good.write_text(creds_text(signed_jwt(account, public_key(user), "U", user_claims), user))
    bad.write_text(creds_text(signed_jwt(other, public_key(stranger), "X", user_claims), stranger))
    config = (
        f'operator: "{operator_jwt}"\nsystem_account: "{public_key(system)}"\nresolver: MEMORY\n'
        f'resolver_preload: {{\n  {public_key(account)}: "{account_jwt}"\n  {public_key(system)}: "{system_jwt}"\n}}\n'
    )
    return make_server(extra_config=config), good, bad


def test_nkey_seed_authenticates_and_a_wrong_one_fails_fast(nkey_server: tuple[NatsServer, str]) -> None:
    """A publisher with the user's NKey seed publishes; another seed fails fast with BrokerError, the seed unseen."""
    server, seed = nkey_server
    with NatsPublisher.connect(server.url, SUBJECT, stream="AUTH", create_stream=True, nkey_seed=seed) as pub:
        assert pub.publish(envelope()).result(timeout=10).broker_sequence == 1
        assert seed not in repr(pub)
        assert seed not in repr(pub.config)
    wrong = new_seed(nkeys.PREFIX_BYTE_USER).decode()
    started = time.monotonic()
    with LogWatcher() as logs, pytest.raises(BrokerError, match="authentication failed") as info:
        NatsPublisher.connect(server.url, SUBJECT, nkey_seed=wrong, connect_timeout=5.0)
    assert time.monotonic() - started < 3.0
    assert not info.value.retryable
    assert wrong not in str(info.value)
    assert wrong not in logs.text


def test_creds_file_authenticates_and_an_unknown_account_fails_fast(jwt_server: tuple[NatsServer, Path, Path]) -> None:
    """A .creds file signed by a known account publishes; one signed by an unknown account fails with BrokerError."""
    server, good, bad = jwt_server
    with NatsPublisher.connect(server.url, SUBJECT, stream="AUTH", create_stream=True, creds_file=str(good)) as pub:
        assert pub.publish(envelope()).result(timeout=10).broker_sequence == 1
    seed = good.read_text().split("-----BEGIN USER NKEY SEED-----\n")[1].split("\n")[0]
    with LogWatcher() as logs, pytest.raises(BrokerError, match="could not connect") as info:
        NatsPublisher.connect(server.url, SUBJECT, creds_file=str(bad), connect_timeout=5.0)
    assert not info.value.retryable
    assert seed not in logs.text


def test_environment_variables_for_nkey_creds_and_stream(
    nkey_server: tuple[NatsServer, str], jwt_server: tuple[NatsServer, Path, Path]
) -> None:
    """build_from_env() reads _NKEY_SEED, _CREDS, _STREAM and _CREATE_STREAM and publishes with them."""
    server, seed = nkey_server
    env = {
        "EDUPULSE_EVENT_BROKER_URL": server.url,
        "EDUPULSE_EVENT_BROKER_SUBJECT": SUBJECT,
        "EDUPULSE_EVENT_BROKER_NKEY_SEED": seed,
        "EDUPULSE_EVENT_BROKER_STREAM": "AUTH",
        "EDUPULSE_EVENT_BROKER_CREATE_STREAM": "true",
    }
    pub = build_from_env(env)
    assert isinstance(pub, NatsPublisher)
    with pub:
        assert pub.publish(envelope()).result(timeout=10).stream == "AUTH"
    jwt, creds, _ = jwt_server
    env |= {"EDUPULSE_EVENT_BROKER_URL": jwt.url, "EDUPULSE_EVENT_BROKER_CREDS": str(creds)}
    del env["EDUPULSE_EVENT_BROKER_NKEY_SEED"]
    pub = build_from_env(env)
    assert isinstance(pub, NatsPublisher)
    with pub:
        assert pub.publish(envelope()).result(timeout=10).broker_sequence == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"nkey_seed": "SAAN-not-a-user-seed"}, "user NKey seed"),
        ({"creds_file": "/nonexistent/user.creds"}, "not a readable file"),
        ({"nkey_seed": "SUAAA", "creds_file": __file__}, "not both"),
    ],
    ids=["not a user seed", "missing creds file", "both"],
)
def test_auth_settings_are_checked_at_construction(fields: dict[str, str], message: str) -> None:
    """A seed that is not a user seed, a missing or foreign .creds file, or both at once: ConfigError."""
    with pytest.raises(ConfigError, match=message):
        PublisherConfig(servers="nats://127.0.0.1:4222", subject=SUBJECT, **fields)  # type: ignore[arg-type]


def test_a_file_without_a_user_jwt_is_not_a_creds_file(tmp_path: Path) -> None:
    """A creds_file that holds no NATS user JWT is refused at construction."""
    foreign = tmp_path / "notes.txt"
    foreign.write_text("not credentials\n")
    with pytest.raises(ConfigError, match="holds no NATS user JWT"):
        PublisherConfig(servers="nats://127.0.0.1:4222", subject=SUBJECT, creds_file=str(foreign))


def test_create_stream_variable_must_be_a_boolean() -> None:
    """EDUPULSE_EVENT_BROKER_CREATE_STREAM takes 1/true/yes or 0/false/no, nothing else."""
    env = {"EDUPULSE_EVENT_BROKER_URL": "nats://127.0.0.1:4222", "EDUPULSE_EVENT_BROKER_SUBJECT": SUBJECT}
    assert PublisherConfig.from_env({**env, "EDUPULSE_EVENT_BROKER_STREAM": "S"}).create_stream is False
    made = PublisherConfig.from_env(
        {**env, "EDUPULSE_EVENT_BROKER_STREAM": "S", "EDUPULSE_EVENT_BROKER_CREATE_STREAM": "yes"}
    )
    assert made.create_stream is True
    with pytest.raises(ConfigError, match="CREATE_STREAM"):
        PublisherConfig.from_env({**env, "EDUPULSE_EVENT_BROKER_CREATE_STREAM": "maybe"})
