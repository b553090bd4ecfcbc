"""Every public type can be introspected: type hints, JSON schema, decoders.

A FastAPI layer publishes schemas of these types, and an outbox decodes
events back through one tagged-union decoder. Both resolve the classes'
string annotations in the module each class reports, so the classes are
taken from ``squidmesh.__all__`` (not a hand-written list): a new export is
checked the day it is added.
"""

from __future__ import annotations

import inspect
import typing
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

import squidmesh
from squidmesh import progress

PUBLIC_CLASSES = [
    getattr(squidmesh, n) for n in squidmesh.__all__ if inspect.isclass(getattr(squidmesh, n))
]
PUBLIC_STRUCTS = [c for c in PUBLIC_CLASSES if issubclass(c, msgspec.Struct)]
EVENT_TYPES = [c for c in PUBLIC_STRUCTS if issubclass(c, squidmesh.Event)]
# progress operations carry callables and str-or-RunStatus unions, which JSON
# schema cannot express by design; their type hints must still resolve.
PROGRESS_CLASSES = [
    getattr(progress, n) for n in progress.__all__ if inspect.isclass(getattr(progress, n))
]


def _id(cls: type) -> str:
    return cls.__name__


def test_the_lists_are_not_empty() -> None:
    # Guards the parametrisations below against a filter that matches nothing.
    assert len(PUBLIC_STRUCTS) >= 13
    assert {squidmesh.RunCreated, squidmesh.StepFailed} <= set(EVENT_TYPES)
    assert squidmesh.Run in PUBLIC_STRUCTS
    assert squidmesh.RunNotFound in PUBLIC_CLASSES


@pytest.mark.parametrize("cls", PUBLIC_CLASSES + PROGRESS_CLASSES, ids=_id)
def test_type_hints_resolve(cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for name in inspect.get_annotations(cls):
        assert name in hints


@pytest.mark.parametrize("cls", PUBLIC_STRUCTS, ids=_id)
def test_json_schema_builds(cls: type) -> None:
    schema = msgspec.json.schema(cls)
    assert schema


def test_schema_components_of_all_public_structs_at_once() -> None:
    (refs, components) = msgspec.json.schema_components(PUBLIC_STRUCTS)
    assert len(refs) == len(PUBLIC_STRUCTS)
    # One component per Struct, under its public name.
    for cls in PUBLIC_STRUCTS:
        assert cls.__name__ in components


@pytest.mark.parametrize("cls", PUBLIC_STRUCTS, ids=_id)
def test_decoders_build(cls: type) -> None:
    msgspec.json.Decoder(cls)
    msgspec.msgpack.Decoder(cls)


# -- a tagged-union decoder over every event type, on real values ------------------


def _at(second: int) -> datetime:
    return datetime(2025, 1, 2, 3, 4, second, 567_000, tzinfo=UTC)


def _run(**overrides: Any) -> squidmesh.Run:
    """A run as the store returns it, with every history field filled."""
    attempt = squidmesh.StepAttempt(
        id=uuid.uuid4(),
        attempt_number=1,
        status="failed",
        error={"message": "boom", "code": 3},
        inserted_at=_at(1),
        updated_at=_at(2),
    )
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "workflow": "billing.invoice_reminder",
        "trigger": "invoice_delivery",
        "status": squidmesh.RunStatus.RUNNING,
        "payload": {"account_id": "acct_1", "nested": {"list": [1, 2.5, None, True]}},
        "context": {"k": "v"},
        "current_step": "approve",
        "last_error": None,
        "replayed_from_run_id": uuid.uuid4(),
        "inserted_at": _at(0),
        "updated_at": _at(5),
        "step_runs": [
            squidmesh.StepRun(
                id=uuid.uuid4(),
                step="load_invoice",
                status="completed",
                input={"a": 1},
                output={"b": 2},
                attempts=[attempt],
                inserted_at=_at(1),
                updated_at=_at(3),
            )
        ],
        "steps": [
            squidmesh.RunStepState(step="load_invoice", status="completed", attempts=[attempt]),
            squidmesh.RunStepState(step="approve", status="waiting", depends_on=["load_invoice"]),
        ],
        "audit_events": [
            squidmesh.RunAuditEvent(type="paused", step="approve", at=_at(4)),
            squidmesh.RunAuditEvent(
                type="approved",
                step="approve",
                actor="ana",
                comment="ok",
                metadata={"ticket": 7},
                at=_at(5),
            ),
        ],
        "version": 4,
    }
    fields.update(overrides)
    return squidmesh.Run(**fields)


def _sample_events() -> list[squidmesh.Event]:
    run = _run()
    return [
        squidmesh.RunCreated(run=_run(status=squidmesh.RunStatus.PENDING, version=1)),
        squidmesh.RunReplayed(run=_run(status=squidmesh.RunStatus.PENDING)),
        squidmesh.RunTransitioned(
            run=run, from_status=squidmesh.RunStatus.PENDING, to_status=run.status
        ),
        squidmesh.StepFailed(
            run=run,
            step="approve",
            attempt_number=None,
            duration_s=1.25,
            error={"message": "run cancelled while paused", "reason": "cancelled"},
        ),
        squidmesh.StepFailed(
            run=run, step="approve", attempt_number=2, duration_s=None, error={"x": [1]}
        ),
    ]


def _union_of(types: list[type]) -> Any:
    union: Any = types[0]
    for cls in types[1:]:
        union = union | cls
    return union


def test_every_public_event_type_has_a_sample() -> None:
    sampled = {type(e) for e in _sample_events()}
    assert sampled == {c for c in EVENT_TYPES if c is not squidmesh.Event}


def test_events_round_trip_through_one_tagged_union_decoder() -> None:
    decoder = msgspec.json.Decoder(_union_of(EVENT_TYPES))
    encoder = msgspec.json.Encoder()
    for event in _sample_events():
        data = encoder.encode(event)
        assert msgspec.json.decode(data)["type"] == event.__struct_config__.tag
        decoded = decoder.decode(data)
        assert type(decoded) is type(event)
        assert decoded == event


def test_events_round_trip_as_a_list_and_through_msgpack() -> None:
    events = _sample_events()
    union: Any = _union_of(EVENT_TYPES)
    assert msgspec.json.decode(msgspec.json.encode(events), type=list[union]) == events
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(events), type=list[union]) == events


def test_dispatch_events_round_trips_the_events_it_carries() -> None:
    carried = squidmesh.DispatchEvents(events=_sample_events())
    decoded = msgspec.json.decode(msgspec.json.encode(carried), type=squidmesh.DispatchEvents)
    # list[Any]: the events come back as plain maps, decodable by the union.
    union: Any = _union_of(EVENT_TYPES)
    assert [msgspec.convert(e, union) for e in decoded.events] == carried.events


def test_the_events_schema_names_each_tag() -> None:
    schema = msgspec.json.schema(_union_of(EVENT_TYPES))
    tags = {
        component["properties"]["type"]["enum"][0]
        for component in schema["$defs"].values()
        if "type" in component.get("properties", {})
    }
    expected = {c.__struct_config__.tag for c in EVENT_TYPES}
    assert expected <= tags
