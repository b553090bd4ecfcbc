"""The listing statements settle on their generic plan: after the five custom
plans PostgreSQL makes for a prepared statement, it reuses one plan instead of
planning every call again (see the header of sql/queries/listing.sql)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

import squidmesh
from squidmesh import RunStore
from squidmesh._queries import SQL

# Enough runs of the listed status that a plan knowing "LIMIT 51" is cheaper
# than one pricing an unknown limit at 10 % of them: the case where the plan
# cache kept planning every call.
LOAD = """
INSERT INTO squidmesh.runs (id, workflow, trigger, status, inserted_at, updated_at)
SELECT gen_random_uuid(), 'wf_' || (g % 4), 'manual',
       (ARRAY['running', 'completed', 'failed', 'paused'])[1 + g % 4],
       timestamptz '2025-01-01 00:00:00+00' + g * interval '1 second',
       timestamptz '2025-01-01 00:00:00+00' + g * interval '1 second'
FROM generate_series(1, 20000) AS g
"""


@pytest.fixture
async def one_connection(dsn: str, pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    await pool.execute(LOAD)
    await pool.execute("ANALYZE squidmesh.runs")
    single = await asyncpg.create_pool(dsn, min_size=1, max_size=1, reset=squidmesh.no_reset)
    try:
        yield single
    finally:
        await single.close()


async def test_listing_statements_reuse_their_generic_plan(
    one_connection: asyncpg.Pool,
) -> None:
    store = RunStore(one_connection)
    first = await store.page_runs(status="running", limit=50)
    later = first.next_cursor
    for _ in range(8):
        await store.list_runs(status="running", limit=50)
        await store.list_runs(workflow="wf_1", status="running", limit=50)
        await store.page_runs(status="running", limit=50, cursor=later)
        await store.page_runs(limit=50)
        await store.page_runs(workflow="wf_1", limit=50)
        await store.page_runs(trigger="manual", status=["running", "failed"], limit=50)
    async with one_connection.acquire() as conn:
        plans = {
            r["statement"]: (r["generic_plans"], r["custom_plans"])
            for r in await conn.fetch(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
            )
        }
    for query in (
        SQL.list_runs_by_status,
        SQL.list_runs_by_workflow_status,
        SQL.select_runs,
        SQL.select_runs_by_workflow,
        SQL.select_runs_by_trigger,
    ):
        generic, custom = plans[query]
        assert custom <= 5 and generic > 0, (query[:60], generic, custom)
