"""The built-in events (construction validation, FrozenMap answers) and the event registry."""

from __future__ import annotations

import copy
import pickle
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import pytest

from edupulse_events import (
    U32,
    U64,
    BadgeAwarded,
    Codec,
    EventEnvelope,
    EventRegistry,
    FrozenMap,
    InvalidEvent,
    LessonPublished,
    PaymentProcessed,
    QuizSubmitted,
    Timestamp,
    decode,
    default_registry,
    encode,
    event_type_name,
    register_event,
)

ID = uuid.UUID("9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d")
ID_TEXT = str(ID)
E = TypeVar("E")


def make(cls: type[E], **overrides: Any) -> E:
    """A valid instance of a built-in event with some fields replaced."""
    valid: dict[type, dict[str, Any]] = {
        LessonPublished: {"lesson_id": ID, "author_id": ID, "title": "Intro"},
        QuizSubmitted: {"quiz_id": ID, "student_id": ID, "answers": {"q1": "a"}},
        BadgeAwarded: {"badge_id": ID, "recipient_id": ID, "reason": "streak"},
        PaymentProcessed: {"payment_id": ID, "from_user": ID, "amount_cents": 1999},
    }
    return cls(**{**valid[cls], **overrides})


ID_FIELDS = [
    (LessonPublished, "lesson_id"),
    (LessonPublished, "author_id"),
    (QuizSubmitted, "quiz_id"),
    (QuizSubmitted, "student_id"),
    (BadgeAwarded, "badge_id"),
    (BadgeAwarded, "recipient_id"),
    (PaymentProcessed, "payment_id"),
    (PaymentProcessed, "from_user"),
]
TEXT_FIELDS = [(LessonPublished, "title"), (BadgeAwarded, "reason")]


@pytest.mark.parametrize(("cls", "field"), ID_FIELDS)
@pytest.mark.parametrize("text", [ID_TEXT, ID_TEXT.upper(), ID.hex, "{" + ID_TEXT + "}", "urn:uuid:" + ID_TEXT])
def test_uuid_string_is_converted(cls: type, field: str, text: str) -> None:
    """Every id field turns a UUID string (any form Rust accepts) into a uuid.UUID."""
    value = getattr(make(cls, **{field: text}), field)
    assert type(value) is uuid.UUID
    assert value == ID


@pytest.mark.parametrize(("cls", "field"), ID_FIELDS)
@pytest.mark.parametrize(
    ("bad", "shown"),
    [
        ("not-a-uuid", "str"),
        (" " + ID_TEXT, "str"),
        ("URN:UUID:" + ID_TEXT, "str"),
        (ID.int, "int"),
        (None, "NoneType"),
        (ID.bytes, "bytes"),
    ],
)
def test_bad_id_is_rejected(cls: type, field: str, bad: object, shown: str) -> None:
    """An id that is not a UUID (or a strict UUID string) raises InvalidEvent naming field and type."""
    with pytest.raises(InvalidEvent, match=rf"{cls.__name__}\.{field} must be a UUID.*got .*{shown}"):
        make(cls, **{field: bad})


@pytest.mark.parametrize(("cls", "field"), TEXT_FIELDS)
@pytest.mark.parametrize(("bad", "shown"), [(5, "int 5"), (None, "NoneType None"), (b"x", "bytes"), (["x"], "list")])
def test_text_field_rejects_non_str(cls: type, field: str, bad: object, shown: str) -> None:
    """title/reason must be str; the error names Class.field and the value's type."""
    with pytest.raises(InvalidEvent, match=rf"{cls.__name__}\.{field} must be a str, got {shown}"):
        make(cls, **{field: bad})


@pytest.mark.parametrize(("cls", "field"), TEXT_FIELDS)
def test_text_field_rejects_lone_surrogate(cls: type, field: str) -> None:
    """A string holding a lone surrogate cannot become UTF-8 and is rejected at construction."""
    with pytest.raises(InvalidEvent, match=rf"{cls.__name__}\.{field} contains a lone surrogate at index 2"):
        make(cls, **{field: "ab\ud800cd"})


@pytest.mark.parametrize(("cls", "field"), TEXT_FIELDS)
@pytest.mark.parametrize("text", ["", "é 👩‍💻 \u2028 \x00 \x7f \ufeff", "😀"])
def test_text_field_accepts_any_unicode(cls: type, field: str, text: str) -> None:
    """Empty, control, astral and other non-ASCII text is kept unchanged."""
    assert getattr(make(cls, **{field: text}), field) == text


@pytest.mark.parametrize("value", [0, 1, 4294967295])
def test_amount_in_range(value: int) -> None:
    """amount_cents takes every u32."""
    assert make(PaymentProcessed, amount_cents=value).amount_cents == value


@pytest.mark.parametrize(
    ("bad", "shown"),
    [
        (1.5, "float 1.5"),
        (100.0, "float 100.0"),
        (-1, "int -1"),
        (4294967296, "int 4294967296"),
        (True, "bool True"),
        (False, "bool False"),
        ("100", "str '100'"),
        (None, "NoneType None"),
    ],
)
def test_amount_rejected(bad: object, shown: str) -> None:
    """amount_cents must be an int in 0..=4294967295; bool, float, str and out-of-range are not."""
    message = rf"PaymentProcessed\.amount_cents must be an int in 0\.\.=4294967295, got {shown}$"
    with pytest.raises(InvalidEvent, match=message):
        make(PaymentProcessed, amount_cents=bad)


def test_answers_stored_as_frozen_map_in_order() -> None:
    """answers becomes a FrozenMap that keeps the given order and equals the plain dict."""
    answers = {"q2": "b", "q1": "a", "": "empty"}
    stored = make(QuizSubmitted, answers=answers).answers
    assert type(stored) is FrozenMap
    assert list(stored) == ["q2", "q1", ""]
    assert stored == answers
    assert stored == {"q1": "a", "": "empty", "q2": "b"}


def test_answers_are_immutable() -> None:
    """Every mutator of the stored answers raises TypeError; mutating the input has no effect."""
    answers = {"q1": "a"}
    event = make(QuizSubmitted, answers=answers)
    answers["q2"] = "b"
    assert event.answers == {"q1": "a"}
    mutators: tuple[Callable[[FrozenMap], object], ...] = (
        lambda m: m.__setitem__("q1", "z"),
        lambda m: m.__delitem__("q1"),
        lambda m: m.clear(),
        lambda m: m.pop("q1"),
        lambda m: m.popitem(),
        lambda m: m.setdefault("q3", "c"),
        lambda m: m.update(q1="z"),
        lambda m: m.__ior__({"q1": "z"}),
    )
    stored = event.answers
    assert isinstance(stored, FrozenMap)  # so it has the dict mutators, which must all refuse
    for mutate in mutators:
        with pytest.raises(TypeError):
            mutate(stored)
    assert event.answers == {"q1": "a"}


def test_events_hashable_and_equal_regardless_of_answer_order() -> None:
    """QuizSubmitted is hashable; the same answers in another order give an equal event and hash."""
    a = make(QuizSubmitted, answers={"q1": "a", "q2": "b"})
    b = make(QuizSubmitted, answers=FrozenMap({"q2": "b", "q1": "a"}))
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b, make(QuizSubmitted, answers={})}) == 2


def test_frozen_map_copy_and_pickle() -> None:
    """FrozenMap survives pickle and copy as an equal FrozenMap."""
    m = FrozenMap({"b": "1", "a": "2"})
    for twin in (pickle.loads(pickle.dumps(m)), copy.copy(m), copy.deepcopy(m)):
        assert type(twin) is FrozenMap
        assert twin == m
        assert list(twin) == ["b", "a"]


@pytest.mark.parametrize(
    ("bad", "pattern"),
    [
        ([("q1", "a")], "answers must be a mapping of str to str, got list"),
        ({"q1": 1}, r"answers\['q1'\] must be a str, got int 1"),
        ({1: "a"}, "answers key must be a str, got int 1"),
        ({"q1": None}, r"answers\[.q1.\] must be a str, got NoneType None"),
        ({"\udc00": "a"}, "answers key contains a lone surrogate"),
        ({"q": "\ud800"}, r"answers\['q'\] contains a lone surrogate"),
    ],
)
def test_answers_rejected(bad: object, pattern: str) -> None:
    """answers must be a mapping of valid str to valid str."""
    with pytest.raises(InvalidEvent, match=rf"QuizSubmitted\.{pattern}"):
        make(QuizSubmitted, answers=bad)


def test_events_are_frozen_slotted() -> None:
    """Built-in events cannot be modified and have no __dict__."""
    event = make(LessonPublished)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.title = "changed"  # type: ignore[misc]  # frozen: the runtime refusal is under test
    assert not hasattr(event, "__dict__")


def test_field_names_are_fixed() -> None:
    """The field names (and order) match the Rust structs."""
    assert [f.name for f in attrs.fields(LessonPublished)] == ["lesson_id", "author_id", "title"]
    assert [f.name for f in attrs.fields(QuizSubmitted)] == ["quiz_id", "student_id", "answers"]
    assert [f.name for f in attrs.fields(BadgeAwarded)] == ["badge_id", "recipient_id", "reason"]
    assert [f.name for f in attrs.fields(PaymentProcessed)] == ["payment_id", "from_user", "amount_cents"]


# --- registry ---


@register_event
@attrs.frozen
class CourseRated:
    """A custom event registered in the default registry, using every supported field type."""

    course_id: uuid.UUID
    stars: U32
    comment: str | None
    score: float
    public: bool
    views: U64
    delta: int
    tags: list[str]
    reviewers: tuple[uuid.UUID, ...]
    extra: Mapping[str, str]
    window: tuple[int, float]
    note: U32 | None = None


def course_rated(**overrides: Any) -> CourseRated:
    """A valid CourseRated."""
    values: dict[str, Any] = {
        "course_id": ID,
        "stars": 5,
        "comment": None,
        "score": 4.5,
        "public": True,
        "views": 2**64 - 1,
        "delta": -(2**63),
        "tags": ["a", "é"],
        "reviewers": (ID,),
        "extra": FrozenMap({"k": "v"}),
        "window": (1, 2.5),
        "note": 7,
    }
    return CourseRated(**{**values, **overrides})


def test_custom_event_round_trips_like_builtins() -> None:
    """A registered custom type encodes and decodes through the module-level codec."""
    env = EventEnvelope.new(course_rated(), tenant_id="t")
    raw = encode(env)
    assert b'"data":{"type":"CourseRated","payload":{"course_id":"9a8b7c6d-' in raw
    assert b'"score":4.5,"public":true,"views":18446744073709551615,"delta":-9223372036854775808' in raw
    back = decode(raw)
    assert back == env
    assert type(back.data.extra) is FrozenMap
    assert back.data.reviewers == (ID,)
    assert event_type_name(CourseRated) == "CourseRated" == env.event_type
    as_text = EventEnvelope.new(course_rated(course_id="{" + str(ID).upper() + "}"))
    assert decode(encode(as_text)).data.course_id == ID  # a valid UUID string is written canonical


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"stars": -1}, "CourseRated.stars: expected u32, got int -1"),
        ({"views": 2**64}, "CourseRated.views: expected u64"),
        ({"public": 1}, "CourseRated.public: expected bool"),
        ({"score": float("nan")}, "CourseRated.score: expected f64, got float nan"),
        ({"tags": ["ok", 3]}, r"CourseRated.tags: \[1\]: expected str, got int 3"),
        ({"comment": "x\ud800"}, "CourseRated.comment: a string holds a lone surrogate"),
        ({"extra": {"k": 1}}, r"CourseRated.extra: expected Mapping\[str, str\]"),
        ({"window": (1,)}, r"CourseRated.window: expected tuple\[i64, f64\]"),
        ({"course_id": "not-a-uuid"}, "CourseRated.course_id: expected UUID, got str"),
    ],
)
def test_custom_event_with_unencodable_value(overrides: dict[str, Any], pattern: str) -> None:
    """encode() of a custom event holding a value the wire cannot carry raises InvalidEvent naming the field."""
    env = EventEnvelope.new(course_rated(**overrides))
    with pytest.raises(InvalidEvent, match=pattern):
        encode(env)


def test_duplicate_name_rejected() -> None:
    """Registering a second class under a taken name (or the same class twice) raises InvalidEvent."""
    registry = EventRegistry()

    @attrs.frozen
    class LessonPublishedV2:
        lesson_id: uuid.UUID

    with pytest.raises(InvalidEvent, match="'LessonPublished' is already registered"):
        registry.register(LessonPublishedV2, "LessonPublished")
    with pytest.raises(InvalidEvent, match="already registered"):
        registry.register(LessonPublished)
    with pytest.raises(InvalidEvent, match="already registered as 'CourseRated'"):
        EventRegistry().register(CourseRated, "Renamed")


@pytest.mark.parametrize("target", [object, 5, ID])
def test_register_rejects_non_attrs_class(target: Any) -> None:
    """Only attrs classes can be registered."""
    with pytest.raises(InvalidEvent, match="an event type must be an attrs class"):
        EventRegistry().register(target)


@pytest.mark.parametrize("name", ["", "name-with-dash", "has space", "Ünï", "a.b"])
def test_register_rejects_bad_name(name: str) -> None:
    """A wire name must be a Rust identifier (it also ends up in NATS subjects and headers)."""

    @attrs.frozen
    class Named:
        x: int

    with pytest.raises(InvalidEvent, match="must be a Rust identifier"):
        register_event(name=name, registry=EventRegistry())(Named)


def test_register_rejects_unsupported_field_type() -> None:
    """A field type the wire cannot carry is refused when the class is registered."""

    @attrs.frozen
    class Bad:
        ids: set[int]

    with pytest.raises(InvalidEvent, match=r"Bad.ids: the wire cannot carry set\[int\]"):
        EventRegistry().register(Bad)


def test_custom_registry_and_custom_name() -> None:
    """A private registry with a custom name works through its own Codec and not the default one."""
    registry = EventRegistry()

    @register_event("StreakBroken", registry=registry)
    @attrs.frozen
    class Streak:
        user_id: uuid.UUID
        days: U32

    codec = Codec(registry)
    env = EventEnvelope.new(Streak(ID, U32(3)))
    raw = codec.encode(env)
    assert b'"type":"StreakBroken"' in raw
    assert codec.decode(raw) == env
    assert event_type_name(Streak(ID, U32(3))) == "StreakBroken"
    assert "StreakBroken" in registry
    assert "StreakBroken" not in default_registry
    with pytest.raises(InvalidEvent, match="not registered in this codec's registry"):
        encode(env)


def test_builtins_registered_in_every_registry() -> None:
    """The four built-in events are registered the same way in every new registry."""
    names = ("LessonPublished", "QuizSubmitted", "BadgeAwarded", "PaymentProcessed")
    assert EventRegistry().names == names
    assert EventRegistry(include_builtins=False).names == ()
    assert [
        event_type_name(make(cls)) for cls in (LessonPublished, QuizSubmitted, BadgeAwarded, PaymentProcessed)
    ] == list(names)


def test_event_type_name_of_unregistered() -> None:
    """event_type_name of an unregistered class raises InvalidEvent."""
    with pytest.raises(InvalidEvent, match="Timestamp is not a registered event type"):
        event_type_name(Timestamp(0))
