"""The request context (event_context, current_event_context): nesting, threads and asyncio tasks,
validation, and the defaults EventEnvelope.new takes from it."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs
import pytest

from edupulse_events import (
    INHERIT,
    EventContext,
    EventEnvelope,
    InvalidEvent,
    LessonPublished,
    current_event_context,
    event_context,
)

CORRELATION = uuid.UUID("0191f3c2-7a4b-4c1d-8e2f-a1b2c3d4e5f6")
CAUSE = uuid.UUID("c0ffee00-dead-4bef-8bad-f00dbaadcafe")
OTHER = uuid.UUID("11111111-2222-4333-8444-555555555555")
EMPTY = EventContext()


def lesson() -> LessonPublished:
    """A valid LessonPublished."""
    return LessonPublished(CORRELATION, CAUSE, "Intro")


def fields(env: EventEnvelope) -> tuple[Any, ...]:
    """The envelope fields the context can supply."""
    return env.correlation_id, env.causation_id, env.tenant_id, env.personally_identifiable


def test_outside_any_block_the_context_is_empty() -> None:
    """Without an open block the context is empty and new() gives the old defaults."""
    assert current_event_context() == EMPTY
    assert (EMPTY.correlation_id, EMPTY.causation_id, EMPTY.tenant_id, EMPTY.personally_identifiable) == (
        None,
        None,
        None,
        False,
    )
    assert fields(EventEnvelope.new(lesson())) == (None, None, None, False)


def test_block_sets_and_restores_the_context() -> None:
    """A block makes its values the context (converting UUID strings) and restores the previous one on exit."""
    with event_context(
        correlation_id=str(CORRELATION), causation_id=CAUSE, tenant_id="school-42", personally_identifiable=True
    ) as ctx:
        assert ctx == current_event_context()
        assert ctx == EventContext(
            correlation_id=CORRELATION, causation_id=CAUSE, tenant_id="school-42", personally_identifiable=True
        )
        assert fields(EventEnvelope.new(lesson())) == (CORRELATION, CAUSE, "school-42", True)
    assert current_event_context() == EMPTY


def test_block_restores_the_context_after_an_exception() -> None:
    """Leaving a block by an exception restores the enclosing context too."""
    with pytest.raises(KeyError), event_context(tenant_id="t"):
        raise KeyError("boom")
    assert current_event_context() == EMPTY


def test_nested_blocks_override_given_values_and_inherit_the_rest() -> None:
    """An inner block overrides only what it is given (None included) and inherits the rest."""
    with event_context(correlation_id=CORRELATION, tenant_id="outer", personally_identifiable=True):
        with event_context(tenant_id="inner") as inner:
            assert inner == EventContext(correlation_id=CORRELATION, tenant_id="inner", personally_identifiable=True)
            with event_context(correlation_id=None, personally_identifiable=False) as innermost:
                assert innermost == EventContext(tenant_id="inner")
            assert current_event_context() == inner
        assert current_event_context().tenant_id == "outer"
    assert current_event_context() == EMPTY


def test_new_explicit_arguments_win_over_the_context() -> None:
    """Arguments passed to new(), an explicit None or False included, win over the context."""
    with event_context(correlation_id=CORRELATION, causation_id=CAUSE, tenant_id="ctx", personally_identifiable=True):
        env = EventEnvelope.new(lesson(), correlation_id=None, causation_id=None, tenant_id=None)
        assert fields(env) == (None, None, None, True)
        env = EventEnvelope.new(lesson(), correlation_id=OTHER, tenant_id="mine", personally_identifiable=False)
        assert fields(env) == (OTHER, CAUSE, "mine", False)
        positional = EventEnvelope.new(lesson(), OTHER, None, "pos", False)
        assert fields(positional) == (OTHER, None, "pos", False)
        assert fields(EventEnvelope.new(lesson(), INHERIT, INHERIT, INHERIT, INHERIT)) == (
            CORRELATION,
            CAUSE,
            "ctx",
            True,
        )


def test_inherit_reads_as_its_name() -> None:
    """INHERIT, the "not given" default, shows as INHERIT in signatures and reprs."""
    assert repr(INHERIT) == "INHERIT"


def test_follow_up_takes_nothing_from_the_context() -> None:
    """follow_up() builds its chain from the cause alone, even inside a block."""
    root = EventEnvelope.new(lesson(), tenant_id=None)
    with event_context(correlation_id=OTHER, causation_id=OTHER, tenant_id="ctx", personally_identifiable=True):
        child = root.follow_up(lesson())
    assert fields(child) == (root.event_id, root.event_id, None, False)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"correlation_id": "nope"}, "event_context.correlation_id must be a UUID or a UUID string, got invalid str"),
        ({"causation_id": 5}, "event_context.causation_id must be a UUID or a UUID string, got int 5"),
        ({"tenant_id": 42}, "event_context.tenant_id must be a str, got int 42"),
        ({"tenant_id": "a\udfffb"}, "event_context.tenant_id contains a lone surrogate at index 1"),
        ({"personally_identifiable": 1}, "event_context.personally_identifiable must be a bool, got int 1"),
        ({"personally_identifiable": None}, "event_context.personally_identifiable must be a bool, got NoneType"),
    ],
)
def test_invalid_values_fail_at_the_call(kwargs: dict[str, Any], pattern: str) -> None:
    """Bad values raise InvalidEvent naming the argument when event_context() is called, before any with."""
    with pytest.raises(InvalidEvent, match=pattern):
        event_context(**kwargs)
    assert current_event_context() == EMPTY


def test_event_context_value_is_validated_and_immutable() -> None:
    """EventContext converts and checks its fields like the envelope, takes keywords only, and is frozen."""
    assert EventContext(correlation_id=str(CORRELATION).upper()).correlation_id == CORRELATION
    with pytest.raises(InvalidEvent, match=r"EventContext\.causation_id must be a UUID"):
        EventContext(causation_id="x")
    with pytest.raises(InvalidEvent, match=r"EventContext\.personally_identifiable must be a bool"):
        EventContext(personally_identifiable="yes")
    with pytest.raises(TypeError):
        EventContext(CORRELATION)  # type: ignore[call-arg]  # keyword-only, the runtime refusal is under test
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        EMPTY.tenant_id = "x"  # type: ignore[misc]  # frozen: the runtime refusal is under test


def test_a_block_object_is_open_once_at_a_time() -> None:
    """Entering the same block object while it is open raises RuntimeError; after exit it can be reused."""
    block = event_context(tenant_id="t")
    with block:
        with pytest.raises(RuntimeError, match="already open"), block:
            pass  # pragma: no cover - not reached
        assert current_event_context().tenant_id == "t"
    assert current_event_context() == EMPTY
    with block:
        assert current_event_context().tenant_id == "t"


def test_threads_have_their_own_contexts() -> None:
    """Blocks open in two threads at once do not see each other's values."""
    both_open = threading.Barrier(2, timeout=10)
    seen: dict[str, EventContext] = {}

    def worker(tenant: str) -> None:
        with event_context(tenant_id=tenant):
            both_open.wait()
            seen[tenant] = current_event_context()
            both_open.wait()
        seen[tenant + "-after"] = current_event_context()

    threads = [threading.Thread(target=worker, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert seen == {
        "a": EventContext(tenant_id="a"),
        "b": EventContext(tenant_id="b"),
        "a-after": EMPTY,
        "b-after": EMPTY,
    }
    assert current_event_context() == EMPTY


def test_copied_context_carries_the_block_into_another_thread() -> None:
    """Work submitted with contextvars.copy_context().run sees the submitter's block."""
    with ThreadPoolExecutor(1) as pool, event_context(correlation_id=CORRELATION, tenant_id="t"):
        env = pool.submit(contextvars.copy_context().run, EventEnvelope.new, lesson()).result(timeout=10)
        bare = pool.submit(EventEnvelope.new, lesson()).result(timeout=10)
    assert fields(env) == (CORRELATION, None, "t", False)
    assert fields(bare) == (None, None, None, False)


def test_asyncio_tasks_inherit_at_creation_and_keep_their_own() -> None:
    """A task sees the block open when it was created; blocks inside concurrent tasks stay their own."""

    async def child(tenant: str, turn: asyncio.Event, next_turn: asyncio.Event) -> tuple[EventContext, EventContext]:
        inherited = current_event_context()
        with event_context(tenant_id=tenant):
            next_turn.set()
            await turn.wait()
            return inherited, current_event_context()

    async def main() -> tuple[Any, ...]:
        a_turn, b_turn = asyncio.Event(), asyncio.Event()
        with event_context(correlation_id=CORRELATION):
            task_a = asyncio.create_task(child("a", a_turn, b_turn))
        task_b = asyncio.create_task(child("b", b_turn, a_turn))
        results = await asyncio.gather(task_a, task_b)
        with event_context(tenant_id="threaded"):
            in_thread = await asyncio.to_thread(EventEnvelope.new, lesson())
        return (*results, current_event_context(), in_thread)

    (a_in, a_own), (b_in, b_own), after, in_thread = asyncio.run(main())
    assert a_in == EventContext(correlation_id=CORRELATION)
    assert a_own == EventContext(correlation_id=CORRELATION, tenant_id="a")
    assert b_in == EMPTY
    assert b_own == EventContext(tenant_id="b")
    assert after == EMPTY
    assert in_thread.tenant_id == "threaded"
