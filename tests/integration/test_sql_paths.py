"""transition_run and cancel_run have two SQL paths: a plain guarded UPDATE with
``RETURNING old.status`` on PostgreSQL >= 18, and one locking statement (a CTE,
a function) that older servers use and that also serves as the fast path's
fallback. These tests pin the round trips of each and run the older path on
this server by forcing the capability off."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

import squidmesh
from squidmesh import InvalidTransition, RunNotFound, RunStatus, RunStore, RunTransitioned
from tests.integration.workflows import INVOICE_REMINDER, WORKFLOWS

PAYLOAD = {"account_id": "acct_1"}


class Counter:
    """Statements sent, from asyncpg's query logger (which reports via call_soon)."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def __call__(self, record: Any) -> None:
        self.queries.append(record.query)

    async def count(self) -> int:
        await asyncio.sleep(0)  # let the scheduled logger callbacks run
        n = len(self.queries)
        self.queries.clear()
        return n


async def _counting_pool(dsn: str, counter: Counter) -> asyncpg.Pool:
    async def init(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(counter)

    # min_size=max_size=1: every statement goes through the one instrumented connection.
    return await asyncpg.create_pool(
        dsn, min_size=1, max_size=1, init=init, reset=squidmesh.no_reset
    )


@pytest.fixture(params=["fast", "locking statement"])
async def any_path_store(request: pytest.FixtureRequest, pool: asyncpg.Pool) -> RunStore:
    store = RunStore(pool, workflows=WORKFLOWS)
    if request.param != "fast":
        store._server.returning_old = False
    return store


async def test_both_paths_follow_the_state_machine(any_path_store: RunStore) -> None:
    store = any_path_store
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    moved = await store.transition_run(run.id, "running", context={"n": 1})
    assert (moved.status, moved.context, moved.version) == (RunStatus.RUNNING, {"n": 1}, 2)
    with pytest.raises(InvalidTransition) as info:
        await store.transition_run(run.id, "pending")
    assert (info.value.from_status, info.value.to_status) == ("running", "pending")
    assert await store.get_run(run.id) == moved
    with pytest.raises(RunNotFound):
        await store.transition_run("00000000-0000-7000-8000-000000000000", "running")

    cancelling = await store.cancel_run(run.id)
    assert cancelling.status == RunStatus.CANCELLING and cancelling.current_step is None
    with pytest.raises(InvalidTransition):
        await store.cancel_run(run.id)  # already cancelling
    pending = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    assert (await store.cancel_run(pending.id)).status == RunStatus.CANCELLED
    paused = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    await store.transition_run(paused.id, "running")
    await store.transition_run(paused.id, "paused")
    assert (await store.cancel_run(paused.id)).status == RunStatus.CANCELLED
    with pytest.raises(RunNotFound):
        await store.cancel_run("00000000-0000-7000-8000-000000000000")


async def test_events_name_the_state_read_under_the_lock(pool: asyncpg.Pool) -> None:
    events: list[Any] = []
    store = RunStore(pool, workflows=WORKFLOWS, listeners=[events.append])
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    await store.transition_run(run.id, "running")
    await store.transition_run(run.id, "retrying")
    await store.cancel_run(run.id)
    moves = [(e.from_status, e.to_status) for e in events if isinstance(e, RunTransitioned)]
    assert moves == [("pending", "running"), ("running", "retrying"), ("retrying", "cancelling")]


async def test_round_trips_on_this_server(dsn: str) -> None:
    counter = Counter()
    pool = await _counting_pool(dsn, counter)
    try:
        store = RunStore(pool, workflows=WORKFLOWS)
        run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
        async with pool.acquire() as conn:
            fast = store._server.fast_paths(conn)  # the capability of this server
        await counter.count()
        await store.transition_run(run.id, "running")
        assert await counter.count() == 1
        with pytest.raises(InvalidTransition):
            await store.transition_run(run.id, "pending")
        assert await counter.count() == (2 if fast else 1)
        await store.cancel_run(run.id)
        assert await counter.count() == 1
        replay = await store.replay_run(run.id)
        assert await counter.count() == 1
        assert replay.replayed_from_run_id == run.id
    finally:
        await pool.close()
