"""progress_run and the *_with operations, on a real PostgreSQL.

A dispatch writes into a table of the test's own (``public.jobs``) through the
connection it is given, so the tests can see whether its writes committed or
rolled back together with the run change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec
import pytest

from squidmesh import (
    DispatchEvents,
    InvalidRun,
    InvalidTransition,
    Run,
    RunChanges,
    RunNotFound,
    RunStatus,
    RunStore,
    RunTransitioned,
    UnknownStatus,
    progress,
)

S = RunStatus
TERMINAL = (S.FAILED, S.COMPLETED, S.CANCELLED)
# How to get a run into each state from pending (the moves transition_run makes).
PATHS: dict[RunStatus, tuple[RunStatus, ...]] = {
    S.PENDING: (),
    S.RUNNING: (S.RUNNING,),
    S.RETRYING: (S.RUNNING, S.RETRYING),
    S.PAUSED: (S.RUNNING, S.PAUSED),
    S.CANCELLING: (S.RUNNING, S.CANCELLING),
    S.FAILED: (S.FAILED,),
    S.COMPLETED: (S.RUNNING, S.COMPLETED),
    S.CANCELLED: (S.CANCELLED,),
}


class Marker(msgspec.Struct, frozen=True):
    """A user event a dispatch returns through DispatchEvents."""

    name: str


class Boom(Exception):
    """What the test dispatches raise."""


@pytest.fixture
async def jobs(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "CREATE TABLE public.jobs (id bigserial PRIMARY KEY, run_id uuid NOT NULL,"
        " kind text NOT NULL UNIQUE, seen_status text, seen_version int)"
    )


async def job_rows(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return list(
        await pool.fetch("SELECT run_id, kind, seen_status, seen_version FROM jobs ORDER BY id")
    )


async def enqueue(conn: Any, run: Run, kind: str = "next") -> None:
    await conn.execute(
        "INSERT INTO jobs (run_id, kind, seen_status, seen_version) VALUES ($1, $2, $3, $4)",
        run.id,
        kind,
        run.status.value,
        run.version,
    )


async def run_in(store: RunStore, status: RunStatus, events: list[Any]) -> Run:
    run = await store.create_run(
        "billing.invoice_reminder", {"account_id": "acct_1"}, trigger="invoice_delivery"
    )
    for step in PATHS[status]:
        run = await store.transition_run(run.id, step, last_error={"old": True})
    run = await store.update_run(run.id, context={"n": 1}, current_step="approve")
    events.clear()
    return run


class Spy:
    """Records the calls of a changes function / dispatch / fail_fn."""

    def __init__(self, result: Any = None, raises: BaseException | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.result = result
        self.raises = raises

    def __call__(self, *args: Any) -> Any:
        self.calls.append(args)
        if self.raises is not None:
            raise self.raises
        return self.result


def changes_bump(run: Run) -> RunChanges:
    return RunChanges(context={"n": run.context["n"] + 1}, current_step="send_email")


async def async_changes_bump(run: Run) -> dict[str, Any]:
    return {"context": {"n": run.context["n"] + 1}, "current_step": "send_email"}


def all_operations(dispatch: Any, fail_fn: Any) -> list[progress.Operation]:
    return [
        progress.Update(),
        progress.Transition(S.RUNNING),
        progress.Dispatch(dispatch),
        progress.DispatchOrFail(dispatch, fail_fn),
        progress.TransitionOrDispatch(S.RUNNING, dispatch),
        progress.TransitionOrDispatchOrFail("running", dispatch, fail_fn),
    ]


OP_NAMES = [
    "Update",
    "Transition",
    "Dispatch",
    "DispatchOrFail",
    "TransitionOrDispatch",
    "TransitionOrDispatchOrFail",
]


# -- happy paths ------------------------------------------------------------


@pytest.mark.parametrize("changes_fn", [changes_bump, async_changes_bump], ids=["sync", "async"])
async def test_update_writes_computed_fields(
    store: RunStore, events: list[Any], changes_fn: Callable[[Run], Any]
) -> None:
    run = await run_in(store, S.RUNNING, events)
    result = await store.progress_run(run.id, changes_fn, progress.Update())
    assert result is not None
    assert result.status is S.RUNNING
    assert (result.context, result.current_step) == ({"n": 2}, "send_email")
    assert result.last_error == {"old": True}  # not given: unchanged
    assert result.version == run.version + 1
    assert await store.get_run(run.id) == result
    assert events == []


async def test_changes_fn_sees_the_run_read_under_the_lock(
    store: RunStore, events: list[Any]
) -> None:
    run = await run_in(store, S.PENDING, events)
    # Changed after the caller's read: the function must see the new value.
    await store.update_run(run.id, context={"n": 41})
    seen = Spy(result={"context": {"n": 42}})
    result = await store.progress_run(run.id, seen, progress.Update())
    assert result is not None and result.context == {"n": 42}
    [(locked,)] = seen.calls
    assert isinstance(locked, Run)
    assert locked.context == {"n": 41}


async def test_update_with_no_changes_writes_nothing(store: RunStore, events: list[Any]) -> None:
    run = await run_in(store, S.PAUSED, events)
    result = await store.progress_run(run.id, lambda r: None, progress.Update())
    assert result == run
    assert await store.get_run(run.id) == run  # version and updated_at untouched


async def test_transition_moves_with_fields(store: RunStore, events: list[Any]) -> None:
    run = await run_in(store, S.PENDING, events)
    result = await store.progress_run(run.id, changes_bump, progress.Transition("running"))
    assert result is not None
    assert result.status is S.RUNNING
    assert result.context == {"n": 2}
    assert await store.get_run(run.id) == result
    assert events == [RunTransitioned(run=result, from_status=S.PENDING, to_status=S.RUNNING)]


@pytest.mark.parametrize("start", [S.PENDING, S.RUNNING], ids=["illegal", "same-state"])
async def test_illegal_transition_changes_nothing_and_computes_nothing(
    store: RunStore, events: list[Any], start: RunStatus
) -> None:
    run = await run_in(store, start, events)
    changes = Spy(result={"context": {"x": 1}})
    target = S.COMPLETED if start is S.PENDING else S.RUNNING
    with pytest.raises(InvalidTransition) as info:
        await store.progress_run(run.id, changes, progress.Transition(target))
    assert (info.value.from_status, info.value.to_status) == (start.value, target.value)
    assert changes.calls == []  # computed only once the move is known to be legal
    assert await store.get_run(run.id) == run
    assert events == []


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
async def test_dispatch_writes_then_dispatches_in_the_same_transaction(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None, sync: bool
) -> None:
    run = await run_in(store, S.RUNNING, events)
    seen: list[tuple[Any, Run, bool, str]] = []

    async def observe(conn: Any, current: Run) -> None:
        # From another connection the change is not visible yet: it is uncommitted.
        outside = await pool.fetchval(
            "SELECT context::text FROM squidmesh.runs WHERE id = $1", run.id
        )
        seen.append((conn, current, conn.is_in_transaction(), outside))
        await enqueue(conn, current)

    def sync_dispatch(conn: Any, current: Run) -> Any:
        return observe(conn, current)  # an awaitable returned by a plain function is awaited

    dispatch = sync_dispatch if sync else observe

    result = await store.progress_run(run.id, changes_bump, progress.Dispatch(dispatch))
    assert result is not None
    assert result.status is S.RUNNING
    assert result.context == {"n": 2}
    [(conn, current, in_transaction, outside)] = seen
    assert isinstance(conn, asyncpg.Connection | asyncpg.pool.PoolConnectionProxy)
    assert in_transaction
    assert current == result  # the dispatch got the run as written
    assert outside == '{"n": 1}'
    rows = await job_rows(pool)
    assert [(r["run_id"], r["seen_status"], r["seen_version"]) for r in rows] == [
        (run.id, "running", result.version)
    ]
    assert events == []  # a plain dispatch moves nothing: no run event


async def test_dispatch_or_fail_happy_path(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None
) -> None:
    run = await run_in(store, S.RETRYING, events)
    fail_fn = Spy(result={})
    result = await store.progress_run(
        run.id, changes_bump, progress.DispatchOrFail(enqueue, fail_fn)
    )
    assert result is not None and result.status is S.RETRYING
    assert result.context == {"n": 2}
    assert fail_fn.calls == []
    assert len(await job_rows(pool)) == 1
    assert await store.get_run(run.id) == result


@pytest.mark.parametrize("or_fail", [False, True], ids=["plain", "or-fail"])
async def test_transition_or_dispatch_moves_then_dispatches(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None, or_fail: bool
) -> None:
    run = await run_in(store, S.PENDING, events)
    op: progress.Operation = (
        progress.TransitionOrDispatchOrFail(S.RUNNING, enqueue, Spy())
        if or_fail
        else progress.TransitionOrDispatch(S.RUNNING, enqueue)
    )
    result = await store.progress_run(run.id, changes_bump, op)
    assert result is not None and result.status is S.RUNNING
    rows = await job_rows(pool)
    assert [(r["seen_status"], r["seen_version"]) for r in rows] == [("running", result.version)]
    assert events == [RunTransitioned(run=result, from_status=S.PENDING, to_status=S.RUNNING)]


@pytest.mark.parametrize("or_fail", [False, True], ids=["plain", "or-fail"])
async def test_transition_or_dispatch_already_there_dispatches_only(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None, or_fail: bool
) -> None:
    run = await run_in(store, S.RUNNING, events)
    op: progress.Operation = (
        progress.TransitionOrDispatchOrFail("running", enqueue, Spy())
        if or_fail
        else progress.TransitionOrDispatch("running", enqueue)
    )
    result = await store.progress_run(run.id, changes_bump, op)
    assert result is not None and result.status is S.RUNNING
    assert result.context == {"n": 2}
    assert len(await job_rows(pool)) == 1
    assert events == []  # no move, so no transition event


async def test_transition_or_dispatch_illegal_move_calls_nothing(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None
) -> None:
    run = await run_in(store, S.PAUSED, events)
    changes, dispatch = Spy(), Spy()
    with pytest.raises(InvalidTransition):
        await store.progress_run(
            run.id, changes, progress.TransitionOrDispatch(S.RETRYING, dispatch)
        )
    assert changes.calls == [] and dispatch.calls == []
    assert await store.get_run(run.id) == run
    assert events == []


# -- terminal and cancelling runs ---------------------------------------------


@pytest.mark.parametrize("status", TERMINAL, ids=str)
@pytest.mark.parametrize("index", range(6), ids=OP_NAMES)
async def test_terminal_run_is_a_no_op(
    store: RunStore,
    pool: asyncpg.Pool,
    events: list[Any],
    jobs: None,
    status: RunStatus,
    index: int,
) -> None:
    run = await run_in(store, status, events)
    changes, dispatch, fail_fn = Spy(result={"context": {}}), Spy(), Spy()
    op = all_operations(dispatch, fail_fn)[index]
    assert await store.progress_run(run.id, changes, op) is None
    assert changes.calls == [] and dispatch.calls == [] and fail_fn.calls == []
    assert await store.get_run(run.id) == run
    assert await job_rows(pool) == []
    assert events == []


@pytest.mark.parametrize("index", range(6), ids=OP_NAMES)
async def test_cancelling_run_is_finalised_keeping_only_the_context(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None, index: int
) -> None:
    run = await run_in(store, S.CANCELLING, events)
    assert run.last_error == {"old": True} and run.current_step == "approve"
    changes = Spy(
        result=RunChanges(context={"kept": True}, current_step="send_email", last_error={"x": 1})
    )
    dispatch, fail_fn = Spy(), Spy()
    result = await store.progress_run(run.id, changes, all_operations(dispatch, fail_fn)[index])
    assert result is not None
    assert result.status is S.CANCELLED
    assert result.context == {"kept": True}
    assert result.current_step is None and result.last_error is None
    assert len(changes.calls) == 1
    assert dispatch.calls == [] and fail_fn.calls == []
    assert await job_rows(pool) == []
    assert await store.get_run(run.id) == result
    assert events == [RunTransitioned(run=result, from_status=S.CANCELLING, to_status=S.CANCELLED)]


async def test_cancelling_run_with_unset_context_keeps_the_old_one(
    store: RunStore, events: list[Any]
) -> None:
    run = await run_in(store, S.CANCELLING, events)
    result = await store.progress_run(run.id, lambda r: None, progress.Update())
    assert result is not None and result.status is S.CANCELLED
    assert result.context == {"n": 1}
    assert result.current_step is None and result.last_error is None


# -- a raising dispatch -------------------------------------------------------


def raising_dispatch(error: BaseException) -> Callable[[Any, Run], Any]:
    async def dispatch(conn: Any, run: Run) -> None:
        await enqueue(conn, run)  # written through conn, then undone
        raise error

    return dispatch


@pytest.mark.parametrize(
    ("start", "make_op"),
    [
        (S.RUNNING, lambda d: progress.Dispatch(d)),
        (S.PENDING, lambda d: progress.TransitionOrDispatch(S.RUNNING, d)),
        (S.RUNNING, lambda d: progress.TransitionOrDispatch(S.RUNNING, d)),
    ],
    ids=["Dispatch", "TransitionOrDispatch-move", "TransitionOrDispatch-already"],
)
async def test_raising_dispatch_rolls_everything_back(
    store: RunStore,
    pool: asyncpg.Pool,
    events: list[Any],
    jobs: None,
    start: RunStatus,
    make_op: Callable[[Any], progress.Operation],
) -> None:
    run = await run_in(store, start, events)
    error = Boom("queue down")
    with pytest.raises(Boom) as info:
        await store.progress_run(run.id, changes_bump, make_op(raising_dispatch(error)))
    assert info.value is error  # unchanged
    assert await store.get_run(run.id) == run
    assert await job_rows(pool) == []
    assert events == []


async def test_dispatch_swallowing_a_database_error_is_not_reported_as_committed(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None
) -> None:
    # COMMIT of an aborted transaction silently rolls back; the store must not
    # then claim the change happened.
    run = await run_in(store, S.RUNNING, events)

    async def sloppy(conn: Any, current: Run) -> DispatchEvents:
        await enqueue(conn, current, kind="dup")
        try:
            await enqueue(conn, current, kind="dup")
        except asyncpg.UniqueViolationError:
            pass
        return DispatchEvents([Marker("never")])

    with pytest.raises(asyncpg.InFailedSQLTransactionError):
        await store.progress_run(run.id, changes_bump, progress.Dispatch(sloppy))
    assert await store.get_run(run.id) == run
    assert await job_rows(pool) == []
    assert events == []


async def test_dispatch_may_handle_its_own_error_in_a_savepoint(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None
) -> None:
    run = await run_in(store, S.RUNNING, events)

    async def careful(conn: Any, current: Run) -> None:
        await enqueue(conn, current, kind="once")
        try:
            async with conn.transaction():
                await enqueue(conn, current, kind="once")
        except asyncpg.UniqueViolationError:
            pass

    result = await store.progress_run(run.id, changes_bump, progress.Dispatch(careful))
    assert result is not None and result.context == {"n": 2}
    assert [r["kind"] for r in await job_rows(pool)] == ["once"]


# -- the ...OrFail branch -----------------------------------------------------


async def failing_by_sql(conn: Any, run: Run) -> None:
    await enqueue(conn, run)
    await conn.execute("SELECT 1 / 0")  # aborts the transaction


async def failing_but_swallowed(conn: Any, run: Run) -> DispatchEvents:
    await enqueue(conn, run)
    try:
        await conn.execute("SELECT 1 / 0")
    except asyncpg.DivisionByZeroError:
        pass
    return DispatchEvents([Marker("dropped")])


@pytest.mark.parametrize(
    ("dispatch", "error_type"),
    [
        (raising_dispatch(Boom("queue down")), Boom),
        (failing_by_sql, asyncpg.DivisionByZeroError),
        (failing_but_swallowed, asyncpg.InFailedSQLTransactionError),
    ],
    ids=["python-error", "sql-error", "swallowed-sql-error"],
)
@pytest.mark.parametrize(
    ("start", "make_op"),
    [
        (S.RUNNING, lambda d, f: progress.DispatchOrFail(d, f)),
        (S.PENDING, lambda d, f: progress.TransitionOrDispatchOrFail(S.RUNNING, d, f)),
        (S.RUNNING, lambda d, f: progress.TransitionOrDispatchOrFail(S.RUNNING, d, f)),
    ],
    ids=["DispatchOrFail", "TransitionOrDispatchOrFail-move", "TransitionOrDispatchOrFail-already"],
)
async def test_or_fail_keeps_the_fields_and_fails_the_run(
    store: RunStore,
    pool: asyncpg.Pool,
    events: list[Any],
    jobs: None,
    dispatch: Callable[[Any, Run], Any],
    error_type: type[BaseException],
    start: RunStatus,
    make_op: Callable[[Any, Any], progress.Operation],
) -> None:
    run = await run_in(store, start, events)
    seen: list[tuple[Run, BaseException]] = []

    async def fail_fn(current: Run, exc: Exception) -> RunChanges:
        seen.append((current, exc))
        return RunChanges(last_error={"message": str(exc), "type": type(exc).__name__})

    result = await store.progress_run(run.id, changes_bump, make_op(dispatch, fail_fn))
    assert result is not None
    assert result.status is S.FAILED
    assert result.context == {"n": 2}  # the field writes stay
    assert result.current_step == "send_email"
    assert result.last_error is not None and result.last_error["type"] == error_type.__name__
    [(current, exc)] = seen
    assert isinstance(exc, error_type)
    # fail_fn saw the run after the field writes and the move.
    assert current.status is S.RUNNING and current.context == {"n": 2}
    assert await store.get_run(run.id) == result
    assert await job_rows(pool) == []  # the dispatch's write is undone
    moves = [(e.from_status, e.to_status) for e in events]
    if start is S.PENDING:
        assert moves == [(S.PENDING, S.RUNNING), (S.RUNNING, S.FAILED)]
        assert events[0].run.status is S.RUNNING
    else:
        assert moves == [(S.RUNNING, S.FAILED)]
    assert events[-1].run == result  # no dispatch events on the fail branch


async def test_or_fail_with_an_illegal_move_to_failed_rolls_everything_back(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None
) -> None:
    run = await run_in(store, S.RUNNING, events)
    error = Boom("after completing")
    fail_fn = Spy(result={})
    op = progress.TransitionOrDispatchOrFail(S.COMPLETED, raising_dispatch(error), fail_fn)
    with pytest.raises(InvalidTransition) as info:
        await store.progress_run(run.id, changes_bump, op)
    assert (info.value.from_status, info.value.to_status) == ("completed", "failed")
    assert info.value.__cause__ is error
    assert fail_fn.calls == []
    assert await store.get_run(run.id) == run
    assert await job_rows(pool) == []
    assert events == []


async def test_or_fail_with_a_raising_fail_fn_rolls_everything_back(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None
) -> None:
    run = await run_in(store, S.RUNNING, events)
    op = progress.DispatchOrFail(raising_dispatch(Boom("a")), Spy(raises=KeyError("b")))
    with pytest.raises(KeyError):
        await store.progress_run(run.id, changes_bump, op)
    assert await store.get_run(run.id) == run
    assert events == []


# -- events -------------------------------------------------------------------


@pytest.mark.parametrize("or_fail", [False, True], ids=["plain", "or-fail"])
async def test_events_transition_first_then_the_dispatch_events(
    store: RunStore, events: list[Any], or_fail: bool
) -> None:
    run = await run_in(store, S.PENDING, events)

    async def dispatch(conn: Any, current: Run) -> DispatchEvents:
        # Listeners must not have been called yet: nothing is committed.
        assert events == []
        return DispatchEvents([Marker("a"), Marker("b")])

    op: progress.Operation = (
        progress.TransitionOrDispatchOrFail(S.RUNNING, dispatch, Spy())
        if or_fail
        else progress.TransitionOrDispatch(S.RUNNING, dispatch)
    )
    result = await store.progress_run(run.id, changes_bump, op)
    assert result is not None
    assert events == [
        RunTransitioned(run=result, from_status=S.PENDING, to_status=S.RUNNING),
        Marker("a"),
        Marker("b"),
    ]


async def test_dispatch_result_other_than_dispatch_events_is_ignored(
    store: RunStore, events: list[Any]
) -> None:
    run = await run_in(store, S.RUNNING, events)
    result = await store.progress_run(
        run.id, changes_bump, progress.Dispatch(lambda conn, r: [Marker("not-reported")])
    )
    assert result is not None
    assert events == []


# -- bad input ----------------------------------------------------------------


async def test_bad_operation_and_status_fail_before_anything(
    store: RunStore, events: list[Any]
) -> None:
    run = await run_in(store, S.RUNNING, events)
    changes = Spy()
    with pytest.raises(TypeError):
        await store.progress_run(run.id, changes, "update")  # type: ignore[arg-type]
    with pytest.raises(UnknownStatus):
        await store.progress_run(run.id, changes, progress.Transition("finished"))
    assert changes.calls == []
    assert await store.get_run(run.id) == run


async def test_unknown_run(store: RunStore) -> None:
    with pytest.raises(RunNotFound):
        await store.progress_run("not-a-uuid", Spy(), progress.Update())
    with pytest.raises(RunNotFound):
        await store.progress_run("00000000-0000-7000-8000-000000000000", Spy(), progress.Update())


@pytest.mark.parametrize(
    "bad",
    [{"context": {"x": float("nan")}}, {"colour": "red"}, ["context"], RunChanges(context=[])],  # type: ignore[arg-type]
    ids=["nan", "unknown-key", "list", "context-list"],
)
async def test_bad_changes_write_nothing_and_dispatch_nothing(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None, bad: Any
) -> None:
    run = await run_in(store, S.PENDING, events)
    dispatch = Spy()
    with pytest.raises(InvalidRun):
        await store.progress_run(
            run.id, lambda r: bad, progress.TransitionOrDispatch(S.RUNNING, dispatch)
        )
    assert dispatch.calls == []
    assert await store.get_run(run.id) == run
    assert events == []


# -- update_run_with / transition_run_with --------------------------------------


@pytest.mark.parametrize("changes_fn", [changes_bump, async_changes_bump], ids=["sync", "async"])
async def test_update_run_with(
    store: RunStore, events: list[Any], changes_fn: Callable[[Run], Any]
) -> None:
    run = await run_in(store, S.RUNNING, events)
    result = await store.update_run_with(run.id, changes_fn)
    assert result.status is S.RUNNING
    assert (result.context, result.current_step) == ({"n": 2}, "send_email")
    assert result.version == run.version + 1
    assert await store.get_run(run.id) == result
    assert events == []


@pytest.mark.parametrize("status", TERMINAL, ids=str)
async def test_update_run_with_writes_a_terminal_run_like_update_run(
    store: RunStore, events: list[Any], status: RunStatus
) -> None:
    run = await run_in(store, status, events)
    result = await store.update_run_with(run.id, changes_bump)
    assert result.status is status and result.context == {"n": 2}


async def test_update_run_with_no_changes_writes_nothing(
    store: RunStore, events: list[Any]
) -> None:
    run = await run_in(store, S.RUNNING, events)
    assert await store.update_run_with(run.id, lambda r: RunChanges()) == run
    assert await store.get_run(run.id) == run


async def test_update_run_with_bad_changes(store: RunStore, events: list[Any]) -> None:
    run = await run_in(store, S.RUNNING, events)
    with pytest.raises(InvalidRun):
        await store.update_run_with(run.id, lambda r: {"context": {"bad": {1, 2}}})
    with pytest.raises(RunNotFound):
        await store.update_run_with("nope", changes_bump)
    assert await store.get_run(run.id) == run


async def test_update_run_with_raising_fn_rolls_back(store: RunStore, events: list[Any]) -> None:
    run = await run_in(store, S.RUNNING, events)
    error = Boom("no")
    with pytest.raises(Boom) as info:
        await store.update_run_with(run.id, Spy(raises=error))
    assert info.value is error
    assert await store.get_run(run.id) == run


@pytest.mark.parametrize("changes_fn", [changes_bump, async_changes_bump], ids=["sync", "async"])
async def test_transition_run_with(
    store: RunStore, events: list[Any], changes_fn: Callable[[Run], Any]
) -> None:
    run = await run_in(store, S.PAUSED, events)
    result = await store.transition_run_with(run.id, "running", changes_fn)
    assert result.status is S.RUNNING
    assert (result.context, result.current_step) == ({"n": 2}, "send_email")
    assert await store.get_run(run.id) == result
    assert events == [RunTransitioned(run=result, from_status=S.PAUSED, to_status=S.RUNNING)]


@pytest.mark.parametrize("status", [*TERMINAL, S.PENDING], ids=str)
async def test_transition_run_with_illegal_move_never_computes(
    store: RunStore, events: list[Any], status: RunStatus
) -> None:
    run = await run_in(store, status, events)
    changes = Spy(result={})
    with pytest.raises(InvalidTransition) as info:
        await store.transition_run_with(run.id, S.COMPLETED, changes)
    assert (info.value.from_status, info.value.to_status) == (status.value, "completed")
    assert changes.calls == []
    assert await store.get_run(run.id) == run
    assert events == []


async def test_transition_run_with_unknown_status_and_run(store: RunStore) -> None:
    with pytest.raises(UnknownStatus):
        await store.transition_run_with("nope", "finished", Spy())
    with pytest.raises(RunNotFound):
        await store.transition_run_with("nope", "running", Spy())
