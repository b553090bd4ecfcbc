"""wait_for, the store's lifecycle (aclose, ``async with``, RunStore.connect),
and the change feed's records (RunChange as JSON, claims in the feed).

A wait that must be *pending* before a write (so that the write, not the
first check, is what ends it) is made so with ``settled``: a wait for a run
that is already finished, started after the others, returns only once the
watcher has checked every wait registered before it (it checks them
together, in one statement). Every wait is bounded by ``TIMEOUT_S``: a lost
wake-up becomes a failure, not a hung test.

Waking across processes (a separate OS process writing) and the connection
count of many waiters are in tests/concurrency/test_waiters.py.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import asyncpg
import msgspec
import pytest

from squidmesh import (
    ChangePage,
    InvalidArgument,
    Run,
    RunChange,
    RunNotFound,
    RunStatus,
    RunStore,
    RunTransitioned,
    SquidMeshError,
    UnknownStatus,
    WaitTimeout,
)
from squidmesh._feed import FeedOps
from tests.integration.workflows import ETL_DAILY, WORKFLOWS

S = RunStatus
T = TypeVar("T")
TIMEOUT_S = 30
WATCHER = "squidmesh watcher"


# -- helpers ---------------------------------------------------------------------------


async def bounded(aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, TIMEOUT_S)


async def new_run(store: RunStore) -> Run:
    return await store.create_run(ETL_DAILY, {})


async def finished(store: RunStore) -> Run:
    run = await new_run(store)
    await store.transition_run(run.id, S.RUNNING)
    return await store.transition_run(run.id, S.COMPLETED)


def watcher_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == WATCHER]


async def settled(store: RunStore) -> None:
    """Once this returns, every wait_for task created before the call has had
    its first check (its run read while it waited): a wait for a finished run,
    registered after them, is answered in the same round as theirs or later."""
    sentinel = await finished(store)
    # A task created now runs after the tasks created before it, so its wait
    # is registered after theirs.
    await bounded(asyncio.create_task(store.wait_for(sentinel.id)))


async def listen_backends(pool: asyncpg.Pool) -> int:
    n = await pool.fetchval(
        "SELECT count(*) FROM pg_catalog.pg_stat_activity"
        " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
    )
    return int(n)


@pytest.fixture
async def other_pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A second pool on the test's database, for a store of another process's kind."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


# -- already there ---------------------------------------------------------------------


async def test_a_finished_run_is_returned_at_once(store: RunStore) -> None:
    run = await finished(store)
    got = await bounded(store.wait_for(run.id))
    assert got.id == run.id
    assert got.status is S.COMPLETED
    assert got.version == run.version
    # A str id is accepted too.
    assert (await bounded(store.wait_for(str(run.id)))).id == run.id


@pytest.mark.parametrize(
    "statuses",
    [
        [S.PENDING],
        "pending",
        S.PENDING,
        {"pending", "running"},
        ("running", S.PENDING, "paused"),
        iter(["pending"]),
    ],
    ids=["list", "str", "enum", "set", "mixed-tuple", "iterator"],
)
async def test_a_run_already_in_one_of_custom_statuses_is_returned_at_once(
    store: RunStore, statuses: Any
) -> None:
    run = await new_run(store)
    got = await bounded(store.wait_for(run.id, statuses=statuses, timeout=TIMEOUT_S))
    assert got.id == run.id
    assert got.status is S.PENDING


async def test_every_terminal_status_ends_the_default_wait(store: RunStore) -> None:
    completed = await finished(store)
    failed = await store.transition_run((await new_run(store)).id, S.FAILED)
    cancelled = await store.cancel_run((await new_run(store)).id)
    got = await bounded(
        asyncio.gather(*(store.wait_for(r.id) for r in (completed, failed, cancelled)))
    )
    assert [r.status for r in got] == [S.COMPLETED, S.FAILED, S.CANCELLED]


async def test_a_terminal_run_does_not_end_a_wait_for_a_status_it_never_reaches(
    store: RunStore,
) -> None:
    run = await finished(store)
    with pytest.raises(WaitTimeout):
        await store.wait_for(run.id, statuses="paused", timeout=0.05)


# -- finishing later --------------------------------------------------------------------


async def test_a_run_finished_later_by_the_same_store_ends_the_wait(store: RunStore) -> None:
    run = await new_run(store)
    waits = [asyncio.create_task(store.wait_for(run.id)) for _ in range(3)]
    await settled(store)
    assert not any(w.done() for w in waits)
    await store.transition_run(run.id, S.RUNNING)
    done = await store.transition_run(run.id, S.COMPLETED)
    got = await bounded(asyncio.gather(*waits))
    assert {(r.id, r.status, r.version) for r in got} == {(run.id, S.COMPLETED, done.version)}


@pytest.mark.parametrize("finish", ["transition_run", "cancel_run"])
async def test_a_store_that_never_polls_wakes_its_waiter_with_its_own_write(
    pool: asyncpg.Pool, finish: str
) -> None:
    # No LISTEN and a poll far beyond the bound: only the write's own
    # post-commit event can end this wait in time. A store skips building
    # events when nobody would get them; a running watcher must count.
    store = RunStore(pool, workflows=WORKFLOWS, poll_interval=3600)
    try:
        run = await new_run(store)
        wait = asyncio.create_task(store.wait_for(run.id))
        await settled(store)
        assert not wait.done()
        if finish == "transition_run":
            done = await store.transition_run(run.id, S.FAILED)
        else:
            done = await store.cancel_run(run.id)
        got = await asyncio.wait_for(wait, 10)
        assert (got.status, got.version) == (done.status, done.version)
        assert got.status in (S.FAILED, S.CANCELLED)
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("waiter_listens", "writer_listens", "poll_interval"),
    [
        # No LISTEN anywhere: the waiter's polls find the change.
        (False, False, 0.02),
        # The waiter listens, but the writer makes no tick: polling still does.
        (True, False, 0.02),
        # Both listen and the waiter never polls: the writer's tick and its
        # NOTIFY wake the waiter (a lost wake-up would hang until TIMEOUT_S).
        (True, True, 3600),
    ],
    ids=["polling", "listening-waiter-polls", "notify-only"],
)
async def test_a_run_finished_by_another_store_on_another_pool_ends_the_wait(
    pool: asyncpg.Pool,
    other_pool: asyncpg.Pool,
    dsn: str,
    waiter_listens: bool,
    writer_listens: bool,
    poll_interval: float,
) -> None:
    async with (
        RunStore(
            pool,
            workflows=WORKFLOWS,
            listen_dsn=dsn if waiter_listens else None,
            poll_interval=poll_interval,
        ) as waiting,
        RunStore(
            other_pool, workflows=WORKFLOWS, listen_dsn=dsn if writer_listens else None
        ) as writer,
    ):
        runs = [await new_run(writer) for _ in range(5)]
        waits = [asyncio.create_task(waiting.wait_for(r.id)) for r in runs]
        await settled(waiting)
        assert not any(w.done() for w in waits)
        done = {}
        for run in runs:
            await writer.transition_run(run.id, S.RUNNING)
            done[run.id] = await writer.transition_run(run.id, S.COMPLETED)
        got = await bounded(asyncio.gather(*waits))
        assert [(r.id, r.status, r.version) for r in got] == [
            (run.id, S.COMPLETED, done[run.id].version) for run in runs
        ]


async def test_a_wait_for_a_status_that_is_not_terminal(store: RunStore) -> None:
    run = await new_run(store)
    waits = [
        asyncio.create_task(store.wait_for(run.id, statuses="running")),
        asyncio.create_task(store.wait_for(run.id, statuses=[S.PAUSED, S.RUNNING])),
        asyncio.create_task(store.wait_for(run.id)),  # terminal: still waiting after
    ]
    await settled(store)
    running = await store.transition_run(run.id, S.RUNNING)
    got = await bounded(asyncio.gather(*waits[:2]))
    assert [(r.status, r.version) for r in got] == [(S.RUNNING, running.version)] * 2
    assert not waits[2].done()
    done = await store.transition_run(run.id, S.COMPLETED)
    assert (await bounded(waits[2])).version == done.version


async def test_a_wait_for_a_status_other_processes_set(
    pool: asyncpg.Pool, other_pool: asyncpg.Pool
) -> None:
    """A non-terminal status another store sets is found through the feed."""
    async with (
        RunStore(pool, workflows=WORKFLOWS, poll_interval=0.02) as waiting,
        RunStore(other_pool, workflows=WORKFLOWS) as writer,
    ):
        run = await new_run(writer)
        wait = asyncio.create_task(waiting.wait_for(run.id, statuses=S.RUNNING))
        await settled(waiting)
        running = await writer.transition_run(run.id, S.RUNNING)
        got = await bounded(wait)
        # The run as the watcher read it after the change: running, unless the
        # next change came first (none does here).
        assert (got.status, got.version) == (S.RUNNING, running.version)


async def test_waits_in_several_tasks_for_several_runs_each_get_their_own(
    store: RunStore,
) -> None:
    runs = [await new_run(store) for _ in range(10)]
    waits = {r.id: asyncio.create_task(store.wait_for(r.id)) for r in runs}
    await settled(store)
    # Finish every other run: only their waits end.
    for run in runs[::2]:
        await store.transition_run(run.id, S.FAILED)
    for run in runs[::2]:
        assert (await bounded(waits[run.id])).status is S.FAILED
    await settled(store)
    assert not any(waits[r.id].done() for r in runs[1::2])
    for run in runs[1::2]:
        await store.cancel_run(run.id)
    for run in runs[1::2]:
        assert (await bounded(waits[run.id])).status is S.CANCELLED


# -- timing out ------------------------------------------------------------------------


async def test_a_wait_that_times_out_raises_wait_timeout(store: RunStore) -> None:
    run = await new_run(store)
    with pytest.raises(WaitTimeout) as caught:
        await bounded(store.wait_for(run.id, timeout=0.05))
    exc = caught.value
    assert isinstance(exc, TimeoutError)
    assert isinstance(exc, SquidMeshError)
    assert exc.run_id == run.id
    # The statuses waited for, in the state machine's order.
    assert exc.statuses == (S.FAILED, S.COMPLETED, S.CANCELLED)
    assert exc.timeout == 0.05
    assert str(run.id) in str(exc)
    # The run is untouched, and a later wait still works.
    assert (await store.get_run(run.id)).status is S.PENDING
    await store.transition_run(run.id, S.FAILED)
    assert (await bounded(store.wait_for(run.id))).status is S.FAILED


async def test_wait_timeout_names_the_statuses_waited_for(store: RunStore) -> None:
    run = await new_run(store)
    with pytest.raises(WaitTimeout) as caught:
        await bounded(store.wait_for(str(run.id), statuses=["paused", "running"], timeout=0.01))
    assert caught.value.statuses == (S.RUNNING, S.PAUSED)
    assert str(caught.value.run_id) == str(run.id)
    assert caught.value.timeout == 0.01


@pytest.mark.parametrize("zero", [0, 0.0])
async def test_timeout_zero_on_a_run_not_there_yet_raises_wait_timeout(
    store: RunStore, zero: float
) -> None:
    run = await new_run(store)
    with pytest.raises(WaitTimeout) as caught:
        await bounded(store.wait_for(run.id, timeout=zero))
    assert caught.value.timeout == 0


async def test_a_wait_that_timed_out_is_forgotten(store: RunStore) -> None:
    """Many waits that time out leave nothing behind: a later one is as any other."""
    run = await new_run(store)
    for _ in range(20):
        with pytest.raises(WaitTimeout):
            await store.wait_for(run.id, timeout=0.001)
    wait = asyncio.create_task(store.wait_for(run.id))
    await settled(store)
    await store.transition_run(run.id, S.FAILED)
    assert (await bounded(wait)).status is S.FAILED


async def test_a_cancelled_wait_does_not_disturb_the_others(store: RunStore) -> None:
    run = await new_run(store)
    cancelled = asyncio.create_task(store.wait_for(run.id))
    kept = asyncio.create_task(store.wait_for(run.id))
    await settled(store)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await store.transition_run(run.id, S.FAILED)
    assert (await bounded(kept)).status is S.FAILED


async def test_an_outer_timeout_cancels_the_wait_cleanly(store: RunStore) -> None:
    run = await new_run(store)
    with pytest.raises(TimeoutError) as caught:
        async with asyncio.timeout(0.05):
            await store.wait_for(run.id)
    # asyncio's own timeout, not a WaitTimeout: the wait had no timeout.
    assert not isinstance(caught.value, WaitTimeout)
    await store.transition_run(run.id, S.FAILED)
    assert (await bounded(store.wait_for(run.id))).status is S.FAILED


# -- not found and bad arguments --------------------------------------------------------


async def test_an_unknown_id_raises_run_not_found(store: RunStore) -> None:
    missing = uuid.uuid4()
    with pytest.raises(RunNotFound) as caught:
        await bounded(store.wait_for(missing))
    assert caught.value.run_id == missing
    with pytest.raises(RunNotFound):
        await bounded(store.wait_for(str(missing), statuses="pending", timeout=TIMEOUT_S))


async def test_an_unknown_id_is_not_found_while_other_waits_go_on(store: RunStore) -> None:
    run = await new_run(store)
    wait = asyncio.create_task(store.wait_for(run.id))
    with pytest.raises(RunNotFound):
        await bounded(store.wait_for(uuid.uuid4()))
    assert not wait.done()
    await store.transition_run(run.id, S.FAILED)
    assert (await bounded(wait)).status is S.FAILED


@pytest.mark.parametrize("garbage", ["not-a-uuid", "", 42, None, b"\x00" * 16, 1.5, object()])
async def test_a_garbage_id_raises_run_not_found(store: RunStore, garbage: object) -> None:
    with pytest.raises(RunNotFound) as caught:
        await bounded(store.wait_for(garbage))
    assert caught.value.run_id is garbage
    # Refused before anything started.
    assert watcher_tasks() == []


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"statuses": []}, InvalidArgument, "statuses"),
        ({"statuses": set()}, InvalidArgument, "statuses"),
        ({"statuses": ()}, InvalidArgument, "statuses"),
        ({"statuses": ["nope"]}, UnknownStatus, None),
        ({"statuses": "nope"}, UnknownStatus, None),
        ({"statuses": ["completed", "Completed"]}, UnknownStatus, None),
        ({"statuses": [1]}, UnknownStatus, None),
        ({"statuses": 1}, UnknownStatus, None),
        ({"timeout": -1}, InvalidArgument, "timeout"),
        ({"timeout": -0.001}, InvalidArgument, "timeout"),
        ({"timeout": "x"}, InvalidArgument, "timeout"),
        ({"timeout": "1"}, InvalidArgument, "timeout"),
        ({"timeout": True}, InvalidArgument, "timeout"),
        ({"timeout": False}, InvalidArgument, "timeout"),
        ({"timeout": math.nan}, InvalidArgument, "timeout"),
        ({"timeout": -math.inf}, InvalidArgument, "timeout"),
        ({"timeout": [1]}, InvalidArgument, "timeout"),
    ],
)
async def test_bad_arguments_are_refused_before_waiting(
    store: RunStore, kwargs: dict[str, Any], error: type[Exception], name: str | None
) -> None:
    run = await new_run(store)
    with pytest.raises(error) as caught:
        await bounded(store.wait_for(run.id, **kwargs))
    if name is not None:
        assert caught.value.name == name  # type: ignore[attr-defined]
    assert watcher_tasks() == []


async def test_an_infinite_timeout_is_no_timeout(store: RunStore) -> None:
    run = await finished(store)
    assert (await bounded(store.wait_for(run.id, timeout=math.inf))).id == run.id


@pytest.mark.parametrize("value", [0, 0.0, -1, "x", True, math.nan, math.inf, None, 10_000])
async def test_a_bad_poll_interval_is_refused(pool: asyncpg.Pool, value: object) -> None:
    with pytest.raises(InvalidArgument) as caught:
        RunStore(pool, poll_interval=value)  # type: ignore[arg-type]
    assert caught.value.name == "poll_interval"


async def test_run_store_connect_refuses_a_bad_poll_interval(dsn: str) -> None:
    with pytest.raises(InvalidArgument):
        async with RunStore.connect(dsn, poll_interval=0):
            pass  # pragma: no cover


# -- aclose, async with, RunStore.connect -------------------------------------------------


async def test_wait_for_after_aclose_raises_runtime_error(pool: asyncpg.Pool) -> None:
    store = RunStore(pool, workflows=WORKFLOWS)
    run = await finished(store)
    await store.aclose()
    with pytest.raises(RuntimeError):
        await bounded(store.wait_for(run.id))
    with pytest.raises(RuntimeError):
        await bounded(store.wait_for(run.id, timeout=0))
    assert watcher_tasks() == []


async def test_a_pending_wait_raises_runtime_error_on_aclose(pool: asyncpg.Pool) -> None:
    store = RunStore(pool, workflows=WORKFLOWS)
    run = await new_run(store)
    waits = [
        asyncio.create_task(store.wait_for(run.id)),
        asyncio.create_task(store.wait_for(run.id, timeout=TIMEOUT_S)),
        asyncio.create_task(store.wait_for(run.id, statuses="paused")),
    ]
    await settled(store)
    await store.aclose()
    for wait in waits:
        with pytest.raises(RuntimeError) as caught:
            await bounded(wait)
        assert not isinstance(caught.value, WaitTimeout)
    assert watcher_tasks() == []


async def test_a_changes_iteration_ends_on_aclose(pool: asyncpg.Pool) -> None:
    # A poll interval longer than the test: only aclose can end the iteration.
    store = RunStore(pool, workflows=WORKFLOWS, poll_interval=3600)
    run = await new_run(store)
    seen: list[RunChange] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for change in store.changes():
            seen.append(change)
            first.set()

    consumer = asyncio.create_task(consume())
    await bounded(first.wait())
    await store.aclose()
    await bounded(consumer)  # ends, without an error
    assert seen[0].run_id == run.id
    assert seen[0].to_status is S.PENDING
    # Starting another after aclose is refused.
    with pytest.raises(RuntimeError):
        async for _ in store.changes():
            pass  # pragma: no cover
    assert watcher_tasks() == []


async def test_a_changes_iteration_waiting_for_news_ends_on_aclose(
    pool: asyncpg.Pool,
) -> None:
    store = RunStore(pool, workflows=WORKFLOWS, poll_interval=3600)
    start = (await store.read_changes()).position

    async def consume() -> list[RunChange]:
        # A workflow with no runs: nothing to yield, ever.
        return [change async for change in store.changes(start, workflow="no.such.workflow")]

    consumer = asyncio.create_task(consume())
    await settled(store)  # the consumer has registered and is reading or waiting
    assert not consumer.done()
    await store.aclose()
    assert await bounded(consumer) == []


async def test_async_with_stops_the_watcher_on_exit(pool: asyncpg.Pool) -> None:
    async with RunStore(pool, workflows=WORKFLOWS) as store:
        assert watcher_tasks() == []  # nothing started before first use
        run = await finished(store)
        await bounded(store.wait_for(run.id))
        assert len(watcher_tasks()) == 1
    assert watcher_tasks() == []
    with pytest.raises(RuntimeError):
        await store.wait_for(run.id)
    # The pool is the caller's: still open.
    assert not pool.is_closing()
    assert await pool.fetchval("SELECT 1") == 1


async def test_async_with_stops_the_watcher_when_the_body_raises(pool: asyncpg.Pool) -> None:
    with pytest.raises(ZeroDivisionError):
        async with RunStore(pool, workflows=WORKFLOWS) as store:
            run = await new_run(store)
            pending = asyncio.create_task(store.wait_for(run.id))
            await settled(store)
            1 / 0  # noqa: B018
    assert watcher_tasks() == []
    with pytest.raises(RuntimeError):
        await bounded(pending)


async def test_async_with_a_listening_store_closes_its_listener(
    pool: asyncpg.Pool, dsn: str
) -> None:
    async with RunStore(pool, workflows=WORKFLOWS, listen_dsn=dsn) as store:
        run = await finished(store)
        await bounded(store.wait_for(run.id))
        await bounded(_until_listening(pool, 1))
    assert watcher_tasks() == []
    await bounded(_until_listening(pool, 0))


async def _until_listening(pool: asyncpg.Pool, n: int) -> None:
    # The server's view, which no event reports: poll it.
    while await listen_backends(pool) != n:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


async def test_aclose_is_idempotent_and_leaves_the_pool_open(pool: asyncpg.Pool) -> None:
    never_used = RunStore(pool)
    await never_used.aclose()
    await never_used.aclose()

    store = RunStore(pool, workflows=WORKFLOWS)
    run = await finished(store)
    await bounded(store.wait_for(run.id))
    await store.aclose()
    await store.aclose()
    async with store:
        pass  # a third close, on exit
    assert watcher_tasks() == []
    assert not pool.is_closing()
    assert await pool.fetchval("SELECT 1") == 1
    # What does not need the watcher still works on the open pool.
    assert (await store.get_run(run.id)).status is S.COMPLETED


async def test_concurrent_acloses_all_return(pool: asyncpg.Pool) -> None:
    store = RunStore(pool, workflows=WORKFLOWS)
    run = await new_run(store)
    wait = asyncio.create_task(store.wait_for(run.id))
    await settled(store)
    await bounded(asyncio.gather(*(store.aclose() for _ in range(5))))
    with pytest.raises(RuntimeError):
        await bounded(wait)
    assert watcher_tasks() == []


async def test_run_store_connect_closes_its_pool_and_watcher(dsn: str, pool: asyncpg.Pool) -> None:
    async with RunStore.connect(dsn, workflows=WORKFLOWS) as store:
        own_pool = store.pool
        run = await new_run(store)
        wait = asyncio.create_task(store.wait_for(run.id, statuses="running"))
        await settled(store)
        await store.transition_run(run.id, S.RUNNING)
        assert (await bounded(wait)).status is S.RUNNING
        # connect listens by default.
        await bounded(_until_listening(pool, 1))
        assert len(watcher_tasks()) == 1
    assert own_pool.is_closing()
    assert watcher_tasks() == []
    await bounded(_until_listening(pool, 0))
    with pytest.raises(RuntimeError):
        await store.wait_for(run.id)


async def test_run_store_connect_without_listen_polls(dsn: str, pool: asyncpg.Pool) -> None:
    async with (
        RunStore.connect(dsn, workflows=WORKFLOWS, listen=False, poll_interval=0.02) as waiting,
        RunStore(pool, workflows=WORKFLOWS) as writer,
    ):
        run = await new_run(writer)
        wait = asyncio.create_task(waiting.wait_for(run.id))
        await settled(waiting)
        await writer.transition_run(run.id, S.FAILED)
        assert (await bounded(wait)).status is S.FAILED
        assert await listen_backends(pool) == 0


async def test_a_pending_wait_raises_runtime_error_when_the_pool_is_closed_under_it(
    dsn: str,
) -> None:
    own = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    store = RunStore(own, workflows=WORKFLOWS, poll_interval=0.02)
    try:
        run = await new_run(store)
        wait = asyncio.create_task(store.wait_for(run.id))
        await settled(store)
        await bounded(own.close())
        with pytest.raises(RuntimeError) as caught:
            await bounded(wait)
        assert not isinstance(caught.value, WaitTimeout)
        await bounded(_until_no_watcher())
        with pytest.raises(RuntimeError):
            await store.wait_for(run.id)
    finally:
        await store.aclose()
        own.terminate()


async def _until_no_watcher() -> None:
    # The watcher's task ends by itself; nothing reports when.
    while watcher_tasks():  # noqa: ASYNC110
        await asyncio.sleep(0.005)


# -- the feed's records --------------------------------------------------------------------


async def test_run_change_round_trips_through_json(store: RunStore) -> None:
    run = await finished(store)
    page = await store.read_changes()
    mine = [c for c in page.changes if c.run_id == run.id]
    assert [(c.from_status, c.to_status) for c in mine] == [
        (None, S.PENDING),
        (S.PENDING, S.RUNNING),
        (S.RUNNING, S.COMPLETED),
    ]
    for change in mine:
        data = msgspec.json.encode(change)
        assert msgspec.json.decode(data, type=RunChange) == change
        plain = msgspec.json.decode(data)
        assert plain == {
            "position": change.position,
            "run_id": str(run.id),
            "workflow": ETL_DAILY.name,
            "run_version": change.run_version,
            "from_status": None if change.from_status is None else change.from_status.value,
            "to_status": change.to_status.value,
            "at": change.at.isoformat().replace("+00:00", "Z"),
        }
    assert msgspec.json.decode(msgspec.json.encode(page), type=ChangePage) == page
    # A webhook body of several changes.
    assert msgspec.json.decode(msgspec.json.encode(mine), type=list[RunChange]) == mine
    # A position from a decoded change resumes the feed after it.
    resumed = await store.read_changes(
        msgspec.json.decode(msgspec.json.encode(mine[0])).get("position")
    )
    assert [c.run_version for c in resumed.changes if c.run_id == run.id] == [
        c.run_version for c in mine[1:]
    ]


async def test_changes_yields_new_changes_as_they_commit(store: RunStore) -> None:
    start = (await store.read_changes()).position
    seen: list[RunChange] = []
    three = asyncio.Event()

    async def consume() -> None:
        async for change in store.changes(start, workflow=ETL_DAILY.name):
            seen.append(change)
            if len(seen) == 3:
                three.set()
                return

    consumer = asyncio.create_task(consume())
    run = await finished(store)
    await bounded(three.wait())
    await bounded(consumer)
    assert [(c.run_id, c.from_status, c.to_status) for c in seen] == [
        (run.id, None, S.PENDING),
        (run.id, S.PENDING, S.RUNNING),
        (run.id, S.RUNNING, S.COMPLETED),
    ]
    assert [c.run_version for c in seen] == sorted(c.run_version for c in seen)


async def test_claims_reach_listeners_waiters_and_the_feed(
    store: RunStore, events: list[Any], other_pool: asyncpg.Pool
) -> None:
    if not hasattr(store, "claim_runs"):
        pytest.skip("RunStore.claim_runs is not implemented yet")
    run = await new_run(store)
    start = (await store.read_changes()).position
    here = asyncio.create_task(store.wait_for(run.id, statuses="running"))
    async with RunStore(other_pool, workflows=WORKFLOWS, poll_interval=0.02) as elsewhere:
        there = asyncio.create_task(elsewhere.wait_for(run.id, statuses="running"))
        await settled(store)
        await settled(elsewhere)
        events.clear()
        claimed = await store.claim_runs(workflow=ETL_DAILY, limit=5)
        assert [r.id for r in claimed] == [run.id]
        # The claiming store's listener got the move, after commit.
        moves = [e for e in events if isinstance(e, RunTransitioned) and e.run.id == run.id]
        assert [(e.from_status, e.to_status, e.run.version) for e in moves] == [
            (S.PENDING, S.RUNNING, claimed[0].version)
        ]
        # Its waiters, and another store's (through the feed), got the run.
        for wait in (here, there):
            got = await bounded(wait)
            assert (got.status, got.version) == (S.RUNNING, claimed[0].version)
    # The feed has the claim as one pending -> running change.
    page = await store.read_changes(start)
    assert [
        (c.from_status, c.to_status, c.run_version) for c in page.changes if c.run_id == run.id
    ] == [(S.PENDING, S.RUNNING, claimed[0].version)]


# -- found by these tests (each failed before its fix) ---------------------------------


async def test_timeout_zero_on_a_run_already_there_returns_it(store: RunStore) -> None:
    run = await finished(store)
    assert (await bounded(store.wait_for(run.id, timeout=0))).id == run.id


async def test_timeout_zero_on_an_unknown_id_raises_run_not_found(store: RunStore) -> None:
    with pytest.raises(RunNotFound):
        await bounded(store.wait_for(uuid.uuid4(), timeout=0))


class _CountingFeed:
    """The watcher's FeedOps, counting the changes its reads return."""

    def __init__(self, feed: FeedOps) -> None:
        self._feed = feed
        self.read_ids: list[uuid.UUID] = []

    async def read(self, *args: Any, **kwargs: Any) -> ChangePage:
        page = await self._feed.read(*args, **kwargs)
        self.read_ids.extend(c.run_id for c in page.changes)
        return page

    async def newest(self) -> str:
        return await self._feed.newest()


async def test_a_wait_after_an_idle_spell_does_not_read_what_the_feed_got_meanwhile(
    store: RunStore, other_pool: asyncpg.Pool
) -> None:
    first = await finished(store)
    await bounded(store.wait_for(first.id))
    # While nobody waits, another store changes runs.
    async with RunStore(other_pool, workflows=WORKFLOWS) as writer:
        meanwhile = {(await finished(writer)).id for _ in range(20)}
        late = await finished(writer)
    counting = _CountingFeed(store._watch._feed)
    store._watch._feed = counting  # type: ignore[assignment]
    assert (await bounded(store.wait_for(late.id))).id == late.id
    assert meanwhile.isdisjoint(counting.read_ids)
