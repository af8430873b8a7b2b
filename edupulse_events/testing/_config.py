"""What a :class:`~edupulse_events.testing.NatsServer` is configured with, and its config file.

Owns the validation of every server option (each mistake is a
:class:`~edupulse_events.errors.ConfigError` raised before anything runs), the validated
:class:`ServerOptions` record, and :meth:`ServerOptions.render`, which writes the nats-server
config text for the ports and store the server settled on. Strings are quoted as JSON, which
the nats-server config format understands, so no option can inject config lines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._net import HOST

MAX_PAYLOAD_LIMIT = 64 * 1024 * 1024  # nats-server refuses max_payload above max_pending (64 MiB)


def _check_port(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(f"{name} must be an int in 1..65535 or None, got {value!r}")
    return value


def _check_str(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty str or None")
    if any(ch in value for ch in "\r\n\x00"):
        raise ConfigError(f"{name} must not contain line breaks or NUL")
    return value


def _check_file(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{name} must be a file path, got {type(value).__name__}")
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{name} file does not exist: {path}")
    return str(path)


def _q(value: str | os.PathLike[str]) -> str:
    """Quote a string for the nats-server config format (JSON string escapes are understood)."""
    return json.dumps(os.fspath(value))


def _listen(port: int) -> str:
    return _q(f"{HOST}:{port}")


@dataclass(frozen=True)
class ServerOptions:
    """Validated server options; ports are the ones asked for (None: pick a free one)."""

    port: int | None
    http_port: int | None
    cluster_port: int | None
    jetstream: bool
    token: str | None
    user: str | None
    password: str | None
    tls_cert: str | None
    tls_key: str | None
    tls_ca: str | None
    tls_verify: bool
    max_payload: int | None
    server_name: str | None
    cluster_name: str | None
    routes: tuple[str, ...]
    extra_config: str

    @property
    def clustered(self) -> bool:
        """A route listener is configured (validation makes cluster_name required for one)."""
        return self.cluster_name is not None

    @classmethod
    def check(
        cls,
        *,
        port: Any,
        http_port: Any,
        cluster_port: Any,
        jetstream: Any,
        store_dir: Any,
        token: Any,
        user: Any,
        password: Any,
        tls_cert: Any,
        tls_key: Any,
        tls_ca: Any,
        tls_verify: Any,
        max_payload: Any,
        server_name: Any,
        cluster_name: Any,
        routes: Sequence[str] | None,
        extra_config: Any,
    ) -> ServerOptions:
        """Validate :class:`NatsServer`'s options (``store_dir`` is only checked, not kept)."""
        if not isinstance(jetstream, bool):
            raise ConfigError("jetstream must be a bool")
        if not isinstance(tls_verify, bool):
            raise ConfigError("tls_verify must be a bool")
        port = _check_port("port", port)
        http_port = _check_port("http_port", http_port)
        cluster_port = _check_port("cluster_port", cluster_port)
        if store_dir is not None and not jetstream:
            raise ConfigError("store_dir is only used with jetstream=True")
        if store_dir is not None and not isinstance(store_dir, (str, os.PathLike)):
            raise ConfigError("store_dir must be a directory path")
        token = _check_str("token", token)
        user = _check_str("user", user)
        password = _check_str("password", password)
        if (user is None) != (password is None):
            raise ConfigError("user and password must be given together")
        if token is not None and user is not None:
            raise ConfigError("use either token or user/password, not both")
        tls_cert = _check_file("tls_cert", tls_cert)
        tls_key = _check_file("tls_key", tls_key)
        tls_ca = _check_file("tls_ca", tls_ca)
        if (tls_cert is None) != (tls_key is None):
            raise ConfigError("tls_cert and tls_key must be given together")
        if tls_ca is not None and tls_cert is None:
            raise ConfigError("tls_ca needs tls_cert and tls_key (a TLS server)")
        if tls_verify and tls_ca is None:
            raise ConfigError("tls_verify=True needs tls_ca (the CA that signed client certs)")
        if max_payload is not None and (
            isinstance(max_payload, bool)
            or not isinstance(max_payload, int)
            or not 1 <= max_payload <= MAX_PAYLOAD_LIMIT
        ):
            raise ConfigError(f"max_payload must be an int in 1..{MAX_PAYLOAD_LIMIT} bytes")
        server_name = _check_str("server_name", server_name)
        cluster_name = _check_str("cluster_name", cluster_name)
        if isinstance(routes, str):
            raise ConfigError("routes must be a sequence of route URLs, not a str")
        route_list = () if routes is None else tuple(routes)
        for route in route_list:
            if not isinstance(route, str) or "\n" in route or '"' in route:
                raise ConfigError(f"bad route URL: {route!r}")
        clustered = cluster_name is not None or cluster_port is not None or bool(route_list)
        if clustered and cluster_name is None:
            raise ConfigError("cluster_port/routes need cluster_name")
        if clustered and jetstream and server_name is None:
            raise ConfigError("a clustered JetStream server needs a server_name")
        if not isinstance(extra_config, str):
            raise ConfigError("extra_config must be a str")
        return cls(
            port=port,
            http_port=http_port,
            cluster_port=cluster_port,
            jetstream=jetstream,
            token=token,
            user=user,
            password=password,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_ca=tls_ca,
            tls_verify=tls_verify,
            max_payload=max_payload,
            server_name=server_name,
            cluster_name=cluster_name,
            routes=route_list,
            extra_config=extra_config,
        )

    def render(self, *, port: int, http_port: int, cluster_port: int | None, store_dir: Path | None) -> str:
        """The nats-server config file text for the ports and store actually in use."""
        lines = [
            "# written by edupulse_events.testing.NatsServer",
            f"listen: {_listen(port)}",
            f"http: {_listen(http_port)}",
        ]
        if self.server_name:
            lines.append(f"server_name: {_q(self.server_name)}")
        if self.max_payload is not None:
            lines.append(f"max_payload: {self.max_payload}")
        if self.jetstream:
            assert store_dir is not None
            lines += ["jetstream {", f"  store_dir: {_q(store_dir)}", "}"]
        if self.token is not None:
            lines += ["authorization {", f"  token: {_q(self.token)}", "}"]
        elif self.user is not None:
            assert self.password is not None
            lines += [
                "authorization {",
                f"  user: {_q(self.user)}",
                f"  password: {_q(self.password)}",
                "}",
            ]
        if self.tls_cert is not None:
            assert self.tls_key is not None
            lines += ["tls {", f"  cert_file: {_q(self.tls_cert)}", f"  key_file: {_q(self.tls_key)}"]
            if self.tls_ca is not None:
                lines.append(f"  ca_file: {_q(self.tls_ca)}")
            if self.tls_verify:
                lines.append("  verify: true")
            lines += ["  timeout: 2", "}"]
        if self.clustered:
            assert self.cluster_name is not None
            assert cluster_port is not None
            lines += ["cluster {", f"  name: {_q(self.cluster_name)}", f"  listen: {_listen(cluster_port)}"]
            if self.routes:
                lines.append("  routes: [")
                lines += [f"    {_q(route)}" for route in self.routes]
                lines.append("  ]")
            lines.append("}")
        if self.extra_config:
            lines += ["# extra_config", self.extra_config]
        return "\n".join(lines) + "\n"
