"""The stream a publisher is configured with, checked when it connects: it must exist (or be created) and
capture the subjects the publisher writes to; otherwise a BrokerError says which and why."""

from __future__ import annotations

import asyncio

import nats
import pytest
from helpers import add_stream, envelope

from edupulse_events import BrokerError, EventRejected, NatsPublisher, PublisherConfig
from edupulse_events._nats._streams import subject_covered
from edupulse_events.testing import NatsServer


@pytest.mark.parametrize(
    ("pattern", "subject", "covered"),
    [
        ("edupulse.events", "edupulse.events", True),
        ("edupulse.>", "edupulse.*.*", True),
        ("edupulse.*.*", "edupulse.*.*", True),
        ("edupulse.*", "edupulse.*.*", False),
        ("edupulse.*.LessonPublished", "edupulse.*.*", False),
        ("other.>", "edupulse.events", False),
        (">", "a.b.c", True),
        ("edupulse.>", "edupulse", False),
    ],
)
def test_subject_coverage(pattern: str, subject: str, covered: bool) -> None:
    """A stream filter covers a subject (template) when every subject it stands for matches the filter."""
    assert subject_covered(pattern, subject) is covered


def test_missing_stream_without_create_fails_at_connect(nats_server: NatsServer) -> None:
    """stream="NOPE" without create_stream: connect() raises BrokerError naming the stream and the fix."""
    with pytest.raises(BrokerError, match="stream 'NOPE' does not exist: create it, or pass create_stream=True"):
        NatsPublisher.connect(nats_server.url, "edupulse.events", stream="NOPE")


@pytest.mark.parametrize("create_stream", [False, True])
def test_stream_that_does_not_capture_the_subject_fails_at_connect(
    nats_server: NatsServer, create_stream: bool
) -> None:
    """An existing stream on other subjects: connect() raises BrokerError naming its subjects and the publisher's."""
    add_stream(nats_server.url, "ORDERS", ["orders.>"])
    with pytest.raises(BrokerError, match=r"captures \['orders\.>'\], not the subject 'edupulse\.events'"):
        NatsPublisher.connect(nats_server.url, "edupulse.events", stream="ORDERS", create_stream=create_stream)


def test_templated_subject_is_covered_by_a_wildcard_stream(nats_server: NatsServer) -> None:
    """A stream on "edupulse.>" captures the template "edupulse.{tenant}.{type}": connect and publish work."""
    add_stream(nats_server.url, "ALL", ["edupulse.>"])
    with NatsPublisher.connect(nats_server.url, "edupulse.{tenant}.{type}", stream="ALL") as pub:
        assert pub.publish(envelope()).result(timeout=10).stream == "ALL"


def delete_stream(url: str, name: str) -> None:
    async def delete() -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().delete_stream(name)
        finally:
            await nc.close()

    asyncio.run(delete())


def test_a_stream_deleted_after_check_fails_the_first_publish_not_silently(nats_server: NatsServer) -> None:
    """check() found the stream, so the thread's connect does not ask again; deleted since: publish fails, says why."""
    add_stream(nats_server.url, "GONE", ["edupulse.events"])
    pub = NatsPublisher(PublisherConfig(servers=nats_server.url, subject="edupulse.events", stream="GONE"))
    try:
        pub.check()
        delete_stream(nats_server.url, "GONE")
        with pytest.raises(EventRejected, match="no JetStream stream captures subject"):
            pub.publish(envelope()).result(timeout=10)
    finally:
        pub.close(5.0)
