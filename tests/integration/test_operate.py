"""Idempotent creation, optimistic versions, and the state machine the database enforces."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

import squidmesh
from squidmesh import (
    IdempotencyConflict,
    InvalidArgument,
    InvalidTransition,
    RunCreated,
    RunStatus,
    RunStore,
    VersionConflict,
    progress,
    state_machine,
)
from tests.integration.workflows import INVOICE_REMINDER

PAYLOAD = {"account_id": "acct_1"}

# -- idempotent creation ----------------------------------------------------------


async def test_the_same_key_and_payload_returns_the_first_run(
    store: RunStore, events: list[Any]
) -> None:
    first = await store.create_run(INVOICE_REMINDER, PAYLOAD, idempotency_key="order-1")
    assert first.idempotency_key == "order-1"
    moved = await store.transition_run(first.id, "running")
    events.clear()
    # Key order does not matter; the run comes back as stored now.
    again = await store.create_run(
        INVOICE_REMINDER, {"account_id": "acct_1"}, idempotency_key="order-1"
    )
    assert again == moved
    assert events == []
    run, created = await store.get_or_create_run(
        INVOICE_REMINDER, dict(PAYLOAD), idempotency_key="order-1"
    )
    assert (run, created) == (moved, False)
    assert len(await store.list_runs()) == 1


async def test_a_key_is_compared_on_the_payload_as_given_and_the_trigger(
    store: RunStore,
) -> None:
    payload = {"account_id": "a", "note": "x"}
    first = await store.create_run(INVOICE_REMINDER, payload, idempotency_key="k")
    same = await store.create_run(
        INVOICE_REMINDER, {"note": "x", "account_id": "a"}, idempotency_key="k"
    )
    assert same.id == first.id
    for other, trigger in (({"account_id": "b"}, None), (payload, "nightly")):
        with pytest.raises(IdempotencyConflict) as info:
            await store.create_run(
                INVOICE_REMINDER,
                other if trigger is None else {},
                trigger=trigger,
                idempotency_key="k",
            )
        assert (info.value.workflow, info.value.idempotency_key) == (INVOICE_REMINDER.name, "k")
        assert info.value.run_id == first.id
    # Defaults are not part of the comparison: the caller's input is.
    explicit = {**payload, "posted_on": first.payload["posted_on"]}
    with pytest.raises(IdempotencyConflict):
        await store.create_run(INVOICE_REMINDER, explicit, idempotency_key="k")


async def test_keys_are_per_workflow(store: RunStore) -> None:
    a = await store.create_run(INVOICE_REMINDER, PAYLOAD, idempotency_key="same")
    b = await store.create_run("etl.daily", {}, idempotency_key="same")
    assert a.id != b.id


@pytest.mark.parametrize("key", ["", "a" * 256, "nul\x00", "\ud800", 7, b"k"])
async def test_a_key_that_cannot_be_stored_is_invalid_argument(store: RunStore, key: Any) -> None:
    with pytest.raises(InvalidArgument) as info:
        await store.create_run(INVOICE_REMINDER, PAYLOAD, idempotency_key=key)
    assert info.value.name == "idempotency_key"
    assert await store.list_runs() == []


async def test_twenty_concurrent_creates_with_one_key_make_one_run_and_one_dispatch(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    await pool.execute("CREATE TABLE dispatched (run_id uuid)")

    async def dispatch(conn: Any, run: Any) -> None:
        await conn.execute("INSERT INTO dispatched VALUES ($1)", run.id)

    async def create(i: int) -> Any:
        payload = PAYLOAD if i % 4 else {"account_id": f"other-{i}"}
        try:
            return await store.get_or_create_run(
                INVOICE_REMINDER, payload, idempotency_key="race", dispatch=dispatch
            )
        except IdempotencyConflict as exc:
            return exc

    results = await asyncio.gather(*(create(i) for i in range(20)))
    pairs = [r for r in results if isinstance(r, tuple)]
    conflicts = [r for r in results if isinstance(r, IdempotencyConflict)]
    created = [run for run, was_created in pairs if was_created]
    assert len(created) == 1
    winner = created[0]
    assert all(run.id == winner.id for run, _ in pairs)
    assert len(pairs) + len(conflicts) == 20
    # Whoever won, a different payload conflicts and the same one returns it.
    # (5 callers send payloads of their own, all different.)
    expected_conflicts = 5 if winner.payload["account_id"] == "acct_1" else 19
    assert len(conflicts) == expected_conflicts
    assert await pool.fetchval("SELECT count(*) FROM squidmesh.runs") == 1
    assert [r[0] for r in await pool.fetch("SELECT run_id FROM dispatched")] == [winner.id]
    assert [type(e) for e in events] == [RunCreated]


async def test_create_and_dispatch_with_a_used_key_does_not_dispatch_again(
    store: RunStore,
) -> None:
    calls: list[Any] = []

    async def dispatch(conn: Any, run: Any) -> None:
        calls.append(run.id)

    first = await store.create_and_dispatch_run(
        INVOICE_REMINDER, PAYLOAD, dispatch, idempotency_key="job-9"
    )
    second = await store.create_and_dispatch_run(
        INVOICE_REMINDER, PAYLOAD, dispatch, idempotency_key="job-9"
    )
    assert second == first and calls == [first.id]


# -- optimistic versions ------------------------------------------------------------


async def _paused(store: RunStore) -> tuple[Any, Any]:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    run = await store.transition_run(run.id, "running", current_step="approve")
    step_run = await store.begin_step(run.id, "approve")
    return run, step_run


async def test_a_stale_version_never_writes_and_calls_no_code(
    store: RunStore, events: list[Any]
) -> None:
    run, step_run = await _paused(store)
    stale = run.version - 1
    called: list[str] = []

    def changes(r: Any) -> dict[str, Any]:
        called.append("changes")
        return {"context": {"x": 1}}

    async def dispatch(conn: Any, r: Any) -> None:
        called.append("dispatch")

    events.clear()
    attempts = [
        store.transition_run(run.id, "paused", expected_version=stale),
        store.update_run(run.id, context={"x": 1}, expected_version=stale),
        store.cancel_run(run.id, expected_version=stale),
        store.transition_run_with(run.id, "paused", changes, expected_version=stale),
        store.update_run_with(run.id, changes, expected_version=stale),
        store.transition_and_dispatch_run(run.id, "paused", None, dispatch, expected_version=stale),
        store.update_and_dispatch_run(run.id, changes, dispatch, expected_version=stale),
        store.progress_run(run.id, changes, progress.Update(), expected_version=stale),
        store.pause_run(run.id, step_run.id, None, expected_version=stale),
    ]
    for call in attempts:
        with pytest.raises(VersionConflict) as info:
            await call
        assert (info.value.run_id, info.value.expected, info.value.actual) == (
            run.id,
            stale,
            run.version,
        )
    assert called == [] and events == []
    assert await store.get_run(run.id) == run


async def test_the_version_check_comes_before_the_legality_check(store: RunStore) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    with pytest.raises(VersionConflict):
        await store.transition_run(run.id, "completed", expected_version=9)
    with pytest.raises(InvalidTransition):
        await store.transition_run(run.id, "completed", expected_version=1)


async def test_the_current_version_writes_and_bumps_by_one(store: RunStore) -> None:
    run, step_run = await _paused(store)
    v = run.version
    run = await store.update_run(run.id, context={"a": 1}, expected_version=v)
    assert run.version == v + 1
    paused = await store.pause_run(run.id, step_run.id, None, expected_version=v + 1)
    assert paused.run.version == v + 2
    moved = await store.progress_run(
        run.id, lambda r: None, progress.Transition("running"), expected_version=v + 2
    )
    assert moved is not None and moved.version == v + 3
    cancelled = await store.cancel_run(run.id, expected_version=v + 3)
    assert cancelled.version == v + 4


@pytest.mark.parametrize("value", [0, -1, True, 1.0, "1"])
async def test_an_expected_version_that_is_not_a_version_is_invalid_argument(
    store: RunStore, value: Any
) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    with pytest.raises(InvalidArgument):
        await store.update_run(run.id, context={}, expected_version=value)


async def test_concurrent_versioned_writers_have_one_winner_per_version(store: RunStore) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    wins: list[int] = []

    async def writer(n: int) -> None:
        for _ in range(10):
            current = await store.get_run(run.id)
            try:
                written = await store.update_run(
                    run.id, context={"by": n}, expected_version=current.version
                )
            except VersionConflict:
                continue
            assert written.version == current.version + 1
            wins.append(current.version)

    await asyncio.gather(*(writer(n) for n in range(8)))
    assert len(wins) == len(set(wins))  # never two winners from one version
    final = await store.get_run(run.id)
    assert final.version == 1 + len(wins)


# -- the state machine in the database ---------------------------------------------


async def test_the_database_refuses_exactly_the_moves_the_state_machine_forbids(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    statuses = [st.value for st in state_machine.STATES]
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    async with pool.acquire() as conn:
        for a in statuses:
            for b in statuses:
                if a == b:
                    continue
                async with conn.transaction():
                    # Put the run in `a` (any move allowed for this step only),
                    # then try `a -> b` as any client would.
                    await conn.execute("SET LOCAL squidmesh.unchecked_moves = on")
                    await conn.execute(
                        "UPDATE squidmesh.runs SET status = $2 WHERE id = $1", run.id, a
                    )
                    await conn.execute("SET LOCAL squidmesh.unchecked_moves = off")
                    try:
                        async with conn.transaction():  # a savepoint
                            await conn.execute(
                                "UPDATE squidmesh.runs SET status = $2 WHERE id = $1", run.id, b
                            )
                        refused = False
                    except asyncpg.PostgresError as exc:
                        assert exc.sqlstate == "SQM01", exc
                        assert a in str(exc) and b in str(exc)
                        refused = True
                assert refused == (not state_machine.can_transition(a, b)), (a, b)
    # A value that is not a status at all is left to the CHECK constraint.
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE squidmesh.runs SET status = 'bogus' WHERE id = $1", run.id)


async def test_a_raw_illegal_status_change_is_refused_naming_both(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    with pytest.raises(asyncpg.PostgresError) as info:
        await pool.execute("UPDATE squidmesh.runs SET status = 'completed' WHERE id = $1", run.id)
    assert info.value.sqlstate == "SQM01"
    assert "pending" in str(info.value) and "completed" in str(info.value)
    assert await store.get_run(run.id) == run
    # squidmesh's own boundary maps it, should it ever reach one of its writes.
    with pytest.raises(InvalidTransition) as mapped:
        await squidmesh._queries.write_value(
            pool, "UPDATE squidmesh.runs SET status = 'completed' WHERE id = $1", run.id
        )
    assert (mapped.value.from_status, mapped.value.to_status) == ("pending", "completed")


async def test_a_raw_legal_change_succeeds_and_bumps_the_version(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    row = await pool.fetchrow(
        "UPDATE squidmesh.runs SET status = 'running' WHERE id = $1 RETURNING version, updated_at",
        run.id,
    )
    assert row is not None
    version, updated_at = row
    assert version == run.version + 1 and updated_at >= run.updated_at


async def test_an_operator_may_allow_any_move_for_one_transaction(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL squidmesh.unchecked_moves = on")
        await conn.execute("UPDATE squidmesh.runs SET status = 'completed' WHERE id = $1", run.id)
    repaired = await store.get_run(run.id)
    assert repaired.status is RunStatus.COMPLETED and repaired.version == run.version + 1
    with pytest.raises(asyncpg.PostgresError):  # only for that transaction
        await pool.execute("UPDATE squidmesh.runs SET status = 'running' WHERE id = $1", run.id)
