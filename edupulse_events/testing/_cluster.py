"""A JetStream cluster of ``nats-server`` processes on loopback: :class:`NatsCluster`.

Owns wiring ``size`` :class:`~edupulse_events.testing.NatsServer` nodes (n1..nN) into a full
mesh of routes, starting/stopping/killing/restarting them as a group, and deciding from each
node's HTTP monitoring endpoint (``/healthz``, ``/jsz``) when the cluster is ready: healthy
nodes, one agreed JetStream meta leader, and every stream led and caught up on the running
replicas. Also answers which node leads the meta group or a stream.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import ConfigError, ServerError
from ._net import HOST, free_port, wait
from ._server import NatsServer

# NatsServer options NatsCluster sets itself, per node.
_PER_NODE = frozenset(
    {"port", "http_port", "cluster_port", "cluster_name", "routes", "server_name", "store_dir", "jetstream"}
)


def _stream_details(jsz: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(account, stream detail) pairs of a ``/jsz?accounts=true&streams=true`` answer."""
    for acc in jsz.get("account_details") or ():
        for detail in acc.get("stream_detail") or ():
            yield acc, detail


def _last_seq(detail: dict[str, Any]) -> int:
    return int((detail.get("state") or {}).get("last_seq") or 0)


def _find_stream(node: NatsServer, stream: str, account: str) -> dict[str, Any] | None:
    """``node``'s detail of ``stream`` in ``account`` (name or id), None if it hosts no replica."""
    jsz = node.monitor(f"/jsz?accounts=true&streams=true&acc={quote(account, safe='')}")
    if not isinstance(jsz, dict):
        return None
    for acc, detail in _stream_details(jsz):
        if account in (acc.get("name"), acc.get("id")) and detail.get("name") == stream:
            return detail
    return None


class NatsCluster:
    """``size`` clustered JetStream nodes (server names n1..nN) on 127.0.0.1.

    Nodes are indexed from 0: ``cluster.node(0).server_name == "n1"``. Each node has its own
    free client, route and monitoring ports and its own store directory; every node routes to
    all the others. ``node_options`` are passed to every :class:`NatsServer` (e.g. ``token``).
    """

    def __init__(
        self,
        size: int = 3,
        *,
        cluster_name: str = "edupulse-test",
        store_root: str | os.PathLike[str] | None = None,
        **node_options: Any,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError("size must be an int >= 1")
        clash = _PER_NODE.intersection(node_options)
        if clash:
            raise ConfigError(f"NatsCluster chooses these per node: {sorted(clash)}")
        cluster_ports = [free_port() for _ in range(size)]
        self._nodes: list[NatsServer] = []
        try:
            for i in range(size):
                routes = [f"nats-route://{HOST}:{p}" for j, p in enumerate(cluster_ports) if j != i]
                store = None if store_root is None else Path(store_root, f"n{i + 1}")
                self._nodes.append(
                    NatsServer(
                        server_name=f"n{i + 1}",
                        cluster_name=cluster_name if size > 1 else None,
                        cluster_port=cluster_ports[i] if size > 1 else None,
                        routes=routes or None,
                        store_dir=store,
                        **node_options,
                    )
                )
        except BaseException:
            for node in self._nodes:
                node.close()
            raise
        self._cluster_name = cluster_name

    # ----------------------------------------------------------------- properties

    @property
    def nodes(self) -> list[NatsServer]:
        return list(self._nodes)

    def node(self, i: int) -> NatsServer:
        return self._nodes[i]

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self._nodes]

    @property
    def url(self) -> str:
        """All client URLs, comma-separated (the nats CLI / Go / Rust form).

        nats-py 2.16 does not split this string: give it :attr:`urls` (or ``url.split(",")``).
        """
        return ",".join(self.urls)

    @property
    def name(self) -> str:
        return self._cluster_name

    def __repr__(self) -> str:
        return f"<NatsCluster {self._cluster_name} {self._nodes!r}>"

    # ----------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 30.0) -> NatsCluster:
        """Start every node, then wait until all are healthy and agree on a JetStream meta leader."""
        deadline = time.monotonic() + timeout
        try:
            for node in self._nodes:
                if not node.running:
                    node.start(timeout=max(deadline - time.monotonic(), 0.1))
            self.wait_ready(timeout=max(deadline - time.monotonic(), 0.1))
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the running nodes are healthy and agree on a JetStream meta leader, and every
        stream they host has a leader whose replicas on running nodes are caught up."""
        deadline = time.monotonic() + timeout
        while True:
            problem = self._readiness_problem()
            if problem is None:
                return
            if not wait(deadline):
                tails = "\n".join(
                    f"--- {node.server_name} log tail:\n{node._log_tail(15)}"  # noqa: SLF001  # this package's NatsServer
                    for node in self._nodes
                )
                raise ServerError(f"cluster not ready within {timeout:g}s: {problem}\n{tails}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every node (idempotent). Temp dirs stay until :meth:`close`."""
        errors: list[BaseException] = []
        for node in self._nodes:
            try:
                node.stop(timeout=timeout)
            except Exception as exc:  # noqa: BLE001  # pragma: no cover - keep stopping the others; re-raised below
                errors.append(exc)
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Stop every node and remove their temporary directories (idempotent)."""
        for node in self._nodes:
            node.close()

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (0-based) and wait for it to exit."""
        self._nodes[i].kill()

    def restart(self, i: int, timeout: float = 30.0) -> NatsServer:
        """Restart node ``i`` on its ports and store, and wait until the cluster is ready again."""
        deadline = time.monotonic() + timeout
        node = self._nodes[i].restart(timeout=timeout)
        self.wait_ready(timeout=max(deadline - time.monotonic(), 0.1))
        return node

    def __enter__(self) -> NatsCluster:
        if not all(node.running for node in self._nodes):
            try:
                self.start()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------- leaders

    def meta_leader(self, timeout: float = 10.0) -> int:
        """Index of the node that is the JetStream meta leader (as the running nodes agree)."""
        deadline = time.monotonic() + timeout
        while True:
            leader = self._agreed_meta_leader()
            if leader is not None:
                return leader
            if not wait(deadline):
                raise ServerError(f"no JetStream meta leader within {timeout:g}s")

    def stream_leader(self, stream: str, *, account: str = "$G", timeout: float = 10.0) -> int:
        """Index of the running node that leads ``stream`` (in ``account``; "$G" without accounts).

        Asks each running node's ``/jsz?accounts=true&streams=true`` and returns the node that
        reports itself as the stream's leader; waits (up to ``timeout``) while an election is on.
        """
        if not isinstance(stream, str) or not stream:
            raise ValueError("stream must be a non-empty str")
        deadline = time.monotonic() + timeout
        while True:
            for index, node in self._responsive():
                detail = _find_stream(node, stream, account)
                if detail is not None and (detail.get("cluster") or {}).get("leader") == node.server_name:
                    return index
            if not wait(deadline):
                raise ServerError(f"no running node leads stream {stream!r} after {timeout:g}s")

    def stream_replicas(self, stream: str, *, account: str = "$G") -> list[int]:
        """Indices of running nodes that currently host a replica of ``stream`` (leader included)."""
        return [index for index, node in self._responsive() if _find_stream(node, stream, account)]

    # ----------------------------------------------------------------- internals

    def _responsive(self) -> Iterator[tuple[int, NatsServer]]:
        """(index, node) of every node that is running and not paused, i.e. can answer."""
        for index, node in enumerate(self._nodes):
            if node.running and not node.paused:
                yield index, node

    def _index_of(self, server_name: str | None) -> int | None:
        for index, node in enumerate(self._nodes):
            if node.server_name == server_name:
                return index
        return None

    def _agreed_meta_leader(self) -> int | None:
        seen: set[str] = set()
        for _, node in self._responsive():
            meta = (node.monitor("/jsz") or {}).get("meta_cluster") or {}
            leader = meta.get("leader")
            if not leader:
                return None
            seen.add(leader)
        if len(seen) != 1:
            return None
        index = self._index_of(seen.pop())
        if index is None or not self._nodes[index].running:
            return None
        return index

    def _readiness_problem(self) -> str | None:
        if not any(node.running for node in self._nodes):
            return "no node is running"
        for _, node in self._responsive():
            if not node.healthy(js_enabled_only=True):
                return f"{node.server_name}: /healthz?js-enabled-only=true is not ok"
        if len(self._nodes) > 1 and self._agreed_meta_leader() is None:
            return "the running nodes do not agree on a JetStream meta leader"
        for _, node in self._responsive():
            if not node.healthy():
                return f"{node.server_name}: /healthz is not ok"
        return self._streams_problem()

    def _streams_problem(self) -> str | None:
        """Every stream hosted by a running node has a leader, and its replicas on running nodes
        hold everything the leader has (``/healthz`` alone says ok before a restarted node has
        even noticed its stream assignments)."""
        hosted: dict[int, dict[tuple[str, str], dict[str, Any]]] = {}
        for index, node in self._responsive():
            jsz = node.monitor("/jsz?accounts=true&streams=true")
            if not isinstance(jsz, dict):
                return f"{node.server_name}: /jsz did not answer"
            hosted[index] = {
                (str(acc.get("name")), str(detail.get("name"))): detail for acc, detail in _stream_details(jsz)
            }
        led: set[tuple[str, str]] = set()
        for index, streams in hosted.items():
            me = self._nodes[index].server_name
            for key, detail in streams.items():
                cluster = detail.get("cluster") or {}
                if cluster.get("leader") != me:
                    continue
                led.add(key)
                last_seq = _last_seq(detail)
                for replica in cluster.get("replicas") or ():
                    other = self._index_of(replica.get("name"))
                    if other is None or other not in hosted:
                        continue  # a stopped/killed/paused node is not waited for
                    copy = hosted[other].get(key)
                    if copy is None:
                        return f"{replica.get('name')} has not created its replica of {key[1]!r} yet"
                    if _last_seq(copy) < last_seq:
                        return f"{replica.get('name')} is catching up on stream {key[1]!r}"
        for streams in hosted.values():
            for key, detail in streams.items():
                if detail.get("cluster") and key not in led:
                    return f"stream {key[1]!r} has no leader among the running nodes"
        return None
