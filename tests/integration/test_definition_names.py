"""Names and numbers that cannot be stored are refused before they reach PostgreSQL.

Definitions: a workflow, trigger, step or field name PostgreSQL cannot take
(a NUL, a lone surrogate, over 255 characters, empty) is refused when the
``Workflow`` is built. Before, such a definition could be registered, and since
every registered name travels with the replay and step-run statements, one bad
definition broke those statements for runs of every other workflow.

Numbers: an int of more than ``MAX_INT_DIGITS`` digits (10**4300 used to raise
a raw ``ValueError`` from int-to-str conversion) is refused like any other
value that cannot be stored: ``InvalidPayload`` naming the field for a
payload, ``InvalidRun`` for context, last_error and step output; nothing is
written. (These live here too, with the other "refused before the database"
checks, because they share the fixtures and the row snapshots.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from squidmesh import (
    Field,
    InvalidPayload,
    InvalidRun,
    Run,
    RunStore,
    Step,
    Transition,
    Trigger,
    Workflow,
    WorkflowDefinitionError,
)
from squidmesh._codec import MAX_INT_DIGITS

# -- definitions ------------------------------------------------------------------

ROLES = ("workflow", "trigger", "step", "field")
BAD = {
    "NUL": "nul\x00",
    "lone-surrogate": "lone\ud800",
    "256-characters": "n" * 256,
    "empty": "",
}
BAD_NAMES = [pytest.param(name, id=label) for label, name in BAD.items()]


def definition(role: str, name: str) -> Workflow:
    """A workflow whose ``role`` name is ``name``, everything else valid.

    Its one step is a manual step called "approve", as in the registered
    billing workflow, so that its names travel with begin_step("approve")
    for billing runs too.
    """
    return Workflow(
        name if role == "workflow" else f"bad.{role}",
        triggers=[
            Trigger(
                name if role == "trigger" else "manual",
                payload=[Field(name if role == "field" else "note", str, required=False)],
            )
        ],
        steps=[Step(name if role == "step" else "approve", kind="pause")],
    )


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("role", ROLES)
def test_a_name_that_cannot_be_stored_is_refused_when_the_definition_is_built(
    role: str, name: str
) -> None:
    with pytest.raises(WorkflowDefinitionError) as info:
        definition(role, name)
    problems = info.value.problems
    assert len(problems) == 1, problems
    assert f"{role} name" in problems[0]


def test_a_transition_naming_an_unstorable_step_is_refused() -> None:
    for transition in [
        Transition("a\x00", on="ok", to="complete"),
        Transition("a", on="ok", to="b\ud800"),
        Transition("a", on="ok", to="b" * 256),
    ]:
        with pytest.raises(WorkflowDefinitionError) as info:
            Workflow("w", triggers=[Trigger("t")], steps=[Step("a")], transitions=[transition])
        assert any("step name" in p for p in info.value.problems), info.value.problems


async def test_valid_workflows_keep_working_when_a_bad_definition_is_offered(
    store: RunStore,
) -> None:
    audit = Workflow(
        "ops.audit",
        triggers=[Trigger("manual", [Field("who", str)])],
        steps=[Step("approve", kind="pause")],
    )
    store.register(audit)
    billing = await store.create_run("billing.invoice_reminder", {"account_id": "acct-1"})
    etl = await store.create_run("etl.daily", {})
    ops = await store.create_run("ops.audit", {"who": "ana"})
    # What a user would do: build each definition and register what builds.
    refused = 0
    for role in ROLES:
        for name in BAD.values():
            try:
                bad = definition(role, name)
            except WorkflowDefinitionError:
                refused += 1
                continue
            store.register(bad)

    for run in (billing, etl, ops):
        replay = await store.replay_run(run.id)
        assert (replay.workflow, replay.current_step) == (run.workflow, run.current_step)
    approve = await store.begin_step(billing.id, "approve")
    assert (approve.step, approve.status) == ("approve", "running")
    assert (await store.begin_step(etl.id, "extract")).status == "running"
    assert (await store.begin_step(ops.id, "approve")).status == "running"
    # Each run's step kind still comes from its own workflow's definition.
    history = await store.get_run(billing.id, include_history=True)
    assert [event.type for event in history.audit_events or []] == ["paused"]
    assert refused == len(ROLES) * len(BAD)
    assert sorted(store.workflows) == ["billing.invoice_reminder", "etl.daily", "ops.audit"]


# Characters count, not UTF-8 bytes: 255 four-byte characters are fine too.
@pytest.mark.parametrize("char", ["s", "\U0001f991"], ids=["ascii", "4-byte"])
async def test_a_255_character_step_name_works_end_to_end(store: RunStore, char: str) -> None:
    step = char * 255
    longest = Workflow(
        "w" * 255,
        triggers=[Trigger("t" * 255, [Field("f" * 255, str)])],
        steps=[Step(step)],
    )
    store.register(longest)
    run = await store.create_run(longest.name, {"f" * 255: "x"})
    assert run.current_step == step
    assert run.payload == {"f" * 255: "x"}
    step_run = await store.begin_step(run.id, step)
    assert (step_run.step, step_run.status) == (step, "running")
    replay = await store.replay_run(run.id)
    assert replay.current_step == step


def test_a_step_name_begin_step_refuses_is_refused_by_the_definition() -> None:
    # 256 and 300 characters: before, such a step became a run's
    # current_step and begin_step then refused it.
    for length in (256, 300):
        with pytest.raises(WorkflowDefinitionError) as info:
            Workflow("w", triggers=[Trigger("t")], steps=[Step("s" * length)])
        assert "step name" in info.value.problems[0]
        assert f"is {length} characters long" in info.value.problems[0]


# -- ints too big to store -----------------------------------------------------------

NUMBERS = Workflow(
    "numbers",
    triggers=[
        Trigger(
            "manual",
            [
                Field("n", int, required=False),
                Field("x", float, required=False),
                Field("blob", dict, required=False),
            ],
        )
    ],
    steps=[Step("only")],
)
HUGE = 10**4300  # past Python's default int/str conversion limit
LARGEST = 10**MAX_INT_DIGITS - 1
# Explicit ids: pytest would name an int parameter by str(), which raises for HUGE.
TOO_BIG = [
    pytest.param(HUGE, id="10**4300"),
    pytest.param(-HUGE, id="-10**4300"),
    pytest.param(10**MAX_INT_DIGITS, id="one-past-the-largest"),
]


@pytest.fixture
def numbers(store: RunStore) -> RunStore:
    store.register(NUMBERS)
    return store


async def run_row(pool: asyncpg.Pool, run_id: UUID) -> dict[str, Any]:
    record = await pool.fetchrow(
        "SELECT status, version, updated_at, payload::text, context::text,"
        " last_error::text, current_step FROM squidmesh.runs WHERE id = $1",
        run_id,
    )
    assert record is not None
    return dict(record)


async def step_run_row(pool: asyncpg.Pool, step_run_id: UUID) -> dict[str, Any]:
    record = await pool.fetchrow(
        "SELECT status, updated_at, output::text, last_error::text"
        " FROM squidmesh.step_runs WHERE id = $1",
        step_run_id,
    )
    assert record is not None
    return dict(record)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        pytest.param({"n": HUGE}, "n", id="int-field"),
        pytest.param({"n": -HUGE}, "n", id="negative"),
        pytest.param({"n": 10**MAX_INT_DIGITS}, "n", id="one-past-the-largest"),
        pytest.param({"x": HUGE}, "x", id="float-field"),
        pytest.param({"blob": {"deep": [1, HUGE]}}, "blob", id="nested-in-dict-field"),
    ],
)
async def test_a_payload_int_too_big_to_store_is_invalid_payload(
    numbers: RunStore, pool: asyncpg.Pool, payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidPayload) as info:
        await numbers.create_run("numbers", payload)
    assert list(info.value.invalid_types) == [field]
    assert f"more than {MAX_INT_DIGITS} digits" in info.value.invalid_types[field]
    assert await pool.fetchval("SELECT count(*) FROM squidmesh.runs") == 0


@pytest.mark.parametrize("value", TOO_BIG)
async def test_context_and_last_error_ints_too_big_to_store_are_invalid_run(
    numbers: RunStore, pool: asyncpg.Pool, value: int
) -> None:
    run = await numbers.create_run("numbers", {"n": 1})
    before = await run_row(pool, run.id)
    calls: list[Callable[[], Awaitable[Run]]] = [
        lambda: numbers.update_run(run.id, context={"n": value}),
        lambda: numbers.update_run(run.id, last_error={"code": [value]}),
        lambda: numbers.transition_run(run.id, "running", context={"a": {"b": value}}),
        lambda: numbers.transition_run(run.id, "failed", last_error={"n": value}),
    ]
    for call in calls:
        with pytest.raises(InvalidRun) as info:
            await call()
        assert f"more than {MAX_INT_DIGITS} digits" in str(info.value)
    assert await run_row(pool, run.id) == before


@pytest.mark.parametrize("value", TOO_BIG)
async def test_step_output_int_too_big_to_store_is_invalid_run(
    numbers: RunStore, pool: asyncpg.Pool, value: int
) -> None:
    run = await numbers.create_run("numbers", {})
    step_run = await numbers.begin_step(run.id, "only")
    before = await step_run_row(pool, step_run.id)
    with pytest.raises(InvalidRun, match=f"more than {MAX_INT_DIGITS} digits"):
        await numbers.complete_step(step_run.id, {"n": value})
    with pytest.raises(InvalidRun, match=f"more than {MAX_INT_DIGITS} digits"):
        await numbers.fail_step(step_run.id, {"n": value})
    assert await step_run_row(pool, step_run.id) == before
    assert await pool.fetchval("SELECT count(*) FROM squidmesh.step_runs") == 1


async def test_the_largest_allowed_int_round_trips_exactly(
    numbers: RunStore, pool: asyncpg.Pool
) -> None:
    values = {"pos": LARGEST, "neg": -LARGEST}
    run = await numbers.create_run("numbers", {"n": LARGEST, "x": -LARGEST, "blob": values})
    assert run.payload == {"n": LARGEST, "x": -LARGEST, "blob": values}
    # Stored as the exact number, not a rounded float or a string.
    assert await pool.fetchval(
        "SELECT payload->>'n' FROM squidmesh.runs WHERE id = $1", run.id
    ) == str(LARGEST)
    assert (
        await pool.fetchval(
            "SELECT jsonb_typeof(payload->'n') FROM squidmesh.runs WHERE id = $1", run.id
        )
        == "number"
    )
    updated = await numbers.update_run(run.id, context=values, last_error=values)
    assert (updated.context, updated.last_error) == (values, values)
    step_run = await numbers.begin_step(run.id, "only", values)
    done = await numbers.complete_step(step_run.id, values)
    assert (done.input, done.output) == (values, values)
    again = await numbers.get_run(run.id, include_history=True)
    assert again.payload == run.payload
    assert again.context == values
    assert again.step_runs is not None and again.step_runs[0].output == values
    listed = await numbers.list_runs(workflow="numbers")
    assert [(r.id, r.payload, r.context) for r in listed] == [(run.id, run.payload, values)]
