"""Housekeeping of the change feed: prune_runs takes a pruned run's transition-log
rows with it, and prune_feed deletes old feed ticks, never tick 0 nor the newest.

Runs are made old as in ``test_retention`` (``age``: their timestamps move
back, triggers off, so the log is left as it was). Ticks are made old by
moving their ``made_at`` back, or added with a ``made_at`` in the past; the
prune_feed tests change ``squidmesh.feed_ticks``, which the template fills, so
each gets a database of its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import pytest

import squidmesh
from squidmesh import InvalidArgument, InvalidPosition, PruneReport, RunStatus, RunStore
from squidmesh._sql import Q
from squidmesh.testing import wait_until_blocked
from tests.integration.test_retention import age, make_run, with_steps
from tests.integration.workflows import ETL_DAILY

S = RunStatus
DAY = dt.timedelta(days=1)
TIMEOUT_S = 30


async def log_rows(pool: asyncpg.Pool) -> dict[UUID, list[tuple[int, str | None, str]]]:
    """Every run's log rows, (run_version, from_status, to_status) in version order."""
    found = await pool.fetch(
        "SELECT run_id, run_version, from_status, to_status FROM squidmesh.run_transitions"
        " ORDER BY run_id, run_version"
    )
    rows: dict[UUID, list[tuple[int, str | None, str]]] = {}
    for r in found:
        rows.setdefault(r["run_id"], []).append(
            (r["run_version"], r["from_status"], r["to_status"])
        )
    return rows


@pytest.fixture
async def holder(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """Another client, which holds a run's row lock in an open transaction."""
    conn = await asyncpg.connect(dsn, server_settings={"lock_timeout": f"{TIMEOUT_S}s"})
    try:
        yield conn
    finally:
        await conn.close()


# -- prune_runs and the transition log -------------------------------------------------


async def test_prune_runs_deletes_the_log_rows_of_the_runs_it_deletes(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    done = await make_run(store, S.COMPLETED)
    await with_steps(store, done, {"load_invoice": 2})
    failed = await make_run(store, S.FAILED)
    cancelled = await make_run(store, S.CANCELLED)
    live = [await make_run(store, s) for s in (S.RUNNING, S.PAUSED, S.CANCELLING)]
    replay = await store.replay_run(done.id)
    await age(pool, [done.id, failed.id, cancelled.id, replay.id] + [r.id for r in live])
    recent = await make_run(store, S.COMPLETED)
    pruned = {done.id, failed.id, cancelled.id}
    before = await log_rows(pool)
    assert pruned <= set(before)
    assert before[done.id] == [
        (1, None, "pending"),
        (2, "pending", "running"),
        (3, "running", "completed"),
    ]

    report = await store.prune_runs(older_than=DAY)

    assert report == PruneReport(
        runs=3,
        step_runs=1,
        attempts=2,
        by_status={S.FAILED: 1, S.COMPLETED: 1, S.CANCELLED: 1},
        dry_run=False,
    )
    after = await log_rows(pool)
    # The kept runs' rows are untouched; the replay, whose replayed_from_run_id
    # the prune cleared (a write without a status change), got no row.
    assert after == {i: rows for i, rows in before.items() if i not in pruned}
    assert set(after) == {replay.id, recent.id} | {r.id for r in live}
    assert (await store.get_run(replay.id)).version == replay.version + 1


async def test_a_dry_run_counts_no_log_rows_and_deletes_none(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    old = [await make_run(store, s) for s in (S.COMPLETED, S.FAILED)]
    await with_steps(store, old[0], {"load_invoice": 1})
    await age(pool, [r.id for r in old])
    before = await log_rows(pool)

    dry = await store.prune_runs(older_than=DAY, dry_run=True)

    assert dry == PruneReport(
        runs=2,
        step_runs=1,
        attempts=1,
        by_status={S.FAILED: 1, S.COMPLETED: 1, S.CANCELLED: 0},
        dry_run=True,
    )
    assert await log_rows(pool) == before
    real = await store.prune_runs(older_than=DAY)
    assert (real.runs, real.step_runs, real.attempts) == (dry.runs, dry.step_runs, dry.attempts)
    assert await log_rows(pool) == {}


async def test_prune_runs_in_batches_leaves_no_log_row_behind(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    old = [await make_run(store, S.COMPLETED) for _ in range(7)]
    etl = await store.create_run(ETL_DAILY, {})
    etl = await store.transition_run(etl.id, "failed")
    await age(pool, [r.id for r in old] + [etl.id])

    report = await store.prune_runs(
        older_than=DAY, workflow="billing.invoice_reminder", batch_size=2
    )

    assert report.runs == 7
    assert await log_rows(pool) == {etl.id: [(1, None, "pending"), (2, "pending", "failed")]}


async def test_each_prune_batch_deletes_its_runs_log_rows_with_them(
    store: RunStore, pool: asyncpg.Pool, holder: asyncpg.Connection
) -> None:
    """The first batches commit while the prune waits for a locked run: their
    runs' log rows are gone with them; the locked run's go when it is deleted,
    by the waiting form of the batch."""
    runs = [await make_run(store, S.COMPLETED) for _ in range(4)]
    await age(pool, [r.id for r in runs])
    locked = runs[2].id
    async with asyncio.timeout(TIMEOUT_S):
        transaction = holder.transaction()
        await transaction.start()
        try:
            await holder.execute("SELECT FROM squidmesh.runs WHERE id = $1 FOR UPDATE", locked)
            task = asyncio.ensure_future(store.prune_runs(older_than=DAY, batch_size=1))
            await wait_until_blocked(pool, blocked_by=holder.get_server_pid())
            assert not task.done()
            assert set(await log_rows(pool)) == {locked}
            assert await pool.fetchval("SELECT count(*) FROM squidmesh.runs") == 1
        except BaseException:
            await transaction.rollback()
            raise
        await transaction.commit()
        report = await task
    assert report.runs == 4
    assert await log_rows(pool) == {}


# -- prune_feed ------------------------------------------------------------------------


async def ticks(pool: asyncpg.Pool) -> list[int]:
    """The ticks, tick 0 (the feed's start, never stored) first."""
    stored = await pool.fetch("SELECT id FROM squidmesh.feed_ticks ORDER BY id")
    assert all(r["id"] > 0 for r in stored)
    return [0, *(r["id"] for r in stored)]


async def make_old(pool: asyncpg.Pool, ids: list[int], by: dt.timedelta) -> None:
    await pool.execute(
        "UPDATE squidmesh.feed_ticks SET made_at = clock_timestamp() - $2::interval"
        " WHERE id = ANY($1::int8[])",
        ids,
        by,
    )


async def add_ticks(pool: asyncpg.Pool, *ages: dt.timedelta) -> list[int]:
    """New ticks after the newest, made ``ages`` ago (in that order); their ids."""
    added: list[int] = []
    for made in ages:
        added.append(
            await pool.fetchval(
                "INSERT INTO squidmesh.feed_ticks (id, snapshot, seq_mark, made_at)"
                " SELECT COALESCE(max(id), 0) + 1, pg_current_snapshot(), 0,"
                " clock_timestamp() - $1::interval"
                " FROM squidmesh.feed_ticks RETURNING id",
                made,
            )
        )
    return added


async def test_prune_feed_deletes_old_ticks_but_never_tick_0_nor_the_newest(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    start = await ticks(pool)
    assert start[0] == 0
    await make_old(pool, start, 30 * DAY)
    old = await add_ticks(pool, *[10 * DAY] * 5, 8 * DAY)
    young = await add_ticks(pool, 6 * DAY, DAY, dt.timedelta(0))

    assert await store.prune_feed() == len(start) - 1 + len(old)

    assert await ticks(pool) == [0, *young]
    assert await store.prune_feed() == 0
    # Everything made before the call but the newest; tick 0 stays, however old.
    assert await store.prune_feed(older_than=dt.timedelta(0)) == 2
    assert await ticks(pool) == [0, young[-1]]
    # The newest is kept however old it is.
    await make_old(pool, [0, young[-1]], 400 * DAY)
    assert await store.prune_feed(older_than=dt.timedelta(0)) == 0
    assert await ticks(pool) == [0, young[-1]]


async def test_prune_feed_spares_ticks_younger_than_older_than(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    start = await ticks(pool)
    await make_old(pool, start, 3 * DAY)
    # Out of id order: a tick's age decides, not its place.
    added = await add_ticks(pool, 5 * DAY, DAY, 5 * DAY, DAY, 5 * DAY)
    assert await store.prune_feed(older_than=2 * DAY) == len(start) - 1 + 2
    assert await ticks(pool) == [0, added[1], added[3], added[4]]
    # Further back than the year 1: nothing is that old.
    assert await store.prune_feed(older_than=dt.timedelta.max) == 0
    assert await ticks(pool) == [0, added[1], added[3], added[4]]


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


@pytest.mark.squidmesh_fresh_db  # a trigger on squidmesh.feed_ticks
@pytest.mark.parametrize(("old", "batch_size", "batches"), [(10, 3, 4), (9, 3, 4), (2, 5, 1)])
async def test_prune_feed_deletes_in_transactions_of_at_most_batch_size_ticks(
    pool: asyncpg.Pool,
    logged_pool: tuple[asyncpg.Pool, list[str]],
    old: int,
    batch_size: int,
    batches: int,
) -> None:
    await pool.execute("DELETE FROM squidmesh.feed_ticks WHERE id > 0")
    added = await add_ticks(pool, *[30 * DAY] * old, dt.timedelta(0))
    logged, statements = logged_pool
    # Each batch records what it deleted, in its own transaction.
    await pool.execute(
        "CREATE TABLE public.deleted_ticks (id int8, xid xid8 DEFAULT pg_current_xact_id());"
        "CREATE FUNCTION public.note_tick() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN INSERT INTO public.deleted_ticks (id) VALUES (OLD.id); RETURN OLD; END $$;"
        "CREATE TRIGGER note_tick AFTER DELETE ON squidmesh.feed_ticks"
        " FOR EACH ROW EXECUTE FUNCTION public.note_tick()"
    )

    deleted = await RunStore(logged).prune_feed(older_than=DAY, batch_size=batch_size)

    assert deleted == old
    assert await ticks(pool) == [0, added[-1]]
    assert statements.count(Q["lock_and_prune_feed_ticks"]) == batches
    sizes = await pool.fetch(
        "SELECT count(*) AS n, min(id) AS low, max(id) AS high FROM public.deleted_ticks"
        " GROUP BY xid ORDER BY min(id)"
    )
    full, rest = divmod(old, batch_size)
    assert [r["n"] for r in sizes] == [batch_size] * full + ([rest] if rest else [])
    assert all(a["high"] < b["low"] for a, b in itertools.pairwise(sizes))


async def test_concurrent_prunes_share_the_work(store: RunStore, pool: asyncpg.Pool) -> None:
    start = await ticks(pool)
    await make_old(pool, start, 30 * DAY)
    await add_ticks(pool, *[30 * DAY] * 60)
    newest = (await ticks(pool))[-1]

    counts = await asyncio.wait_for(
        asyncio.gather(*(store.prune_feed(batch_size=2) for _ in range(3))), TIMEOUT_S
    )

    # All but tick 0 and the newest of the added ones.
    assert sum(counts) == len(start) - 1 + 60 - 1
    assert await ticks(pool) == [0, newest]


async def test_the_feed_still_reads_after_a_prune(store: RunStore, pool: asyncpg.Pool) -> None:
    run = await store.create_run(ETL_DAILY, {})
    await make_old(pool, await ticks(pool), DAY)  # a tick is due at the next read
    first = await store.read_changes()
    assert [(c.run_id, c.to_status) for c in first.changes] == [(run.id, S.PENDING)]
    moved = await store.transition_run(run.id, "running")
    await make_old(pool, await ticks(pool), DAY)
    second = await store.read_changes(first.position)
    assert [(c.run_id, c.to_status) for c in second.changes] == [(moved.id, S.RUNNING)]

    # Everything but tick 0 and the newest: the window first.position named is gone.
    assert await store.prune_feed(older_than=dt.timedelta(0)) >= 1
    assert len(await ticks(pool)) == 2
    with pytest.raises(InvalidPosition):
        await store.read_changes(first.position)
    # From the beginning and from the newest position, the feed reads on.
    again = await store.read_changes()
    assert [(c.run_id, c.to_status) for c in again.changes] == [
        (run.id, S.PENDING),
        (run.id, S.RUNNING),
    ]
    assert (await store.read_changes(second.position)).changes == []


@pytest.mark.parametrize(
    ("kwargs", "name", "reason"),
    [
        ({"older_than": dt.timedelta(seconds=-1)}, "older_than", "timedelta of zero or more"),
        ({"older_than": 3600}, "older_than", "timedelta of zero or more"),
        ({"older_than": None}, "older_than", "timedelta of zero or more"),
        ({"older_than": "7 days"}, "older_than", "timedelta of zero or more"),
        ({"batch_size": 0}, "batch_size", "int from 1 to 100000"),
        ({"batch_size": -1}, "batch_size", "int from 1 to 100000"),
        ({"batch_size": 100_001}, "batch_size", "int from 1 to 100000"),
        ({"batch_size": True}, "batch_size", "int from 1 to 100000"),
        ({"batch_size": 10.0}, "batch_size", "int from 1 to 100000"),
        ({"batch_size": "10"}, "batch_size", "int from 1 to 100000"),
        ({"batch_size": None}, "batch_size", "int from 1 to 100000"),
    ],
)
async def test_prune_feed_argument_errors(
    store: RunStore, pool: asyncpg.Pool, kwargs: dict[str, Any], name: str, reason: str
) -> None:
    before = await ticks(pool)
    arguments: dict[str, Any] = {"older_than": dt.timedelta(0), **kwargs}
    with pytest.raises(InvalidArgument, match=reason) as caught:
        await store.prune_feed(**arguments)
    assert caught.value.name == name
    assert str(caught.value).startswith(f"invalid {name}: ")
    assert await ticks(pool) == before


async def test_prune_feed_batch_size_bounds_are_accepted(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    start = await ticks(pool)
    await add_ticks(pool, DAY, DAY)
    # All but tick 0 and the newest of the added ones.
    assert await store.prune_feed(older_than=dt.timedelta(0), batch_size=100_000) == len(start)
    newest = await add_ticks(pool, DAY, DAY)
    assert await store.prune_feed(older_than=dt.timedelta(0), batch_size=1) == 2
    assert await ticks(pool) == [0, newest[-1]]
