"""Reading JetStream acks from the raw byte stream (`AckReader`): every shape, any split."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import pytest
from helpers import envelope, envelopes, read_stream

from edupulse_events import BrokerError, NatsPublisher, PublishAck
from edupulse_events._nats._acks import read_ack
from edupulse_events.testing import NatsServer


def split_reads(pub: NatsPublisher, sizes: Sequence[int], seed: int) -> list[int]:
    """Make the publisher's connection hand its reads to the parser in pieces of ``sizes``
    bytes (cutting messages anywhere); returns a list that counts the reads."""
    worker = pub._worker  # noqa: SLF001  # the running thread, to reach its connection
    assert worker is not None
    parser = worker.transport._nc._ps  # noqa: SLF001  # nats-py's parser: its reads are cut to inject splits
    inner = parser.parse
    rng = random.Random(seed)
    reads: list[int] = []

    async def parse(data: bytes = b"") -> None:
        reads.append(len(data))
        pos = 0
        while pos < len(data):
            size = rng.choice(sizes)
            await inner(data[pos : pos + size])
            pos += size

    parser.parse = parse  # type: ignore[method-assign]  # fault injection: wrap nats-py's parser
    return reads


def stored_sequences(url: str, stream: str) -> dict[str, int]:
    return {m.headers["Nats-Msg-Id"]: m.sequence for m in read_stream(url, stream)}


@pytest.mark.parametrize("sizes", [(1,), (1, 2, 3, 5, 8, 13), (7, 40, 41, 99, 4000)], ids=["bytes", "small", "mixed"])
def test_acks_cut_anywhere_still_settle_each_event_with_its_sequence(
    nats_server: NatsServer, sizes: Sequence[int]
) -> None:
    """However the reads cut the acks, every event gets the stream sequence the broker stored it under."""
    with NatsPublisher.connect(nats_server.url, "acks.events", stream="S", create_stream=True) as pub:
        reads = split_reads(pub, sizes, seed=len(sizes))
        envs = envelopes(1500)
        futures = [pub.publish(env) for env in envs]
        acks = [f.result(timeout=60) for f in futures]
    assert reads, "the split parser was not used"
    stored = stored_sequences(nats_server.url, "S")
    sequences = [a.broker_sequence for a in acks]
    assert sequences == [stored[str(env.event_id)] for env in envs]
    # all 1500 counted: a None would leave a gap
    assert sorted(seq for seq in sequences if seq is not None) == list(range(1, 1501))
    assert all(a.stream == "S" and not a.duplicate for a in acks)


def test_other_messages_between_acks_keep_their_meaning(nats_server: NatsServer) -> None:
    """With reads cut small, "no responders" statuses and stream lookups between acks are still answered."""
    with NatsPublisher.connect(nats_server.url, "acks.kept.{type}", stream="S", create_stream=True):
        pass  # a stream for tenant "kept" only
    with NatsPublisher.connect(nats_server.url, "acks.{tenant}.{type}") as pub:
        split_reads(pub, (1, 3, 17, 64), seed=7)
        kept = [envelope(i, tenant="kept") for i in range(300)]
        lost = [envelope(i, tenant="lost") for i in range(300)]
        pairs = [(pub.publish(a), pub.publish(b)) for a, b in zip(kept, lost, strict=True)]
        for ok, bad in pairs:
            assert ok.result(timeout=30).stream == "S"
            with pytest.raises(BrokerError, match=r"no JetStream stream captures subject 'acks\.lost"):
                bad.result(timeout=30)
    stored = stored_sequences(nats_server.url, "S")
    assert sorted(stored) == sorted(str(env.event_id) for env in kept)
    assert [ok.result().broker_sequence for ok, _ in pairs] == [stored[str(env.event_id)] for env in kept]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"stream":"S","seq":7}', (9, "S", 7, False, None)),
        (b'{"stream":"S","domain":"hub","seq":7}', (9, "S", 7, False, None)),
        (b'{"stream":"S","seq":7,"duplicate": true}', (9, "S", 7, True, None)),
        (b'{"stream":"S","seq":18446744073709551615}', (9, "S", (1 << 64) - 1, False, None)),
        (
            b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"S","seq":0}',
            (9, None, None, False, {"code": 503, "err_code": 10077, "description": "maximum messages exceeded"}),
        ),
        (b'{"error":{"code":503}}', (9, None, None, False, {"code": 503})),
    ],
    ids=["common", "domain", "duplicate", "largest-sequence", "error", "bare-error"],
)
def test_ack_bodies_the_server_sends_are_read(body: bytes, expected: Any) -> None:
    """Every ack shape nats-server sends (a domain, a duplicate, an error object) is read as such."""
    assert read_ack(9, body) == expected
    assert read_ack(9, body, "S") == expected


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1,2]",
        b'"error"',
        b"{}",
        b'{"stream":"S"}',
        b'{"seq":7}',
        b'{"stream":7,"seq":"x"}',
        b'{"stream":"S","seq":"7"}',
        b'{"stream":"S","seq":1.5}',
        b'{"stream":"S","seq":true}',
        b'{"stream":"S","seq":0}',
        b'{"stream":"S","seq":-5}',
        b'{"stream":"S","seq":18446744073709551616}',
        b'{"stream":"S","seq":' + b"9" * 5000 + b"}",
        b'{"stream":"S","seq":7,"duplicate":1}',
        b'{"duplicate":true}',
        b'{"stream":"a.b","seq":7}',
        b'{"stream":"","seq":7}',
        b'{"error":"flat"}',
        b'{"error":{"code":"503","err_code":10023}}',
        b'{"error":{"code":503,"err_code":"10023"}}',
        b'{"error":{"code":503,"description":7}}',
        b'{"error":{"err_code":10023}}',
    ],
)
def test_malformed_acks_are_not_acks(body: bytes) -> None:
    """Anything but a well-formed ack or error object reads as None (ignored), never raises, never succeeds."""
    assert read_ack(9, body) is None
    assert read_ack(9, body, "S") is None


def test_an_ack_of_another_stream_is_not_an_ack_for_a_configured_one() -> None:
    """With the stream configured, an ack naming another stream is ignored; without, any valid name counts."""
    assert read_ack(9, b'{"stream":"OTHER","seq":7}', "S") is None
    assert read_ack(9, b'{"stream":"OTHER","seq":7}') == (9, "OTHER", 7, False, None)


def test_an_ack_reads_as_a_publish_ack_from_every_api(nats_server: NatsServer) -> None:
    """result(), a done-callback, repr() and asyncio.wrap_future all see the same PublishAck."""
    seen: list[Any] = []
    with NatsPublisher.connect(nats_server.url, "acks.events", stream="S", create_stream=True) as pub:
        future = pub.publish(envelope())
        future.add_done_callback(lambda f: seen.append(f.result()))
        ack = future.result(timeout=10)
        assert pub.flush(timeout=10)

        async def awaited() -> Any:
            return await asyncio.wrap_future(pub.publish(envelope()))

        second = asyncio.run(awaited())
    assert ack == PublishAck(1, "S", False)
    assert future.result() == ack
    assert seen == [ack]
    assert "returned PublishAck" in repr(future)
    assert second == PublishAck(2, "S", False)
