"""Timestamps are the time of the write, in the order of the writes.

``now()`` is the start of a transaction, read before any wait for a row lock;
stamped with it, a write queued behind another looked older than the write it
followed, and a duration measured to it could be negative.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import asyncpg

from squidmesh import Run, RunStatus, RunStore, StepFailed
from squidmesh.testing import wait_until_blocked
from tests.integration.workflows import INVOICE_REMINDER

TIMEOUT_S = 30
PAYLOAD = {"account_id": "acct_1"}


async def test_updated_at_never_decreases_as_version_grows(store: RunStore) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    seen: list[Run] = [run]

    async def writer(n: int) -> None:
        for i in range(15):
            if i % 3 == 0:
                seen.append(await store.update_run_with(run.id, lambda r: {"current_step": "x"}))
            else:
                seen.append(await store.update_run(run.id, context={"w": n, "i": i}))

    await asyncio.wait_for(asyncio.gather(*(writer(n) for n in range(12))), TIMEOUT_S)
    by_version = sorted(seen, key=lambda r: r.version)
    assert [r.version for r in by_version] == list(range(1, len(seen) + 1))
    went_back = [
        (a.version, b.version, (a.updated_at - b.updated_at).total_seconds())
        for a, b in itertools.pairwise(by_version)
        if b.updated_at < a.updated_at
    ]
    assert not went_back


async def test_a_write_that_waited_for_the_lock_is_stamped_after_the_wait(
    store: RunStore, holder: asyncpg.Connection, monitor: asyncpg.Connection
) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    transaction = holder.transaction()
    await transaction.start()
    try:
        await holder.execute("SELECT 1 FROM squidmesh.runs WHERE id = $1 FOR UPDATE", run.id)
        task = asyncio.ensure_future(store.update_run(run.id, context={"late": True}))
        await wait_until_blocked(monitor, blocked_by=holder.get_server_pid())
        await asyncio.sleep(0.3)  # a slow dispatch holding the lock
        released_at = await holder.fetchval("SELECT clock_timestamp()")
    except BaseException:
        await transaction.rollback()
        raise
    await transaction.commit()
    updated = await asyncio.wait_for(task, TIMEOUT_S)
    assert updated.updated_at >= released_at


async def test_cancel_that_waited_never_reports_a_negative_duration(
    store: RunStore,
    events: list[Any],
    holder: asyncpg.Connection,
    monitor: asyncpg.Connection,
) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    await store.transition_run(run.id, RunStatus.RUNNING, current_step="approve")
    step_run = await store.begin_step(run.id, "approve")
    await store.pause_run(run.id, step_run.id, None)
    transaction = holder.transaction()
    await transaction.start()
    try:
        await holder.execute("SELECT 1 FROM squidmesh.runs WHERE id = $1 FOR UPDATE", run.id)
        task = asyncio.ensure_future(store.cancel_run(run.id))
        await wait_until_blocked(monitor, blocked_by=holder.get_server_pid())
        # A worker starts an attempt while cancel waits (attempts lock only
        # their step run), well after cancel's transaction began.
        await asyncio.sleep(0.1)
        attempt = await store.begin_attempt(step_run.id)
    except BaseException:
        await transaction.rollback()
        raise
    await transaction.commit()
    cancelled = await asyncio.wait_for(task, TIMEOUT_S)
    assert cancelled.status is RunStatus.CANCELLED
    failed = [e for e in events if isinstance(e, StepFailed)]
    assert len(failed) == 1
    assert failed[0].attempt_number == attempt.attempt_number
    assert failed[0].duration_s is not None and failed[0].duration_s >= 0
    history = await store.get_run(run.id, include_history=True)
    assert history.step_runs is not None
    stored = history.step_runs[0].attempts[0]
    assert stored.status == "failed" and stored.updated_at >= stored.inserted_at
