"""Writers block on the run's row lock and decide on the state committed under it.

Connection A takes the row lock by hand and holds it in an open transaction.
A store call (B) is started and observed to be blocked on that lock through
``pg_stat_activity``; A then changes the row and commits (or rolls back), and
B must act on what A left. No sleeps are used to order the two sides.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import asyncpg
import pytest

from squidmesh import InvalidTransition, Run, RunStatus, RunStore, RunTransitioned
from squidmesh.testing import wait_until_blocked
from tests.integration.workflows import INVOICE_REMINDER

TIMEOUT_S = 30
N_RACERS = 12


async def _run_in(store: RunStore, pool: asyncpg.Pool, status: str) -> uuid.UUID:
    run = await store.create_run(INVOICE_REMINDER, {"account_id": "acct_1"})
    await store.update_run(run.id, current_step="approve", context={"by": "setup"})
    # Any status, legal move or not: the database's state machine allows it
    # for this one transaction (the operator's escape hatch).
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL squidmesh.unchecked_moves = on")
        await conn.execute(
            "UPDATE squidmesh.runs SET status = $2 WHERE id = $1 AND status <> $2", run.id, status
        )
    return run.id


async def _race_against_holder(
    holder: asyncpg.Connection,
    monitor: asyncpg.Connection,
    run_id: uuid.UUID,
    call: Callable[[], Coroutine[Any, Any, Run]],
    holder_sql: str,
    *,
    commit: bool = True,
) -> asyncio.Task[Run]:
    """A locks the row; B starts and blocks; A runs ``holder_sql`` and ends."""
    transaction = holder.transaction()
    await transaction.start()
    try:
        # The holder stands for any other writer, an operator's repair
        # included: the database's state machine lets it make any move.
        await holder.execute("SET LOCAL squidmesh.unchecked_moves = on")
        locked = await holder.fetchval(
            "SELECT status FROM squidmesh.runs WHERE id = $1 FOR UPDATE", run_id
        )
        assert locked is not None
        task = asyncio.create_task(call())
        await wait_until_blocked(monitor, blocked_by=holder.get_server_pid(), timeout=TIMEOUT_S)
        assert not task.done()
        await holder.execute(holder_sql, run_id)
    except BaseException:
        await transaction.rollback()
        raise
    if commit:
        await transaction.commit()
    else:
        await transaction.rollback()
    return task


async def _result(task: asyncio.Task[Run]) -> Run:
    return await asyncio.wait_for(task, timeout=TIMEOUT_S)


# (initial, what A writes, the status B must end with) for cancel_run.
CANCEL_CASES = [
    ("running", "paused", "cancelled"),  # decided as paused, not as running
    ("pending", "running", "cancelling"),  # decided as running, not as pending
    ("paused", "running", "cancelling"),
    ("running", "retrying", "cancelling"),
]


@pytest.mark.parametrize(("initial", "written", "expected"), CANCEL_CASES)
async def test_cancel_decides_on_the_state_committed_under_the_lock(
    store: RunStore,
    pool: asyncpg.Pool,
    events: list[Any],
    holder: asyncpg.Connection,
    monitor: asyncpg.Connection,
    initial: str,
    written: str,
    expected: str,
) -> None:
    run_id = await _run_in(store, pool, initial)
    events.clear()
    task = await _race_against_holder(
        holder,
        monitor,
        run_id,
        lambda: store.cancel_run(run_id),
        f"UPDATE squidmesh.runs SET status = '{written}' WHERE id = $1",
    )
    run = await _result(task)
    assert run.status == expected
    assert run.current_step is None
    assert (await store.get_run(run_id)).status == expected
    assert events[0] == RunTransitioned(
        run=run, from_status=RunStatus(written), to_status=RunStatus(expected)
    )


@pytest.mark.parametrize("written", ["completed", "failed", "cancelled"])
async def test_cancel_refused_when_the_holder_finished_the_run(
    store: RunStore,
    pool: asyncpg.Pool,
    events: list[Any],
    holder: asyncpg.Connection,
    monitor: asyncpg.Connection,
    written: str,
) -> None:
    run_id = await _run_in(store, pool, "running")
    events.clear()
    task = await _race_against_holder(
        holder,
        monitor,
        run_id,
        lambda: store.cancel_run(run_id),
        f"UPDATE squidmesh.runs SET status = '{written}' WHERE id = $1",
    )
    with pytest.raises(InvalidTransition) as info:
        await _result(task)
    assert (info.value.from_status, info.value.to_status) == (written, "cancelling")
    assert (await store.get_run(run_id)).status == written
    assert events == []


async def test_cancel_after_the_holder_rolls_back_uses_the_original_state(
    store: RunStore,
    pool: asyncpg.Pool,
    holder: asyncpg.Connection,
    monitor: asyncpg.Connection,
) -> None:
    run_id = await _run_in(store, pool, "running")
    task = await _race_against_holder(
        holder,
        monitor,
        run_id,
        lambda: store.cancel_run(run_id),
        "UPDATE squidmesh.runs SET status = 'completed' WHERE id = $1",
        commit=False,
    )
    assert (await _result(task)).status is RunStatus.CANCELLING


@pytest.mark.parametrize(
    ("initial", "written", "target", "outcome"),
    [
        # A's committed state makes B's move illegal.
        ("pending", "cancelled", "running", InvalidTransition),
        ("pending", "running", "running", InvalidTransition),
        ("running", "retrying", "paused", InvalidTransition),
        ("running", "completed", "failed", InvalidTransition),
        # A's committed state makes B's move legal; from_status is A's state.
        ("pending", "running", "completed", "completed"),
        ("paused", "running", "retrying", "retrying"),
        ("running", "cancelling", "cancelled", "cancelled"),
    ],
)
async def test_transition_decides_on_the_state_committed_under_the_lock(
    store: RunStore,
    pool: asyncpg.Pool,
    events: list[Any],
    holder: asyncpg.Connection,
    monitor: asyncpg.Connection,
    initial: str,
    written: str,
    target: str,
    outcome: object,
) -> None:
    run_id = await _run_in(store, pool, initial)
    events.clear()
    task = await _race_against_holder(
        holder,
        monitor,
        run_id,
        lambda: store.transition_run(run_id, target, context={"by": "B"}),
        f"UPDATE squidmesh.runs SET status = '{written}', context = '{{\"by\": \"A\"}}'"
        " WHERE id = $1",
    )
    if outcome is InvalidTransition:
        with pytest.raises(InvalidTransition) as info:
            await _result(task)
        assert (info.value.from_status, info.value.to_status) == (written, target)
        stored = await store.get_run(run_id)
        assert (stored.status, stored.context) == (written, {"by": "A"})
        assert events == []
    else:
        run = await _result(task)
        assert (run.status, run.context) == (outcome, {"by": "B"})
        assert events == [
            RunTransitioned(run=run, from_status=RunStatus(written), to_status=RunStatus(target))
        ]


async def test_update_waits_and_keeps_the_holders_other_fields(
    store: RunStore,
    pool: asyncpg.Pool,
    holder: asyncpg.Connection,
    monitor: asyncpg.Connection,
) -> None:
    run_id = await _run_in(store, pool, "running")
    task = await _race_against_holder(
        holder,
        monitor,
        run_id,
        lambda: store.update_run(run_id, current_step="send_email"),
        "UPDATE squidmesh.runs SET status = 'paused', context = '{\"by\": \"A\"}' WHERE id = $1",
    )
    run = await _result(task)
    assert (run.status, run.context, run.current_step) == (
        RunStatus.PAUSED,
        {"by": "A"},
        "send_email",
    )


async def test_racing_transitions_exactly_one_wins(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    run_id = await _run_in(store, pool, "pending")
    events.clear()
    results = await asyncio.wait_for(
        asyncio.gather(
            *(
                store.transition_run(run_id, "running", context={"winner": i})
                for i in range(N_RACERS)
            ),
            return_exceptions=True,
        ),
        timeout=TIMEOUT_S,
    )
    winners = [r for r in results if isinstance(r, Run)]
    losers = [r for r in results if not isinstance(r, Run)]
    assert len(winners) == 1
    assert len(losers) == N_RACERS - 1
    for error in losers:
        assert isinstance(error, InvalidTransition), repr(error)
        assert (error.from_status, error.to_status) == ("running", "running")
    stored = await store.get_run(run_id)
    assert stored == winners[0]
    assert stored.version == 3  # create (1), the setup update (2), one winning write (3)
    assert len(events) == 1


async def test_racing_cancel_and_transitions_follow_one_legal_path(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    for _ in range(5):
        run_id = await _run_in(store, pool, "pending")
        events.clear()
        calls: list[Awaitable[Run]] = [store.cancel_run(run_id)]
        calls += [store.transition_run(run_id, "running") for _ in range(4)]
        calls += [store.transition_run(run_id, "failed") for _ in range(2)]
        results = await asyncio.wait_for(
            asyncio.gather(*calls, return_exceptions=True), timeout=TIMEOUT_S
        )
        for r in results:
            assert isinstance(r, Run | InvalidTransition), repr(r)
        # Replay the reported moves in write order (each write bumps version):
        # each must start from the state the previous one left.
        ordered = sorted(events, key=lambda e: e.run.version)
        moves = [(e.from_status, e.to_status) for e in ordered]
        state = RunStatus.PENDING
        for from_status, to_status in moves:
            assert from_status == state
            state = to_status
        final = await store.get_run(run_id)
        assert final.status == state
        assert len(moves) == sum(isinstance(r, Run) for r in results)
        assert final.status in {"cancelled", "cancelling", "failed"}
