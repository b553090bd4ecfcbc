"""The transition log: one row per change of a run's status, whichever path made it,
none otherwise; and ``Run.transitions``, the history read of it.

Each test notes the log's newest ``seq`` (``Log``), runs one operation, and
compares the rows appended since with the changes it expects, built from the
runs the operation returned: the log row's ``run_version`` and ``at`` are the
run's ``version`` and ``updated_at`` as that write left them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import pytest

import squidmesh
from squidmesh import (
    IdempotencyConflict,
    InvalidTransition,
    Run,
    RunChange,
    RunStatus,
    RunStore,
    progress,
)
from squidmesh._sql import Q
from tests.integration.workflows import ETL_DAILY, INVOICE_REMINDER, WORKFLOWS

S = RunStatus
PAYLOAD = {"account_id": "acct-1"}

# (run_id, run_version, workflow, from_status, to_status, at)
Row = tuple[UUID, int, str, str | None, str, dt.datetime]


class Boom(Exception):
    """What the test dispatches raise."""


class Log:
    """The transition log's rows appended since the last look."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.seen = 0

    async def mark(self) -> None:
        self.seen = await self.pool.fetchval(
            "SELECT coalesce(max(seq), 0) FROM squidmesh.run_transitions"
        )

    async def new(self) -> list[Row]:
        found = await self.pool.fetch(
            "SELECT seq, run_id, run_version, workflow, from_status, to_status, at"
            " FROM squidmesh.run_transitions WHERE seq > $1 ORDER BY seq",
            self.seen,
        )
        if found:
            self.seen = found[-1]["seq"]
        return [
            (
                r["run_id"],
                r["run_version"],
                r["workflow"],
                r["from_status"],
                r["to_status"],
                r["at"],
            )
            for r in found
        ]


@pytest.fixture
async def log(pool: asyncpg.Pool) -> Log:
    watched = Log(pool)
    await watched.mark()
    return watched


def change(run: Run, from_status: RunStatus | str | None) -> Row:
    """The log row the write that left ``run`` as it is should have appended."""
    source = None if from_status is None else S(from_status).value
    return (run.id, run.version, run.workflow, source, run.status.value, run.updated_at)


async def log_of(pool: asyncpg.Pool, run_id: UUID) -> list[Row]:
    found = await pool.fetch(
        "SELECT run_id, run_version, workflow, from_status, to_status, at"
        " FROM squidmesh.run_transitions WHERE run_id = $1 ORDER BY run_version",
        run_id,
    )
    return [tuple(r) for r in found]


async def running_with_step(store: RunStore) -> tuple[Run, UUID, UUID]:
    """A running run at its approval step, the step run and its attempt running."""
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    run = await store.transition_run(run.id, "running", current_step="approve")
    step_run = await store.begin_step(run.id, "approve", {})
    attempt = await store.begin_attempt(step_run.id)
    return run, step_run.id, attempt.id


# -- creation --------------------------------------------------------------------------


async def test_create_run_logs_the_creation(store: RunStore, log: Log) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    assert await log.new() == [change(run, None)]
    assert run.version == 1


async def test_a_repeated_idempotent_create_logs_nothing(store: RunStore, log: Log) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD, idempotency_key="k-1")
    assert await log.new() == [change(run, None)]
    again = await store.create_run(INVOICE_REMINDER, PAYLOAD, idempotency_key="k-1")
    assert again.id == run.id
    same, created = await store.get_or_create_run(INVOICE_REMINDER, PAYLOAD, idempotency_key="k-1")
    assert (same.id, created) == (run.id, False)
    with pytest.raises(IdempotencyConflict):
        await store.create_run(INVOICE_REMINDER, {"account_id": "other"}, idempotency_key="k-1")
    assert await log.new() == []


async def test_create_and_dispatch_logs_once_or_not_at_all(store: RunStore, log: Log) -> None:
    async def fail(conn: Any, run: Run) -> None:
        raise Boom

    with pytest.raises(Boom):
        await store.create_and_dispatch_run(INVOICE_REMINDER, PAYLOAD, fail)
    with pytest.raises(Boom):
        await store.get_or_create_run(
            INVOICE_REMINDER, PAYLOAD, idempotency_key="k-2", dispatch=fail
        )
    assert await log.new() == []
    assert await store.count_runs() == 0

    async def ok(conn: Any, run: Run) -> None:
        return None

    run = await store.create_and_dispatch_run(INVOICE_REMINDER, PAYLOAD, ok)
    assert await log.new() == [change(run, None)]


async def test_replay_logs_the_new_run_only(store: RunStore, log: Log) -> None:
    source = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    source = await store.transition_run(source.id, "failed")
    await log.new()
    replay = await store.replay_run(source.id)
    assert await log.new() == [change(replay, None)]

    async def fail(conn: Any, run: Run) -> None:
        raise Boom

    with pytest.raises(Boom):
        await store.replay_and_dispatch_run(source.id, fail)
    assert await log.new() == []
    assert (await store.get_run(source.id)).version == source.version


# -- one run's moves -------------------------------------------------------------------


async def test_transition_run_logs_each_move(store: RunStore, log: Log) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    running = await store.transition_run(run.id, "running", context={"a": 1})
    retrying = await store.transition_run(run.id, S.RETRYING)
    back = await store.transition_run(run.id, "running", expected_version=retrying.version)
    done = await store.transition_run(run.id, "completed")
    assert await log.new() == [
        change(run, None),
        change(running, "pending"),
        change(retrying, "running"),
        change(back, "retrying"),
        change(done, "running"),
    ]
    assert [r.version for r in (run, running, retrying, back, done)] == [1, 2, 3, 4, 5]


async def test_a_refused_move_logs_nothing(store: RunStore, log: Log) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    await log.new()
    with pytest.raises(InvalidTransition):
        await store.transition_run(run.id, "completed")
    with pytest.raises(squidmesh.VersionConflict):
        await store.transition_run(run.id, "running", expected_version=7)
    done = await store.transition_run(run.id, "failed")
    await log.new()
    with pytest.raises(InvalidTransition):
        await store.transition_run(done.id, "running")
    with pytest.raises(InvalidTransition):
        await store.cancel_run(done.id)
    assert await log.new() == []


async def test_writes_without_a_status_change_log_nothing(store: RunStore, log: Log) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    await log.new()
    updated = await store.update_run(run.id, context={"n": 1}, current_step="load_invoice")
    updated = await store.update_run_with(run.id, lambda r: {"context": {"n": 2}})
    assert updated.version == 3

    async def ok(conn: Any, run: Run) -> None:
        return None

    await store.update_and_dispatch_run(run.id, {"last_error": {"m": "x"}}, ok)
    await store.progress_run(run.id, lambda r: {"context": {"n": 3}}, progress.Update())
    await store.progress_run(run.id, lambda r: {"context": {"n": 4}}, progress.Dispatch(ok))
    step_run = await store.begin_step(run.id, "load_invoice", {})
    attempt = await store.begin_attempt(step_run.id)
    await store.complete_attempt(attempt.id)
    await store.complete_step(step_run.id, {})
    assert (await store.get_run(run.id)).version == 6
    assert await log.new() == []


async def test_cancel_run_logs_the_move_it_decides(store: RunStore, log: Log) -> None:
    pending = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    running = await store.transition_run(
        (await store.create_run(INVOICE_REMINDER, PAYLOAD)).id, "running"
    )
    retrying = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    await store.transition_run(retrying.id, "running")
    retrying = await store.transition_run(retrying.id, "retrying")
    paused, step_run_id, attempt_id = await running_with_step(store)
    paused = (await store.pause_run(paused.id, step_run_id, attempt_id)).run
    await log.new()

    cancelled = await store.cancel_run(pending.id)
    cancelling = await store.cancel_run(running.id)
    cancelling_too = await store.cancel_run(retrying.id)
    # Paused: the run is cancelled and its step run and attempt failed, one log row.
    cancelled_paused = await store.cancel_run(paused.id)
    assert await log.new() == [
        change(cancelled, "pending"),
        change(cancelling, "running"),
        change(cancelling_too, "retrying"),
        change(cancelled_paused, "paused"),
    ]
    assert [r.status for r in (cancelled, cancelling, cancelled_paused)] == [
        S.CANCELLED,
        S.CANCELLING,
        S.CANCELLED,
    ]
    # Cancelling a cancelling run is refused: no row.
    with pytest.raises(InvalidTransition):
        await store.cancel_run(running.id)
    assert await log.new() == []


async def test_pause_run_logs_its_move(store: RunStore, log: Log) -> None:
    run, step_run_id, attempt_id = await running_with_step(store)
    await log.new()
    paused = await store.pause_run(run.id, step_run_id, attempt_id, {"context": {"p": 1}})
    assert await log.new() == [change(paused.run, "running")]
    resumed = await store.transition_run(run.id, "running")
    assert await log.new() == [change(resumed, "paused")]

    # A cancelling run is cancelled by the pause: cancelling -> cancelled.
    run, step_run_id, attempt_id = await running_with_step(store)
    cancelling = await store.cancel_run(run.id)
    await log.new()
    result = await store.pause_run(run.id, step_run_id, attempt_id)
    assert result.run.status is S.CANCELLED
    assert await log.new() == [change(result.run, cancelling.status)]

    # A finished run is left as it is: nothing logged.
    noop = await store.pause_run(run.id, step_run_id, None)
    assert noop.terminal_noop
    assert await log.new() == []


async def test_progress_run_and_the_with_operations_log_each_move(
    store: RunStore, log: Log
) -> None:
    async def fail(conn: Any, run: Run) -> None:
        await conn.execute("SELECT 1/0")  # aborts the transaction: a savepoint undoes it

    def failed_fields(run: Run, exc: Exception) -> dict[str, Any]:
        return {"last_error": {"message": str(exc)}}

    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    await log.new()
    running = await store.transition_run_with(run.id, "running", lambda r: {"context": {"a": 1}})
    assert await log.new() == [change(running, "pending")]

    retrying = await store.progress_run(run.id, lambda r: None, progress.Transition("retrying"))
    assert retrying is not None
    assert await log.new() == [change(retrying, "running")]

    # Already running after the move: the dispatch fails, the run moves to failed.
    failed = await store.progress_run(
        run.id,
        lambda r: None,
        progress.TransitionOrDispatchOrFail("running", fail, failed_fields),
    )
    assert failed is not None and failed.status is S.FAILED
    history = await log.new()
    assert [(v, f, t) for _, v, _, f, t, _ in history] == [
        (retrying.version + 1, "retrying", "running"),
        (retrying.version + 2, "running", "failed"),
    ]
    assert history[-1] == change(failed, "running")
    assert history[0][5] <= history[1][5]

    # A raising plain dispatch rolls the move back: nothing logged.
    other = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    await log.new()

    async def boom(conn: Any, run: Run) -> None:
        raise Boom

    with pytest.raises(Boom):
        await store.progress_run(
            other.id, lambda r: None, progress.TransitionOrDispatch("running", boom)
        )
    with pytest.raises(Boom):
        await store.transition_and_dispatch_run(other.id, "running", None, boom)
    assert await log.new() == []

    # A cancelling run is finished by progress_run: cancelling -> cancelled.
    await store.transition_run(other.id, "running")
    cancelling = await store.cancel_run(other.id)
    await log.new()
    cancelled = await store.progress_run(other.id, lambda r: None, progress.Update())
    assert cancelled is not None
    assert await log.new() == [change(cancelled, cancelling.status)]
    # A finished run: nothing called, nothing written.
    assert await store.progress_run(other.id, lambda r: None, progress.Update()) is None
    assert await log.new() == []


# -- many runs at once -----------------------------------------------------------------


async def test_cancel_runs_logs_one_row_per_run_it_changes(store: RunStore, log: Log) -> None:
    pending = await store.create_run(ETL_DAILY, {})
    running = await store.transition_run((await store.create_run(ETL_DAILY, {})).id, "running")
    done = await store.create_run(ETL_DAILY, {})
    await store.transition_run(done.id, "failed")
    elsewhere = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    await log.new()

    changed = await store.cancel_runs(workflow=ETL_DAILY, batch_size=1)

    by_id = {r.id: r for r in changed}
    assert set(by_id) == {pending.id, running.id}
    assert sorted(await log.new()) == sorted(
        [change(by_id[pending.id], "pending"), change(by_id[running.id], "running")]
    )
    assert (await store.get_run(elsewhere.id)).version == 1


async def test_sweep_stale_runs_logs_one_row_per_run_it_moves(store: RunStore, log: Log) -> None:
    stale = []
    for _ in range(3):
        run = await store.create_run(ETL_DAILY, {})
        stale.append(await store.transition_run(run.id, "running"))
    pending = await store.create_run(ETL_DAILY, {})
    await log.new()

    moved = await store.sweep_stale_runs(
        status="running",
        idle_for=dt.timedelta(0),
        to_status="failed",
        changes={"last_error": {"message": "no heartbeat"}},
        batch_size=2,
    )

    assert {r.id for r in moved} == {r.id for r in stale}
    assert sorted(await log.new()) == sorted(change(r, "running") for r in moved)
    assert (await store.get_run(pending.id)).version == pending.version


# -- outside squidmesh -----------------------------------------------------------------


async def test_raw_sql_status_changes_are_logged(
    store: RunStore, pool: asyncpg.Pool, log: Log
) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    await log.new()
    await pool.execute("UPDATE squidmesh.runs SET status = 'running' WHERE id = $1", run.id)
    running = await store.get_run(run.id)
    assert await log.new() == [change(running, "pending")]
    # A raw write that keeps the status: nothing.
    await pool.execute("UPDATE squidmesh.runs SET context = '{\"x\": 1}' WHERE id = $1", run.id)
    assert await log.new() == []
    # An operator's unchecked move is logged too.
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL squidmesh.unchecked_moves = on")
        await conn.execute("UPDATE squidmesh.runs SET status = 'pending' WHERE id = $1", run.id)
    repaired = await store.get_run(run.id)
    assert await log.new() == [change(repaired, "running")]
    assert repaired.version == running.version + 2


async def test_a_rolled_back_change_leaves_no_row(
    store: RunStore, pool: asyncpg.Pool, log: Log
) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    await log.new()
    async with pool.acquire() as conn:
        with pytest.raises(Boom):
            async with conn.transaction():
                await conn.execute(
                    "UPDATE squidmesh.runs SET status = 'running' WHERE id = $1", run.id
                )
                await conn.execute(
                    "INSERT INTO squidmesh.runs (id, workflow, trigger, status, payload)"
                    " VALUES (gen_random_uuid(), 'etl.daily', 'manual', 'pending', '{}')"
                )
                raise Boom
        # A refused raw move: the trigger raises, nothing is logged.
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute(
                "UPDATE squidmesh.runs SET status = 'completed' WHERE id = $1", run.id
            )
    assert await log.new() == []
    assert await log_of(pool, run.id) == [change(run, None)]


# -- Run.transitions -------------------------------------------------------------------


async def test_history_transitions_are_the_log_in_order(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    created = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    running = await store.transition_run(created.id, "running", current_step="approve")
    step_run = await store.begin_step(created.id, "approve", {})
    attempt = await store.begin_attempt(step_run.id)
    between = await store.update_run(created.id, context={"between": True})  # no row
    paused = (await store.pause_run(created.id, step_run.id, attempt.id)).run
    resumed = await store.transition_run(created.id, "running")
    await store.update_run(created.id, current_step="send_email")  # no row
    done = await store.transition_run(created.id, "completed")

    full = await store.get_run(created.id, include_history=True)

    assert full.transitions is not None
    assert [(c.from_status, c.to_status) for c in full.transitions] == [
        (None, S.PENDING),
        (S.PENDING, S.RUNNING),
        (S.RUNNING, S.PAUSED),
        (S.PAUSED, S.RUNNING),
        (S.RUNNING, S.COMPLETED),
    ]
    # Version and time of each change: the run's as that change left it.
    written = [created, running, paused, resumed, done]
    assert [(c.run_version, c.at) for c in full.transitions] == [
        (r.version, r.updated_at) for r in written
    ]
    # The writes without a status change took versions of their own.
    assert paused.version == between.version + 1
    assert done.version == resumed.version + 2
    assert full.transitions[0].at == created.inserted_at
    assert full.transitions[-1].at == full.updated_at
    assert all(c.position == "" for c in full.transitions)
    assert all(c.run_id == created.id and c.workflow == created.workflow for c in full.transitions)
    assert all(type(c) is RunChange for c in full.transitions)
    # Exactly the log, in run_version order.
    assert [
        (c.run_id, c.run_version, c.workflow, c.from_status, c.to_status, c.at)
        for c in full.transitions
    ] == await log_of(pool, created.id)


async def test_history_transitions_match_each_written_run(store: RunStore) -> None:
    created = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    written = [
        created,
        await store.transition_run(created.id, "running"),
        await store.transition_run(created.id, "retrying"),
        await store.cancel_run(created.id),
        await store.transition_run(created.id, "cancelled"),
    ]
    full = await store.get_run(created.id, include_history=True)
    assert full.transitions == [
        RunChange(
            position="",
            run_id=r.id,
            workflow=r.workflow,
            run_version=r.version,
            from_status=None if i == 0 else written[i - 1].status,
            to_status=r.status,
            at=r.updated_at,
        )
        for i, r in enumerate(written)
    ]


async def test_without_history_transitions_is_none(store: RunStore) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    await store.transition_run(run.id, "running")
    assert (await store.get_run(run.id)).transitions is None
    assert all(r.transitions is None for r in await store.list_runs())
    with_history = await store.get_run(run.id, include_history=True)
    assert with_history.transitions is not None and len(with_history.transitions) == 2


async def test_a_run_from_before_the_log_has_no_transitions(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    run = await store.create_run(ETL_DAILY, {})
    # As for a run created before migration 0005: no rows.
    await pool.execute("DELETE FROM squidmesh.run_transitions WHERE run_id = $1", run.id)
    assert (await store.get_run(run.id, include_history=True)).transitions == []
    moved = await store.transition_run(run.id, "running")
    full = await store.get_run(run.id, include_history=True)
    assert full.transitions is not None
    assert [(c.from_status, c.to_status, c.at) for c in full.transitions] == [
        (S.PENDING, S.RUNNING, moved.updated_at)
    ]


async def test_transitions_are_utc_whatever_the_session_time_zone(
    dsn: str, store: RunStore
) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    moved = await store.transition_run(run.id, "running")
    tz_pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=1, server_settings={"TimeZone": "Asia/Kathmandu"}
    )
    try:
        full = await RunStore(tz_pool, workflows=WORKFLOWS).get_run(run.id, include_history=True)
    finally:
        await tz_pool.close()
    assert full.transitions is not None
    assert [c.at for c in full.transitions] == [run.updated_at, moved.updated_at]
    assert all(c.at.utcoffset() == dt.timedelta(0) for c in full.transitions)


@pytest.fixture
async def logged_pool(dsn: str) -> AsyncIterator[tuple[asyncpg.Pool, list[str]]]:
    """A pool whose every statement is recorded (reset disabled: not ours to count)."""
    statements: list[str] = []

    async def init(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda record: statements.append(record.query))

    logged = await asyncpg.create_pool(
        dsn, min_size=1, max_size=2, init=init, reset=squidmesh.no_reset
    )
    try:
        yield logged, statements
    finally:
        await logged.close()


async def test_the_history_read_with_transitions_is_still_one_statement(
    store: RunStore, logged_pool: tuple[asyncpg.Pool, list[str]]
) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    for status in ("running", "retrying", "running", "completed"):
        await store.transition_run(run.id, status)
    step_run = await store.begin_step(run.id, "load_invoice", {})
    await store.begin_attempt(step_run.id)

    pool, statements = logged_pool
    reader = RunStore(pool, workflows=WORKFLOWS)
    for _ in range(2):  # first call prepares the statement, second hits the cache
        statements.clear()
        full = await reader.get_run(run.id, include_history=True)
        assert statements == [Q["run_history"]]
    assert full.transitions is not None and len(full.transitions) == 5
    assert full.step_runs is not None and len(full.step_runs) == 1
