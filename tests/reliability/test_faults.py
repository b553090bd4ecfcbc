"""Fault injection: killed connections, a server restart, user-configured timeouts.

What counts as a "clear error" (decided here): the store does not wrap
infrastructure failures (its query layer, ``squidmesh._queries``, passes them
through), so a caller sees asyncpg's own types, which a user of an asyncpg pool already
handles: ``CONNECTION_LOST`` below for a dead connection or server,
``asyncpg.QueryCanceledError`` for a statement timeout and
``asyncpg.LockNotAvailableError`` for a lock timeout. In every case the run is
either fully changed or untouched, and the pool keeps serving afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID

import asyncpg
import pytest

import squidmesh
from squidmesh import Run, RunStatus, progress
from squidmesh.testing import EmbeddedPostgres, create_database, wait_until_blocked
from tests.integration.workflows import WORKFLOWS

from .conftest import snapshot

# A connection the server closed under us, or a server that is gone or still
# starting up. (AdminShutdownError is what a terminated backend reports;
# asyncpg raises ConnectionDoesNotExistError once it has seen the socket close;
# CannotConnectNowError while the server recovers; OSError while it is down.)
CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    OSError,
)

Store = squidmesh.RunStore


@pytest.fixture
async def admin(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection outside the store's pool, to kill and to watch with."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def idle_in_transaction_pid(admin: asyncpg.Connection) -> int:
    """The pid of the one backend of this database sitting inside a transaction."""
    pids = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
    )
    assert len(pids) == 1, pids
    pid: int = pids[0][0]
    return pid


async def kill(admin: asyncpg.Connection, pid: int) -> None:
    assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)


async def assert_pool_serves(store: Store, run_id: UUID) -> None:
    """More concurrent calls than the pool has connections, all succeeding."""
    async with asyncio.timeout(30):
        got = await asyncio.gather(*(store.get_run(run_id) for _ in range(40)))
        assert {r.id for r in got} == {run_id}
        fresh = await store.create_run("billing.invoice_reminder", {"account_id": "after"})
        moved = await store.transition_run(fresh.id, "running")
        assert moved.status is RunStatus.RUNNING


async def running_run(store: Store) -> Run:
    run = await store.create_run("billing.invoice_reminder", {"account_id": "a"})
    return await store.transition_run(run.id, "running", context={"n": 0})


# -- a connection killed inside a transaction -------------------------------------


async def test_killed_after_the_locking_read(
    store: Store, pool: asyncpg.Pool, admin: asyncpg.Connection, events: list[Any]
) -> None:
    run = await running_run(store)
    before = await snapshot(pool)
    n_events = len(events)

    async def changes_fn(locked: Run) -> dict[str, Any]:
        # The store holds the row lock and waits for us: kill its connection.
        await kill(admin, await idle_in_transaction_pid(admin))
        return {"context": {"n": 1}, "current_step": "approve"}

    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.update_run_with(run.id, changes_fn),
        lambda: store.transition_run_with(run.id, "paused", changes_fn),
        lambda: store.progress_run(run.id, changes_fn, progress.Transition("completed")),
    ]
    for call in calls:
        async with asyncio.timeout(20):
            with pytest.raises(CONNECTION_LOST):
                await call()
        assert await snapshot(pool) == before, "a killed transaction left a trace"
    assert len(events) == n_events, "an event was emitted for a rolled-back change"
    await assert_pool_serves(store, run.id)


async def test_killed_inside_a_dispatch(
    store: Store, pool: asyncpg.Pool, events: list[Any]
) -> None:
    run = await running_run(store)
    before = await snapshot(pool)
    n_events = len(events)

    async def dispatch(conn: Any, locked: Run) -> None:
        # The dispatch writes to the transaction, then its connection dies
        # in the middle of its own statement.
        await conn.execute(
            "INSERT INTO squidmesh.step_runs (id, run_id, step, status)"
            " VALUES (gen_random_uuid(), $1, 'load_invoice', 'running')",
            locked.id,
        )
        await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    def fail_fn(r: Run, exc: Exception) -> dict[str, Any]:
        return {"last_error": {"message": str(exc)}}

    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.progress_run(
            run.id, lambda r: {"context": {"n": 1}}, progress.Dispatch(dispatch)
        ),
        lambda: store.progress_run(
            run.id, lambda r: {"context": {"n": 2}}, progress.DispatchOrFail(dispatch, fail_fn)
        ),
        lambda: store.transition_and_dispatch_run(
            run.id, "completed", {"context": {"n": 3}}, dispatch
        ),
        lambda: store.update_and_dispatch_run(run.id, {"context": {"n": 4}}, dispatch),
        lambda: store.create_and_dispatch_run(
            "billing.invoice_reminder", {"account_id": "b"}, dispatch
        ),
        lambda: store.replay_and_dispatch_run(run.id, dispatch),
    ]
    for call in calls:
        async with asyncio.timeout(20):
            with pytest.raises(CONNECTION_LOST):
                await call()
        assert await snapshot(pool) == before, "a killed transaction left a trace"
    assert len(events) == n_events
    await assert_pool_serves(store, run.id)


async def test_killed_just_before_commit(
    store: Store, pool: asyncpg.Pool, admin: asyncpg.Connection
) -> None:
    # The field writes and the dispatch's own write are done; the dispatch
    # returns normally, but the connection is already gone: COMMIT cannot
    # happen, so none of it may persist.
    run = await running_run(store)
    before = await snapshot(pool)

    async def dispatch(conn: Any, locked: Run) -> None:
        await conn.execute(
            "INSERT INTO squidmesh.step_runs (id, run_id, step, status)"
            " VALUES (gen_random_uuid(), $1, 'load_invoice', 'running')",
            locked.id,
        )
        await kill(admin, await idle_in_transaction_pid(admin))

    for op in (progress.Dispatch(dispatch), progress.TransitionOrDispatch("completed", dispatch)):
        async with asyncio.timeout(20):
            with pytest.raises(CONNECTION_LOST):
                await store.progress_run(run.id, lambda r: {"context": {"n": 9}}, op)
        assert await snapshot(pool) == before
    await assert_pool_serves(store, run.id)


SINGLE_STATEMENT_CALLS: dict[str, Callable[[Store, Run, UUID, UUID], Awaitable[object]]] = {
    "transition_run": lambda s, r, sid, aid: s.transition_run(r.id, "completed"),
    "update_run": lambda s, r, sid, aid: s.update_run(r.id, context={"n": 5}),
    "cancel_run": lambda s, r, sid, aid: s.cancel_run(r.id),
    "pause_run": lambda s, r, sid, aid: s.pause_run(r.id, sid, aid, {}),
}


@pytest.mark.parametrize("name", list(SINGLE_STATEMENT_CALLS))
async def test_killed_while_waiting_for_the_row_lock(
    store: Store, pool: asyncpg.Pool, admin: asyncpg.Connection, dsn: str, name: str
) -> None:
    run = await running_run(store)
    step_run = await store.begin_step(run.id, "approve", {})
    attempt = await store.begin_attempt(step_run.id)
    before = await snapshot(pool)
    holder = await asyncpg.connect(dsn)
    try:
        async with asyncio.timeout(20), holder.transaction():
            await holder.execute("SELECT 1 FROM squidmesh.runs WHERE id = $1 FOR UPDATE", run.id)
            task = asyncio.ensure_future(
                SINGLE_STATEMENT_CALLS[name](store, run, step_run.id, attempt.id)
            )
            blocked = await wait_until_blocked(admin, timeout=20)
            await kill(admin, blocked[0])
            with pytest.raises(CONNECTION_LOST):
                await task
    finally:
        await holder.close()
    assert await snapshot(pool) == before
    await assert_pool_serves(store, run.id)


# -- user-configured timeouts -------------------------------------------------------


@pytest.fixture
async def timeout_pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A user's pool with both timeouts configured for every session."""
    user_pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=4,
        server_settings={"lock_timeout": "300ms", "statement_timeout": "1s"},
    )
    try:
        yield user_pool
    finally:
        await user_pool.close()


LOCKING_CALLS: dict[str, Callable[[Store, Run, UUID, UUID], Awaitable[object]]] = {
    **SINGLE_STATEMENT_CALLS,
    "update_run_with": lambda s, r, sid, aid: s.update_run_with(r.id, lambda x: {}),
    "progress_run": lambda s, r, sid, aid: s.progress_run(
        r.id, lambda x: {}, progress.Transition("completed")
    ),
}


async def test_a_lock_timeout_surfaces_as_lock_not_available(
    store: Store, timeout_pool: asyncpg.Pool, pool: asyncpg.Pool, dsn: str
) -> None:
    run = await running_run(store)
    step_run = await store.begin_step(run.id, "approve", {})
    attempt = await store.begin_attempt(step_run.id)
    user_store = squidmesh.RunStore(timeout_pool, workflows=WORKFLOWS)
    before = await snapshot(pool)
    holder = await asyncpg.connect(dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM squidmesh.runs WHERE id = $1 FOR UPDATE", run.id)
            for name, call in LOCKING_CALLS.items():
                async with asyncio.timeout(20):
                    with pytest.raises(asyncpg.LockNotAvailableError):
                        await call(user_store, run, step_run.id, attempt.id)
                assert await snapshot(pool) == before, name
    finally:
        await holder.close()
    # Once the lock is free the same store works.
    assert (await user_store.cancel_run(run.id)).status is RunStatus.CANCELLING


async def test_a_statement_timeout_surfaces_as_query_canceled(
    timeout_pool: asyncpg.Pool, pool: asyncpg.Pool
) -> None:
    user_store = squidmesh.RunStore(timeout_pool, workflows=WORKFLOWS)
    run = await running_run(user_store)
    before = await snapshot(pool)

    async def slow_dispatch(conn: Any, locked: Run) -> None:
        await conn.execute("SELECT pg_sleep(30)")

    async with asyncio.timeout(20):
        with pytest.raises(asyncpg.QueryCanceledError):
            await user_store.progress_run(
                run.id, lambda r: {"context": {"n": 1}}, progress.Dispatch(slow_dispatch)
            )
    assert await snapshot(pool) == before
    # With DispatchOrFail the timeout is the dispatch's failure: the run fails,
    # in the same transaction, with what fail_fn makes of the error.
    async with asyncio.timeout(20):
        failed = await user_store.progress_run(
            run.id,
            lambda r: {"context": {"n": 2}},
            progress.DispatchOrFail(
                slow_dispatch, lambda r, exc: {"last_error": {"kind": type(exc).__name__}}
            ),
        )
    assert failed is not None and failed.status is RunStatus.FAILED
    assert failed.context == {"n": 2}
    assert failed.last_error == {"kind": "QueryCanceledError"}
    assert await user_store.get_run(run.id) == failed


# -- a server restart under load --------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_server_restart_under_load() -> None:
    # A server of its own: the shared session server is never restarted.
    # synchronous_commit stays on so that a commit the client saw survives
    # the crash (fsync can stay off: the machine itself does not crash).
    server = EmbeddedPostgres(settings={"synchronous_commit": "on"})
    await asyncio.to_thread(server.start)
    try:
        dsn = await create_database(server.dsn, "restart")
        conn = await asyncpg.connect(dsn)
        await squidmesh.migrate(conn)
        await conn.close()
        user_pool = await asyncpg.create_pool(dsn, min_size=4, max_size=16)
        try:
            await _restart_under_load(server, user_pool)
        finally:
            user_pool.terminate()
    finally:
        await asyncio.to_thread(server.close)


async def _restart_under_load(server: EmbeddedPostgres, user_pool: asyncpg.Pool) -> None:
    store = squidmesh.RunStore(user_pool, workflows=WORKFLOWS)
    acknowledged: dict[UUID, Run] = {}  # the newest run each successful call returned
    errors: list[BaseException] = []
    phase = {"name": "before"}
    ok_by_phase: dict[str, int] = {"before": 0, "outage": 0, "after": 0}
    stop = asyncio.Event()
    tick = asyncio.Event()  # set on every outcome, so waiters re-check their condition

    def ack(run: Run) -> None:
        seen = acknowledged.get(run.id)
        if seen is None or run.version > seen.version:
            acknowledged[run.id] = run
        ok_by_phase[phase["name"]] += 1
        tick.set()

    async def worker(n: int) -> None:
        while not stop.is_set():
            try:
                run = await store.create_run("billing.invoice_reminder", {"account_id": f"w{n}"})
                ack(run)
                run = await store.transition_run(run.id, "running", current_step="load_invoice")
                ack(run)
                run = await store.update_run(run.id, context={"worker": n})
                ack(run)
                step_run = await store.begin_step(run.id, "load_invoice", {"n": n})
                await store.complete_step(step_run.id, {"ok": True})
                moved = await store.progress_run(
                    run.id, lambda r: {"current_step": None}, progress.Transition("completed")
                )
                if moved is not None:
                    ack(moved)
            except CONNECTION_LOST as exc:
                errors.append(exc)
                tick.set()
                # Back off a little so a dead server is not hammered; this is
                # load pacing, not synchronisation.
                await asyncio.sleep(0.02)

    async def wait_until(done: Callable[[], bool]) -> None:
        async with asyncio.timeout(40):
            while not done():
                tick.clear()
                await tick.wait()

    async with asyncio.TaskGroup() as tg:
        for n in range(24):
            tg.create_task(worker(n))
        await wait_until(lambda: ok_by_phase["before"] >= 200)
        phase["name"] = "outage"
        await asyncio.to_thread(server.stop, "immediate")
        errors_at_stop = len(errors)
        # While the server is down every call fails, clearly and promptly.
        await wait_until(lambda: len(errors) >= errors_at_stop + 24)
        await asyncio.to_thread(server.start)
        phase["name"] = "after"
        await wait_until(lambda: ok_by_phase["after"] >= 200)
        stop.set()

    unclear = [e for e in errors if not isinstance(e, CONNECTION_LOST)]
    assert not unclear, unclear
    assert len(errors) >= 24

    # The final scan: every run row decodes into a legal run of a known
    # workflow, no step row is orphaned, and nothing acknowledged was lost.
    runs = {r.id: r for r in await store.list_runs()}
    for run in runs.values():
        assert run.status in squidmesh.state_machine.STATES
        assert run.workflow in store.workflows
        assert run.payload["account_id"].startswith("w")
    for run_id, seen in acknowledged.items():
        assert run_id in runs, f"acknowledged run {run_id} was lost"
        assert runs[run_id].version >= seen.version, f"run {run_id} lost a write"
    async with user_pool.acquire() as conn:
        orphans = await conn.fetchval(
            "SELECT count(*) FROM squidmesh.step_runs s"
            " LEFT JOIN squidmesh.runs r ON r.id = s.run_id WHERE r.id IS NULL"
        )
        assert orphans == 0
        # A completed run went through its step: a completed step run exists.
        missing = await conn.fetchval(
            "SELECT count(*) FROM squidmesh.runs r WHERE r.status = 'completed'"
            " AND NOT EXISTS (SELECT 1 FROM squidmesh.step_runs s"
            "                 WHERE s.run_id = r.id AND s.status = 'completed')"
        )
        assert missing == 0
    probe = await store.create_run("billing.invoice_reminder", {"account_id": "w-final"})
    assert (await store.get_run(probe.id)) == probe
