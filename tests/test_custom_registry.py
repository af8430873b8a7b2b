"""Events of an application's own `EventRegistry` publish and read back like the built-ins: through
`NatsPublisher` (a real nats-server) and `InMemoryPublisher` given ``codec=Codec(registry)``,
through `build_from_env(codec=...)`, and through the command line's ``--import MODULE:NAME``."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

import attrs
import pytest
from helpers import broker_env, envelope, read_stream, run_cli

from edupulse_events import (
    Codec,
    DecodeError,
    EventEnvelope,
    EventRegistry,
    InMemoryPublisher,
    NatsPublisher,
    build_from_env,
    decode,
    encode,
    register_event,
)
from edupulse_events.testing import NatsServer

REGISTRY = EventRegistry()
CODEC = Codec(REGISTRY)
STREAM = "CUSTOM"


@register_event(registry=REGISTRY)
@attrs.frozen
class CourseArchived:
    """An event type registered only in this module's own registry."""

    course_id: uuid.UUID
    reason: str


def archived(tenant: str = "school-1") -> EventEnvelope:
    return EventEnvelope.new(CourseArchived(uuid.uuid4(), "end of term"), tenant_id=tenant)


def test_nats_publisher_publishes_a_custom_registry_event(nats_server: NatsServer) -> None:
    """connect(codec=Codec(registry)): a custom event and a built-in one are stored, and read back with that codec."""
    events = [archived(), envelope(1)]
    with NatsPublisher.connect(
        nats_server.url, "edupulse.{type}", stream=STREAM, create_stream=True, codec=CODEC
    ) as pub:
        acks = [pub.publish(e).result(timeout=10) for e in events]
        assert pub.config.codec is CODEC
    assert [a.broker_sequence for a in acks] == [1, 2]
    stored = read_stream(nats_server.url, STREAM)
    assert [CODEC.decode(m.data) for m in stored] == events
    assert stored[0].subject == "edupulse.CourseArchived"
    assert stored[0].headers["Edupulse-Event-Type"] == "CourseArchived"
    assert stored[0].headers["Nats-Msg-Id"] == str(events[0].event_id)
    assert stored[0].data == CODEC.encode(events[0])
    with pytest.raises(DecodeError):
        decode(stored[0].data)  # the default codec does not know it: the codec is what reads it back


def test_in_memory_publisher_publishes_a_custom_registry_event() -> None:
    """InMemoryPublisher(codec=Codec(registry)) accepts custom events, one by one and in a batch."""
    pub = InMemoryPublisher(codec=CODEC)
    first, batch = archived(), [archived("school-2"), envelope(2)]
    assert pub.publish(first).result(timeout=0).broker_sequence == 1
    assert [f.result(timeout=0).broker_sequence for f in pub.publish_many(batch)] == [2, 3]
    assert pub.drain() == [first, *batch]
    with pytest.raises(ValueError, match="not registered"):
        InMemoryPublisher().publish(archived())  # without the codec: the default one refuses it


def test_build_from_env_passes_the_codec_to_either_publisher(nats_server: NatsServer) -> None:
    """build_from_env(codec=...) encodes custom events without a broker (memory) and with one (NATS)."""
    memory = build_from_env(broker_env(), codec=CODEC)
    assert isinstance(memory, InMemoryPublisher)
    env = archived()
    memory.publish(env).result(timeout=0)
    assert memory.get(timeout=0) == env
    environ = broker_env(URL=nats_server.url, SUBJECT="edupulse.custom", STREAM=STREAM, CREATE_STREAM="1")
    with build_from_env(environ, codec=CODEC) as pub:
        assert isinstance(pub, NatsPublisher)
        assert pub.publish(env).result(timeout=10).broker_sequence == 1
    [stored] = read_stream(nats_server.url, STREAM)
    assert CODEC.decode(stored.data) == env


MODULE = textwrap.dedent(
    """
    import uuid

    import attrs

    from edupulse_events import Codec, EventRegistry, register_event

    EVENTS = EventRegistry(include_builtins=False)


    @register_event(registry=EVENTS)
    @attrs.frozen
    class CourseArchived:
        course_id: uuid.UUID
        reason: str


    CODEC = Codec(EVENTS)
    NOT_A_REGISTRY = 42
    """
)


def test_cli_publish_tail_and_schema_use_the_registry_import_names(nats_server: NatsServer, tmp_path: Path) -> None:
    """--import MODULE:NAME: publish takes custom event lines, tail prints them, schema describes them."""
    (tmp_path / "school_events.py").write_text(MODULE)
    env = broker_env(URL=nats_server.url, SUBJECT="edupulse.{tenant}.{type}", STREAM=STREAM, CREATE_STREAM="1")
    course = str(uuid.uuid4())
    line = json.dumps({"type": "CourseArchived", "payload": {"course_id": course, "reason": "merged"}})
    for name in ("school_events:EVENTS", "school_events:CODEC"):
        wire = encode(envelope(1)).decode()
        proc = run_cli("publish", "--import", name, "--tenant", "t1", env=env, stdin=f"{line}\n{wire}\n", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    proc = run_cli("publish", "--import", "school_events", env=env, stdin=line + "\n", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # without :NAME the registry is not known: a bad line
    assert "unknown event type 'CourseArchived'" in proc.stderr
    tail = ("tail", "--stream", STREAM, "--timeout", "1", "--import", "school_events:EVENTS")
    proc = run_cli(*tail, "--type", "CourseArchived", "--json", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(text) for text in proc.stdout.splitlines()]
    assert [(d["data"]["type"], d["data"]["payload"]["course_id"], d["tenant_id"]) for d in lines] == [
        ("CourseArchived", course, "t1")
    ] * 2
    proc = run_cli(*tail, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [text.split()[1] for text in proc.stdout.splitlines()] == ["CourseArchived", "PaymentProcessed"] * 2
    assert "undecodable" not in proc.stderr
    proc = run_cli("schema", "jsonschema", "--import", "school_events:EVENTS", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "CourseArchivedPayload" in json.loads(proc.stdout)["$defs"]
    proc = run_cli("schema", "jsonschema", "--import", "school_events:NOT_A_REGISTRY", cwd=tmp_path)
    assert proc.returncode == 2
    assert "school_events.NOT_A_REGISTRY is not an EventRegistry or a Codec" in proc.stderr
