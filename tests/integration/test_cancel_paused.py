"""cancel_run on a paused run: the paused step is finalised in the same statement."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

import squidmesh
from squidmesh import RunStatus, RunStore, RunTransitioned, StepAttempt, StepFailed, StepRun

PAYLOAD = {"account_id": "acct-1"}
CANCELLED = {"message": "run cancelled while paused", "reason": "cancelled"}


async def paused_at_approve(
    store: RunStore, *, attempts: int = 1
) -> tuple[UUID, StepRun, list[StepAttempt]]:
    """A run paused at its approval step, whose step run and last attempt are running."""
    run = await store.create_run("billing.invoice_reminder", PAYLOAD)
    await store.transition_run(run.id, "running", current_step="approve")
    step_run = await store.begin_step(run.id, "approve", {})
    made = [await store.begin_attempt(step_run.id) for _ in range(attempts)]
    for earlier in made[:-1]:
        await store.fail_attempt(earlier.id, {"message": "retry"})
    last = made[-1] if made else None
    await store.pause_run(run.id, step_run.id, last.id if last else None, {})
    return run.id, step_run, made


async def step_state(pool: asyncpg.Pool, step_run_id: UUID) -> tuple[str, Any]:
    record = await pool.fetchrow(
        "SELECT status, last_error::text FROM squidmesh.step_runs WHERE id = $1", step_run_id
    )
    assert record is not None
    error = None if record[1] is None else squidmesh._codec.decode_map(record[1])
    return record[0], error


async def attempt_states(pool: asyncpg.Pool, step_run_id: UUID) -> list[tuple[int, str, Any]]:
    records = await pool.fetch(
        "SELECT attempt_number, status, error::text FROM squidmesh.step_attempts"
        " WHERE step_run_id = $1 ORDER BY attempt_number",
        step_run_id,
    )
    return [
        (r[0], r[1], None if r[2] is None else squidmesh._codec.decode_map(r[2])) for r in records
    ]


async def test_cancel_fails_the_paused_step_and_its_latest_running_attempt(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    run_id, step_run, _ = await paused_at_approve(store, attempts=2)
    events.clear()
    run = await store.cancel_run(run_id)
    assert run.status == "cancelled"
    assert run.current_step is None
    assert await step_state(pool, step_run.id) == ("failed", CANCELLED)
    assert await attempt_states(pool, step_run.id) == [
        (1, "failed", {"message": "retry"}),
        (2, "failed", CANCELLED),
    ]
    assert [type(e) for e in events] == [RunTransitioned, StepFailed]
    moved, failed = events
    assert moved.run == run
    assert (moved.from_status, moved.to_status) == (RunStatus.PAUSED, RunStatus.CANCELLED)
    assert failed.run == run
    assert failed.step == "approve"
    assert failed.attempt_number == 2
    assert failed.error == CANCELLED
    assert isinstance(failed.duration_s, float) and failed.duration_s >= 0


async def test_cancel_fails_only_the_latest_running_attempt(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    run = await store.create_run("billing.invoice_reminder", PAYLOAD)
    await store.transition_run(run.id, "running", current_step="approve")
    step_run = await store.begin_step(run.id, "approve", {})
    await store.begin_attempt(step_run.id)
    await store.begin_attempt(step_run.id)
    await store.transition_run(run.id, "paused")
    events.clear()
    await store.cancel_run(run.id)
    assert [(n, s) for n, s, _ in await attempt_states(pool, step_run.id)] == [
        (1, "running"),
        (2, "failed"),
    ]
    assert events[1].attempt_number == 2


async def test_cancel_paused_step_without_attempts(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    run_id, step_run, _ = await paused_at_approve(store, attempts=0)
    events.clear()
    await store.cancel_run(run_id)
    assert await step_state(pool, step_run.id) == ("failed", CANCELLED)
    assert [type(e) for e in events] == [RunTransitioned, StepFailed]
    failed = events[1]
    assert failed.attempt_number is None
    # Counted from the step run's start when there is no attempt.
    assert failed.duration_s is not None and failed.duration_s >= 0


async def test_cancel_paused_run_whose_step_is_not_running(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    run_id, step_run, attempts = await paused_at_approve(store)
    await store.complete_attempt(attempts[0].id)
    await store.complete_manual_step(step_run.id, {}, {"type": "approved"})
    events.clear()
    run = await store.cancel_run(run_id)
    assert run.status == "cancelled" and run.current_step is None
    assert await step_state(pool, step_run.id) == ("completed", None)
    assert await attempt_states(pool, step_run.id) == [(1, "completed", None)]
    assert [type(e) for e in events] == [RunTransitioned]


async def test_cancel_paused_run_leaves_other_steps_and_runs_alone(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    run_id, step_run, _ = await paused_at_approve(store)
    # Another step of the same run, and the same step of another paused run.
    other_step = await store.begin_step(run_id, "load_invoice", {})
    other_run, other_run_step, _ = await paused_at_approve(store)
    await store.cancel_run(run_id)
    assert (await step_state(pool, step_run.id))[0] == "failed"
    assert (await step_state(pool, other_step.id))[0] == "running"
    assert (await step_state(pool, other_run_step.id))[0] == "running"
    assert (await store.get_run(other_run)).status == "paused"


async def test_cancel_paused_run_without_current_step_fails_nothing(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    run = await store.create_run("billing.invoice_reminder", PAYLOAD)
    await store.transition_run(run.id, "running", current_step=None)
    step_run = await store.begin_step(run.id, "approve", {})
    await store.begin_attempt(step_run.id)
    await store.transition_run(run.id, "paused")
    events.clear()
    cancelled = await store.cancel_run(run.id)
    assert cancelled.status == "cancelled"
    assert (await step_state(pool, step_run.id))[0] == "running"
    assert [type(e) for e in events] == [RunTransitioned]


async def test_cancelled_paused_step_shows_in_history(store: RunStore) -> None:
    run_id, _, _ = await paused_at_approve(store)
    await store.cancel_run(run_id)
    fetched = await store.get_run(run_id, include_history=True)
    assert fetched.steps is not None and fetched.audit_events is not None
    approve = next(s for s in fetched.steps if s.step == "approve")
    assert approve.status == "failed"
    assert approve.last_error == CANCELLED
    assert [a.status for a in approve.attempts] == ["failed"]
    assert [e.type for e in fetched.audit_events] == ["paused"]
