"""Cancelling the caller's task while it waits for the row lock.

The store call must leave no partial write behind (not even after the lock
is released), and the pool must hand out healthy connections afterwards: not
inside a transaction, able to run the store's statements.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
import pytest

from squidmesh import RunStatus, RunStore
from squidmesh.testing import wait_until_blocked, wait_until_not_blocked
from tests.integration.workflows import INVOICE_REMINDER

TIMEOUT_S = 30


async def _snapshot(pool: asyncpg.Pool, run_id: uuid.UUID) -> str:
    return str(
        await pool.fetchval(
            "SELECT row_to_json(r)::text FROM squidmesh.runs r WHERE id = $1", run_id
        )
    )


OPERATIONS: dict[str, Callable[[RunStore, uuid.UUID], Coroutine[Any, Any, Any]]] = {
    "transition_run": lambda s, i: s.transition_run(
        i, "paused", context={"partial": True}, current_step="send_email"
    ),
    "cancel_run": lambda s, i: s.cancel_run(i),
    "update_run": lambda s, i: s.update_run(i, context={"partial": True}),
}


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("holder_ends", ["commit", "rollback"])
async def test_cancelled_while_waiting_for_the_lock(
    store: RunStore,
    pool: asyncpg.Pool,
    events: list[Any],
    holder: asyncpg.Connection,
    monitor: asyncpg.Connection,
    operation: str,
    holder_ends: str,
) -> None:
    run = await store.create_run(INVOICE_REMINDER, {"account_id": "acct_1"})
    run = await store.transition_run(run.id, "running", context={"k": 1})
    events.clear()

    transaction = holder.transaction()
    await transaction.start()
    await holder.fetchval("SELECT 1 FROM squidmesh.runs WHERE id = $1 FOR UPDATE", run.id)
    before = await _snapshot(pool, run.id)
    holder_pid = holder.get_server_pid()

    task = asyncio.create_task(OPERATIONS[operation](store, run.id))
    await wait_until_blocked(monitor, blocked_by=holder_pid, timeout=TIMEOUT_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=TIMEOUT_S)
    assert task.cancelled()
    # The server-side statement must be gone too before the lock is released,
    # or it would go on to write once the holder lets go.
    await wait_until_not_blocked(monitor, blocked_by=holder_pid, timeout=TIMEOUT_S)

    if holder_ends == "commit":
        await transaction.commit()
    else:
        await transaction.rollback()

    assert await _snapshot(pool, run.id) == before
    assert events == []
    await _assert_pool_healthy(store, pool, run.id)


async def _assert_pool_healthy(store: RunStore, pool: asyncpg.Pool, run_id: uuid.UUID) -> None:
    # Hold every connection the pool has at once, so the one the cancelled
    # call used is among them.
    size = pool.get_max_size()
    conns = [await asyncio.wait_for(pool.acquire(), timeout=TIMEOUT_S) for _ in range(size)]
    try:
        for conn in conns:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT 1") == 1
            assert await conn.fetchval("SELECT txid_current_if_assigned()") is None
    finally:
        for conn in conns:
            await pool.release(conn)
    idle_in_transaction = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND state LIKE 'idle in transaction%'"
    )
    assert idle_in_transaction == 0
    # And the store works on it, on the same run.
    updated = await asyncio.wait_for(store.update_run(run_id, context={"after": 1}), TIMEOUT_S)
    assert updated.context == {"after": 1}
    moved = await asyncio.wait_for(store.transition_run(run_id, "failed"), timeout=TIMEOUT_S)
    assert moved.status is RunStatus.FAILED


async def test_timeout_while_waiting_is_a_cancellation_too(
    store: RunStore,
    pool: asyncpg.Pool,
    holder: asyncpg.Connection,
    monitor: asyncpg.Connection,
) -> None:
    run = await store.create_run(INVOICE_REMINDER, {"account_id": "acct_1"})
    async with holder.transaction():
        await holder.fetchval("SELECT 1 FROM squidmesh.runs WHERE id = $1 FOR UPDATE", run.id)
        before = await _snapshot(pool, run.id)
        task = asyncio.create_task(store.cancel_run(run.id))
        await wait_until_blocked(monitor, blocked_by=holder.get_server_pid(), timeout=TIMEOUT_S)
        # wait_for cancels the inner task when its timeout (here: none left) expires.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(task, timeout=0)
        assert task.cancelled()
        await wait_until_not_blocked(monitor, blocked_by=holder.get_server_pid(), timeout=TIMEOUT_S)
    assert await _snapshot(pool, run.id) == before
    await _assert_pool_healthy(store, pool, run.id)
