"""claim_runs under concurrency: claimers in this process and in others.

Eight claimers (four asyncio tasks here, each with a store and pool of its
own, and four OS processes running a small script against the same
database) drain 2,000 pending runs in batches of random sizes, some of them
for one workflow only: every run must be claimed exactly once, and each
claim must be one pending -> running move. Then: a claim never waits for a
run another transaction holds, be it a plain row lock or another claimer's
uncommitted claim; it takes the next free runs at once.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from squidmesh import Run, RunStatus, RunStore, RunTransitioned
from squidmesh._queries import SQL
from tests.concurrency.conftest import TIMEOUT_S

ROOT = Path(__file__).resolve().parents[2]
RUNS = 2_000
WORKFLOWS = ("wf_a", "wf_b")
NO_CHANGES = (False, None, False, None, False, None)

# Pending runs of two workflows, three per instant (ties ordered by id), and
# runs in other statuses that no claim may touch.
SEED = """
INSERT INTO squidmesh.runs (id, workflow, trigger, status, inserted_at, updated_at)
SELECT gen_random_uuid(),
       CASE WHEN g % 2 = 0 THEN 'wf_a' ELSE 'wf_b' END,
       'manual',
       CASE WHEN g <= $1 THEN 'pending'
            ELSE (ARRAY['running', 'paused', 'completed', 'failed'])[1 + g % 4] END,
       timestamptz '2025-01-01 00:00:00+00' + (g / 3) * interval '1 millisecond',
       timestamptz '2025-01-01 00:00:00+00' + (g / 3) * interval '1 millisecond'
FROM generate_series(1, $1::int + $2::int) AS g
"""
DECOYS = 200

# A claimer in another OS process: connects, says "ready", waits for a line
# on stdin, claims until a claim comes back empty, then prints the batches it
# got (run ids as JSON).
WORKER = """
import asyncio, json, random, sys

import asyncpg

from squidmesh import RunStore


async def main(dsn: str, workflow: str, isolation: str, seed: int) -> None:
    rng = random.Random(seed)
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=1,
        server_settings={"default_transaction_isolation": isolation},
    )
    batches = []
    try:
        store = RunStore(pool)
        await pool.fetchval("SELECT 1")
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        while True:
            runs = await store.claim_runs(workflow=workflow or None, limit=rng.randint(1, 25))
            if not runs:
                break
            batches.append([str(run.id) for run in runs])
    finally:
        await pool.close()
    print(json.dumps(batches), flush=True)


asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


class Claimer:
    """One claimer in this process: its own pool, store and events."""

    def __init__(self, pool: asyncpg.Pool, workflow: str | None, seed: int) -> None:
        self.events: list[Any] = []
        self.store = RunStore(pool, listeners=[self.events.append])
        self.workflow = workflow
        self.rng = random.Random(seed)
        self.batches: list[list[Run]] = []

    async def drain(self, go: asyncio.Event) -> None:
        await go.wait()
        while True:
            runs = await self.store.claim_runs(
                workflow=self.workflow, limit=self.rng.randint(1, 25)
            )
            if not runs:
                return
            self.batches.append(runs)


@pytest.fixture
async def pools(dsn: str, request: pytest.FixtureRequest) -> AsyncIterator[list[asyncpg.Pool]]:
    isolation: str = request.param
    opened = [
        await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=1,
            server_settings={"default_transaction_isolation": isolation},
        )
        for _ in range(4)
    ]
    try:
        yield opened
    finally:
        for pool in opened:
            await pool.close()


async def _start_worker(
    dsn: str, workflow: str | None, isolation: str, seed: int
) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WORKER,
        dsn,
        workflow or "",
        isolation,
        str(seed),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=TIMEOUT_S)
    if line != b"ready\n":
        _, err = await proc.communicate()
        raise AssertionError(f"worker did not start: {line!r}\n{err.decode()}")
    return proc


async def _worker_batches(proc: asyncio.subprocess.Process) -> list[list[UUID]]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout=TIMEOUT_S)
    assert proc.returncode == 0, err.decode()
    return [[UUID(i) for i in batch] for batch in json.loads(out)]


async def _kill(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    "pools", ["read committed", "serializable"], indirect=True, ids=lambda i: i.replace(" ", "_")
)
async def test_eight_claimers_in_three_processes_claim_each_run_exactly_once(
    dsn: str, pool: asyncpg.Pool, pools: list[asyncpg.Pool]
) -> None:
    # Under serializable as the sessions' default too: a claim runs at READ
    # COMMITTED whatever the default, so a run another claimer took after
    # the snapshot is skipped, not a serialization failure for the caller.
    isolation = await pools[0].fetchval("SHOW default_transaction_isolation")
    await pool.execute(SEED, RUNS, DECOYS)
    pending_ids = {
        r["id"] for r in await pool.fetch("SELECT id FROM squidmesh.runs WHERE status = 'pending'")
    }
    assert len(pending_ids) == RUNS
    decoys = await pool.fetch(
        "SELECT id, status, version FROM squidmesh.runs WHERE status <> 'pending' ORDER BY id"
    )

    # Half of the claimers of each kind take one workflow's runs only.
    filters: list[str | None] = [None, "wf_a", None, "wf_b"]
    procs: list[asyncio.subprocess.Process] = []
    try:
        procs = list(
            await asyncio.gather(
                *(_start_worker(dsn, wf, isolation, 100 + i) for i, wf in enumerate(filters))
            )
        )
        claimers = [Claimer(p, wf, i) for i, (p, wf) in enumerate(zip(pools, filters, strict=True))]
        go = asyncio.Event()
        tasks = [asyncio.create_task(c.drain(go)) for c in claimers]
        # Every claimer is connected and waiting: start them together.
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        go.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=TIMEOUT_S)
        remote = [await _worker_batches(proc) for proc in procs]
    finally:
        await _kill(procs)

    local = [[[r.id for r in batch] for batch in c.batches] for c in claimers]
    per_claimer = [sum(map(len, batches)) for batches in local + remote]
    claimed = [run_id for batches in local + remote for batch in batches for run_id in batch]
    twice = [run_id for run_id, n in Counter(claimed).items() if n > 1]
    assert not twice, f"claimed more than once: {twice[:5]} (per claimer: {per_claimer})"
    assert set(claimed) == pending_ids, per_claimer
    # Every claimer took part in the race (each gets about 100 to 500 runs).
    assert all(n > 0 for n in per_claimer), per_claimer

    # Each batch came back oldest first, and for its workflow only.
    keys = {
        r["id"]: (r["inserted_at"], r["id"], r["workflow"])
        for r in await pool.fetch("SELECT id, inserted_at, workflow FROM squidmesh.runs")
    }
    for wf, batches in zip(filters * 2, local + remote, strict=True):
        for batch in batches:
            assert [keys[i][:2] for i in batch] == sorted(keys[i][:2] for i in batch)
            if wf is not None:
                assert {keys[i][2] for i in batch} == {wf}

    # In the database: each run moved once, pending -> running, version 2;
    # the other runs untouched.
    after = await pool.fetch(
        "SELECT status, version, count(*) AS n FROM squidmesh.runs"
        " WHERE id = ANY($1::uuid[]) GROUP BY status, version",
        list(pending_ids),
    )
    assert [tuple(r) for r in after] == [("running", 2, RUNS)]
    moves = await pool.fetch(
        "SELECT run_id, count(*) AS n FROM squidmesh.run_transitions"
        " WHERE from_status = 'pending' AND to_status = 'running' GROUP BY run_id"
    )
    assert {r["run_id"] for r in moves} == pending_ids
    assert {r["n"] for r in moves} == {1}
    assert (
        await pool.fetch(
            "SELECT id, status, version FROM squidmesh.runs WHERE status <> 'running'"
            " OR NOT (id = ANY($1::uuid[])) ORDER BY id",
            list(pending_ids),
        )
        == decoys
    )

    # Each store reported the runs it claimed, once each, after commit.
    for claimer in claimers:
        runs = [run for batch in claimer.batches for run in batch]
        assert claimer.events == [
            RunTransitioned(run=run, from_status=RunStatus.PENDING, to_status=RunStatus.RUNNING)
            for run in runs
        ]


# -- claimers never wait -----------------------------------------------------------------


async def _pending(
    pool: asyncpg.Pool, n: int, workflow: str = "wf_a", after: int = 0
) -> list[UUID]:
    """n pending runs, oldest first, one millisecond apart from ``after`` ms."""
    rows = await pool.fetch(
        """
        INSERT INTO squidmesh.runs (id, workflow, trigger, status, inserted_at, updated_at)
        SELECT gen_random_uuid(), $2, 'manual', 'pending',
               timestamptz '2025-01-01 00:00:00+00' + ($3 + g) * interval '1 millisecond',
               timestamptz '2025-01-01 00:00:00+00' + ($3 + g) * interval '1 millisecond'
        FROM generate_series(1, $1::int) AS g
        RETURNING id, inserted_at
        """,
        n,
        workflow,
        after,
    )
    return [r["id"] for r in sorted(rows, key=lambda r: (r["inserted_at"], r["id"]))]


async def _claim(store: RunStore, **kwargs: Any) -> list[UUID]:
    # Bounded: a claim that waited for the holder would wait until the
    # holder ends, which it does only after this returns.
    runs = await asyncio.wait_for(store.claim_runs(**kwargs), timeout=TIMEOUT_S / 3)
    return [r.id for r in runs]


async def _statuses(pool: asyncpg.Pool, ids: list[UUID]) -> list[tuple[str, int]]:
    rows = await pool.fetch(
        "SELECT id, status, version FROM squidmesh.runs WHERE id = ANY($1::uuid[])", ids
    )
    by_id = {r["id"]: (r["status"], r["version"]) for r in rows}
    return [by_id[i] for i in ids]


async def test_a_claim_skips_rows_another_transaction_has_locked(
    store: RunStore, pool: asyncpg.Pool, holder: asyncpg.Connection
) -> None:
    ids = await _pending(pool, 20)
    async with holder.transaction():
        locked = await holder.fetch(
            "SELECT id FROM squidmesh.runs WHERE status = 'pending'"
            " ORDER BY inserted_at, id LIMIT 5 FOR UPDATE"
        )
        assert [r["id"] for r in locked] == ids[:5]
        # At once, the next ones in order, and again: the held runs are passed over.
        assert await _claim(store, limit=10) == ids[5:15]
        assert await _claim(store, workflow="wf_a", limit=3) == ids[15:18]
        assert await _claim(store, limit=1000) == ids[18:]
        assert await _claim(store) == []
        assert await _statuses(pool, ids[:5]) == [("pending", 1)] * 5
    # Released: they are claimed now, oldest first.
    assert await _claim(store) == ids[:5]


async def test_a_claim_skips_the_runs_of_another_claimers_open_claim(
    store: RunStore, pool: asyncpg.Pool, holder: asyncpg.Connection
) -> None:
    ids = await _pending(pool, 12)
    other = await _pending(pool, 4, "wf_b", after=1000)  # newer than all of ids
    transaction = holder.transaction()
    await transaction.start()
    try:
        # Another claimer's claim, not yet committed: its runs are locked.
        theirs = await holder.fetch(SQL.claim_runs, 4, *NO_CHANGES)
        assert {UUID(bytes=r["id"]) for r in theirs} == set(ids[:4])
        theirs_wf = await holder.fetch(SQL.claim_runs_by_workflow, 2, "wf_b", *NO_CHANGES)
        assert {UUID(bytes=r["id"]) for r in theirs_wf} == set(other[:2])

        assert await _claim(store, limit=5) == ids[4:9]
        assert await _claim(store, workflow="wf_b") == other[2:]
        assert await _claim(store, workflow="wf_a", limit=100) == ids[9:]
        assert await _claim(store) == []
    finally:
        # The other claimer gives up: its runs are pending again, unchanged.
        await transaction.rollback()
    assert await _statuses(pool, ids[:4] + other[:2]) == [("pending", 1)] * 6
    assert await _claim(store, limit=100) == ids[:4] + other[:2]
    moves = await pool.fetchval(
        "SELECT count(*) FROM squidmesh.run_transitions WHERE to_status = 'running'"
    )
    assert moves == len(ids) + len(other)


async def test_claimers_racing_a_holder_never_block(
    store: RunStore, pool: asyncpg.Pool, holder: asyncpg.Connection
) -> None:
    ids = await _pending(pool, 300)
    async with holder.transaction():
        # Every other run of the oldest 100 is held.
        held = ids[:100:2]
        await holder.execute(
            "SELECT 1 FROM squidmesh.runs WHERE id = ANY($1::uuid[]) FOR UPDATE", held
        )
        claimed: list[list[UUID]] = []

        async def claimer() -> None:
            while batch := await _claim(store, limit=7):
                claimed.append(batch)
                # Nobody is waiting for a lock, ever.
                waiting = await pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                assert waiting == 0

        await asyncio.gather(*(claimer() for _ in range(6)))
        got = [run_id for batch in claimed for run_id in batch]
        assert sorted(got) == sorted(set(ids) - set(held))
    assert await _claim(store, limit=1000) == held
