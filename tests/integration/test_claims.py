"""claim_runs: which runs it takes, in what order, what it writes and reports,
what it refuses, and the plans of its two statements.

The races between claimers (in-process and across OS processes) are in
tests/concurrency/test_claim_races.py.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from squidmesh import (
    InvalidArgument,
    InvalidRun,
    Run,
    RunChanges,
    RunStatus,
    RunStore,
    RunTransitioned,
    Step,
    Trigger,
    Workflow,
)
from squidmesh._queries import SQL, Conn
from tests.integration.workflows import ETL_DAILY, INVOICE_REMINDER

S = RunStatus
PAYLOAD = {"account_id": "acct-1"}
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)

# A workflow the test store does not know: its runs are made by a store of
# their own, and claimed by name.
UNREGISTERED = Workflow("ops.unregistered", triggers=[Trigger("manual")], steps=[Step("only")])


# -- helpers ---------------------------------------------------------------------------


async def pending(store: RunStore, n: int, workflow: Workflow = INVOICE_REMINDER) -> list[Run]:
    payload = PAYLOAD if workflow is INVOICE_REMINDER else {}
    return [await store.create_run(workflow, payload) for _ in range(n)]


async def set_inserted_at(pool: asyncpg.Pool, stamps: dict[UUID, dt.datetime]) -> None:
    """Give runs the inserted_at (and updated_at) given, in a replica-mode
    transaction: the runs_write trigger would stamp updated_at and bump version."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.executemany(
            "UPDATE squidmesh.runs SET inserted_at = $2, updated_at = $2 WHERE id = $1",
            list(stamps.items()),
        )


async def force_status(pool: asyncpg.Pool, run_id: UUID, status: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL squidmesh.unchecked_moves = on")
        await conn.execute("UPDATE squidmesh.runs SET status = $2 WHERE id = $1", run_id, status)


async def snapshot(pool: asyncpg.Pool) -> list[tuple[Any, ...]]:
    """Every run as stored, and the size of the transition log."""
    runs = await pool.fetch(
        "SELECT id, status, version, updated_at, context::text, current_step,"
        " last_error::text FROM squidmesh.runs ORDER BY id"
    )
    logged = await pool.fetchval("SELECT count(*) FROM squidmesh.run_transitions")
    return [tuple(r) for r in runs] + [("log", logged)]


def key(run: Run) -> tuple[dt.datetime, UUID]:
    return (run.inserted_at, run.id)


# -- what is claimed, in what order ------------------------------------------------------


async def test_claims_the_oldest_pending_runs_first_up_to_the_limit(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    runs = await pending(store, 7)
    # inserted_at against creation order, with ties (decided by id): the
    # order is (inserted_at, id), not creation or id alone.
    offsets = [5, 1, 3, 1, 0, 3, 2]
    await set_inserted_at(
        pool, {r.id: T0 + dt.timedelta(seconds=s) for r, s in zip(runs, offsets, strict=True)}
    )
    stored = {r.id: await store.get_run(r.id) for r in runs}
    expected = sorted(stored.values(), key=key)

    first = await store.claim_runs(limit=3)
    assert [r.id for r in first] == [r.id for r in expected[:3]]
    second = await store.claim_runs(limit=10)
    assert [r.id for r in second] == [r.id for r in expected[3:]]
    assert await store.claim_runs() == []

    for run in first + second:
        before = stored[run.id]
        assert run.status == S.RUNNING
        assert run.version == before.version + 1
        assert run.updated_at > before.updated_at
        assert run.inserted_at == before.inserted_at
        # Nothing asked to change: the fields are as they were.
        assert (run.context, run.current_step, run.last_error) == (
            before.context,
            before.current_step,
            before.last_error,
        )
        assert await store.get_run(run.id) == run


async def test_the_default_limit_is_ten(store: RunStore) -> None:
    await pending(store, 12)
    assert len(await store.claim_runs()) == 10
    assert len(await store.claim_runs()) == 2


async def test_a_limit_of_one_and_of_a_thousand(store: RunStore) -> None:
    runs = await pending(store, 3)
    assert [r.id for r in await store.claim_runs(limit=1)] == [runs[0].id]
    assert [r.id for r in await store.claim_runs(limit=1000)] == [r.id for r in runs[1:]]


async def test_runs_in_other_statuses_are_left_alone(store: RunStore, pool: asyncpg.Pool) -> None:
    runs = await pending(store, 9)
    others = runs[:8]
    for run, status in zip(others, S, strict=False):
        if status is not S.PENDING:
            await force_status(pool, run.id, status.value)
    others = [r for r in others if (await store.get_run(r.id)).status is not S.PENDING]
    assert len(others) == 7  # every status but pending
    before = {r.id: await store.get_run(r.id) for r in others}
    claimable = {r.id for r in runs} - set(before)

    claimed = await store.claim_runs(limit=1000)
    assert {r.id for r in claimed} == claimable
    for run_id, run in before.items():
        assert await store.get_run(run_id) == run  # same status, same version


async def test_a_workflow_filter_takes_only_that_workflows_runs(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    invoices = await pending(store, 3)
    etl = await pending(store, 3, ETL_DAILY)

    by_name = await store.claim_runs(workflow="etl.daily", limit=2)
    assert [r.id for r in by_name] == [r.id for r in etl[:2]]
    by_definition = await store.claim_runs(workflow=ETL_DAILY, limit=5)
    assert [r.id for r in by_definition] == [etl[2].id]
    assert await store.claim_runs(workflow=ETL_DAILY) == []
    for run in invoices:
        assert (await store.get_run(run.id)).status is S.PENDING
    # A workflow no run has: nothing, and no error.
    assert await store.claim_runs(workflow="no.such.workflow") == []
    assert [r.id for r in await store.claim_runs()] == [r.id for r in invoices]


async def test_a_workflow_need_not_be_registered(store: RunStore, pool: asyncpg.Pool) -> None:
    assert UNREGISTERED.name not in store.workflows
    other = await RunStore(pool, workflows=[UNREGISTERED]).create_run(UNREGISTERED, {})
    await pending(store, 1)

    claimed = await store.claim_runs(workflow=UNREGISTERED.name)
    assert [r.id for r in claimed] == [other.id]
    assert claimed[0].workflow == UNREGISTERED.name
    assert claimed[0].status is S.RUNNING


async def test_an_empty_queue_claims_nothing(store: RunStore, events: list[Any]) -> None:
    assert await store.claim_runs() == []
    assert await store.claim_runs(workflow=ETL_DAILY) == []
    assert events == []


# -- what is written -----------------------------------------------------------------


async def test_changes_are_written_on_every_claimed_run(store: RunStore) -> None:
    await pending(store, 2)
    claimed = await store.claim_runs(
        changes={"context": {"worker": "w-1"}, "current_step": "send_email"}
    )
    assert len(claimed) == 2
    for run in claimed:
        assert run.context == {"worker": "w-1"}
        assert run.current_step == "send_email"
        assert run.last_error is None  # not given: unchanged
        assert await store.get_run(run.id) == run


async def test_changes_as_a_struct_and_none_clears(store: RunStore) -> None:
    (run,) = await pending(store, 1)
    await store.update_run(run.id, context={"a": 1}, last_error={"message": "earlier"})
    (claimed,) = await store.claim_runs(
        changes=RunChanges(context=None, current_step=None, last_error=None)
    )
    assert claimed.context == {}
    assert claimed.current_step is None
    assert claimed.last_error is None
    assert claimed.version == 3  # created, updated, claimed


async def test_a_claim_appends_pending_to_running_to_the_transition_log(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    runs = await pending(store, 2)
    claimed = await store.claim_runs(limit=2)
    assert [r.id for r in claimed] == [r.id for r in runs]
    for run in claimed:
        rows = await pool.fetch(
            "SELECT * FROM squidmesh.run_transitions WHERE run_id = $1 ORDER BY run_version",
            run.id,
        )
        moves = [(r["from_status"], r["to_status"]) for r in rows]
        assert moves.count(("pending", "running")) == 1
        last = rows[-1]
        assert (last["from_status"], last["to_status"]) == ("pending", "running")
        assert last["run_version"] == run.version
        assert last["workflow"] == run.workflow
        assert last["at"] == run.updated_at


# -- events ----------------------------------------------------------------------------


async def test_one_run_transitioned_per_claimed_run_in_order(
    store: RunStore, events: list[Any]
) -> None:
    await pending(store, 3)
    events.clear()
    claimed = await store.claim_runs(limit=5)
    assert events == [
        RunTransitioned(run=run, from_status=S.PENDING, to_status=S.RUNNING) for run in claimed
    ]


async def test_events_are_delivered_after_commit(pool: asyncpg.Pool) -> None:
    seen: list[tuple[UUID, str]] = []

    async def listener(event: object) -> None:
        assert isinstance(event, RunTransitioned)
        # Another connection reads what was committed.
        status = await pool.fetchval(
            "SELECT status FROM squidmesh.runs WHERE id = $1", event.run.id
        )
        seen.append((event.run.id, status))

    store = RunStore(pool, workflows=[INVOICE_REMINDER], listeners=[listener])
    runs = await pending(store, 2)
    seen.clear()
    claimed = await store.claim_runs()
    assert seen == [(r.id, "running") for r in claimed]
    assert [r.id for r in claimed] == [r.id for r in runs]


# -- what is refused -------------------------------------------------------------------


BAD_ARGUMENTS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"limit": 0}, InvalidArgument, "limit"),
    ({"limit": -1}, InvalidArgument, "limit"),
    ({"limit": 1001}, InvalidArgument, "limit"),
    ({"limit": True}, InvalidArgument, "limit"),
    ({"limit": 2.0}, InvalidArgument, "limit"),
    ({"limit": "5"}, InvalidArgument, "limit"),
    ({"limit": None}, InvalidArgument, "limit"),
    ({"workflow": ""}, InvalidArgument, "workflow"),
    ({"workflow": "w" * 256}, InvalidArgument, "workflow"),
    ({"workflow": "a\x00b"}, InvalidArgument, "workflow"),
    ({"workflow": "a\ud800"}, InvalidArgument, "workflow"),
    ({"workflow": 7}, InvalidArgument, "workflow"),
    ({"workflow": b"etl.daily"}, InvalidArgument, "workflow"),
    ({"workflow": S.PENDING}, InvalidArgument, "workflow"),  # a str subclass
    ({"changes": {"status": "failed"}}, InvalidRun, "unknown change keys"),
    ({"changes": {"current_step": ""}}, InvalidRun, "current_step"),
    ({"changes": {"context": [1]}}, InvalidRun, "context"),
    ({"changes": {"last_error": {"x": float("nan")}}}, InvalidRun, "last_error"),
    ({"changes": ["context"]}, InvalidRun, "RunChanges or a dict"),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"), BAD_ARGUMENTS, ids=[repr(a[0])[:40] for a in BAD_ARGUMENTS]
)
async def test_bad_arguments_are_refused_before_anything_is_written(
    store: RunStore,
    pool: asyncpg.Pool,
    events: list[Any],
    kwargs: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    await pending(store, 2)
    await pending(store, 1, ETL_DAILY)
    events.clear()
    before = await snapshot(pool)
    with pytest.raises(error, match=match):
        await store.claim_runs(**kwargs)
    assert await snapshot(pool) == before
    assert events == []


async def test_invalid_argument_names_the_argument(store: RunStore) -> None:
    with pytest.raises(InvalidArgument) as limit_error:
        await store.claim_runs(limit=0)
    assert limit_error.value.name == "limit"
    with pytest.raises(InvalidArgument) as workflow_error:
        await store.claim_runs(workflow="")
    assert workflow_error.value.name == "workflow"


# -- plans -----------------------------------------------------------------------------

ROWS = 20_000
LIMIT = 10
CLAIM_IDX = "runs_pending_claim_idx"
WORKFLOW_IDX = "runs_workflow_status_inserted_idx"

# 20 workflows, each with runs in every status, 1 run in 20 pending (the
# rest as in a store that has run for a while), two runs per second (ties on
# inserted_at). The status varies with g / 20, so that it is not a function
# of the workflow (g % 20).
LOAD = """
INSERT INTO squidmesh.runs (id, workflow, trigger, status, inserted_at, updated_at)
SELECT md5(g::text)::uuid,
       'wf_' || lpad((g % 20)::text, 2, '0'),
       'manual',
       (ARRAY['completed', 'completed', 'completed', 'completed', 'completed', 'completed',
              'completed', 'completed', 'completed', 'completed', 'completed', 'completed',
              'failed', 'failed', 'failed', 'cancelled', 'cancelled', 'running', 'pending',
              'paused'])[1 + ((g / 20) * 7) % 20],
       timestamptz '2025-01-01 00:00:00+00' + (g / 2) * interval '1 second',
       timestamptz '2025-01-01 00:00:00+00' + (g / 2) * interval '1 second'
FROM generate_series(1, $1::int) AS g
"""


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


async def _explain(conn: Conn, query: str, values: str, mode: str) -> list[dict[str, Any]]:
    """The plan's nodes as executed (EXPLAIN ANALYZE runs the UPDATE: the
    caller rolls back)."""
    await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
    await conn.execute(f"PREPARE claim_plan AS {query}")
    try:
        text = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim_plan({values})")
    finally:
        await conn.execute("DEALLOCATE claim_plan")
    return list(_nodes(json.loads(text)[0]["Plan"]))


NO_WRITES = "false, NULL, false, NULL, false, NULL"


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
@pytest.mark.parametrize(
    ("query", "values", "index"),
    [
        (SQL.claim_runs, f"{LIMIT}, {NO_WRITES}", CLAIM_IDX),
        (SQL.claim_runs_by_workflow, f"{LIMIT}, 'wf_07', {NO_WRITES}", WORKFLOW_IDX),
    ],
    ids=["claim_runs", "claim_runs_by_workflow"],
)
async def test_a_claim_reads_its_index_in_order_and_sorts_nothing(
    pool: asyncpg.Pool, query: str, values: str, index: str, mode: str
) -> None:
    await pool.execute(LOAD, ROWS)
    await pool.execute("ANALYZE squidmesh.runs")
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            nodes = await _explain(conn, query, values, mode)
        finally:
            await tx.rollback()
    shown = json.dumps(nodes[0], indent=1)[:8000]
    assert not [n for n in nodes if "Sort" in n["Node Type"]], shown
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], shown
    # The pick: Limit -> LockRows -> one ordered scan of the claim's index.
    (lock,) = [n for n in nodes if n["Node Type"] == "LockRows"]
    (pick,) = lock["Plans"]
    assert pick["Node Type"] == "Index Scan", shown
    assert pick["Index Name"] == index, shown
    assert pick["Scan Direction"] == ("Backward" if index == WORKFLOW_IDX else "Forward"), shown
    # It stops at the limit: no run of another workflow or status is read.
    assert pick["Actual Rows"] == LIMIT, shown
    assert pick.get("Rows Removed by Filter", 0) == 0, shown
    # The status stays a condition of the scan even where the partial index
    # implies it: FOR UPDATE re-checks it on a row changed since the snapshot.
    conditions = pick.get("Index Cond", "") + pick.get("Filter", "")
    assert "status = 'pending'::text" in conditions, shown
    # The UPDATE finds the picked runs by primary key.
    assert {n["Index Name"] for n in nodes if "Index Name" in n} == {index, "runs_pkey"}, shown
    (update,) = [n for n in nodes if n["Node Type"] == "ModifyTable"]
    assert update["Operation"] == "Update", shown
    assert update["Actual Rows"] == LIMIT, shown
