"""pause_run: the normal pause, the terminal no-op and the cancelling branch."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from squidmesh import (
    AttemptNotFound,
    InvalidRun,
    InvalidTransition,
    PauseResult,
    RunChanges,
    RunNotFound,
    RunStatus,
    RunStore,
    RunTransitioned,
    StepAttempt,
    StepFailed,
    StepRun,
    StepRunNotFound,
)

PAYLOAD = {"account_id": "acct-1"}
CANCELLED = {"message": "run cancelled while paused", "reason": "cancelled"}


def finalized(status: str) -> dict[str, str]:
    return {"message": "run already finalized before pause progression", "status": status}


async def running_at_approve(store: RunStore) -> tuple[UUID, StepRun, StepAttempt]:
    """A running run whose approval step has started its first attempt."""
    run = await store.create_run("billing.invoice_reminder", PAYLOAD)
    await store.transition_run(run.id, "running", current_step="approve")
    step_run = await store.begin_step(run.id, "approve", {"amount": 10})
    attempt = await store.begin_attempt(step_run.id)
    return run.id, step_run, attempt


async def snapshot(pool: asyncpg.Pool, run_id: UUID) -> list[Any]:
    """Every stored column of the run, its step runs and attempts."""
    rows = await pool.fetch(
        "SELECT to_jsonb(r)::text FROM squidmesh.runs r WHERE id = $1"
        " UNION ALL SELECT to_jsonb(s)::text FROM squidmesh.step_runs s WHERE run_id = $1"
        " UNION ALL SELECT to_jsonb(a)::text FROM squidmesh.step_attempts a"
        "   JOIN squidmesh.step_runs s ON a.step_run_id = s.id WHERE s.run_id = $1",
        run_id,
    )
    return sorted(r[0] for r in rows)


async def statuses(pool: asyncpg.Pool, step_run: StepRun, attempt: StepAttempt) -> tuple[Any, ...]:
    record = await pool.fetchrow(
        "SELECT s.status, s.last_error::text, a.status, a.error::text"
        " FROM squidmesh.step_runs s JOIN squidmesh.step_attempts a ON a.step_run_id = s.id"
        " WHERE s.id = $1 AND a.id = $2",
        step_run.id,
        attempt.id,
    )
    assert record is not None
    return tuple(record)


# -- 3. the normal pause -------------------------------------------------------


async def test_pause_moves_a_running_run_to_paused(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    run_id, step_run, attempt = await running_at_approve(store)
    events.clear()
    result = await store.pause_run(
        run_id,
        step_run.id,
        attempt.id,
        {"context": {"waiting_for": "finance"}, "last_error": None},
    )
    assert isinstance(result, PauseResult)
    assert result.from_status is RunStatus.RUNNING
    assert result.to_status is RunStatus.PAUSED
    assert result.terminal_noop is False
    assert result.finalized_step is False
    assert result.error is None
    assert result.run.status == "paused"
    assert result.run.context == {"waiting_for": "finance"}
    assert result.run.current_step == "approve"  # not given: unchanged
    assert await store.get_run(run_id) == result.run
    # The step waits for its human: step run and attempt stay running.
    assert await statuses(pool, step_run, attempt) == ("running", None, "running", None)
    assert events == [
        RunTransitioned(run=result.run, from_status=RunStatus.RUNNING, to_status=RunStatus.PAUSED)
    ]


async def test_pause_takes_run_changes_or_nothing(store: RunStore) -> None:
    run_id, step_run, attempt = await running_at_approve(store)
    result = await store.pause_run(
        str(run_id), str(step_run.id), str(attempt.id), RunChanges(current_step="approve_wait")
    )
    assert result.run.current_step == "approve_wait"

    other = await store.create_run("billing.invoice_reminder", PAYLOAD)
    await store.transition_run(other.id, "running")
    other_step = await store.begin_step(other.id, "load_invoice", {})
    plain = await store.pause_run(other.id, other_step.id, None, None)
    assert plain.run.status == "paused"
    assert plain.run.context == {}


@pytest.mark.parametrize("start", ["pending", "retrying", "paused"])
async def test_pause_refuses_an_illegal_move(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], start: str
) -> None:
    run = await store.create_run("billing.invoice_reminder", PAYLOAD)
    if start != "pending":
        await store.transition_run(run.id, "running")
        await store.transition_run(run.id, start)
    step_run = await store.begin_step(run.id, "approve", {})
    attempt = await store.begin_attempt(step_run.id)
    before = await snapshot(pool, run.id)
    events.clear()
    with pytest.raises(InvalidTransition) as info:
        await store.pause_run(run.id, step_run.id, attempt.id, {"context": {"x": 1}})
    assert (info.value.from_status, info.value.to_status) == (start, "paused")
    assert await snapshot(pool, run.id) == before
    assert events == []


async def test_pause_refuses_bad_field_values_before_writing(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    run_id, step_run, attempt = await running_at_approve(store)
    before = await snapshot(pool, run_id)
    with pytest.raises(InvalidRun):
        await store.pause_run(run_id, step_run.id, attempt.id, {"context": {"x": float("nan")}})
    with pytest.raises(InvalidRun):
        await store.pause_run(run_id, step_run.id, attempt.id, {"status": "paused"})
    assert await snapshot(pool, run_id) == before


# -- 1. terminal runs ----------------------------------------------------------


@pytest.mark.parametrize("terminal", ["completed", "failed"])
async def test_pause_on_a_finished_run_finalizes_the_running_step(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], terminal: str
) -> None:
    run_id, step_run, attempt = await running_at_approve(store)
    finished = await store.transition_run(run_id, terminal)
    events.clear()
    result = await store.pause_run(run_id, step_run.id, attempt.id, {"context": {"x": 1}})
    assert result.terminal_noop is True
    assert result.finalized_step is True
    assert result.from_status == result.to_status == terminal
    assert result.error == finalized(terminal)
    # The run itself is untouched (same version, same fields).
    assert result.run == finished
    assert await store.get_run(run_id) == finished
    assert await statuses(pool, step_run, attempt) == (
        "failed",
        f'{{"status": "{terminal}", "message": "run already finalized before pause progression"}}',
        "failed",
        f'{{"status": "{terminal}", "message": "run already finalized before pause progression"}}',
    )
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, StepFailed)
    assert (event.step, event.attempt_number, event.error) == (
        "approve",
        1,
        finalized(terminal),
    )
    assert event.run == finished
    assert event.duration_s is not None and event.duration_s >= 0


async def test_pause_on_a_cancelled_run_uses_the_cancellation_error(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    run = await store.create_run("billing.invoice_reminder", PAYLOAD)
    step_run = await store.begin_step(run.id, "approve", {})
    attempt = await store.begin_attempt(step_run.id)
    cancelled = await store.cancel_run(run.id)  # pending -> cancelled
    events.clear()
    result = await store.pause_run(run.id, step_run.id, attempt.id, {})
    assert result.terminal_noop is True
    assert result.finalized_step is True
    assert result.from_status == result.to_status == "cancelled"
    assert result.error == CANCELLED
    assert result.run == cancelled
    s_status, s_error, a_status, a_error = await statuses(pool, step_run, attempt)
    assert (s_status, a_status) == ("failed", "failed")
    assert s_error == a_error == '{"reason": "cancelled", "message": "run cancelled while paused"}'
    assert [type(e) for e in events] == [StepFailed]
    assert events[0].error == CANCELLED


async def test_pause_on_a_finished_run_leaves_a_finished_step_alone(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    run_id, step_run, attempt = await running_at_approve(store)
    await store.complete_attempt(attempt.id)
    await store.complete_step(step_run.id, {"ok": True})
    await store.transition_run(run_id, "completed")
    before = await snapshot(pool, run_id)
    events.clear()
    result = await store.pause_run(run_id, step_run.id, attempt.id, {})
    assert result.terminal_noop is True
    assert result.finalized_step is False
    assert result.error == finalized("completed")
    assert await snapshot(pool, run_id) == before
    assert events == []


async def test_pause_on_a_finished_run_fails_only_what_still_runs(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    run_id, step_run, attempt = await running_at_approve(store)
    await store.fail_attempt(attempt.id, {"message": "own error"})
    await store.transition_run(run_id, "failed")
    events.clear()
    result = await store.pause_run(run_id, step_run.id, attempt.id, {})
    assert result.finalized_step is True
    s_status, _, a_status, a_error = await statuses(pool, step_run, attempt)
    assert (s_status, a_status) == ("failed", "failed")
    assert a_error == '{"message": "own error"}'
    assert [(type(e), e.attempt_number) for e in events] == [(StepFailed, None)]


async def test_pause_without_an_attempt_on_a_finished_run(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    run_id, step_run, attempt = await running_at_approve(store)
    await store.transition_run(run_id, "completed")
    result = await store.pause_run(run_id, step_run.id, None, {})
    assert result.finalized_step is True
    s_status, _, a_status, _ = await statuses(pool, step_run, attempt)
    # Only what was named is finalized.
    assert (s_status, a_status) == ("failed", "running")


# -- 2. cancelling runs --------------------------------------------------------


async def test_pause_on_a_cancelling_run_cancels_it(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    run_id, step_run, attempt = await running_at_approve(store)
    await store.update_run(run_id, last_error={"message": "earlier"})
    await store.cancel_run(run_id)  # running -> cancelling
    events.clear()
    result = await store.pause_run(
        run_id, step_run.id, attempt.id, {"context": {"kept": True}, "current_step": "x"}
    )
    assert result.from_status is RunStatus.CANCELLING
    assert result.to_status is RunStatus.CANCELLED
    assert result.terminal_noop is False
    assert result.finalized_step is True
    assert result.error == CANCELLED
    run = result.run
    assert run.status == "cancelled"
    assert run.current_step is None
    assert run.last_error is None
    assert run.context == {"kept": True}
    assert await store.get_run(run_id) == run
    s_status, s_error, a_status, a_error = await statuses(pool, step_run, attempt)
    assert (s_status, a_status) == ("failed", "failed")
    assert s_error == a_error == '{"reason": "cancelled", "message": "run cancelled while paused"}'
    assert [type(e) for e in events] == [RunTransitioned, StepFailed]
    moved, failed = events
    assert (moved.from_status, moved.to_status) == ("cancelling", "cancelled")
    assert moved.run == run
    assert (failed.step, failed.attempt_number, failed.error) == ("approve", 1, CANCELLED)
    assert failed.duration_s is not None and failed.duration_s >= 0


async def test_pause_on_a_cancelling_run_with_a_finished_step(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    run_id, step_run, attempt = await running_at_approve(store)
    await store.complete_attempt(attempt.id)
    await store.complete_step(step_run.id, {})
    await store.cancel_run(run_id)
    events.clear()
    result = await store.pause_run(run_id, step_run.id, attempt.id, {})
    assert result.to_status == "cancelled"
    assert result.finalized_step is False
    assert await statuses(pool, step_run, attempt) == ("completed", None, "completed", None)
    assert [type(e) for e in events] == [RunTransitioned]


# -- not found -----------------------------------------------------------------


async def test_pause_unknown_ids_write_nothing(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    run_id, step_run, attempt = await running_at_approve(store)
    other = await store.create_run("billing.invoice_reminder", PAYLOAD)
    foreign_step = await store.begin_step(other.id, "approve", {})
    foreign_attempt = await store.begin_attempt(foreign_step.id)
    before = await snapshot(pool, run_id)
    events.clear()
    with pytest.raises(RunNotFound):
        await store.pause_run(uuid4(), step_run.id, attempt.id, {})
    with pytest.raises(RunNotFound):
        await store.pause_run("nope", step_run.id, attempt.id, {})
    for bad_step in (uuid4(), "nope", foreign_step.id):
        with pytest.raises(StepRunNotFound) as info:
            await store.pause_run(run_id, bad_step, attempt.id, {})
        assert info.value.step_run_id == bad_step
    for bad_attempt in (uuid4(), "nope", foreign_attempt.id):
        with pytest.raises(AttemptNotFound) as a_info:
            await store.pause_run(run_id, step_run.id, bad_attempt, {})
        assert a_info.value.attempt_id == bad_attempt
    assert await snapshot(pool, run_id) == before
    assert events == []


async def test_pause_unknown_step_on_a_finished_run_writes_nothing(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    run_id, step_run, _ = await running_at_approve(store)
    await store.transition_run(run_id, "completed")
    before = await snapshot(pool, run_id)
    with pytest.raises(AttemptNotFound):
        await store.pause_run(run_id, step_run.id, uuid4(), {})
    assert await snapshot(pool, run_id) == before
