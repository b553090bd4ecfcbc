"""Races on step history writes, on separate real connections.

No sleeps: "B is blocked" is observed in pg_stat_activity, and every wait is
bounded by a timeout so a deadlock fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar
from uuid import UUID, uuid4

import asyncpg
import pytest

from squidmesh import RunStore, StepAttempt, StepRun
from squidmesh.testing import wait_until_blocked

T = TypeVar("T")
LIMIT = 30.0  # seconds; generous, only there to turn a hang into a failure


async def bounded(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, LIMIT)


@pytest.fixture
async def conns(dsn: str) -> AsyncIterator[list[asyncpg.Connection]]:
    """Two raw connections: one to hold locks, one to observe."""
    opened = [await asyncpg.connect(dsn) for _ in range(2)]
    for conn in opened:
        await conn.execute("SET lock_timeout = '20s'")
    try:
        yield opened
    finally:
        for conn in opened:
            await conn.close(timeout=10)


async def new_run_id(store: RunStore) -> UUID:
    run = await store.create_run("billing.invoice_reminder", {"account_id": "a"})
    return run.id


async def test_concurrent_begin_step_calls_return_one_step_run(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    run_id = await new_run_id(store)
    results: list[StepRun] = await bounded(
        asyncio.gather(*(store.begin_step(run_id, "load_invoice", {"n": i}) for i in range(12)))
    )
    assert len({r.id for r in results}) == 1
    assert {r.status for r in results} == {"running"}
    assert await pool.fetchval("SELECT count(*) FROM squidmesh.step_runs") == 1


async def test_begin_step_waits_for_a_racing_insert_and_returns_it(
    store: RunStore, pool: asyncpg.Pool, conns: list[asyncpg.Connection]
) -> None:
    # A competitor has inserted the step run but not committed yet; our
    # begin_step starts while it is open, so its snapshot cannot see the row
    # even after the competitor commits. It must still return that row.
    holder, observer = conns
    run_id = await new_run_id(store)
    competitor_id = uuid4()
    tx = holder.transaction()
    await tx.start()
    try:
        await holder.execute(
            "INSERT INTO squidmesh.step_runs (id, run_id, step, status, input)"
            " VALUES ($1, $2, 'load_invoice', 'running', '{\"from\": \"competitor\"}')",
            competitor_id,
            run_id,
        )
        task = asyncio.create_task(store.begin_step(run_id, "load_invoice", {"from": "us"}))
        await wait_until_blocked(observer, count=1, timeout=LIMIT)
        assert not task.done()
    except BaseException:
        await tx.rollback()
        raise
    await tx.commit()
    result = await bounded(task)
    assert result.id == competitor_id
    assert result.input == {"from": "competitor"}
    assert await pool.fetchval("SELECT count(*) FROM squidmesh.step_runs") == 1


async def test_begin_step_after_a_racing_insert_rolls_back_creates_its_own(
    store: RunStore, conns: list[asyncpg.Connection]
) -> None:
    holder, observer = conns
    run_id = await new_run_id(store)
    competitor_id = uuid4()
    tx = holder.transaction()
    await tx.start()
    try:
        await holder.execute(
            "INSERT INTO squidmesh.step_runs (id, run_id, step, status)"
            " VALUES ($1, $2, 'load_invoice', 'running')",
            competitor_id,
            run_id,
        )
        task = asyncio.create_task(store.begin_step(run_id, "load_invoice", {"from": "us"}))
        await wait_until_blocked(observer, count=1, timeout=LIMIT)
    finally:
        await tx.rollback()
    result = await bounded(task)
    assert result.id != competitor_id
    assert result.input == {"from": "us"}
    assert result.status == "running"


async def test_twenty_concurrent_begin_attempt_calls_number_1_to_20(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    run_id = await new_run_id(store)
    step_run = await store.begin_step(run_id, "load_invoice", {})
    attempts: list[StepAttempt] = await bounded(
        asyncio.gather(*(store.begin_attempt(step_run.id) for _ in range(20)))
    )
    assert sorted(a.attempt_number for a in attempts) == list(range(1, 21))
    stored = await pool.fetch(
        "SELECT attempt_number FROM squidmesh.step_attempts WHERE step_run_id = $1"
        " ORDER BY attempt_number",
        step_run.id,
    )
    assert [r["attempt_number"] for r in stored] == list(range(1, 21))


async def test_begin_attempt_behind_a_lock_holder_counts_its_attempt(
    store: RunStore, pool: asyncpg.Pool, conns: list[asyncpg.Connection]
) -> None:
    # The holder locks the step run and inserts attempt 1 without committing.
    # Five callers queue behind the lock with snapshots that cannot see
    # attempt 1; after the commit they must still get 2..6, no duplicate.
    holder, observer = conns
    run_id = await new_run_id(store)
    step_run = await store.begin_step(run_id, "load_invoice", {})
    tx = holder.transaction()
    await tx.start()
    try:
        await holder.execute(
            "SELECT 1 FROM squidmesh.step_runs WHERE id = $1 FOR UPDATE", step_run.id
        )
        await holder.execute(
            "INSERT INTO squidmesh.step_attempts (id, step_run_id, attempt_number, status)"
            " VALUES ($1, $2, 1, 'running')",
            uuid4(),
            step_run.id,
        )
        tasks = [asyncio.create_task(store.begin_attempt(step_run.id)) for _ in range(5)]
        await wait_until_blocked(observer, count=5, timeout=LIMIT)
        assert not any(t.done() for t in tasks)
    except BaseException:
        await tx.rollback()
        raise
    await tx.commit()
    attempts = await bounded(asyncio.gather(*tasks))
    assert sorted(a.attempt_number for a in attempts) == [2, 3, 4, 5, 6]
    count = await pool.fetchval(
        "SELECT count(*) FROM squidmesh.step_attempts WHERE step_run_id = $1", step_run.id
    )
    assert count == 6


async def test_pause_run_waits_for_the_run_lock(
    store: RunStore, conns: list[asyncpg.Connection], events: list[Any]
) -> None:
    # pause_run decides on the state read under the lock: the run is running
    # when the call starts, but cancelling once the lock holder commits.
    holder, observer = conns
    run_id = await new_run_id(store)
    await store.transition_run(run_id, "running", current_step="approve")
    step_run = await store.begin_step(run_id, "approve", {})
    attempt = await store.begin_attempt(step_run.id)
    tx = holder.transaction()
    await tx.start()
    try:
        await holder.execute("SELECT 1 FROM squidmesh.runs WHERE id = $1 FOR UPDATE", run_id)
        task = asyncio.create_task(store.pause_run(run_id, step_run.id, attempt.id, {}))
        await wait_until_blocked(observer, count=1, timeout=LIMIT)
        await holder.execute(
            "UPDATE squidmesh.runs SET status = 'cancelling' WHERE id = $1", run_id
        )
    except BaseException:
        await tx.rollback()
        raise
    await tx.commit()
    result = await bounded(task)
    assert result.from_status == "cancelling"
    assert result.to_status == "cancelled"
    assert result.finalized_step is True
