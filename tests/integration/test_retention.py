"""prune_runs, cancel_runs and sweep_stale_runs: what they change, what they leave,
how they batch, and what they decide for a run someone else holds.

Runs are made old by moving their timestamps back (``age``), so the cut-offs
are exact without sleeping. The lock tests hold a run's row lock on a
connection of their own and let the bulk call block on it (observed through
``pg_blocking_pids``), then commit, and check what the call decided.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from squidmesh import (
    InvalidArgument,
    InvalidRun,
    InvalidTransition,
    PruneReport,
    Run,
    RunChanges,
    RunStatus,
    RunStore,
    RunTransitioned,
    StepFailed,
    UnknownStatus,
)
from squidmesh.testing import wait_until_blocked
from tests.integration.workflows import ETL_DAILY, INVOICE_REMINDER

S = RunStatus
DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)
PAYLOAD = {"account_id": "acct-1"}
CANCELLED_WHILE_PAUSED = {"message": "run cancelled while paused", "reason": "cancelled"}
TIMEOUT_S = 30

# -- helpers ---------------------------------------------------------------------------


async def age(pool: asyncpg.Pool, run_ids: list[UUID], by: dt.timedelta = 2 * DAY) -> None:
    """Move the runs' timestamps ``by`` into the past.

    The runs_write trigger stamps updated_at on every UPDATE, so the update
    runs in a replica-mode transaction, where ordinary triggers do not fire.
    inserted_at moves too: squidmesh never has updated_at before inserted_at.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            "UPDATE squidmesh.runs SET inserted_at = inserted_at - $2::interval,"
            " updated_at = updated_at - $2::interval WHERE id = ANY($1::uuid[])",
            run_ids,
            by,
        )


async def stamp_alike(pool: asyncpg.Pool, run_ids: list[UUID], ago: dt.timedelta = 2 * DAY) -> None:
    """Give the runs one and the same inserted_at and updated_at, ``ago`` in the past:
    the batches' cursor must then go on by id (see ``age`` for the replica mode)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            "UPDATE squidmesh.runs SET inserted_at = date_trunc('second', now() - $2::interval),"
            " updated_at = date_trunc('second', now() - $2::interval)"
            " WHERE id = ANY($1::uuid[])",
            run_ids,
            ago,
        )


async def make_run(store: RunStore, status: RunStatus) -> Run:
    """A run of billing.invoice_reminder in ``status``, reached through the store."""
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    path = {
        S.PENDING: [],
        S.RUNNING: [S.RUNNING],
        S.RETRYING: [S.RUNNING, S.RETRYING],
        S.CANCELLING: [S.RUNNING, S.CANCELLING],
        S.FAILED: [S.FAILED],
        S.COMPLETED: [S.RUNNING, S.COMPLETED],
        S.CANCELLED: [S.CANCELLED],
    }
    if status is S.PAUSED:
        return await paused_with_running_step(store, run)
    for step in path[status]:
        run = await store.transition_run(run.id, step)
    return run


async def paused_with_running_step(store: RunStore, run: Run | None = None) -> Run:
    """A run paused at its approval step; the step run and its attempt still run."""
    run = run or await store.create_run(INVOICE_REMINDER, PAYLOAD)
    await store.transition_run(run.id, "running", current_step="approve")
    step_run = await store.begin_step(run.id, "approve", {})
    attempt = await store.begin_attempt(step_run.id)
    return (await store.pause_run(run.id, step_run.id, attempt.id, {})).run


async def with_steps(store: RunStore, run: Run, steps: dict[str, int]) -> None:
    """Step runs named after ``steps``' keys, each with that many attempts."""
    for step, attempts in steps.items():
        step_run = await store.begin_step(run.id, step, {})
        for _ in range(attempts):
            await store.begin_attempt(step_run.id)


async def rows(pool: asyncpg.Pool) -> dict[UUID, tuple[str, int, dt.datetime]]:
    """Every run's (status, version, updated_at): what "left alone" is checked on."""
    found = await pool.fetch("SELECT id, status, version, updated_at FROM squidmesh.runs")
    return {r["id"]: (r["status"], r["version"], r["updated_at"]) for r in found}


async def xact_sizes(pool: asyncpg.Pool, run_ids: list[UUID]) -> list[int]:
    """How many of the runs each transaction wrote last, by the rows' xmin."""
    found = await pool.fetch(
        "SELECT xmin::text AS x FROM squidmesh.runs WHERE id = ANY($1::uuid[])", run_ids
    )
    assert len(found) == len(run_ids)
    return sorted(Counter(r["x"] for r in found).values(), reverse=True)


@pytest.fixture
async def holder(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """Another client, which holds a run's row lock in an open transaction."""
    conn = await asyncpg.connect(dsn, server_settings={"lock_timeout": f"{TIMEOUT_S}s"})
    try:
        yield conn
    finally:
        await conn.close()


async def decided_after_holder(
    pool: asyncpg.Pool,
    holder: asyncpg.Connection,
    run_id: UUID,
    call: Callable[[], Awaitable[Any]],
    holder_sql: str | None,
) -> Any:
    """Lock ``run_id`` on ``holder``, start ``call``, wait until it blocks on that
    lock, run ``holder_sql`` (if any) in the holder's transaction, commit, and
    return what ``call`` returned."""
    async with asyncio.timeout(TIMEOUT_S):
        transaction = holder.transaction()
        await transaction.start()
        try:
            await holder.execute("SELECT FROM squidmesh.runs WHERE id = $1 FOR UPDATE", run_id)
            task = asyncio.ensure_future(call())
            await wait_until_blocked(pool, blocked_by=holder.get_server_pid())
            assert not task.done()
            if holder_sql is not None:
                await holder.execute(holder_sql, run_id)
        except BaseException:
            await transaction.rollback()
            raise
        await transaction.commit()
        return await task


# -- prune_runs -----------------------------------------------------------------------


async def test_prune_deletes_old_finished_runs_with_their_step_runs_and_attempts(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    done = await make_run(store, S.COMPLETED)
    await with_steps(store, done, {"load_invoice": 2, "approve": 1})
    failed = await make_run(store, S.FAILED)
    await with_steps(store, failed, {"load_invoice": 1})
    cancelled = await make_run(store, S.CANCELLED)
    live = [await make_run(store, s) for s in S if s not in (S.FAILED, S.COMPLETED, S.CANCELLED)]
    await age(pool, [done.id, failed.id, cancelled.id] + [r.id for r in live])
    recent = await make_run(store, S.COMPLETED)
    await with_steps(store, recent, {"load_invoice": 1})
    kept_steps = await pool.fetchval(
        "SELECT count(*) FROM squidmesh.step_runs WHERE run_id = ANY($1::uuid[])",
        [r.id for r in live] + [recent.id],
    )
    before = await rows(pool)

    report = await store.prune_runs(older_than=DAY)

    assert report == PruneReport(
        runs=3,
        step_runs=3,
        attempts=4,
        by_status={S.FAILED: 1, S.COMPLETED: 1, S.CANCELLED: 1},
        dry_run=False,
    )
    after = await rows(pool)
    assert set(after) == set(before) - {done.id, failed.id, cancelled.id}
    assert all(after[i] == before[i] for i in after), "a run that stays was written"
    assert {after[r.id][0] for r in live} == {
        "pending",
        "running",
        "retrying",
        "paused",
        "cancelling",
    }
    assert await pool.fetchval("SELECT count(*) FROM squidmesh.step_runs") == kept_steps
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM squidmesh.step_attempts a JOIN squidmesh.step_runs s"
            " ON s.id = a.step_run_id WHERE s.run_id = ANY($1::uuid[])",
            [done.id, failed.id],
        )
        == 0
    )


async def test_prune_dry_run_counts_what_the_prune_then_deletes(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    old = [await make_run(store, s) for s in (S.COMPLETED, S.COMPLETED, S.FAILED, S.RUNNING)]
    await with_steps(store, old[0], {"load_invoice": 3})
    await with_steps(store, old[3], {"load_invoice": 1})
    await age(pool, [r.id for r in old])
    before = await rows(pool)

    dry = await store.prune_runs(older_than=DAY, dry_run=True)

    assert dry == PruneReport(
        runs=3,
        step_runs=1,
        attempts=3,
        by_status={S.FAILED: 1, S.COMPLETED: 2, S.CANCELLED: 0},
        dry_run=True,
    )
    assert await rows(pool) == before, "a dry run deleted or wrote something"
    real = await store.prune_runs(older_than=DAY, batch_size=2)
    assert (real.runs, real.step_runs, real.attempts, real.by_status) == (
        dry.runs,
        dry.step_runs,
        dry.attempts,
        dry.by_status,
    )
    assert real.dry_run is False


async def test_prune_takes_only_the_statuses_and_workflow_asked_for(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    invoice_failed = await make_run(store, S.FAILED)
    invoice_done = await make_run(store, S.COMPLETED)
    etl = await store.create_run(ETL_DAILY, {})
    etl_failed = await store.transition_run(etl.id, "failed")
    await age(pool, [invoice_failed.id, invoice_done.id, etl_failed.id])

    report = await store.prune_runs(older_than=DAY, statuses=["failed"], workflow=ETL_DAILY)

    assert report.by_status == {S.FAILED: 1}
    assert report.runs == 1
    assert set(await rows(pool)) == {invoice_failed.id, invoice_done.id}
    # One status given as a string, the workflow by name.
    report = await store.prune_runs(
        older_than=DAY, statuses=S.COMPLETED, workflow="billing.invoice_reminder"
    )
    assert report.by_status == {S.COMPLETED: 1}
    assert set(await rows(pool)) == {invoice_failed.id}


async def test_prune_spares_runs_written_within_older_than(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    done = await make_run(store, S.COMPLETED)
    await age(pool, [done.id], by=HOUR)
    assert (await store.prune_runs(older_than=2 * HOUR)).runs == 0
    # Further back than the year 1: nothing is that old.
    assert (await store.prune_runs(older_than=dt.timedelta.max)).runs == 0
    # Any write moves updated_at: the run was written just now.
    await age(pool, [done.id], by=2 * DAY)
    await store.update_run(done.id, context={"archived": False})
    assert (await store.prune_runs(older_than=DAY)).runs == 0
    assert (await store.prune_runs(older_than=dt.timedelta(0))).runs == 1


async def test_replays_of_a_pruned_run_keep_working(store: RunStore, pool: asyncpg.Pool) -> None:
    source = await make_run(store, S.COMPLETED)
    replay = await store.replay_run(source.id)
    finished_replay = await store.replay_run(source.id)
    await store.transition_run(finished_replay.id, "failed")
    # The source and one of its replays go in the same batch.
    await age(pool, [source.id, finished_replay.id])

    report = await store.prune_runs(older_than=DAY)

    assert report.runs == 2
    kept = await store.get_run(replay.id, include_history=True)
    assert kept.replayed_from_run_id is None
    # ON DELETE SET NULL is a write of the replay: runs_write bumps its version.
    assert kept.version == replay.version + 1
    assert kept.status is S.PENDING
    moved = await store.transition_run(replay.id, "running")
    assert moved.status is S.RUNNING
    again = await store.replay_run(replay.id)
    assert again.replayed_from_run_id == replay.id


async def test_prune_deletes_in_transactions_of_at_most_batch_size_runs(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    # Each source's replay is written (replayed_from_run_id set to NULL) by
    # the transaction that deletes the source: the replays' xmin tells which
    # transaction deleted which source.
    sources = [await make_run(store, S.COMPLETED) for _ in range(25)]
    replays = [await store.replay_run(s.id) for s in sources]
    await stamp_alike(pool, [s.id for s in sources])

    report = await store.prune_runs(older_than=DAY, batch_size=10)

    assert report.runs == 25
    assert await xact_sizes(pool, [r.id for r in replays]) == [10, 10, 5]


async def test_prune_waits_for_a_locked_run_and_deletes_it_if_still_old(
    store: RunStore, pool: asyncpg.Pool, holder: asyncpg.Connection
) -> None:
    runs = [await make_run(store, S.COMPLETED) for _ in range(3)]
    await age(pool, [r.id for r in runs])

    report = await decided_after_holder(
        pool, holder, runs[1].id, lambda: store.prune_runs(older_than=DAY), None
    )

    assert report.runs == 3
    assert await rows(pool) == {}


async def test_prune_leaves_a_run_written_while_it_waited(
    store: RunStore, pool: asyncpg.Pool, holder: asyncpg.Connection
) -> None:
    runs = [await make_run(store, S.COMPLETED) for _ in range(3)]
    await age(pool, [r.id for r in runs])

    report = await decided_after_holder(
        pool,
        holder,
        runs[1].id,
        lambda: store.prune_runs(older_than=DAY),
        "UPDATE squidmesh.runs SET context = '{\"kept\": true}' WHERE id = $1",
    )

    assert report.runs == 2
    assert set(await rows(pool)) == {runs[1].id}


@pytest.mark.parametrize(
    ("kwargs", "name", "reason"),
    [
        ({"older_than": dt.timedelta(seconds=-1)}, "older_than", "timedelta of zero or more"),
        ({"older_than": 3600}, "older_than", "timedelta of zero or more"),
        ({"statuses": ["completed", "running"]}, "statuses", "not running"),
        ({"statuses": ["paused", "pending"]}, "statuses", "not paused, pending"),
        ({"statuses": []}, "statuses", "at least one status"),
        ({"statuses": 3}, "statuses", "iterable of statuses"),
        ({"batch_size": 0}, "batch_size", "int from 1 to 10000"),
        ({"batch_size": 10_001}, "batch_size", "int from 1 to 10000"),
        ({"batch_size": True}, "batch_size", "int from 1 to 10000"),
        ({"batch_size": 10.0}, "batch_size", "int from 1 to 10000"),
        ({"workflow": 7}, "workflow", "Workflow, a workflow name or None"),
        ({"dry_run": "yes"}, "dry_run", "must be a bool"),
    ],
)
async def test_prune_argument_errors(
    store: RunStore, pool: asyncpg.Pool, kwargs: dict[str, Any], name: str, reason: str
) -> None:
    done = await make_run(store, S.COMPLETED)
    await age(pool, [done.id])
    arguments: dict[str, Any] = {"older_than": DAY, **kwargs}
    with pytest.raises(InvalidArgument, match=reason) as caught:
        await store.prune_runs(**arguments)
    assert caught.value.name == name
    assert str(caught.value).startswith(f"invalid {name}: ")
    assert set(await rows(pool)) == {done.id}


async def test_prune_unknown_status(store: RunStore) -> None:
    with pytest.raises(UnknownStatus):
        await store.prune_runs(older_than=DAY, statuses=["archived"])


async def test_prune_a_workflow_name_no_run_can_have(store: RunStore, pool: asyncpg.Pool) -> None:
    done = await make_run(store, S.COMPLETED)
    await age(pool, [done.id])
    report = await store.prune_runs(older_than=DAY, workflow="bad\x00name", dry_run=True)
    assert report.runs == 0
    assert (await store.prune_runs(older_than=DAY, workflow="bad\x00name")).runs == 0
    assert set(await rows(pool)) == {done.id}


# -- cancel_runs ----------------------------------------------------------------------


async def test_cancel_runs_applies_cancel_runs_rules_to_every_status(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    made = {s: await make_run(store, s) for s in S}
    paused_no_step = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    await store.transition_run(paused_no_step.id, "running")
    paused_no_step = await store.transition_run(paused_no_step.id, "paused")
    before = await rows(pool)
    events.clear()

    changed = await store.cancel_runs()

    by_id = {r.id: r for r in changed}
    assert len(by_id) == len(changed) == 5
    expect = {
        made[S.PENDING].id: S.CANCELLED,
        made[S.RUNNING].id: S.CANCELLING,
        made[S.RETRYING].id: S.CANCELLING,
        made[S.PAUSED].id: S.CANCELLED,
        paused_no_step.id: S.CANCELLED,
    }
    assert {i: r.status for i, r in by_id.items()} == expect
    assert all(r.current_step is None for r in changed)
    after = await rows(pool)
    for status in (S.CANCELLING, S.FAILED, S.COMPLETED, S.CANCELLED):
        assert after[made[status].id] == before[made[status].id], f"{status} was written"
    for run_id, to in expect.items():
        assert after[run_id][:2] == (to.value, before[run_id][1] + 1)

    # Events as cancel_run reports them: per run its move, then (the paused
    # run whose step was running) the failed step.
    moves = [e for e in events if isinstance(e, RunTransitioned)]
    assert {(e.run.id, e.from_status, e.to_status) for e in moves} == {
        (made[S.PENDING].id, S.PENDING, S.CANCELLED),
        (made[S.RUNNING].id, S.RUNNING, S.CANCELLING),
        (made[S.RETRYING].id, S.RETRYING, S.CANCELLING),
        (made[S.PAUSED].id, S.PAUSED, S.CANCELLED),
        (paused_no_step.id, S.PAUSED, S.CANCELLED),
    }
    assert all(e.run == by_id[e.run.id] for e in moves)
    (failed,) = [e for e in events if isinstance(e, StepFailed)]
    assert (
        events.index(failed)
        == events.index(next(e for e in moves if e.run.id == made[S.PAUSED].id)) + 1
    )
    assert (failed.run.id, failed.step, failed.attempt_number) == (made[S.PAUSED].id, "approve", 1)
    assert failed.error == CANCELLED_WHILE_PAUSED
    step = await pool.fetchrow(
        "SELECT s.status, s.last_error::text AS error, a.status AS attempt"
        " FROM squidmesh.step_runs s JOIN squidmesh.step_attempts a ON a.step_run_id = s.id"
        " WHERE s.run_id = $1",
        made[S.PAUSED].id,
    )
    assert step is not None
    assert (step["status"], step["attempt"]) == ("failed", "failed")
    assert "run cancelled while paused" in step["error"]


async def test_cancel_runs_filters(store: RunStore, pool: asyncpg.Pool) -> None:
    invoice_pending = await make_run(store, S.PENDING)
    invoice_running = await make_run(store, S.RUNNING)
    etl = await store.create_run(ETL_DAILY, {})
    old = await make_run(store, S.PENDING)
    await age(pool, [old.id])
    now = await pool.fetchval("SELECT clock_timestamp()")

    assert [r.id for r in await store.cancel_runs(created_before=now - DAY)] == [old.id]
    assert [r.id for r in await store.cancel_runs(workflow=ETL_DAILY)] == [etl.id]
    assert [r.id for r in await store.cancel_runs(status=["running", "failed"])] == [
        invoice_running.id
    ]
    # Nothing left that cancel_run would change in these statuses.
    assert await store.cancel_runs(status="completed") == []
    assert await store.cancel_runs(status="cancelling") == []
    assert [r.id for r in await store.cancel_runs(workflow="billing.invoice_reminder")] == [
        invoice_pending.id
    ]
    assert await store.cancel_runs() == []


async def test_cancel_runs_leaves_runs_created_after_it_started(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    runs = [await make_run(store, S.PENDING) for _ in range(3)]
    created: list[Run] = []

    async def listener(event: object) -> None:
        # Reported after the first batch commits, while the call goes on.
        if not created:
            created.append(await store.create_run(INVOICE_REMINDER, PAYLOAD))

    bulk = RunStore(pool, workflows=[INVOICE_REMINDER], listeners=[listener])
    # A bound in the future is the call's start.
    changed = await bulk.cancel_runs(batch_size=1, created_before=dt.datetime.now(dt.UTC) + DAY)

    assert sorted(r.id for r in changed) == sorted(r.id for r in runs)
    assert (await store.get_run(created[0].id)).status is S.PENDING


async def test_cancel_runs_batches_and_reports_each_batch_after_its_commit(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    runs = [await make_run(store, S.PENDING) for _ in range(25)]
    await stamp_alike(pool, [r.id for r in runs])
    committed_when_reported: list[int] = []

    async def listener(event: object) -> None:
        # What another client sees at the time the event is reported.
        committed_when_reported.append(
            await pool.fetchval("SELECT count(*) FROM squidmesh.runs WHERE status = 'cancelled'")
        )

    store_with_listener = RunStore(pool, workflows=[INVOICE_REMINDER], listeners=[listener])
    changed = await store_with_listener.cancel_runs(batch_size=10)

    assert sorted(r.id for r in changed) == sorted(r.id for r in runs)
    assert await xact_sizes(pool, [r.id for r in runs]) == [10, 10, 5]
    # Each batch's events come after its commit and before the next batch.
    assert committed_when_reported == [10] * 10 + [20] * 10 + [25] * 5


async def test_cancel_runs_waits_for_a_locked_run_and_decides_on_its_new_state(
    store: RunStore, pool: asyncpg.Pool, holder: asyncpg.Connection
) -> None:
    runs = [await make_run(store, S.PENDING) for _ in range(3)]

    changed = await decided_after_holder(
        pool,
        holder,
        runs[1].id,
        store.cancel_runs,
        "UPDATE squidmesh.runs SET status = 'running' WHERE id = $1",
    )

    statuses = {r.id: r.status for r in changed}
    assert statuses == {runs[0].id: S.CANCELLED, runs[1].id: S.CANCELLING, runs[2].id: S.CANCELLED}


async def test_cancel_runs_skips_a_run_that_finished_while_it_waited(
    store: RunStore, pool: asyncpg.Pool, holder: asyncpg.Connection
) -> None:
    runs = [await make_run(store, S.RUNNING) for _ in range(2)]

    changed = await decided_after_holder(
        pool,
        holder,
        runs[0].id,
        store.cancel_runs,
        "UPDATE squidmesh.runs SET status = 'completed' WHERE id = $1",
    )

    assert [r.id for r in changed] == [runs[1].id]
    assert (await store.get_run(runs[0].id)).status is S.COMPLETED


@pytest.mark.parametrize(
    ("kwargs", "name", "reason"),
    [
        ({"batch_size": 0}, "batch_size", "int from 1 to 10000"),
        ({"batch_size": "500"}, "batch_size", "int from 1 to 10000"),
        ({"created_before": dt.datetime(2025, 1, 1)}, "created_before", "timezone-aware"),
        ({"created_before": "2025-01-01"}, "created_before", "timezone-aware"),
        ({"workflow": ["a"]}, "workflow", "Workflow, a workflow name or None"),
        ({"status": []}, "status", "at least one status"),
    ],
)
async def test_cancel_runs_argument_errors(
    store: RunStore, pool: asyncpg.Pool, kwargs: dict[str, Any], name: str, reason: str
) -> None:
    run = await make_run(store, S.PENDING)
    with pytest.raises(InvalidArgument, match=reason) as caught:
        await store.cancel_runs(**kwargs)
    assert caught.value.name == name
    assert (await store.get_run(run.id)).status is S.PENDING


async def test_cancel_runs_unknown_status(store: RunStore) -> None:
    with pytest.raises(UnknownStatus):
        await store.cancel_runs(status="stopped")


# -- sweep_stale_runs -----------------------------------------------------------------


async def test_sweep_moves_stale_runs_writing_the_changes(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    stale = [await make_run(store, S.RUNNING) for _ in range(3)]
    for run in stale:
        await store.update_run(run.id, current_step="send_email", context={"n": 1})
    fresh = await make_run(store, S.RUNNING)
    other = await make_run(store, S.PENDING)
    await age(pool, [r.id for r in stale] + [other.id], by=2 * HOUR)
    before = await rows(pool)
    events.clear()

    moved = await store.sweep_stale_runs(
        status="running",
        idle_for=HOUR,
        to_status="failed",
        changes={"last_error": {"message": "no heartbeat"}, "current_step": None},
    )

    assert sorted(r.id for r in moved) == sorted(r.id for r in stale)
    for run in moved:
        assert run.status is S.FAILED
        assert run.last_error == {"message": "no heartbeat"}
        assert run.current_step is None
        assert run.context == {"n": 1}
        assert run == await store.get_run(run.id)
    after = await rows(pool)
    assert after[fresh.id] == before[fresh.id]
    assert after[other.id] == before[other.id]
    assert [(type(e), e.from_status, e.to_status) for e in events] == [
        (RunTransitioned, S.RUNNING, S.FAILED)
    ] * 3
    assert {e.run.id for e in events} == {r.id for r in stale}


async def test_sweep_takes_run_changes_and_a_workflow(store: RunStore, pool: asyncpg.Pool) -> None:
    invoice = await make_run(store, S.CANCELLING)
    etl = await store.create_run(ETL_DAILY, {})
    await store.transition_run(etl.id, "running")
    etl = await store.transition_run(etl.id, "cancelling")
    await age(pool, [invoice.id, etl.id], by=HOUR)

    moved = await store.sweep_stale_runs(
        status=S.CANCELLING,
        idle_for=dt.timedelta(minutes=10),
        to_status=S.CANCELLED,
        changes=RunChanges(context={"swept": True}),
        workflow=INVOICE_REMINDER,
    )

    assert [(r.id, r.status, r.context) for r in moved] == [
        (invoice.id, S.CANCELLED, {"swept": True})
    ]
    assert (await store.get_run(etl.id)).status is S.CANCELLING


@pytest.mark.parametrize(
    ("status", "to_status", "error"),
    [
        ("completed", "running", InvalidTransition),
        ("running", "pending", InvalidTransition),
        ("cancelling", "cancelling", InvalidTransition),
        ("running", "stuck", UnknownStatus),
        ("stuck", "failed", UnknownStatus),
    ],
)
async def test_sweep_refuses_an_illegal_move_before_anything_is_written(
    store: RunStore, pool: asyncpg.Pool, status: str, to_status: str, error: type[Exception]
) -> None:
    runs = [await make_run(store, s) for s in (S.RUNNING, S.COMPLETED, S.CANCELLING)]
    await age(pool, [r.id for r in runs])
    before = await rows(pool)
    with pytest.raises(error):
        await store.sweep_stale_runs(status=status, idle_for=HOUR, to_status=to_status)
    assert await rows(pool) == before


async def test_sweep_leaves_a_run_touched_while_it_waited_for_its_lock(
    store: RunStore, pool: asyncpg.Pool, holder: asyncpg.Connection
) -> None:
    runs = [await make_run(store, S.RUNNING) for _ in range(3)]
    await age(pool, [r.id for r in runs], by=2 * HOUR)

    # The sweep takes the others, then waits for the held run: a heartbeat
    # committed meanwhile makes it fresh, and the sweep re-checks under the lock.
    moved = await decided_after_holder(
        pool,
        holder,
        runs[1].id,
        lambda: store.sweep_stale_runs(status="running", idle_for=HOUR, to_status="failed"),
        "UPDATE squidmesh.runs SET context = '{\"heartbeat\": 1}' WHERE id = $1",
    )

    assert sorted(r.id for r in moved) == sorted([runs[0].id, runs[2].id])
    kept = await store.get_run(runs[1].id)
    assert (kept.status, kept.context) == (S.RUNNING, {"heartbeat": 1})


async def test_sweep_moves_a_locked_run_still_stale_once_its_holder_commits(
    store: RunStore, pool: asyncpg.Pool, holder: asyncpg.Connection
) -> None:
    runs = [await make_run(store, S.RUNNING) for _ in range(2)]
    await age(pool, [r.id for r in runs], by=2 * HOUR)

    moved = await decided_after_holder(
        pool,
        holder,
        runs[0].id,
        lambda: store.sweep_stale_runs(status="running", idle_for=HOUR, to_status="failed"),
        None,
    )

    assert sorted(r.id for r in moved) == sorted(r.id for r in runs)


async def test_sweep_moves_in_transactions_of_at_most_batch_size_runs(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    runs = [await make_run(store, S.CANCELLING) for _ in range(25)]
    await stamp_alike(pool, [r.id for r in runs])

    moved = await store.sweep_stale_runs(
        status="cancelling", idle_for=HOUR, to_status="cancelled", batch_size=10
    )

    assert len(moved) == 25
    assert await xact_sizes(pool, [r.id for r in runs]) == [10, 10, 5]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"idle_for": dt.timedelta(minutes=-5)}, InvalidArgument, "timedelta of zero or more"),
        ({"idle_for": None}, InvalidArgument, "timedelta of zero or more"),
        ({"batch_size": 10_001}, InvalidArgument, "int from 1 to 10000"),
        ({"workflow": b"etl.daily"}, InvalidArgument, "Workflow, a workflow name or None"),
        ({"changes": {"status": "failed"}}, InvalidRun, "unknown change keys"),
        ({"changes": {"context": {"bad": float("nan")}}}, InvalidRun, "context"),
        ({"changes": "failed"}, InvalidRun, "RunChanges or a dict"),
    ],
)
async def test_sweep_argument_errors(
    store: RunStore,
    pool: asyncpg.Pool,
    kwargs: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    run = await make_run(store, S.RUNNING)
    await age(pool, [run.id])
    before = await rows(pool)
    arguments: dict[str, Any] = {
        "status": "running",
        "idle_for": HOUR,
        "to_status": "failed",
        **kwargs,
    }
    with pytest.raises(error, match=match):
        await store.sweep_stale_runs(**arguments)
    assert await rows(pool) == before


# -- the README example -----------------------------------------------------------------


async def test_readme_example(store: RunStore, pool: asyncpg.Pool) -> None:
    stuck = await make_run(store, S.RUNNING)
    done = await make_run(store, S.COMPLETED)
    await age(pool, [stuck.id, done.id], by=40 * DAY)
    waiting = await make_run(store, S.PENDING)

    # --- README: Retention, bulk cancel and stale runs ---
    from datetime import timedelta

    report = await store.prune_runs(older_than=timedelta(days=30), dry_run=True)
    print(report.runs, report.by_status)  # noqa: T201 - as in the README
    await store.prune_runs(older_than=timedelta(days=30))
    await store.sweep_stale_runs(
        status="running",
        idle_for=timedelta(hours=1),
        to_status="failed",
        changes={"last_error": {"message": "no heartbeat for an hour"}},
    )
    cancelled = await store.cancel_runs(workflow="billing.invoice_reminder", status="pending")
    # --- end ---

    assert report.runs == 1
    assert set(await rows(pool)) == {stuck.id, waiting.id}
    assert (await store.get_run(stuck.id)).last_error == {"message": "no heartbeat for an hour"}
    assert [r.id for r in cancelled] == [waiting.id]
