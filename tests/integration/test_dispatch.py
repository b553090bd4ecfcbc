"""The *_and_dispatch operations: a run change and the caller's writes commit together.

Each dispatch enqueues into the test's own ``public.jobs`` table through the
connection it is given; the tests check that job and run change commit or
roll back together, and that events follow commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec
import pytest

from squidmesh import (
    DispatchEvents,
    InvalidPayload,
    InvalidRun,
    InvalidTransition,
    InvalidWorkflow,
    Run,
    RunChanges,
    RunCreated,
    RunNotFound,
    RunReplayed,
    RunStatus,
    RunStore,
    RunTransitioned,
    UnknownStatus,
    no_reset,
    progress,
)
from tests.integration.workflows import WORKFLOWS

S = RunStatus
WORKFLOW = "billing.invoice_reminder"
PAYLOAD = {"account_id": "acct_1"}


class Marker(msgspec.Struct, frozen=True):
    name: str


class Boom(Exception):
    pass


@pytest.fixture
async def jobs(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "CREATE TABLE public.jobs (id bigserial PRIMARY KEY, run_id uuid NOT NULL,"
        " kind text NOT NULL, seen_status text, seen_version int)"
    )


async def job_rows(pool: asyncpg.Pool) -> list[tuple[Any, ...]]:
    rows = await pool.fetch("SELECT run_id, kind, seen_status, seen_version FROM jobs ORDER BY id")
    return [tuple(r) for r in rows]


async def run_count(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM squidmesh.runs")
    return count


class Enqueue:
    """A dispatch that enqueues one job and records what it was called with."""

    def __init__(
        self, kind: str = "next", events: list[Any] | None = None, error: Exception | None = None
    ) -> None:
        self.kind = kind
        self.events = events
        self.error = error
        self.calls: list[tuple[Any, Run]] = []

    async def __call__(self, conn: Any, run: Run) -> DispatchEvents | None:
        self.calls.append((conn, run))
        await conn.execute(
            "INSERT INTO jobs (run_id, kind, seen_status, seen_version) VALUES ($1, $2, $3, $4)",
            run.id,
            self.kind,
            run.status.value,
            run.version,
        )
        if self.error is not None:
            raise self.error
        return None if self.events is None else DispatchEvents(self.events)


async def started(store: RunStore, events: list[Any], *moves: str) -> Run:
    run = await store.create_run(WORKFLOW, PAYLOAD)
    for status in moves:
        run = await store.transition_run(run.id, status)
    events.clear()
    return run


# -- create_and_dispatch_run ----------------------------------------------------


async def test_create_and_dispatch(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None
) -> None:
    dispatch = Enqueue(events=[Marker("a"), Marker("b")])
    run = await store.create_and_dispatch_run(
        WORKFLOW, {"account_id": "acct_9"}, dispatch, trigger="invoice_delivery"
    )
    assert run.status is S.PENDING and run.payload["account_id"] == "acct_9"
    assert run.current_step == "load_invoice"
    [(_, seen)] = dispatch.calls
    assert seen == run
    assert await job_rows(pool) == [(run.id, "next", "pending", run.version)]
    assert await store.get_run(run.id) == run
    assert events == [RunCreated(run=run), Marker("a"), Marker("b")]


async def test_create_and_dispatch_raising_leaves_no_run(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None
) -> None:
    error = Boom("queue down")
    with pytest.raises(Boom) as info:
        await store.create_and_dispatch_run(WORKFLOW, PAYLOAD, Enqueue(error=error))
    assert info.value is error
    assert await run_count(pool) == 0
    assert await job_rows(pool) == []
    assert events == []


async def test_create_and_dispatch_sees_its_uncommitted_run(
    store: RunStore, pool: asyncpg.Pool, jobs: None
) -> None:
    outside: list[int] = []

    async def dispatch(conn: Any, run: Run) -> None:
        inside = await conn.fetchval("SELECT count(*) FROM squidmesh.runs WHERE id = $1", run.id)
        outside.append(await run_count(pool))
        assert inside == 1

    await store.create_and_dispatch_run(WORKFLOW, PAYLOAD, dispatch)
    assert outside == [0]


@pytest.mark.parametrize(
    ("workflow", "payload", "error"),
    [
        ("no.such.workflow", PAYLOAD, InvalidWorkflow),
        (WORKFLOW, {"account_id": 1}, InvalidPayload),
        (WORKFLOW, "not a map", InvalidPayload),
    ],
    ids=["workflow", "payload-type", "payload-map"],
)
async def test_create_and_dispatch_invalid_input_never_dispatches(
    store: RunStore,
    pool: asyncpg.Pool,
    events: list[Any],
    workflow: str,
    payload: object,
    error: type[Exception],
) -> None:
    dispatch = Enqueue()
    with pytest.raises(error):
        await store.create_and_dispatch_run(workflow, payload, dispatch)
    assert dispatch.calls == []
    assert await run_count(pool) == 0
    assert events == []


async def test_create_and_dispatch_sync_dispatch(store: RunStore, events: list[Any]) -> None:
    calls: list[Run] = []

    def dispatch(conn: Any, run: Run) -> DispatchEvents:
        calls.append(run)
        return DispatchEvents([Marker("sync")])

    run = await store.create_and_dispatch_run(WORKFLOW, PAYLOAD, dispatch)
    assert calls == [run]
    assert events == [RunCreated(run=run), Marker("sync")]


async def test_create_and_dispatch_swallowed_database_error(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None
) -> None:
    async def sloppy(conn: Any, run: Run) -> None:
        try:
            await conn.execute("SELECT 1 / 0")
        except asyncpg.DivisionByZeroError:
            pass

    with pytest.raises(asyncpg.InFailedSQLTransactionError) as info:
        await store.create_and_dispatch_run(WORKFLOW, PAYLOAD, sloppy)
    assert any("savepoint" in note for note in info.value.__notes__)
    assert await run_count(pool) == 0
    assert events == []


# -- replay_and_dispatch_run ------------------------------------------------------


async def test_replay_and_dispatch(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None
) -> None:
    source = await started(store, events, "running", "failed")
    dispatch = Enqueue(events=[Marker("replayed")])
    replay = await store.replay_and_dispatch_run(str(source.id), dispatch)
    assert replay.replayed_from_run_id == source.id
    assert replay.status is S.PENDING and replay.context == {}
    assert [r for _, r in dispatch.calls] == [replay]
    assert await job_rows(pool) == [(replay.id, "next", "pending", replay.version)]
    assert events == [RunReplayed(run=replay), Marker("replayed")]


async def test_replay_and_dispatch_raising_leaves_no_replay(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None
) -> None:
    source = await started(store, events, "cancelled")
    error = Boom("no")
    with pytest.raises(Boom) as info:
        await store.replay_and_dispatch_run(source.id, Enqueue(error=error))
    assert info.value is error
    assert await run_count(pool) == 1
    assert await store.get_run(source.id) == source
    assert await job_rows(pool) == []
    assert events == []


@pytest.mark.parametrize("run_id", ["nope", "00000000-0000-7000-8000-000000000000"])
async def test_replay_and_dispatch_unknown_source(store: RunStore, run_id: str) -> None:
    dispatch = Enqueue()
    with pytest.raises(RunNotFound):
        await store.replay_and_dispatch_run(run_id, dispatch)
    assert dispatch.calls == []


# -- transition_and_dispatch_run ----------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        RunChanges(context={"step": 1}, current_step="approve"),
        {"context": {"step": 1}, "current_step": "approve"},
    ],
    ids=["RunChanges", "dict"],
)
async def test_transition_and_dispatch(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None, changes: Any
) -> None:
    run = await started(store, events)
    dispatch = Enqueue(events=[Marker("job")])
    result = await store.transition_and_dispatch_run(run.id, "running", changes, dispatch)
    assert result.status is S.RUNNING
    assert (result.context, result.current_step) == ({"step": 1}, "approve")
    assert [r for _, r in dispatch.calls] == [result]
    assert await job_rows(pool) == [(run.id, "next", "running", result.version)]
    assert await store.get_run(run.id) == result
    assert events == [
        RunTransitioned(run=result, from_status=S.PENDING, to_status=S.RUNNING),
        Marker("job"),
    ]


async def test_transition_and_dispatch_raising_rolls_back(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None
) -> None:
    run = await started(store, events, "running")
    error = Boom("no")
    with pytest.raises(Boom) as info:
        await store.transition_and_dispatch_run(
            run.id, S.COMPLETED, {"context": {"done": True}}, Enqueue(error=error)
        )
    assert info.value is error
    assert await store.get_run(run.id) == run
    assert await job_rows(pool) == []
    assert events == []


@pytest.mark.parametrize(
    ("moves", "to"),
    [
        (("running", "completed"), S.FAILED),
        (("failed",), S.RUNNING),
        (("cancelled",), S.CANCELLED),
        ((), S.COMPLETED),
    ],
    ids=["completed", "failed", "cancelled", "pending-to-completed"],
)
async def test_transition_and_dispatch_illegal_never_dispatches(
    store: RunStore,
    pool: asyncpg.Pool,
    events: list[Any],
    jobs: None,
    moves: tuple[str, ...],
    to: RunStatus,
) -> None:
    run = await started(store, events, *moves)
    dispatch = Enqueue()
    with pytest.raises(InvalidTransition):
        await store.transition_and_dispatch_run(run.id, to, None, dispatch)
    assert dispatch.calls == []
    assert await store.get_run(run.id) == run
    assert events == []


async def test_transition_and_dispatch_cancelling_behaves_like_transition_run(
    store: RunStore, events: list[Any], jobs: None
) -> None:
    # Only progress_run special-cases cancelling; here it is a plain, legal move.
    run = await started(store, events, "running", "cancelling")
    dispatch = Enqueue(events=[])
    result = await store.transition_and_dispatch_run(run.id, "cancelled", None, dispatch)
    assert result.status is S.CANCELLED
    assert len(dispatch.calls) == 1


async def test_transition_and_dispatch_bad_input_fails_first(
    store: RunStore, events: list[Any]
) -> None:
    run = await started(store, events)
    dispatch = Enqueue()
    with pytest.raises(UnknownStatus):
        await store.transition_and_dispatch_run(run.id, "done", None, dispatch)
    with pytest.raises(InvalidRun):
        await store.transition_and_dispatch_run(
            run.id, "running", {"context": {"x": "\x00"}}, dispatch
        )
    with pytest.raises(RunNotFound):
        await store.transition_and_dispatch_run("nope", "running", None, dispatch)
    assert dispatch.calls == []
    assert await store.get_run(run.id) == run


# -- update_and_dispatch_run -----------------------------------------------------


async def test_update_and_dispatch_with_changes(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None
) -> None:
    run = await started(store, events, "running")
    dispatch = Enqueue(events=[Marker("x")])
    result = await store.update_and_dispatch_run(run.id, {"current_step": "approve"}, dispatch)
    assert result.status is S.RUNNING and result.current_step == "approve"
    assert result.version == run.version + 1
    assert await job_rows(pool) == [(run.id, "next", "running", result.version)]
    assert events == [Marker("x")]  # update_run reports no run event


@pytest.mark.parametrize("use_async", [False, True], ids=["sync-fn", "async-fn"])
async def test_update_and_dispatch_with_fn(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None, use_async: bool
) -> None:
    run = await started(store, events, "running")
    await store.update_run(run.id, context={"n": 5})  # after the caller's read
    seen: list[Run] = []

    def compute(locked: Run) -> RunChanges:
        seen.append(locked)
        return RunChanges(context={"n": locked.context["n"] + 1})

    async def acompute(locked: Run) -> RunChanges:
        return compute(locked)

    result = await store.update_and_dispatch_run(
        run.id, acompute if use_async else compute, Enqueue()
    )
    assert [r.context for r in seen] == [{"n": 5}]
    assert result.context == {"n": 6}
    assert await job_rows(pool) == [(run.id, "next", "running", result.version)]


async def test_update_and_dispatch_raising_rolls_back(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None
) -> None:
    run = await started(store, events, "running")
    error = Boom("no")
    with pytest.raises(Boom) as info:
        await store.update_and_dispatch_run(
            run.id, lambda r: {"context": {"lost": True}}, Enqueue(error=error)
        )
    assert info.value is error
    assert await store.get_run(run.id) == run
    assert await job_rows(pool) == []
    assert events == []


async def test_update_and_dispatch_on_a_terminal_run_writes_like_update_run(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], jobs: None
) -> None:
    run = await started(store, events, "failed")
    result = await store.update_and_dispatch_run(
        run.id, RunChanges(last_error={"why": "x"}), Enqueue()
    )
    assert result.status is S.FAILED and result.last_error == {"why": "x"}
    assert len(await job_rows(pool)) == 1


async def test_update_and_dispatch_no_changes_dispatches_the_locked_run(
    store: RunStore, events: list[Any], jobs: None
) -> None:
    run = await started(store, events, "running")
    dispatch = Enqueue(events=[])
    result = await store.update_and_dispatch_run(run.id, None, dispatch)
    assert result == run
    assert [r for _, r in dispatch.calls] == [run]


@pytest.mark.parametrize(
    "bad",
    [{"context": 3}, lambda r: {"current_step": ""}],
    ids=["given", "computed"],
)
async def test_update_and_dispatch_bad_changes_never_dispatch(
    store: RunStore, events: list[Any], bad: dict[str, Any] | Callable[[Run], Any]
) -> None:
    run = await started(store, events, "running")
    dispatch = Enqueue()
    with pytest.raises(InvalidRun):
        await store.update_and_dispatch_run(run.id, bad, dispatch)
    assert dispatch.calls == []
    assert await store.get_run(run.id) == run


# -- round trips -----------------------------------------------------------------


async def _noop(conn: Any, run: Run) -> None:
    return None


def _raise(conn: Any, run: Run) -> None:
    raise Boom("dispatch failed")


ROUND_TRIPS: list[tuple[str, Callable[[RunStore, Run], Any], list[str]]] = [
    (
        "create_and_dispatch_run",
        lambda s, r: s.create_and_dispatch_run(WORKFLOW, PAYLOAD, _noop),
        ["BEGIN", "INSERT", "SELECT 1", "COMMIT"],
    ),
    (
        "replay_and_dispatch_run",
        lambda s, r: s.replay_and_dispatch_run(r.id, _noop),
        # One INSERT ... SELECT, written as a WITH statement.
        ["BEGIN", "WITH", "SELECT 1", "COMMIT"],
    ),
    (
        "transition_and_dispatch_run",
        lambda s, r: s.transition_and_dispatch_run(r.id, "running", None, _noop),
        ["BEGIN", "LOCK", "UPDATE", "SELECT 1", "COMMIT"],
    ),
    (
        "update_and_dispatch_run",
        lambda s, r: s.update_and_dispatch_run(r.id, {"context": {}}, _noop),
        ["BEGIN", "LOCK", "UPDATE", "SELECT 1", "COMMIT"],
    ),
    (
        "update_run_with",
        lambda s, r: s.update_run_with(r.id, lambda run: {"context": {}}),
        ["BEGIN", "LOCK", "UPDATE", "COMMIT"],
    ),
    (
        "transition_run_with",
        lambda s, r: s.transition_run_with(r.id, "running", lambda run: None),
        ["BEGIN", "LOCK", "UPDATE", "COMMIT"],
    ),
    (
        "progress_run-TransitionOrDispatch",
        lambda s, r: s.progress_run(
            r.id, lambda run: None, progress.TransitionOrDispatch("running", _noop)
        ),
        ["BEGIN", "LOCK", "UPDATE", "SELECT 1", "COMMIT"],
    ),
    (
        "progress_run-DispatchOrFail",
        lambda s, r: s.progress_run(
            r.id, lambda run: {"context": {}}, progress.DispatchOrFail(_noop, lambda r, e: {})
        ),
        ["BEGIN", "LOCK", "UPDATE", "SAVEPOINT", "RELEASE", "COMMIT"],
    ),
    (
        "progress_run-DispatchOrFail-failing",
        lambda s, r: s.progress_run(
            r.id, lambda run: {"context": {}}, progress.DispatchOrFail(_raise, lambda r, e: {})
        ),
        ["BEGIN", "LOCK", "UPDATE", "SAVEPOINT", "ROLLBACK TO", "UPDATE", "COMMIT"],
    ),
]


def _kind(query: str) -> str:
    text = " ".join(line for line in query.splitlines() if not line.startswith("--")).strip()
    if "FOR UPDATE" in text and text.startswith("SELECT"):
        return "LOCK"
    for kind in ("SELECT 1", "ROLLBACK TO", "SAVEPOINT", "RELEASE", "BEGIN", "COMMIT"):
        if text.startswith(kind):
            return kind
    return text.split()[0]


@pytest.mark.parametrize(
    ("operation", "expected"),
    [(op, expected) for _, op, expected in ROUND_TRIPS],
    ids=[name for name, _, _ in ROUND_TRIPS],
)
async def test_round_trips(
    dsn: str, operation: Callable[[RunStore, Run], Any], expected: list[str]
) -> None:
    statements: list[str] = []

    async def init(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda record: statements.append(record.query))

    counting = await asyncpg.create_pool(dsn, min_size=1, max_size=1, init=init, reset=no_reset)
    try:
        store = RunStore(counting, workflows=WORKFLOWS)
        run = await store.create_run(WORKFLOW, PAYLOAD)
        await asyncio.sleep(0)  # runs the loggers asyncpg scheduled with call_soon
        statements.clear()
        await operation(store, run)
        await asyncio.sleep(0)
        # One statement is one round trip once asyncpg has prepared it (per connection).
        assert [_kind(q) for q in statements] == expected
    finally:
        await counting.close()
