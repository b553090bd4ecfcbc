"""wait_for at scale and across failures: many waiters share one watcher.

- 1,000 concurrent waiters in one process add at most one server connection
  (the LISTEN one), and all return once their runs finish.
- The listener's backend killed under 100 waiters: the watcher reconnects,
  and the runs another store finishes (no local wake-up) still end every
  wait, whether they commit while the listener is down or after.
- Waiters woken by a separate OS process that finishes their runs through a
  ``RunStore.connect`` of its own; and by the one write of a process that
  closes its store at once, with no polling.

A wait is known to be registered and checked once a wait for an already
finished run, started after it, has returned (the watcher checks waits
together, in one statement; see ``settled``). Private attributes
(``_watch.listening``) are read where the test is about the watcher itself.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar
from uuid import UUID

import asyncpg
import pytest

from squidmesh import Run, RunStatus, RunStore
from tests.concurrency.conftest import TIMEOUT_S
from tests.integration.workflows import ETL_DAILY, WORKFLOWS

S = RunStatus
T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]

CLIENTS = (
    "SELECT count(*) FROM pg_catalog.pg_stat_activity"
    " WHERE datname = current_database() AND backend_type = 'client backend'"
)
# The backends LISTENing (asyncpg's add_listener sends LISTEN "channel"),
# other than the given pids.
LISTENERS = (
    "SELECT pid FROM pg_catalog.pg_stat_activity"
    " WHERE datname = current_database() AND backend_type = 'client backend'"
    " AND pid <> pg_backend_pid() AND NOT (pid = ANY($1::int[]))"
    " AND query = 'LISTEN \"squidmesh_feed\"'"
)

# Finishes runs from another OS process: connects (listening, as
# RunStore.connect does by default), says "ready", reads a JSON list of run
# ids from stdin, finishes each ("complete": moves it to running and then
# completed; "cancel": cancels it, one write, as `squidmesh runs cancel`
# does), prints the versions, and closes its store and pool at once.
FINISHER = """
import asyncio, json, sys

from squidmesh import RunStore


async def main(dsn: str, how: str) -> None:
    async with RunStore.connect(dsn, max_size=4) as store:
        await store.pool.fetchval("SELECT 1")
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        versions = {}
        for run_id in json.loads(line):
            if how == "cancel":
                done = await store.cancel_run(run_id)
            else:
                await store.transition_run(run_id, "running")
                done = await store.transition_run(run_id, "completed")
            versions[run_id] = done.version
    print(json.dumps(versions), flush=True)


asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


# -- helpers ---------------------------------------------------------------------------


async def bounded(aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, TIMEOUT_S)


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until it holds, for at most TIMEOUT_S."""

    async def loop() -> None:
        # The server's view and the watcher's state, which no event reports.
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    await bounded(loop())


async def create_runs(store: RunStore, n: int, batch: int = 50) -> list[Run]:
    runs: list[Run] = []
    for start in range(0, n, batch):
        runs += await asyncio.gather(
            *(store.create_run(ETL_DAILY, {}) for _ in range(min(batch, n - start)))
        )
    return runs


async def finish(store: RunStore, runs: Sequence[Run], batch: int = 100) -> dict[UUID, Run]:
    """Move every run to running and then completed, ``batch`` runs at a time."""
    done: dict[UUID, Run] = {}
    for start in range(0, len(runs), batch):
        part = runs[start : start + batch]
        await asyncio.gather(*(store.transition_run(r.id, S.RUNNING) for r in part))
        for run in await asyncio.gather(*(store.transition_run(r.id, S.COMPLETED) for r in part)):
            done[run.id] = run
    return done


async def settled(store: RunStore, helper: RunStore) -> None:
    """Every wait_for task of ``store`` created before this call has had its
    first check: a wait for a finished run (made by ``helper``), registered
    after them, is answered in the same round as theirs or a later one."""
    sentinel = await helper.create_run(ETL_DAILY, {})
    await helper.transition_run(sentinel.id, S.FAILED)
    await bounded(asyncio.create_task(store.wait_for(sentinel.id)))


async def server_pids(pool: asyncpg.Pool, n: int) -> list[int]:
    """The pids of ``n`` connections of ``pool``, all held at once (so all exist)."""
    held = asyncio.Event()
    pids: list[int] = []

    async def hold() -> None:
        async with pool.acquire() as conn:
            pids.append(conn.get_server_pid())
            if len(pids) == n:
                held.set()
            await held.wait()

    await bounded(asyncio.gather(*(hold() for _ in range(n))))
    return pids


def assert_all_completed(got: Sequence[Run], runs: Sequence[Run], done: dict[UUID, Run]) -> None:
    assert [r.id for r in got] == [r.id for r in runs]
    assert all(r.status is S.COMPLETED for r in got)
    assert [r.version for r in got] == [done[r.id].version for r in runs]


@pytest.fixture
async def waiter_pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool of exactly four connections, for the waiting store: once they
    exist, any new backend is not the pool's."""
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def helper_pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool of exactly two connections, for a store that only writes."""
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


# -- many waiters, one connection ------------------------------------------------------


async def test_a_thousand_waiters_add_at_most_one_connection(
    dsn: str,
    waiter_pool: asyncpg.Pool,
    helper_pool: asyncpg.Pool,
    pool: asyncpg.Pool,
    monitor: asyncpg.Connection,
) -> None:
    helper = RunStore(helper_pool, workflows=WORKFLOWS)
    runs = await create_runs(helper, 1_000)
    # Both pools have a fixed size and every connection is made: whatever
    # appears after ``before`` is not a pooled connection.
    await server_pids(waiter_pool, 4)
    await server_pids(helper_pool, 2)
    before = await monitor.fetchval(CLIENTS)

    async with RunStore(waiter_pool, workflows=WORKFLOWS, listen_dsn=dsn) as waiting:
        waits = [asyncio.create_task(waiting.wait_for(r.id)) for r in runs]
        await settled(waiting, helper)
        await until(lambda: _true(waiting._watch.listening))
        during = await monitor.fetchval(CLIENTS)
        assert not any(w.done() for w in waits)
        # The listening connection, and nothing for the waits themselves.
        assert during - before <= 1, (before, during)

        # Another store (so no local wake-up) finishes the runs, in batches.
        async with RunStore(pool, workflows=WORKFLOWS, listen_dsn=dsn) as writer:
            done = await finish(writer, runs)
            got = await bounded(asyncio.gather(*waits))
        assert_all_completed(got, runs, done)


async def _true(value: bool) -> bool:
    return value


# -- the listener killed ---------------------------------------------------------------


@pytest.mark.parametrize("when", ["while-down", "after-reconnect"])
async def test_waiters_survive_the_listeners_backend_being_killed(
    dsn: str,
    waiter_pool: asyncpg.Pool,
    pool: asyncpg.Pool,
    monitor: asyncpg.Connection,
    when: str,
) -> None:
    helper = RunStore(pool, workflows=WORKFLOWS)
    runs = await create_runs(helper, 100)
    pooled = await server_pids(waiter_pool, 4) + await server_pids(pool, 2)
    # A poll interval longer than the test: only the listener (and its
    # reconnection, which reads what it missed) can wake the watcher.
    async with RunStore(
        waiter_pool, workflows=WORKFLOWS, listen_dsn=dsn, poll_interval=3600
    ) as waiting:
        waits = [asyncio.create_task(waiting.wait_for(r.id)) for r in runs]
        await settled(waiting, helper)
        await until(lambda: _true(waiting._watch.listening))
        listeners = [r["pid"] for r in await monitor.fetch(LISTENERS, pooled)]
        assert len(listeners) == 1, listeners
        (old,) = listeners

        assert await monitor.fetchval("SELECT pg_terminate_backend($1, 5000)", old)

        async def reconnected() -> bool:
            pids = [r["pid"] for r in await monitor.fetch(LISTENERS, pooled)]
            return waiting._watch.listening and len(pids) == 1 and pids[0] != old

        if when == "after-reconnect":
            await until(reconnected)
        # Another store on another pool finishes the runs; it listens, so its
        # watcher makes the tick whose NOTIFY wakes the waiting store.
        async with RunStore(pool, workflows=WORKFLOWS, listen_dsn=dsn) as writer:
            done = await finish(writer, runs, batch=25)
            got = await bounded(asyncio.gather(*waits))
        assert_all_completed(got, runs, done)
        await until(reconnected)


# -- woken by another OS process ---------------------------------------------------------


async def _start_finisher(dsn: str, how: str = "complete") -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FINISHER,
        dsn,
        how,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await bounded(proc.stdout.readline())
    if line != b"ready\n":
        _, err = await proc.communicate()
        raise AssertionError(f"finisher did not start: {line!r}\n{err.decode()}")
    return proc


async def test_waiters_are_woken_by_another_os_process(
    dsn: str, waiter_pool: asyncpg.Pool, pool: asyncpg.Pool
) -> None:
    helper = RunStore(pool, workflows=WORKFLOWS)
    runs = await create_runs(helper, 100)
    proc = await _start_finisher(dsn)
    try:
        async with RunStore(waiter_pool, workflows=WORKFLOWS, listen_dsn=dsn) as waiting:
            waits = [asyncio.create_task(waiting.wait_for(r.id)) for r in runs]
            await settled(waiting, helper)
            assert not any(w.done() for w in waits)
            out, err = await bounded(
                proc.communicate(json.dumps([str(r.id) for r in runs]).encode() + b"\n")
            )
            assert proc.returncode == 0, err.decode()
            versions = json.loads(out)
            got = await bounded(asyncio.gather(*waits))
        assert [r.id for r in got] == [r.id for r in runs]
        assert all(r.status is S.COMPLETED for r in got)
        assert [r.version for r in got] == [versions[str(r.id)] for r in runs]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_the_last_write_of_a_short_lived_process_wakes_listening_waiters(
    dsn: str, waiter_pool: asyncpg.Pool, pool: asyncpg.Pool
) -> None:
    helper = RunStore(pool, workflows=WORKFLOWS)
    (run,) = await create_runs(helper, 1)
    proc = await _start_finisher(dsn, "cancel")
    try:
        # Polls never come: only a NOTIFY wakes this watcher.
        async with RunStore(
            waiter_pool, workflows=WORKFLOWS, listen_dsn=dsn, poll_interval=3600
        ) as waiting:
            # 5 s: a hundred ticks; without the fix the wait never ends.
            wait = asyncio.create_task(waiting.wait_for(run.id, timeout=5))
            await until(lambda: _true(waiting._watch.listening))
            # The read that followed LISTEN (it may tick) is over.
            await settled(waiting, helper)
            out, err = await bounded(proc.communicate(json.dumps([str(run.id)]).encode() + b"\n"))
            assert proc.returncode == 0, err.decode()
            got = await bounded(wait)
        assert (got.status, got.version) == (S.CANCELLED, json.loads(out)[str(run.id)])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
