"""get_run(..., include_history=True): step runs, declared steps, audit events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest

import squidmesh
from squidmesh import (
    Field,
    RunAuditEvent,
    RunNotFound,
    RunStore,
    Step,
    Transition,
    Trigger,
    Workflow,
)
from squidmesh._sql import Q
from tests.integration.workflows import WORKFLOWS

PAYLOAD = {"account_id": "acct-1"}

# A transition-based workflow with a pause step and an approval step.
REVIEW = Workflow(
    "test.review",
    triggers=[Trigger("manual", payload=[Field("doc", str, required=False)])],
    steps=[
        Step("draft"),
        Step("hold", kind="pause"),
        Step("sign_off", kind="approval"),
        Step("publish"),
        Step("discard"),
    ],
    transitions=[
        Transition("draft", on="ok", to="hold"),
        Transition("hold", on="ok", to="sign_off"),
        Transition("sign_off", on="ok", to="publish"),
        Transition("sign_off", on="error", to="discard"),
        Transition("publish", on="ok", to="complete"),
        Transition("discard", on="ok", to="complete"),
    ],
)

FIFTY = Workflow(
    "test.fifty",
    triggers=[Trigger("manual")],
    steps=[Step(f"s{i:02d}") for i in range(50)],
    transitions=[Transition(f"s{i:02d}", on="ok", to=f"s{i + 1:02d}") for i in range(49)]
    + [Transition("s49", on="ok", to="complete")],
)


@pytest.fixture
def history_store(pool: asyncpg.Pool, events: list[Any]) -> RunStore:
    return RunStore(pool, workflows=[*WORKFLOWS, REVIEW, FIFTY], listeners=[events.append])


def at(minute: int) -> datetime:
    return datetime(2024, 3, 1, 9, minute, tzinfo=UTC)


# -- basics --------------------------------------------------------------------


async def test_without_history_the_history_fields_are_none(store: RunStore) -> None:
    run = await store.create_run("billing.invoice_reminder", PAYLOAD)
    await store.begin_step(run.id, "load_invoice", {})
    fetched = await store.get_run(run.id)
    assert fetched.step_runs is None
    assert fetched.steps is None
    assert fetched.audit_events is None
    assert fetched.transitions is None


async def test_history_of_a_fresh_run(store: RunStore) -> None:
    run = await store.create_run("billing.invoice_reminder", PAYLOAD)
    fetched = await store.get_run(run.id, include_history=True)
    assert fetched.id == run.id
    assert fetched.payload == run.payload
    assert fetched.status == run.status
    assert fetched.inserted_at == run.inserted_at
    assert fetched.step_runs == []
    assert fetched.audit_events == []
    assert fetched.steps is not None
    assert [(s.step, s.status, s.depends_on) for s in fetched.steps] == [
        ("load_invoice", "waiting", []),
        ("approve", "waiting", []),
        ("send_email", "waiting", []),
        ("record_rejection", "waiting", []),
    ]
    waiting = fetched.steps[0]
    assert waiting.input is None and waiting.output is None and waiting.last_error is None
    assert waiting.attempts == [] and waiting.inserted_at is None and waiting.updated_at is None


async def test_history_run_not_found(store: RunStore) -> None:
    with pytest.raises(RunNotFound):
        await store.get_run(UUID(int=5), include_history=True)
    with pytest.raises(RunNotFound):
        await store.get_run("not-a-uuid", include_history=True)


async def test_history_equals_the_plain_run_apart_from_history(store: RunStore) -> None:
    run = await store.create_run("billing.invoice_reminder", PAYLOAD)
    await store.transition_run(run.id, "running", context={"k": [1, 2]})
    plain = await store.get_run(run.id)
    full = await store.get_run(run.id, include_history=True)
    assert (
        squidmesh.Run(
            **{
                f: getattr(full, f)
                for f in full.__struct_fields__
                if f not in ("step_runs", "steps", "audit_events", "transitions")
            }
        )
        == plain
    )


# -- step runs and attempts ----------------------------------------------------


async def test_step_runs_are_chronological_with_attempts_in_order(store: RunStore) -> None:
    run = await store.create_run("billing.invoice_reminder", PAYLOAD)
    load = await store.begin_step(run.id, "load_invoice", {"invoice": 1})
    a1 = await store.begin_attempt(load.id)
    await store.fail_attempt(a1.id, {"message": "timeout"})
    a2 = await store.begin_attempt(load.id)
    await store.complete_attempt(a2.id)
    await store.complete_step(load.id, {"total": 3})
    approve = await store.begin_step(run.id, "approve", {})
    await store.begin_attempt(approve.id)

    fetched = await store.get_run(run.id, include_history=True)
    assert fetched.step_runs is not None
    assert [s.step for s in fetched.step_runs] == ["load_invoice", "approve"]
    first = fetched.step_runs[0]
    assert first.id == load.id
    assert first.status == "completed"
    assert first.input == {"invoice": 1}
    assert first.output == {"total": 3}
    assert [(a.attempt_number, a.status, a.error) for a in first.attempts] == [
        (1, "failed", {"message": "timeout"}),
        (2, "completed", None),
    ]
    assert [a.attempt_number for a in fetched.step_runs[1].attempts] == [1]


async def test_step_runs_with_equal_timestamps_are_ordered_by_id(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    run = await store.create_run("billing.invoice_reminder", PAYLOAD)
    low, high = UUID(int=1), UUID(int=2)
    async with pool.acquire() as conn, conn.transaction():
        # now() is the transaction's start time: both rows share inserted_at.
        for step_id, step in ((high, "approve"), (low, "send_email")):
            await conn.execute(
                "INSERT INTO squidmesh.step_runs (id, run_id, step, status)"
                " VALUES ($1, $2, $3, 'running')",
                step_id,
                run.id,
                step,
            )
    fetched = await store.get_run(run.id, include_history=True)
    assert fetched.step_runs is not None
    assert [s.id for s in fetched.step_runs] == [low, high]


async def test_attempts_come_back_in_number_order_whatever_the_insert_order(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    run = await store.create_run("billing.invoice_reminder", PAYLOAD)
    step_run = await store.begin_step(run.id, "load_invoice", {})
    for number in (3, 1, 2):
        await pool.execute(
            "INSERT INTO squidmesh.step_attempts (id, step_run_id, attempt_number, status)"
            " VALUES (gen_random_uuid(), $1, $2, 'failed')",
            step_run.id,
            number,
        )
    fetched = await store.get_run(run.id, include_history=True)
    assert fetched.step_runs is not None
    assert [a.attempt_number for a in fetched.step_runs[0].attempts] == [1, 2, 3]


async def test_history_timestamps_are_utc_whatever_the_session_time_zone(
    dsn: str, store: RunStore
) -> None:
    run = await store.create_run("billing.invoice_reminder", PAYLOAD)
    step_run = await store.begin_step(run.id, "approve", {})
    await store.begin_attempt(step_run.id)
    await store.complete_manual_step(step_run.id, {}, {"type": "approved", "actor": "x"})
    tz_pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=1, server_settings={"TimeZone": "Asia/Kathmandu"}
    )
    try:
        fetched = await RunStore(tz_pool, workflows=WORKFLOWS).get_run(run.id, include_history=True)
    finally:
        await tz_pool.close()
    assert fetched.step_runs is not None and fetched.audit_events is not None
    stamps = [fetched.inserted_at, fetched.updated_at]
    for s in fetched.step_runs:
        stamps += [s.inserted_at, s.updated_at]
        stamps += [t for a in s.attempts for t in (a.inserted_at, a.updated_at)]
    stamps += [e.at for e in fetched.audit_events]
    assert all(t.utcoffset() == timedelta(0) for t in stamps)
    assert fetched.step_runs[0].inserted_at == step_run.inserted_at


async def test_history_works_on_a_pool_with_its_own_json_codecs(dsn: str, store: RunStore) -> None:
    async def init(conn: asyncpg.Connection) -> None:
        for name in ("json", "jsonb"):
            await conn.set_type_codec(
                name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
            )

    run = await store.create_run("billing.invoice_reminder", PAYLOAD)
    codec_pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1, init=init)
    try:
        codec_store = RunStore(codec_pool, workflows=WORKFLOWS)
        step_run = await codec_store.begin_step(run.id, "load_invoice", {"a": [1, {"b": None}]})
        await codec_store.begin_attempt(step_run.id)
        fetched = await codec_store.get_run(run.id, include_history=True)
    finally:
        await codec_pool.close()
    assert fetched.step_runs is not None
    assert fetched.step_runs[0].input == {"a": [1, {"b": None}]}


# -- declared steps ------------------------------------------------------------


async def test_steps_of_a_transition_based_workflow(store: RunStore) -> None:
    run = await store.create_run("billing.invoice_reminder", PAYLOAD)
    load = await store.begin_step(run.id, "load_invoice", {"i": 1})
    attempt = await store.begin_attempt(load.id)
    await store.complete_attempt(attempt.id)
    await store.complete_step(load.id, {"o": 2})
    approve = await store.begin_step(run.id, "approve", {})
    await store.fail_step(approve.id, {"message": "no"})
    await store.schedule_step(run.id, "record_rejection", {"why": "no"})

    fetched = await store.get_run(run.id, include_history=True)
    assert fetched.steps is not None
    assert [(s.step, s.status) for s in fetched.steps] == [
        ("load_invoice", "completed"),
        ("approve", "failed"),
        ("send_email", "waiting"),
        ("record_rejection", "pending"),
    ]
    first = fetched.steps[0]
    assert first.input == {"i": 1}
    assert first.output == {"o": 2}
    assert [a.attempt_number for a in first.attempts] == [1]
    assert first.inserted_at == load.inserted_at
    assert fetched.steps[1].last_error == {"message": "no"}


async def test_steps_of_a_dependency_based_workflow_by_phase_then_declaration(
    store: RunStore,
) -> None:
    run = await store.create_run("etl.daily", {})
    # Step runs created in an order unlike the display order.
    await store.begin_step(run.id, "audit", {})
    await store.begin_step(run.id, "extract", {})
    fetched = await store.get_run(run.id, include_history=True)
    assert fetched.steps is not None
    assert [(s.step, s.depends_on, s.status) for s in fetched.steps] == [
        ("extract", [], "running"),
        ("transform", ["extract"], "waiting"),
        ("audit", ["extract"], "running"),
        ("load", ["transform"], "waiting"),
    ]
    assert fetched.step_runs is not None
    assert [s.step for s in fetched.step_runs] == ["audit", "extract"]


async def test_steps_the_definition_no_longer_declares_come_last(store: RunStore) -> None:
    run = await store.create_run("etl.daily", {})
    await store.begin_step(run.id, "legacy_b", {"old": True})
    await store.begin_step(run.id, "transform", {})
    await store.begin_step(run.id, "legacy_a", {})
    fetched = await store.get_run(run.id, include_history=True)
    assert fetched.steps is not None
    assert [(s.step, s.status, s.depends_on) for s in fetched.steps] == [
        ("extract", "waiting", []),
        ("transform", "running", ["extract"]),
        ("audit", "waiting", ["extract"]),
        ("load", "waiting", ["transform"]),
        # chronological among themselves
        ("legacy_b", "running", []),
        ("legacy_a", "running", []),
    ]
    assert fetched.steps[4].input == {"old": True}


async def test_unregistered_workflow_history_comes_from_what_is_stored(
    pool: asyncpg.Pool, history_store: RunStore
) -> None:
    run = await history_store.create_run("test.review", {})
    draft = await history_store.begin_step(run.id, "draft", {"v": 1})
    await history_store.complete_step(draft.id, {})
    sign = await history_store.begin_step(run.id, "sign_off", {})
    await history_store.begin_attempt(sign.id)
    await history_store.complete_manual_step(
        sign.id, {}, {"type": "rejected", "actor": "eve", "comment": "typo"}
    )

    stranger = RunStore(pool)  # knows no workflow at all
    fetched = await stranger.get_run(run.id, include_history=True)
    assert fetched.workflow == "test.review"
    assert fetched.step_runs is not None and fetched.steps is not None
    assert [s.step for s in fetched.step_runs] == ["draft", "sign_off"]
    assert [(s.step, s.status, s.depends_on) for s in fetched.steps] == [
        ("draft", "completed", []),
        ("sign_off", "completed", []),
    ]
    assert [a.attempt_number for a in fetched.steps[1].attempts] == [1]
    # The stored kind still yields the audit events.
    assert [(e.type, e.step, e.actor, e.comment) for e in fetched.audit_events or []] == [
        ("paused", "sign_off", None, None),
        ("rejected", "sign_off", "eve", "typo"),
    ]


# -- audit events --------------------------------------------------------------


async def test_audit_events_of_pause_and_approval_steps(history_store: RunStore) -> None:
    run = await history_store.create_run("test.review", {})
    draft = await history_store.begin_step(run.id, "draft", {})
    await history_store.complete_step(draft.id, {})
    hold = await history_store.begin_step(run.id, "hold", {})
    await history_store.complete_manual_step(
        hold.id,
        {"resumed": True},
        {"type": "resumed", "actor": "ann", "comment": "go", "metadata": {"n": 1}},
    )
    sign = await history_store.begin_step(run.id, "sign_off", {})
    await history_store.complete_manual_step(
        sign.id,
        {},
        RunAuditEvent(
            type="approved",
            step="sign_off",
            actor="bob",
            comment="fine",
            metadata={"ticket": "T-9"},
            at=datetime.now(UTC) + timedelta(seconds=5),
        ),
    )
    fetched = await history_store.get_run(run.id, include_history=True)
    assert fetched.audit_events is not None
    got = [(e.type, e.step, e.actor, e.comment, e.metadata) for e in fetched.audit_events]
    assert got == [
        ("paused", "hold", None, None, {}),
        ("resumed", "hold", "ann", "go", {"n": 1}),
        ("paused", "sign_off", None, None, {}),
        ("approved", "sign_off", "bob", "fine", {"ticket": "T-9"}),
    ]
    events = fetched.audit_events
    assert events[0].at == hold.inserted_at
    assert events[2].at == sign.inserted_at
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert all(e.at.utcoffset() == timedelta(0) for e in events)


async def test_a_manual_step_still_waiting_shows_only_paused(history_store: RunStore) -> None:
    run = await history_store.create_run("test.review", {})
    hold = await history_store.begin_step(run.id, "hold", {})
    fetched = await history_store.get_run(run.id, include_history=True)
    assert fetched.audit_events == [RunAuditEvent(type="paused", step="hold", at=hold.inserted_at)]


async def test_plain_and_scheduled_steps_have_no_audit_events(history_store: RunStore) -> None:
    run = await history_store.create_run("test.review", {})
    draft = await history_store.begin_step(run.id, "draft", {})
    await history_store.complete_step(draft.id, {})
    await history_store.schedule_step(run.id, "hold", {})
    fetched = await history_store.get_run(run.id, include_history=True)
    assert fetched.audit_events == []


async def test_audit_event_times_are_the_recorded_ones(history_store: RunStore) -> None:
    run = await history_store.create_run("test.review", {})
    hold = await history_store.begin_step(run.id, "hold", {})
    decided = datetime.now(UTC) + timedelta(hours=1)
    await history_store.complete_manual_step(hold.id, {}, {"type": "resumed", "at": decided})
    fetched = await history_store.get_run(run.id, include_history=True)
    assert fetched.audit_events is not None
    assert fetched.audit_events[1].at == decided


async def test_audit_events_are_chronological_across_steps(
    history_store: RunStore, pool: asyncpg.Pool
) -> None:
    run = await history_store.create_run("test.review", {})
    hold = await history_store.begin_step(run.id, "hold", {})
    sign = await history_store.begin_step(run.id, "sign_off", {})
    # Pin the start times so the interleaving is known.
    await pool.execute(
        "UPDATE squidmesh.step_runs SET inserted_at = $2 WHERE id = $1", hold.id, at(0)
    )
    await pool.execute(
        "UPDATE squidmesh.step_runs SET inserted_at = $2 WHERE id = $1", sign.id, at(10)
    )
    await history_store.complete_manual_step(hold.id, {}, {"type": "resumed", "at": at(20)})
    await history_store.complete_manual_step(sign.id, {}, {"type": "approved", "at": at(15)})
    fetched = await history_store.get_run(run.id, include_history=True)
    assert [(e.type, e.step, e.at) for e in fetched.audit_events or []] == [
        ("paused", "hold", at(0)),
        ("paused", "sign_off", at(10)),
        ("approved", "sign_off", at(15)),
        ("resumed", "hold", at(20)),
    ]


# -- bounded queries -----------------------------------------------------------


@pytest.fixture
async def logged_pool(dsn: str) -> AsyncIterator[tuple[asyncpg.Pool, list[str]]]:
    """A pool whose every statement is recorded (reset disabled: not ours to count)."""
    log: list[str] = []

    async def init(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda record: log.append(record.query))

    logged = await asyncpg.create_pool(
        dsn, min_size=1, max_size=2, init=init, reset=squidmesh.no_reset
    )
    try:
        yield logged, log
    finally:
        await logged.close()


async def test_fifty_steps_times_three_attempts_in_one_statement(
    history_store: RunStore, logged_pool: tuple[asyncpg.Pool, list[str]]
) -> None:
    run = await history_store.create_run("test.fifty", {})
    for i in range(50):
        step_run = await history_store.begin_step(run.id, f"s{i:02d}", {"i": i})
        for _ in range(3):
            attempt = await history_store.begin_attempt(step_run.id)
            await history_store.fail_attempt(attempt.id, {"message": "x"})
        await history_store.complete_step(step_run.id, {"i": i})

    pool, log = logged_pool
    reader = RunStore(pool, workflows=[FIFTY])
    for _ in range(2):  # first call prepares the statement, second hits the cache
        log.clear()
        fetched = await reader.get_run(run.id, include_history=True)
        assert len(log) == 1, log
    assert log[0] == Q["run_history"]
    assert fetched.step_runs is not None and fetched.steps is not None
    assert len(fetched.step_runs) == 50
    assert [len(s.attempts) for s in fetched.step_runs] == [3] * 50
    assert [s.step for s in fetched.steps] == [f"s{i:02d}" for i in range(50)]
    assert all([a.attempt_number for a in s.attempts] == [1, 2, 3] for s in fetched.step_runs)
