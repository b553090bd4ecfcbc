"""Concurrent progression of one run: the row lock serialises read-compute-write.

"Dispatch exactly once per legal step" is asserted as: every progress_run call
that commits is one step; each committed step dispatched exactly once, with
the run as that step wrote it (a job row carries the step number, the status
and the version the dispatch saw); the move pending -> running happens in
exactly one step (one RunTransitioned), and every later step, seeing running
under the lock, only dispatches. A step whose dispatch failed left neither a
job nor a change, so the next worker takes that step again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from squidmesh import Run, RunStatus, RunStore, RunTransitioned, progress
from squidmesh.testing import wait_until_blocked

S = RunStatus
TIMEOUT_S = 60


@pytest.fixture
async def jobs(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "CREATE TABLE public.jobs (id bigserial PRIMARY KEY, run_id uuid NOT NULL,"
        " step int NOT NULL UNIQUE, seen_status text NOT NULL, seen_version int NOT NULL)"
    )


async def enqueue(conn: Any, run: Run) -> None:
    await conn.execute(
        "INSERT INTO jobs (run_id, step, seen_status, seen_version) VALUES ($1, $2, $3, $4)",
        run.id,
        run.context["steps"],
        run.status.value,
        run.version,
    )


def next_step(run: Run) -> dict[str, Any]:
    return {"context": {"steps": run.context.get("steps", 0) + 1}}


async def new_run(store: RunStore, events: list[Any]) -> Run:
    run = await store.create_run("etl.daily", {})
    events.clear()
    return run


async def test_update_run_with_never_loses_an_increment(store: RunStore, events: list[Any]) -> None:
    run = await new_run(store, events)

    async def increment(current: Run) -> dict[str, Any]:
        return {"context": {"count": current.context.get("count", 0) + 1}}

    async def worker() -> None:
        for _ in range(10):
            await store.update_run_with(run.id, increment)

    async with asyncio.timeout(TIMEOUT_S):
        await asyncio.gather(*(worker() for _ in range(20)))
    final = await store.get_run(run.id)
    assert final.context == {"count": 200}
    assert final.version == run.version + 200
    assert events == []


async def test_second_worker_waits_then_only_dispatches(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None
) -> None:
    run = await new_run(store, events)
    first_inside = asyncio.Event()
    release_first = asyncio.Event()
    calls: list[Run] = []

    async def dispatch(conn: Any, current: Run) -> None:
        calls.append(current)
        await enqueue(conn, current)
        if len(calls) == 1:
            first_inside.set()
            await release_first.wait()  # hold the row lock while B arrives

    op = progress.TransitionOrDispatch(S.RUNNING, dispatch)
    async with asyncio.timeout(TIMEOUT_S):
        task_a = asyncio.create_task(store.progress_run(run.id, next_step, op))
        await first_inside.wait()
        task_b = asyncio.create_task(store.progress_run(run.id, next_step, op))
        await wait_until_blocked(pool, timeout=TIMEOUT_S)
        assert len(calls) == 1  # B is queued on the lock, not dispatching
        release_first.set()
        result_a, result_b = await asyncio.gather(task_a, task_b)

    assert result_a is not None and result_b is not None
    assert (result_a.status, result_a.context) == (S.RUNNING, {"steps": 1})
    assert (result_b.status, result_b.context) == (S.RUNNING, {"steps": 2})
    # B decided on A's committed state: it saw running, so it did not move.
    assert calls == [result_a, result_b]
    rows = await pool.fetch("SELECT step, seen_status, seen_version FROM jobs ORDER BY step")
    assert [tuple(r) for r in rows] == [
        (1, "running", result_a.version),
        (2, "running", result_b.version),
    ]
    assert events == [RunTransitioned(run=result_a, from_status=S.PENDING, to_status=S.RUNNING)]


async def test_failed_step_is_taken_again_by_the_waiting_worker(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None
) -> None:
    run = await new_run(store, events)
    first_inside = asyncio.Event()
    release_first = asyncio.Event()
    calls: list[Run] = []

    async def dispatch(conn: Any, current: Run) -> None:
        calls.append(current)
        await enqueue(conn, current)
        if len(calls) == 1:
            first_inside.set()
            await release_first.wait()
            raise RuntimeError("worker A's queue is down")

    op = progress.TransitionOrDispatch(S.RUNNING, dispatch)
    async with asyncio.timeout(TIMEOUT_S):
        task_a = asyncio.create_task(store.progress_run(run.id, next_step, op))
        await first_inside.wait()
        task_b = asyncio.create_task(store.progress_run(run.id, next_step, op))
        await wait_until_blocked(pool, timeout=TIMEOUT_S)
        release_first.set()
        result_a, result_b = await asyncio.gather(task_a, task_b, return_exceptions=True)

    assert isinstance(result_a, RuntimeError)
    assert isinstance(result_b, Run)
    # A's step left nothing: B read pending, took step 1 and made the move.
    assert (result_b.status, result_b.context) == (S.RUNNING, {"steps": 1})
    assert [(c.status, c.context) for c in calls] == [
        (S.RUNNING, {"steps": 1}),
        (S.RUNNING, {"steps": 1}),
    ]
    rows = await pool.fetch("SELECT step, seen_status, seen_version FROM jobs ORDER BY step")
    assert [tuple(r) for r in rows] == [(1, "running", result_b.version)]
    assert events == [RunTransitioned(run=result_b, from_status=S.PENDING, to_status=S.RUNNING)]


@pytest.mark.parametrize("or_fail", [False, True], ids=["TransitionOrDispatch", "...OrFail"])
async def test_many_workers_one_move_one_dispatch_per_step(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None, or_fail: bool
) -> None:
    workers = 12
    run = await new_run(store, events)

    def never_called(current: Run, exc: Exception) -> dict[str, Any]:
        raise AssertionError(f"no dispatch fails here: {exc!r}")

    op: progress.Operation = (
        progress.TransitionOrDispatchOrFail(S.RUNNING, enqueue, never_called)
        if or_fail
        else progress.TransitionOrDispatch(S.RUNNING, enqueue)
    )
    async with asyncio.timeout(TIMEOUT_S):
        results = await asyncio.gather(
            *(store.progress_run(run.id, next_step, op) for _ in range(workers))
        )

    assert sorted(r.context["steps"] for r in results if r is not None) == list(
        range(1, workers + 1)
    )
    rows = await pool.fetch("SELECT step, seen_status, seen_version FROM jobs ORDER BY step")
    assert [r["step"] for r in rows] == list(range(1, workers + 1))
    assert {r["seen_status"] for r in rows} == {"running"}
    versions = [r["seen_version"] for r in rows]
    assert versions == sorted(versions) and len(set(versions)) == workers
    moves = [e for e in events if isinstance(e, RunTransitioned)]
    assert [(e.from_status, e.to_status) for e in moves] == [(S.PENDING, S.RUNNING)]
    assert moves[0].run.context == {"steps": 1}
    final = await store.get_run(run.id)
    assert final.context == {"steps": workers} and final.status is S.RUNNING
