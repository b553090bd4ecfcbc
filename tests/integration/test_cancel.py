"""cancel_run: every row of semantics.md's cancel rules."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import pytest

from squidmesh import InvalidTransition, RunNotFound, RunStatus, RunStore, RunTransitioned
from tests.integration.workflows import INVOICE_REMINDER


async def _run_in(store: RunStore, pool: asyncpg.Pool, status: str) -> uuid.UUID:
    run = await store.create_run(INVOICE_REMINDER, {"account_id": "acct_1"})
    await store.update_run(
        run.id, context={"k": 1}, current_step="approve", last_error={"m": "earlier"}
    )
    # Any status, legal move or not: the database's state machine allows it
    # for this one transaction (the operator's escape hatch).
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL squidmesh.unchecked_moves = on")
        await conn.execute(
            "UPDATE squidmesh.runs SET status = $2 WHERE id = $1 AND status <> $2", run.id, status
        )
    return run.id


async def _snapshot(pool: asyncpg.Pool, run_id: uuid.UUID) -> str:
    return str(
        await pool.fetchval(
            "SELECT row_to_json(r)::text FROM squidmesh.runs r WHERE id = $1", run_id
        )
    )


@pytest.mark.parametrize(
    ("from_status", "to_status"),
    [
        ("pending", "cancelled"),
        ("running", "cancelling"),
        ("retrying", "cancelling"),
        ("paused", "cancelled"),
    ],
)
async def test_cancel(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], from_status: str, to_status: str
) -> None:
    run_id = await _run_in(store, pool, from_status)
    before = await store.get_run(run_id)
    events.clear()

    cancelled = await store.cancel_run(str(run_id))

    assert cancelled.status == to_status
    assert cancelled.current_step is None  # cleared on purpose, in every case
    # The other fields are left as they were.
    assert cancelled.context == before.context
    assert cancelled.last_error == before.last_error
    assert cancelled.payload == before.payload
    assert cancelled.version == before.version + 1
    assert cancelled.updated_at >= before.updated_at
    assert await store.get_run(run_id) == cancelled
    assert events == [
        RunTransitioned(
            run=cancelled, from_status=RunStatus(from_status), to_status=RunStatus(to_status)
        )
    ]


@pytest.mark.parametrize("status", ["failed", "completed", "cancelled"])
async def test_cancel_a_terminal_run(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], status: str
) -> None:
    run_id = await _run_in(store, pool, status)
    before = await _snapshot(pool, run_id)
    events.clear()
    with pytest.raises(InvalidTransition) as info:
        await store.cancel_run(run_id)
    assert info.value.from_status == status
    assert info.value.to_status == "cancelling"
    assert str(info.value) == f"cannot move run from '{status}' to 'cancelling'"
    assert await _snapshot(pool, run_id) == before
    assert events == []


async def test_cancel_a_cancelling_run_is_not_a_cancel_again(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    # semantics.md names no cancel rule for cancelling; it must not be written
    # twice or moved back: either it stays as it is or the call is refused.
    run_id = await _run_in(store, pool, "cancelling")
    before = await _snapshot(pool, run_id)
    events.clear()
    with pytest.raises(InvalidTransition) as info:
        await store.cancel_run(run_id)
    assert info.value.from_status == "cancelling"
    assert await _snapshot(pool, run_id) == before
    assert events == []


async def test_cancel_twice(store: RunStore, pool: asyncpg.Pool) -> None:
    run_id = await _run_in(store, pool, "pending")
    await store.cancel_run(run_id)
    with pytest.raises(InvalidTransition) as info:
        await store.cancel_run(run_id)
    assert (info.value.from_status, info.value.to_status) == ("cancelled", "cancelling")


async def test_cooperative_cancel_then_finalise(store: RunStore, pool: asyncpg.Pool) -> None:
    run_id = await _run_in(store, pool, "running")
    assert (await store.cancel_run(run_id)).status is RunStatus.CANCELLING
    assert (await store.transition_run(run_id, "cancelled")).status is RunStatus.CANCELLED


@pytest.mark.parametrize("bad_id", [uuid.uuid4(), "not-a-uuid", None, 7], ids=repr)
async def test_cancel_missing_run(store: RunStore, events: list[Any], bad_id: object) -> None:
    with pytest.raises(RunNotFound) as info:
        await store.cancel_run(bad_id)
    assert info.value.run_id == bad_id
    assert events == []


async def test_cancel_paused_without_step_runs_fails_nothing(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    # With no step run for the paused step there is nothing to finalise and
    # only the transition is reported.
    run_id = await _run_in(store, pool, "paused")
    events.clear()
    await store.cancel_run(run_id)
    assert [type(e) for e in events] == [RunTransitioned]
    assert await pool.fetchval("SELECT count(*) FROM squidmesh.step_runs") == 0


async def test_cancel_paused_fails_the_running_paused_step(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    # Step rows written directly: the step-history API arrives with a later issue.
    run_id = await _run_in(store, pool, "paused")
    paused_step, other_step = uuid.uuid4(), uuid.uuid4()
    first, latest, other_attempt = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await pool.execute(
        "INSERT INTO squidmesh.step_runs (id, run_id, step, kind, status) VALUES"
        " ($1, $3, 'approve', 'approval', 'running'), ($2, $3, 'load_invoice', 'step', 'running')",
        paused_step,
        other_step,
        run_id,
    )
    await pool.execute(
        "INSERT INTO squidmesh.step_attempts (id, step_run_id, attempt_number, status) VALUES"
        " ($1, $4, 1, 'failed'), ($2, $4, 2, 'running'), ($3, $5, 1, 'running')",
        first,
        latest,
        other_attempt,
        paused_step,
        other_step,
    )
    events.clear()

    cancelled = await store.cancel_run(run_id)

    expected_error = {"message": "run cancelled while paused", "reason": "cancelled"}
    assert cancelled.status is RunStatus.CANCELLED
    assert cancelled.current_step is None
    step = await pool.fetchrow(
        "SELECT status, last_error::text FROM squidmesh.step_runs WHERE id = $1", paused_step
    )
    assert step is not None
    assert step["status"] == "failed"
    assert json.loads(step["last_error"]) == expected_error
    attempts = {
        r["id"]: (r["status"], r["error"])
        for r in await pool.fetch("SELECT id, status, error::text FROM squidmesh.step_attempts")
    }
    assert attempts[latest][0] == "failed"
    assert json.loads(attempts[latest][1]) == expected_error
    assert attempts[first] == ("failed", None)  # an earlier attempt is left alone
    assert attempts[other_attempt] == ("running", None)  # another step is left alone
    assert (
        await pool.fetchval("SELECT status FROM squidmesh.step_runs WHERE id = $1", other_step)
        == "running"
    )
    assert [type(e).__name__ for e in events] == ["RunTransitioned", "StepFailed"]
    failed = events[1]
    assert failed.run == cancelled
    assert failed.step == "approve"
    assert failed.attempt_number == 2
    assert failed.error == expected_error
    assert failed.duration_s is not None and failed.duration_s >= 0
