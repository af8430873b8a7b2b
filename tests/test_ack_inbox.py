"""The ack inbox is a trust boundary: whatever another client sends to it, the publisher keeps working and an
event resolves only with its real ack (or at its deadline), on both nats-py paths, against a real nats-server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
from collections.abc import Callable, Sequence
from typing import Any

import nats
import nats.errors
import pytest
from helpers import LogWatcher, envelope, read_stream
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from edupulse_events import EventEnvelope, NatsPublisher, PublishAck, PublisherState, RetryPolicy
from edupulse_events._nats._acks import Ack, AckReader, ack_matchers, ignored
from edupulse_events.testing import NatsServer

STREAM = "FORGE"
SUBJECT = "forge.events"
HUGE = b"9" * 5000  # past int()'s 4,300-digit limit


def publisher(url: str, **kwargs: Any) -> NatsPublisher:
    """A JetStream publisher that retries an unanswered attempt after 0.4 s."""
    kwargs.setdefault("stream", STREAM)
    kwargs.setdefault("create_stream", True)
    return NatsPublisher.connect(url, SUBJECT, retry=RetryPolicy(attempt_timeout=0.4), delivery_timeout=20.0, **kwargs)


Answer = tuple[str, bytes] | tuple[str, bytes, dict[str, str]]


def attack(
    url: str, pub: NatsPublisher, env: EventEnvelope, answers: Sequence[Answer], **auth: str
) -> concurrent.futures.Future[PublishAck]:
    """Answer ``env``'s publish before any stream can: with the stream deleted, a stranger subscribed to the
    subject takes the message, re-creates the stream, sends ``answers`` (subject templates with ``{reply}``
    and ``{inbox}``, bodies, headers) and leaves. The event's retry then reaches the stream."""

    async def run() -> concurrent.futures.Future[PublishAck]:
        errors: list[Exception] = []

        async def error_cb(exc: Exception) -> None:
            errors.append(exc)

        nc = await nats.connect(url, error_cb=error_cb, allow_reconnect=False, **auth)
        try:
            js = nc.jetstream()
            await js.delete_stream(STREAM)
            sub = await nc.subscribe(SUBJECT)
            # nats-py's flush() writes its PING past commands still in its buffer, so it does not
            # prove the SUB arrived: a message of our own coming back through it does.
            await nc.publish(SUBJECT, b"marker")
            assert (await sub.next_msg(timeout=10)).data == b"marker"
            future = pub.publish(env)
            try:
                msg = await sub.next_msg(timeout=10)
            except nats.errors.TimeoutError:
                why = future.exception(timeout=5)
                raise AssertionError(f"the stranger got no message: {why!r}, {pub.stats()}") from None
            await sub.unsubscribe()
            await js.add_stream(name=STREAM, subjects=[SUBJECT])
            inbox = msg.reply.rsplit(".", 1)[0]
            for subject, body, *headers in answers:
                await nc.publish(subject.format(reply=msg.reply, inbox=inbox), body, headers=next(iter(headers), None))
            await nc.flush()
        finally:
            await nc.close()
        return future

    return asyncio.run(run())


def stored_ids(url: str) -> list[str]:
    return [m.headers["Nats-Msg-Id"] for m in read_stream(url, STREAM)]


MALFORMED = [
    b"{}",
    b'{"stream":"FORGE"}',
    b'{"seq":7}',
    b'{"stream":"FORGE","seq":"7"}',
    b'{"stream":"FORGE","seq":1.5}',
    b'{"stream":"FORGE","seq":-5}',
    b'{"stream":"FORGE","seq":0}',
    b'{"duplicate":true}',
    b'{"stream":"FORGE","seq":' + HUGE + b"}",
    b"garbage",
    b"[1,2]",
    b'"error"',
    b'{"error":"nope"}',
    b'{"error":{"code":"503","err_code":"10023","description":"x"}}',
    b'{"error":{"code":400,"err_code":"10060","description":"x"}}',
]


@pytest.mark.parametrize("body", MALFORMED, ids=[f"m{i}" for i in range(len(MALFORMED))])
def test_a_malformed_ack_leaves_the_event_to_its_real_ack(nats_server: NatsServer, nats_path: str, body: bytes) -> None:
    """A stranger's malformed answer neither resolves nor fails the event: its retry gets the real ack."""
    before = ignored.count
    with publisher(nats_server.url) as pub:
        env = envelope()
        future = attack(nats_server.url, pub, env, [("{reply}", body)])
        assert future.result(timeout=15) == PublishAck(1, STREAM, False)
        assert pub.stats().failed == 0
    assert ignored.count > before
    assert stored_ids(nats_server.url) == [str(env.event_id)]


@pytest.mark.parametrize("configured", [True, False], ids=["stream-configured", "any-stream"])
def test_only_this_streams_acks_count_where_the_stream_is_configured(
    nats_server: NatsServer, nats_path: str, configured: bool
) -> None:
    """With stream= given, an ack naming another stream is ignored; without it, a valid one is believed."""
    with publisher(nats_server.url) as setup:  # creates the stream for the unconfigured publisher too
        setup.publish(envelope()).result(timeout=10)
    options: dict[str, object] = {} if configured else {"stream": None, "create_stream": False}
    with publisher(nats_server.url, **options) as pub:
        future = attack(nats_server.url, pub, envelope(), [("{reply}", b'{"stream":"OTHER","seq":5}')])
        expected = PublishAck(1, STREAM, False) if configured else PublishAck(5, "OTHER", False)
        assert future.result(timeout=15) == expected


def test_huge_numbers_on_the_inbox_do_not_stall_the_publisher(nats_server: NatsServer, nats_path: str) -> None:
    """5,000-digit sequences in an ack body or a reply subject are ignored; every event is still acked at once."""
    answers = [
        ("{reply}", b'{"stream":"FORGE","seq":' + HUGE + b"}"),
        ("{inbox}." + HUGE.decode(), b'{"stream":"FORGE","seq":1}'),
        ("{inbox}.1_2", b'{"stream":"FORGE","seq":1}'),
        ("{inbox}.m" + HUGE.decode(), b""),
        ("{inbox}.-1", b'{"stream":"FORGE","seq":1}'),
    ]
    with publisher(nats_server.url) as pub:
        first = attack(nats_server.url, pub, envelope(), answers)
        assert first.result(timeout=15) == PublishAck(1, STREAM, False)
        later = [pub.publish(envelope(i)) for i in range(200)]
        acks = [future.result(timeout=5) for future in later]
        assert [ack.broker_sequence for ack in acks] == list(range(2, 202))
        assert pub.state is PublisherState.RUNNING
        assert pub.stats().crashes == 0
        assert pub.stats().failed == 0


def test_forged_statuses_are_retried_with_the_same_msg_id(nats_server: NatsServer, nats_path: str) -> None:
    """Status headers from a stranger ("503" no responders, others, nonsense) at worst make the event retry:
    it is stored once and acked with its sequence, never failed."""
    answers: list[Answer] = [("{reply}", b"", {"Status": status}) for status in ("503", "408", "5x3", "")]
    answers.append(("{reply}", b""))
    with publisher(nats_server.url) as pub:
        env = envelope()
        future = attack(nats_server.url, pub, env, answers)
        ack = future.result(timeout=15)
    assert (ack.broker_sequence, ack.stream) == (1, STREAM)
    assert stored_ids(nats_server.url) == [str(env.event_id)]


def test_ignored_acks_are_logged_at_most_once_per_interval(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Malformed acks are logged (what came, for which publish), but a flood of them makes one line."""
    monkeypatch.setattr(ignored, "_next", 0.0)
    monkeypatch.setattr(ignored, "_unlogged", 0)
    with LogWatcher() as logs, publisher(nats_server.url) as pub:
        answers = [("{reply}", b'{"seq":%d}' % i) for i in range(50)]
        future = attack(nats_server.url, pub, envelope(), answers)
        assert future.result(timeout=15).broker_sequence == 1
    lines = [r.getMessage() for r in logs.records if "malformed message(s) on the ack inbox" in r.getMessage()]
    assert len(lines) == 1
    assert "ignored 1 malformed" in lines[0]
    assert """b'{"seq":0}'""" in lines[0]


USERS = """
authorization {
  users = [
    {user: "app", password: "app-secret"},
    {user: "reader", password: "reader-secret",
     permissions: {publish: {allow: [">"], deny: ["_EDUPULSE_ACKS.>"]}, subscribe: {allow: [">"]}}}
  ]
}
"""


def test_a_private_inbox_prefix_lets_the_server_refuse_forged_acks(make_server: Callable[..., NatsServer]) -> None:
    """A well-formed forged ack is believed on the shared _INBOX, but with inbox_prefix and a deny permission
    the server drops it and the event gets its real ack."""
    server = make_server(extra_config=USERS)
    url = server.url.replace("nats://", "nats://app:app-secret@")
    forged = [("{reply}", b'{"stream":"FORGE","seq":99}')]
    reader = {"user": "reader", "password": "reader-secret"}
    with publisher(url) as shared:
        assert attack(server.url, shared, envelope(), forged, **reader).result(timeout=15).broker_sequence == 99
    with publisher(url, inbox_prefix="_EDUPULSE_ACKS") as private:
        future = attack(server.url, private, envelope(), forged, **reader)
        assert future.result(timeout=15) == PublishAck(1, STREAM, False)


def msg(subject: bytes, body: bytes, sid: bytes = b"1") -> bytes:
    return b"MSG %s %s %d\r\n%s\r\n" % (subject, sid, len(body), body)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"_INBOX.x.", b"_INBOX.x.1", b""]),
            st.one_of(st.integers(-5, 10**30).map(lambda n: str(n).encode()), st.binary(max_size=30)),
            st.one_of(
                st.sampled_from([b'{"stream":"S","seq":%s}', b'{"stream":"T","seq":%s}', b'{"error":%s}', b"%s"]),
                st.binary(max_size=20),
            ),
            st.one_of(st.integers(-5, 10**30).map(lambda n: str(n).encode()), st.binary(max_size=30)),
        ),
        max_size=6,
    ),
    st.randoms(use_true_random=False),
)
def test_no_bytes_on_the_inbox_raise_out_of_the_reader(
    parts: list[tuple[bytes, bytes, bytes, bytes]], rng: random.Random
) -> None:
    """Any run of messages on the inbox — odd subjects, numbers, bodies — is read without raising, and only
    well-formed acks of stream "S" with a positive sequence are handed on."""
    got: list[Ack] = []
    reader = AckReader(Client()._ps, 1, got.extend, stream="S")  # noqa: SLF001 - nats-py's own parser
    data = b"".join(
        msg(prefix + seq.replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b""), shape.replace(b"%s", num))
        if b"%s" in shape
        else msg(prefix + seq.replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b""), shape)
        for prefix, seq, shape, num in parts
    )
    cut = rng.randint(0, len(data))
    reader._read_acks(data[:cut])  # noqa: SLF001 - the reader's own loop, without nats-py's parser after it
    reader._read_acks(data)  # noqa: SLF001
    for ack in got:
        assert ack[1] == "S" or ack[4] is not None
        assert ack[2] is None or 0 < ack[2] < 1 << 64


def test_the_common_matcher_bounds_every_number() -> None:
    """The fast matchers never capture more digits than int() takes without its limit."""
    common, line = ack_matchers(1)
    assert common(msg(b"_INBOX.x." + HUGE, b'{"stream":"S","seq":1}')) is None
    assert line(msg(b"_INBOX.x." + HUGE, b"{}")) is None
    assert common(msg(b"_INBOX.x.1", b'{"stream":"S","seq":' + HUGE + b"}")) is None
