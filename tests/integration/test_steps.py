"""Step history writes: step runs, manual decisions, resume maps and attempts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

import squidmesh
from squidmesh import (
    AttemptNotFound,
    InvalidRun,
    RunAuditEvent,
    RunNotFound,
    RunStore,
    StepAttempt,
    StepRun,
    StepRunNotFound,
)

PAYLOAD = {"account_id": "acct-1"}


async def new_run(store: RunStore, workflow: str = "billing.invoice_reminder") -> squidmesh.Run:
    payload = PAYLOAD if workflow == "billing.invoice_reminder" else {}
    return await store.create_run(workflow, payload)


async def row(pool: asyncpg.Pool, step_run_id: UUID) -> asyncpg.Record:
    record = await pool.fetchrow(
        "SELECT status, kind, input::text, output::text, last_error::text, resume::text,"
        " manual::text FROM squidmesh.step_runs WHERE id = $1",
        step_run_id,
    )
    assert record is not None
    return record


async def count_step_runs(pool: asyncpg.Pool) -> int:
    value = await pool.fetchval("SELECT count(*) FROM squidmesh.step_runs")
    assert isinstance(value, int)
    return value


# -- begin_step / schedule_step ------------------------------------------------


async def test_begin_step_creates_a_running_step_run(store: RunStore) -> None:
    run = await new_run(store)
    step_run = await store.begin_step(run.id, "load_invoice", {"invoice": 7})
    assert isinstance(step_run, StepRun)
    assert step_run.step == "load_invoice"
    assert step_run.status == "running"
    assert step_run.input == {"invoice": 7}
    assert step_run.output is None and step_run.last_error is None
    assert step_run.attempts == []
    assert step_run.inserted_at.tzinfo is not None
    assert step_run.inserted_at.utcoffset() == timedelta(0)


async def test_begin_step_twice_returns_the_existing_step_run(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    run = await new_run(store)
    first = await store.begin_step(run.id, "load_invoice", {"invoice": 7})
    await store.complete_step(first.id, {"ok": True})
    second = await store.begin_step(run.id, "load_invoice", {"invoice": 8})
    assert second.id == first.id
    # Returned as stored: still completed, with the first input.
    assert second.status == "completed"
    assert second.input == {"invoice": 7}
    assert second.output == {"ok": True}
    assert await count_step_runs(pool) == 1


async def test_begin_step_accepts_a_run_id_string(store: RunStore) -> None:
    run = await new_run(store)
    step_run = await store.begin_step(str(run.id), "load_invoice", {})
    assert step_run.status == "running"


async def test_begin_step_input_defaults_to_an_empty_map(store: RunStore) -> None:
    run = await new_run(store)
    step_run = await store.begin_step(run.id, "load_invoice")
    assert step_run.input == {}


async def test_begin_step_stores_the_declared_kind(store: RunStore, pool: asyncpg.Pool) -> None:
    run = await new_run(store)
    approve = await store.begin_step(run.id, "approve", {})
    plain = await store.begin_step(run.id, "load_invoice", {})
    undeclared = await store.begin_step(run.id, "not_in_definition", {})
    assert (await row(pool, approve.id))["kind"] == "approval"
    assert (await row(pool, plain.id))["kind"] == "step"
    assert (await row(pool, undeclared.id))["kind"] == "step"


async def test_begin_step_kind_comes_from_the_runs_own_workflow(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    # etl.daily has no step called "approve": another workflow's manual step
    # of the same name must not leak its kind.
    run = await new_run(store, "etl.daily")
    step_run = await store.begin_step(run.id, "approve", {})
    assert (await row(pool, step_run.id))["kind"] == "step"


async def test_begin_step_unknown_run(store: RunStore, pool: asyncpg.Pool) -> None:
    missing = uuid4()
    with pytest.raises(RunNotFound) as info:
        await store.begin_step(missing, "load_invoice", {})
    assert info.value.run_id == missing
    with pytest.raises(RunNotFound):
        await store.begin_step("not-a-uuid", "load_invoice", {})
    assert await count_step_runs(pool) == 0


@pytest.mark.parametrize(
    "bad_input",
    [
        {"x": float("nan")},
        {"x": {1, 2}},
        {"x": "nul\x00"},
        {1: "non-string key"},
        ["not", "a", "map"],
    ],
)
async def test_begin_step_bad_input_writes_nothing(
    store: RunStore, pool: asyncpg.Pool, bad_input: Any
) -> None:
    run = await new_run(store)
    with pytest.raises(InvalidRun):
        await store.begin_step(run.id, "load_invoice", bad_input)
    assert await count_step_runs(pool) == 0


@pytest.mark.parametrize("bad_step", ["", "x" * 256, "nul\x00", 7, None])
async def test_begin_step_bad_step_name(store: RunStore, pool: asyncpg.Pool, bad_step: Any) -> None:
    run = await new_run(store)
    with pytest.raises(InvalidRun):
        await store.begin_step(run.id, bad_step, {})
    assert await count_step_runs(pool) == 0


async def test_schedule_step_creates_a_pending_step_run(store: RunStore) -> None:
    run = await new_run(store)
    step_run = await store.schedule_step(run.id, "send_email", {"to": "a@b.c"})
    assert step_run.status == "pending"
    assert step_run.input == {"to": "a@b.c"}


async def test_schedule_step_is_idempotent(store: RunStore, pool: asyncpg.Pool) -> None:
    run = await new_run(store)
    first = await store.schedule_step(run.id, "send_email", {"to": "a"})
    second = await store.schedule_step(run.id, "send_email", {"to": "b"})
    assert second.id == first.id
    assert second.input == {"to": "a"}
    assert second.updated_at == first.updated_at
    assert await count_step_runs(pool) == 1


async def test_schedule_step_does_not_touch_a_started_step(store: RunStore) -> None:
    run = await new_run(store)
    started = await store.begin_step(run.id, "send_email", {"to": "a"})
    again = await store.schedule_step(run.id, "send_email", {"to": "b"})
    assert again.id == started.id
    assert again.status == "running"


async def test_begin_step_starts_a_scheduled_step(store: RunStore) -> None:
    run = await new_run(store)
    scheduled = await store.schedule_step(run.id, "send_email", {"to": "a"})
    started = await store.begin_step(run.id, "send_email", {"to": "b"})
    assert started.id == scheduled.id
    assert started.status == "running"
    assert started.input == {"to": "b"}
    assert started.inserted_at == scheduled.inserted_at
    assert started.updated_at >= scheduled.updated_at


async def test_schedule_step_unknown_run(store: RunStore) -> None:
    with pytest.raises(RunNotFound):
        await store.schedule_step(uuid4(), "send_email", {})


async def test_step_runs_are_deleted_with_their_run(store: RunStore, pool: asyncpg.Pool) -> None:
    run = await new_run(store)
    step_run = await store.begin_step(run.id, "load_invoice", {})
    await store.begin_attempt(step_run.id)
    await pool.execute("DELETE FROM squidmesh.runs WHERE id = $1", run.id)
    assert await count_step_runs(pool) == 0
    assert await pool.fetchval("SELECT count(*) FROM squidmesh.step_attempts") == 0


# -- complete_step / fail_step -------------------------------------------------


async def test_complete_step(store: RunStore, pool: asyncpg.Pool) -> None:
    run = await new_run(store)
    step_run = await store.begin_step(run.id, "load_invoice", {"invoice": 7})
    done = await store.complete_step(step_run.id, {"total": 12.5, "lines": [1, 2]})
    assert done.id == step_run.id
    assert done.status == "completed"
    assert done.output == {"total": 12.5, "lines": [1, 2]}
    assert done.input == {"invoice": 7}
    assert done.updated_at >= step_run.updated_at
    assert (await row(pool, step_run.id))["status"] == "completed"


async def test_complete_step_returns_its_attempts(store: RunStore) -> None:
    run = await new_run(store)
    step_run = await store.begin_step(run.id, "load_invoice", {})
    first = await store.begin_attempt(step_run.id)
    await store.fail_attempt(first.id, {"message": "timeout"})
    second = await store.begin_attempt(step_run.id)
    await store.complete_attempt(second.id)
    done = await store.complete_step(step_run.id, {})
    assert [(a.attempt_number, a.status) for a in done.attempts] == [
        (1, "failed"),
        (2, "completed"),
    ]
    assert done.attempts[0].error == {"message": "timeout"}


async def test_complete_step_without_output_keeps_the_stored_one(store: RunStore) -> None:
    run = await new_run(store)
    step_run = await store.begin_step(run.id, "load_invoice", {})
    done = await store.complete_step(step_run.id)
    assert done.status == "completed"
    assert done.output is None


async def test_fail_step(store: RunStore) -> None:
    run = await new_run(store)
    step_run = await store.begin_step(run.id, "load_invoice", {})
    failed = await store.fail_step(step_run.id, {"message": "boom", "code": 3})
    assert failed.status == "failed"
    assert failed.last_error == {"message": "boom", "code": 3}
    assert failed.output is None


async def test_step_run_not_found(store: RunStore) -> None:
    for bad in (uuid4(), "not-a-uuid", str(uuid4()), 42):
        with pytest.raises(StepRunNotFound) as info:
            await store.complete_step(bad, {})
        assert info.value.step_run_id == bad
        with pytest.raises(StepRunNotFound):
            await store.fail_step(bad, {"message": "x"})
        with pytest.raises(StepRunNotFound):
            await store.record_resume(bad, {"to": "x"})
        with pytest.raises(StepRunNotFound):
            await store.complete_manual_step(bad, {}, {"type": "approved"})
        with pytest.raises(StepRunNotFound):
            await store.begin_attempt(bad)


@pytest.mark.parametrize("bad", [{"x": float("inf")}, {"x": object()}, "text", {"k": "\x00"}])
async def test_complete_and_fail_refuse_bad_json(
    store: RunStore, pool: asyncpg.Pool, bad: Any
) -> None:
    run = await new_run(store)
    step_run = await store.begin_step(run.id, "load_invoice", {})
    with pytest.raises(InvalidRun):
        await store.complete_step(step_run.id, bad)
    with pytest.raises(InvalidRun):
        await store.fail_step(step_run.id, bad)
    with pytest.raises(InvalidRun):
        await store.record_resume(step_run.id, bad)
    stored = await row(pool, step_run.id)
    assert stored["status"] == "running"
    assert stored["output"] is None and stored["last_error"] is None
    assert stored["resume"] is None


# -- manual steps --------------------------------------------------------------


async def test_complete_manual_step_records_the_decision(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    run = await new_run(store)
    step_run = await store.begin_step(run.id, "approve", {})
    at = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    done = await store.complete_manual_step(
        step_run.id,
        {"approved": True},
        {
            "type": "approved",
            "actor": "ops@example.com",
            "comment": "looks right",
            "metadata": {"ticket": "T-1"},
            "at": at,
        },
    )
    assert done.status == "completed"
    assert done.output == {"approved": True}
    stored = await row(pool, step_run.id)
    assert squidmesh._codec.decode_map(stored["manual"]) == {
        "event": "approved",
        "actor": "ops@example.com",
        "comment": "looks right",
        "metadata": {"ticket": "T-1"},
        "at": "2024-05-01T10:30:15.123456Z",
    }


async def test_complete_manual_step_accepts_a_run_audit_event(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    run = await new_run(store)
    step_run = await store.begin_step(run.id, "approve", {})
    event = RunAuditEvent(
        type="rejected",
        step="whatever",
        actor="bob",
        comment=None,
        metadata={},
        at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    done = await store.complete_manual_step(step_run.id, {}, event)
    assert done.status == "completed"
    manual = squidmesh._codec.decode_map((await row(pool, step_run.id))["manual"])
    assert manual["event"] == "rejected"
    assert manual["actor"] == "bob"
    assert manual["comment"] is None
    assert manual["at"] == "2024-01-02T03:04:05.000000Z"


async def test_complete_manual_step_defaults_at_to_the_server_clock(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    run = await new_run(store)
    step_run = await store.begin_step(run.id, "approve", {})
    before = await pool.fetchval("SELECT now()")
    await store.complete_manual_step(step_run.id, None, {"type": "resumed"})
    manual = squidmesh._codec.decode_map((await row(pool, step_run.id))["manual"])
    assert manual["metadata"] == {}
    assert manual["actor"] is None
    recorded = datetime.fromisoformat(manual["at"])
    assert recorded.utcoffset() == timedelta(0)
    assert recorded >= before


@pytest.mark.parametrize(
    "event",
    [
        {"type": "paused"},
        {"type": "maybe"},
        {},
        {"type": "approved", "actor": 3},
        {"type": "approved", "comment": "nul\x00"},
        {"type": "approved", "metadata": {"x": float("nan")}},
        {"type": "approved", "metadata": "not a map"},
        {"type": "approved", "at": "2024-01-01"},
        {"type": "approved", "at": datetime(2024, 1, 1)},  # naive
        {"type": "approved", "surprise": 1},
        "approved",
    ],
)
async def test_complete_manual_step_refuses_bad_events(
    store: RunStore, pool: asyncpg.Pool, event: Any
) -> None:
    run = await new_run(store)
    step_run = await store.begin_step(run.id, "approve", {})
    with pytest.raises(InvalidRun):
        await store.complete_manual_step(step_run.id, {}, event)
    stored = await row(pool, step_run.id)
    assert stored["status"] == "running"
    assert stored["manual"] is None


async def test_record_resume(store: RunStore, pool: asyncpg.Pool) -> None:
    run = await new_run(store)
    step_run = await store.begin_step(run.id, "approve", {})
    updated = await store.record_resume(step_run.id, {"to": "send_email", "data": [1]})
    assert updated.id == step_run.id
    assert updated.status == "running"
    stored = await row(pool, step_run.id)
    assert squidmesh._codec.decode_map(stored["resume"]) == {"to": "send_email", "data": [1]}


# -- attempts ------------------------------------------------------------------


async def test_attempts_are_numbered_in_order(store: RunStore) -> None:
    run = await new_run(store)
    step_run = await store.begin_step(run.id, "load_invoice", {})
    first = await store.begin_attempt(step_run.id)
    second = await store.begin_attempt(str(step_run.id))
    assert isinstance(first, StepAttempt)
    assert (first.attempt_number, second.attempt_number) == (1, 2)
    assert first.status == "running" and first.error is None
    assert first.inserted_at.utcoffset() == timedelta(0)


async def test_attempt_numbers_are_per_step_run(store: RunStore) -> None:
    run = await new_run(store)
    a = await store.begin_step(run.id, "load_invoice", {})
    b = await store.begin_step(run.id, "send_email", {})
    await store.begin_attempt(a.id)
    await store.begin_attempt(a.id)
    assert (await store.begin_attempt(b.id)).attempt_number == 1


async def test_complete_attempt(store: RunStore) -> None:
    run = await new_run(store)
    step_run = await store.begin_step(run.id, "load_invoice", {})
    attempt = await store.begin_attempt(step_run.id)
    done = await store.complete_attempt(attempt.id)
    assert done.id == attempt.id
    assert done.status == "completed"
    assert done.attempt_number == 1
    assert done.updated_at >= attempt.updated_at


async def test_fail_attempt(store: RunStore, pool: asyncpg.Pool) -> None:
    run = await new_run(store)
    step_run = await store.begin_step(run.id, "load_invoice", {})
    attempt = await store.begin_attempt(step_run.id)
    failed = await store.fail_attempt(str(attempt.id), {"message": "503", "retry": True})
    assert failed.status == "failed"
    assert failed.error == {"message": "503", "retry": True}
    with pytest.raises(InvalidRun):
        await store.fail_attempt(attempt.id, {"message": float("nan")})
    stored = await pool.fetchval(
        "SELECT error::text FROM squidmesh.step_attempts WHERE id = $1", attempt.id
    )
    assert squidmesh._codec.decode_map(stored) == {"message": "503", "retry": True}


async def test_attempt_not_found(store: RunStore) -> None:
    for bad in (uuid4(), "nope", None):
        with pytest.raises(AttemptNotFound) as info:
            await store.complete_attempt(bad)
        assert info.value.attempt_id == bad
        with pytest.raises(AttemptNotFound):
            await store.fail_attempt(bad, {"message": "x"})


async def test_step_writes_emit_no_events(store: RunStore, events: list[Any]) -> None:
    run = await new_run(store)
    events.clear()
    step_run = await store.begin_step(run.id, "approve", {})
    attempt = await store.begin_attempt(step_run.id)
    await store.fail_attempt(attempt.id, {"message": "x"})
    await store.complete_manual_step(step_run.id, {}, {"type": "approved"})
    assert events == []
