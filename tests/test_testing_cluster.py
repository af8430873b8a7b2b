"""edupulse_events.testing.NatsCluster: a 3-node JetStream cluster, checked with a real nats-py client."""

from __future__ import annotations

import asyncio
import time

import nats
import nats.errors
import nats.js.errors
import pytest
from testing_support import connect, run

from edupulse_events.testing import NatsCluster

pytestmark = pytest.mark.usefixtures("no_leftover_threads")


@pytest.mark.slow
def test_cluster_survives_killing_the_stream_leader(nats_cluster: NatsCluster) -> None:
    """3 nodes cluster; an R3 stream's leader is found and killed and publishes keep being acked."""
    assert len(nats_cluster.nodes) == 3
    assert [node.server_name for node in nats_cluster.nodes] == ["n1", "n2", "n3"]
    assert nats_cluster.url.split(",") == nats_cluster.urls
    assert len({node.port for node in nats_cluster.nodes}) == 3
    routes = nats_cluster.node(0).monitor("/routez")
    assert routes is not None
    assert {r["remote_name"] for r in routes["routes"]} >= {"n2", "n3"}

    async def create_and_publish() -> int:
        nc = await connect(nats_cluster.urls)
        try:
            js = nc.jetstream()
            await js.add_stream(name="HA", subjects=["ha.>"], num_replicas=3)
            ack = await js.publish("ha.1", b"before", timeout=5)
            info = await js.stream_info("HA")
            assert info.cluster is not None
            return ack.seq
        finally:
            await nc.close()

    assert run(create_and_publish()) == 1
    leader = nats_cluster.stream_leader("HA")
    assert sorted(nats_cluster.stream_replicas("HA")) == [0, 1, 2]
    nats_cluster.kill(leader)
    assert not nats_cluster.node(leader).running

    async def publish_after_failover() -> tuple[int, int]:
        nc = await connect(nats_cluster.urls, allow_reconnect=True, max_reconnect_attempts=5, reconnect_time_wait=0.1)
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + 20
            while True:
                try:
                    ack = await js.publish("ha.2", b"after", timeout=1)
                    break
                except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError, nats.js.errors.APIError):
                    # no leader yet: "no responders" (NoStreamResponseError) or a 503 API error
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            info = await js.stream_info("HA")
            return ack.seq, info.state.messages
        finally:
            await nc.close()

    seq, messages = run(publish_after_failover())
    assert seq == 2
    assert messages == 2
    new_leader = nats_cluster.stream_leader("HA")
    assert new_leader != leader
    assert nats_cluster.node(new_leader).running

    nats_cluster.restart(leader)  # same ports and store; waits for the cluster to be healthy again
    revived = nats_cluster.node(leader).monitor("/jsz?accounts=true&streams=true")
    assert revived is not None
    details = revived["account_details"][0]["stream_detail"]
    assert [(d["name"], d["state"]["messages"]) for d in details] == [("HA", 2)]
