"""Walking every page of page_runs while other tasks insert runs.

10,000 runs exist when the walk begins. While it goes on, other tasks insert
runs through the store (the newest runs, ahead of the walk) and with raw SQL
at past instants, on the very timestamps of existing runs included (behind
the walk, at the cursor, and ahead of it: what a transaction that read the
clock before others and committed after them looks like). Every run that
existed at the start must come back exactly once, and nothing twice.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from squidmesh import Run, RunStore
from tests.concurrency.conftest import TIMEOUT_S
from tests.integration.workflows import ETL_DAILY, INVOICE_REMINDER

RUNS = 10_000
PAGE = 97  # not a divisor of anything here, so page edges fall everywhere

SEED = """
INSERT INTO squidmesh.runs
    (id, workflow, trigger, status, inserted_at, updated_at)
SELECT gen_random_uuid(),
       CASE WHEN g % 3 = 0 THEN $2 ELSE $3 END,
       'manual',
       (ARRAY['completed', 'completed', 'failed', 'running', 'pending', 'cancelled'])[1 + g % 6],
       -- three runs per instant: ties are ordered by id
       timestamptz '2025-01-01 00:00:00+00' + (g / 3) * interval '1 second',
       timestamptz '2025-01-01 00:00:00+00' + (g / 3) * interval '1 second'
FROM generate_series(1, $1::int) AS g
"""

# A run at the instant of a random existing run, or between two of them.
BACKDATED = """
INSERT INTO squidmesh.runs (id, workflow, trigger, status, inserted_at, updated_at)
SELECT $1, $2, 'manual', $3, t.at, t.at
FROM (SELECT r.inserted_at + $4 * interval '1 microsecond' AS at
      FROM squidmesh.runs r ORDER BY r.inserted_at DESC, r.id DESC OFFSET $5 LIMIT 1) t
"""


async def _walk(store: RunStore, **filters: Any) -> list[Run]:
    runs: list[Run] = []
    cursor: str | None = None
    while True:
        page = await store.page_runs(limit=PAGE, cursor=cursor, **filters)
        runs += page.runs
        if page.next_cursor is None:
            return runs
        cursor = page.next_cursor
        await asyncio.sleep(0)  # let the inserters in between pages too


async def _insert_backdated(pool: asyncpg.Pool, rng: random.Random, inserted: list[UUID]) -> None:
    while True:
        run_id = uuid4()
        status = rng.choice(["completed", "failed", "running"])
        # 0: exactly at an existing run's instant; otherwise just after it.
        offset = rng.choice([0, 0, 1, 500_000])
        await pool.execute(
            BACKDATED,
            run_id,
            INVOICE_REMINDER.name,
            status,
            offset,
            rng.randrange(RUNS),
        )
        inserted.append(run_id)


async def _create(store: RunStore, inserted: list[UUID]) -> None:
    while True:
        run = await store.create_run(ETL_DAILY, {})
        inserted.append(run.id)


def _check(walked: list[Run], before: set[UUID]) -> None:
    counts = Counter(r.id for r in walked)
    assert not [i for i, n in counts.items() if n > 1], "a run came back twice"
    assert before <= counts.keys(), f"{len(before - counts.keys())} existing runs were skipped"
    keys = [(r.inserted_at, r.id) for r in walked]
    assert all(a > b for a, b in itertools.pairwise(keys)), "not newest first"


async def test_walking_all_pages_while_others_insert_returns_each_existing_run_once(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    await pool.execute(SEED, RUNS, INVOICE_REMINDER.name, ETL_DAILY.name)
    rows = await pool.fetch("SELECT id, workflow, status FROM squidmesh.runs")
    assert len(rows) == RUNS
    everything = {r["id"] for r in rows}
    some = {
        r["id"]
        for r in rows
        if r["workflow"] == INVOICE_REMINDER.name and r["status"] in ("completed", "running")
    }
    rng = random.Random(20250301)
    inserted: list[UUID] = []
    writers = [
        asyncio.create_task(_insert_backdated(pool, random.Random(rng.random()), inserted))
        for _ in range(3)
    ] + [asyncio.create_task(_create(store, inserted))]
    try:
        async with asyncio.timeout(TIMEOUT_S):
            walked_all, walked_some = await asyncio.gather(
                _walk(store),
                _walk(store, workflow=INVOICE_REMINDER, status=["completed", "running"]),
            )
    finally:
        for task in writers:
            task.cancel()
        await asyncio.gather(*writers, return_exceptions=True)

    _check(walked_all, everything)
    _check(walked_some, some)
    assert {r.workflow for r in walked_some} == {INVOICE_REMINDER.name}
    assert {r.status for r in walked_some} <= {"completed", "running"}
    # The race happened: runs were inserted during the walks, and some of the
    # backdated ones landed in pages not yet read and came back.
    assert len(inserted) >= 50
    assert {r.id for r in walked_all} & set(inserted)
