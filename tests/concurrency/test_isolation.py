"""Every guarantee holds whatever the session's default isolation level.

A user's database or pool may set ``default_transaction_isolation`` to
``repeatable read`` or ``serializable``. At those levels a statement that finds
a row changed after its snapshot is refused (serialization_failure) instead of
re-reading it, and a multi-statement transaction reads from one snapshot. Each
test here makes a writer of its own change the row while a store call waits
for the lock, then lets the store call go on: it must succeed and decide on
the committed state, exactly as at READ COMMITTED.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from squidmesh import Run, RunStatus, RunStore
from squidmesh.testing import create_database, drop_database, wait_until_blocked
from tests.integration.test_migrate import _cli
from tests.integration.workflows import INVOICE_REMINDER, WORKFLOWS

TIMEOUT_S = 30
PAYLOAD = {"account_id": "acct_1"}

# (where the default is set, the level)
STRICT = [
    ("database", "repeatable read"),
    ("database", "serializable"),
    ("pool", "repeatable read"),
    ("pool", "serializable"),
]


@pytest.fixture(params=STRICT, ids=lambda p: f"{p[0]}-{p[1].replace(' ', '_')}")
async def strict_store(request: Any, dsn: str) -> AsyncIterator[RunStore]:
    where, level = request.param
    settings: dict[str, str] = {}
    if where == "database":
        conn = await asyncpg.connect(dsn)
        try:
            db = await conn.fetchval("SELECT current_database()")
            await conn.execute(
                f"ALTER DATABASE \"{db}\" SET default_transaction_isolation = '{level}'"
            )
        finally:
            await conn.close()
    else:
        settings["default_transaction_isolation"] = level
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=16, server_settings=settings)
    try:
        shown = await pool.fetchval("SHOW default_transaction_isolation")
        assert shown == level  # the setting is really in force
        yield RunStore(pool, workflows=WORKFLOWS)
    finally:
        await pool.close()


async def _hold_and_change(
    holder: asyncpg.Connection,
    monitor: asyncpg.Connection,
    lock_sql: str,
    change_sql: str,
    args: tuple[object, ...],
    call: Any,
) -> Any:
    """Holder locks a row; the store call starts and blocks; holder changes it and commits."""
    transaction = holder.transaction()
    await transaction.start()
    try:
        await holder.execute(lock_sql, *args)
        task = asyncio.ensure_future(call)
        await wait_until_blocked(monitor, blocked_by=holder.get_server_pid())
        await holder.execute(change_sql, *args)
    except BaseException:
        await transaction.rollback()
        raise
    await transaction.commit()
    return await asyncio.wait_for(task, TIMEOUT_S)


async def _running_run(store: RunStore) -> Run:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    return await store.transition_run(run.id, RunStatus.RUNNING, current_step="approve")


async def test_transition_waits_for_a_concurrent_write_and_succeeds(
    strict_store: RunStore, holder: asyncpg.Connection, monitor: asyncpg.Connection
) -> None:
    run = await _running_run(strict_store)
    moved = await _hold_and_change(
        holder,
        monitor,
        "SELECT 1 FROM squidmesh.runs WHERE id = $1 FOR UPDATE",
        'UPDATE squidmesh.runs SET context = \'{"by": "holder"}\', version = version + 1'
        " WHERE id = $1",
        (run.id,),
        strict_store.transition_run(run.id, RunStatus.COMPLETED),
    )
    assert moved.status is RunStatus.COMPLETED
    assert moved.context == {"by": "holder"}  # decided on the committed row
    assert moved.version == run.version + 2


async def test_update_run_with_never_loses_an_increment(strict_store: RunStore) -> None:
    run = await strict_store.create_run(INVOICE_REMINDER, PAYLOAD)

    def increment(current: Run) -> dict[str, Any]:
        return {"context": {"n": current.context.get("n", 0) + 1}}

    async def worker() -> None:
        for _ in range(5):
            await strict_store.update_run_with(run.id, increment)

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(8))), TIMEOUT_S)
    final = await strict_store.get_run(run.id)
    assert final.context == {"n": 40}
    assert final.version == run.version + 40


async def test_pause_run_decides_on_a_cancel_committed_while_it_waited(
    strict_store: RunStore, holder: asyncpg.Connection, monitor: asyncpg.Connection
) -> None:
    run = await _running_run(strict_store)
    step_run = await strict_store.begin_step(run.id, "approve")
    attempt = await strict_store.begin_attempt(step_run.id)
    result = await _hold_and_change(
        holder,
        monitor,
        "SELECT 1 FROM squidmesh.runs WHERE id = $1 FOR UPDATE",
        "UPDATE squidmesh.runs SET status = 'cancelling', version = version + 1 WHERE id = $1",
        (run.id,),
        strict_store.pause_run(run.id, step_run.id, attempt.id),
    )
    assert result.from_status is RunStatus.CANCELLING
    assert result.run.status is RunStatus.CANCELLED
    assert result.finalized_step
    history = await strict_store.get_run(run.id, include_history=True)
    assert history.step_runs is not None
    assert history.step_runs[0].status == "failed"
    assert history.step_runs[0].attempts[0].status == "failed"


async def test_cancel_sees_the_paused_step_committed_while_it_waited(
    strict_store: RunStore, holder: asyncpg.Connection, monitor: asyncpg.Connection
) -> None:
    # The holder pauses the run and starts its step in the same transaction;
    # cancel_run must read the step run after the lock and fail it too.
    run = await _running_run(strict_store)
    step_id = uuid.uuid4()
    cancelled = await _hold_and_change(
        holder,
        monitor,
        "SELECT 1 FROM squidmesh.runs WHERE id = $1 FOR UPDATE",
        "WITH s AS (INSERT INTO squidmesh.step_runs (id, run_id, step, kind, status)"
        f" VALUES ('{step_id}', $1, 'approve', 'approval', 'running'))"
        " UPDATE squidmesh.runs SET status = 'paused', current_step = 'approve',"
        " version = version + 1 WHERE id = $1",
        (run.id,),
        strict_store.cancel_run(run.id),
    )
    assert cancelled.status is RunStatus.CANCELLED
    history = await strict_store.get_run(run.id, include_history=True)
    assert history.step_runs is not None
    assert [(s.id, s.status) for s in history.step_runs] == [(step_id, "failed")]


async def test_begin_step_returns_the_step_run_a_competitor_committed(
    strict_store: RunStore, holder: asyncpg.Connection, monitor: asyncpg.Connection
) -> None:
    run = await _running_run(strict_store)
    step_id = uuid.uuid4()
    transaction = holder.transaction()
    await transaction.start()
    try:
        await holder.execute(
            "INSERT INTO squidmesh.step_runs (id, run_id, step, status)"
            " VALUES ($1, $2, 'load_invoice', 'running')",
            step_id,
            run.id,
        )
        task = asyncio.ensure_future(strict_store.begin_step(run.id, "load_invoice"))
        await wait_until_blocked(monitor, blocked_by=holder.get_server_pid())
    except BaseException:
        await transaction.rollback()
        raise
    await transaction.commit()
    step_run = await asyncio.wait_for(task, TIMEOUT_S)
    assert step_run.id == step_id


async def test_begin_attempt_numbers_stay_unique_and_gap_free(
    strict_store: RunStore, holder: asyncpg.Connection, monitor: asyncpg.Connection
) -> None:
    run = await _running_run(strict_store)
    step_run = await strict_store.begin_step(run.id, "load_invoice")
    # One deterministic conflict: the holder rewrites the step run and adds
    # attempt 1 while begin_attempt waits for the step run's lock ...
    attempt = await _hold_and_change(
        holder,
        monitor,
        "SELECT 1 FROM squidmesh.step_runs WHERE id = $1 FOR UPDATE",
        "WITH a AS (INSERT INTO squidmesh.step_attempts (id, step_run_id, attempt_number,"
        f" status) VALUES ('{uuid.uuid4()}', $1, 1, 'running'))"
        " UPDATE squidmesh.step_runs SET updated_at = clock_timestamp() WHERE id = $1",
        (step_run.id,),
        strict_store.begin_attempt(step_run.id),
    )
    assert attempt.attempt_number == 2
    # ... then a crowd.
    attempts = await asyncio.wait_for(
        asyncio.gather(*(strict_store.begin_attempt(step_run.id) for _ in range(10))),
        TIMEOUT_S,
    )
    assert sorted(a.attempt_number for a in attempts) == list(range(3, 13))


@pytest.fixture
async def strict_empty_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    name = f"e_{uuid.uuid4().hex}"
    dsn = await create_database(pg_admin_dsn, name)
    conn = await asyncpg.connect(pg_admin_dsn)
    try:
        await conn.execute(
            f"ALTER DATABASE \"{name}\" SET default_transaction_isolation = 'repeatable read'"
        )
    finally:
        await conn.close()
    try:
        yield dsn
    finally:
        await drop_database(pg_admin_dsn, name)


async def test_migrate_from_four_processes_under_repeatable_read(strict_empty_dsn: str) -> None:
    results = await asyncio.gather(
        *(asyncio.to_thread(_cli, "migrate", "--dsn", strict_empty_dsn) for _ in range(4))
    )
    for result in results:
        assert result.returncode == 0, result.stderr
    conn = await asyncpg.connect(strict_empty_dsn)
    try:
        rows = await conn.fetch("SELECT version FROM squidmesh.schema_migrations ORDER BY 1")
    finally:
        await conn.close()
    from squidmesh._sql import migrations

    assert [r[0] for r in rows] == [version for version, _ in migrations()]
