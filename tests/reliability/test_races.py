"""Races on real connections: many writers on the same runs at once.

Every write bumps the run's ``version`` under the row lock, so the versions of
the runs the successful calls returned order those calls as PostgreSQL
serialised them. Per run, the (from, to) pairs of the ``RunTransitioned``
events, in version order, must chain into a legal path of the state machine
from ``pending``; no two successful writes may share a version (that would be
a lost update); and the row in the database must equal the run the last
successful write returned.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from uuid import UUID

import asyncpg
import pytest

import squidmesh
from squidmesh import (
    InvalidTransition,
    PauseResult,
    Run,
    RunStatus,
    RunTransitioned,
    StepFailed,
    progress,
    state_machine,
)
from squidmesh.testing import wait_until_blocked

S = RunStatus
CANCEL_ERROR = {"message": "run cancelled while paused", "reason": "cancelled"}

# Weighted so that runs wander through the non-terminal states for a while
# before something ends them.
TARGETS = [S.RUNNING] * 6 + [S.RETRYING] * 3 + [S.PAUSED] * 3 + [S.PENDING, S.CANCELLING]
TARGETS += [S.COMPLETED, S.FAILED, S.CANCELLED]


def check_history(
    run_id: UUID, events: list[Any], results: list[Run], final: Run
) -> list[tuple[RunStatus, RunStatus]]:
    """Assert the invariants of the module docstring for one run; return its path."""
    moves = sorted(
        (e for e in events if isinstance(e, RunTransitioned) and e.run.id == run_id),
        key=lambda e: e.run.version,
    )
    path = [(e.from_status, e.to_status) for e in moves]
    expected_from = S.PENDING
    for a, b in path:
        assert a == expected_from, (
            f"{run_id}: path breaks at {a} (expected {expected_from}): {path}"
        )
        assert state_machine.can_transition(a, b), f"{run_id}: illegal move {a} -> {b}: {path}"
        expected_from = b
    for e in moves:
        assert e.run.status == e.to_status
    versions = [r.version for r in results]
    assert len(versions) == len(set(versions)), f"{run_id}: two writes saw the same version"
    last = max(results, key=lambda r: r.version, default=None)
    if last is not None:
        assert final == last, f"{run_id}: the database differs from the last successful write"
    assert final.status == expected_from
    return path


async def _begin_paused_step(store: squidmesh.RunStore, run_id: UUID) -> tuple[UUID, UUID]:
    step_run = await store.begin_step(run_id, "approve", {})
    attempt = await store.begin_attempt(step_run.id)
    return step_run.id, attempt.id


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_many_writers_on_the_same_runs(
    store: squidmesh.RunStore, events: list[Any], pool: asyncpg.Pool, seed: int
) -> None:
    rng = random.Random(seed)
    runs = [
        await store.create_run("billing.invoice_reminder", {"account_id": f"acct-{i}"})
        for i in range(8)
    ]
    steps = {r.id: await _begin_paused_step(store, r.id) for r in runs}
    start = asyncio.Event()
    results: dict[UUID, list[Run]] = defaultdict(list)
    failures: list[str] = []

    def make_call(run_id: UUID, n: int) -> tuple[str, Callable[[], Awaitable[object]]]:
        kind = rng.choice(["transition"] * 4 + ["cancel", "progress", "progress", "update"])
        target = rng.choice(TARGETS)
        if n % 9 == 0:
            step_run_id, attempt_id = steps[run_id]
            return "pause", lambda: store.pause_run(
                run_id, step_run_id, attempt_id, {"current_step": "approve"}
            )
        if kind == "transition":
            return f"transition->{target}", lambda: store.transition_run(
                run_id, target, context={"by": n}
            )
        if kind == "cancel":
            return "cancel", lambda: store.cancel_run(run_id)
        if kind == "update":
            return "update", lambda: store.update_run(run_id, context={"by": n})
        op: progress.Operation = (
            progress.Transition(target) if rng.random() < 0.7 else progress.Update()
        )
        return f"progress({op})", lambda: store.progress_run(
            run_id, lambda r: {"context": {**r.context, "seen": n}}, op
        )

    async def worker(run_id: UUID, n: int) -> None:
        label, call = make_call(run_id, n)
        await start.wait()
        try:
            result = await call()
        except InvalidTransition:
            return
        except Exception as exc:
            failures.append(f"{label}: {type(exc).__name__}: {exc}")
            return
        if isinstance(result, PauseResult):
            if result.terminal_noop:
                return  # nothing written to the run
            result = result.run
        if result is not None:
            assert isinstance(result, Run)
            results[run_id].append(result)

    async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
        for n in range(60):
            for r in runs:
                tg.create_task(worker(r.id, n))
        start.set()

    assert not failures, failures
    lengths = []
    for r in runs:
        final = await store.get_run(r.id)
        path = check_history(r.id, events, results[r.id], final)
        lengths.append(len(path))
    assert sum(lengths) >= len(runs), "hardly anything happened: the race tested nothing"
    # The pool is healthy: no connection is left inside a transaction.
    async with pool.acquire() as conn:
        idle = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state LIKE 'idle in transaction%'"
        )
    assert idle == 0


# -- deterministic interleavings: cancel vs pause, cancel vs resume ------------------


async def in_order(
    dsn: str,
    run_id: UUID,
    first: Callable[[], Awaitable[Any]],
    second: Callable[[], Awaitable[Any]],
) -> tuple[Any, Any]:
    """Run ``first`` then ``second`` queued behind a held row lock, in that order.

    A separate connection locks the run; ``first`` is started and seen
    blocked, then ``second``; releasing the lock lets them through in queue
    order. Each result is the call's return value or the exception it raised.
    """
    holder = await asyncpg.connect(dsn)
    watcher = await asyncpg.connect(dsn)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM squidmesh.runs WHERE id = $1 FOR UPDATE", run_id)
        async with asyncio.timeout(30):
            t1 = asyncio.ensure_future(first())
            await wait_until_blocked(watcher, count=1, timeout=20)
            t2 = asyncio.ensure_future(second())
            await wait_until_blocked(watcher, count=2, timeout=20)
            await tx.rollback()
            done: tuple[Any, Any] = await asyncio.gather(t1, t2, return_exceptions=True)
        return done[0], done[1]
    finally:
        await holder.close()
        await watcher.close()


async def _running_run_at_approve(store: squidmesh.RunStore) -> tuple[Run, UUID, UUID]:
    run = await store.create_run("billing.invoice_reminder", {"account_id": "a"})
    run = await store.transition_run(run.id, "running", current_step="approve")
    step_run_id, attempt_id = await _begin_paused_step(store, run.id)
    return run, step_run_id, attempt_id


async def _step_rows(pool: asyncpg.Pool, step_run_id: UUID) -> tuple[str, str, str, str]:
    row = await pool.fetchrow(
        "SELECT s.status, s.last_error::text, a.status, a.error::text"
        " FROM squidmesh.step_runs s JOIN squidmesh.step_attempts a ON a.step_run_id = s.id"
        " WHERE s.id = $1",
        step_run_id,
    )
    assert row is not None
    return row[0], row[1], row[2], row[3]


async def test_pause_then_cancel(
    store: squidmesh.RunStore, events: list[Any], pool: asyncpg.Pool, dsn: str
) -> None:
    run, step_run_id, attempt_id = await _running_run_at_approve(store)
    paused, cancelled = await in_order(
        dsn,
        run.id,
        lambda: store.pause_run(run.id, step_run_id, attempt_id, {"current_step": "approve"}),
        lambda: store.cancel_run(run.id),
    )
    assert isinstance(paused, PauseResult), paused
    assert (paused.from_status, paused.to_status) == (S.RUNNING, S.PAUSED)
    assert isinstance(cancelled, Run) and cancelled.status is S.CANCELLED, cancelled
    assert cancelled.current_step is None
    final = await store.get_run(run.id)
    check_history(run.id, events, [run, paused.run, cancelled], final)
    # The paused step was failed by the cancel, with the cancellation error.
    s_status, s_error, a_status, a_error = await _step_rows(pool, step_run_id)
    assert (s_status, a_status) == ("failed", "failed")
    assert squidmesh._codec.decode_map(s_error) == CANCEL_ERROR
    assert squidmesh._codec.decode_map(a_error) == CANCEL_ERROR
    (failed,) = [e for e in events if isinstance(e, StepFailed)]
    assert (failed.step, failed.attempt_number) == ("approve", 1)


async def test_cancel_then_pause(
    store: squidmesh.RunStore, events: list[Any], pool: asyncpg.Pool, dsn: str
) -> None:
    run, step_run_id, attempt_id = await _running_run_at_approve(store)
    cancelling, paused = await in_order(
        dsn,
        run.id,
        lambda: store.cancel_run(run.id),
        lambda: store.pause_run(run.id, step_run_id, attempt_id, {"current_step": "approve"}),
    )
    assert isinstance(cancelling, Run) and cancelling.status is S.CANCELLING, cancelling
    # The pause found the run cancelling: it finalises the cancel instead.
    assert isinstance(paused, PauseResult), paused
    assert (paused.from_status, paused.to_status) == (S.CANCELLING, S.CANCELLED)
    assert paused.finalized_step and paused.error == CANCEL_ERROR
    final = await store.get_run(run.id)
    check_history(run.id, events, [run, cancelling, paused.run], final)
    assert final.status is S.CANCELLED and final.current_step is None
    s_status, _, a_status, _ = await _step_rows(pool, step_run_id)
    assert (s_status, a_status) == ("failed", "failed")


RESUMES: dict[str, Callable[[squidmesh.RunStore, UUID], Awaitable[Any]]] = {
    "transition_run": lambda s, i: s.transition_run(i, "running", current_step="approve"),
    "progress_run": lambda s, i: s.progress_run(
        i, lambda r: {"current_step": "approve"}, progress.Transition("running")
    ),
}


@pytest.mark.parametrize("resume", list(RESUMES))
async def test_resume_then_cancel(
    store: squidmesh.RunStore, events: list[Any], pool: asyncpg.Pool, dsn: str, resume: str
) -> None:
    run, step_run_id, attempt_id = await _running_run_at_approve(store)
    paused = await store.pause_run(run.id, step_run_id, attempt_id, {})
    resumed, cancelling = await in_order(
        dsn, run.id, lambda: RESUMES[resume](store, run.id), lambda: store.cancel_run(run.id)
    )
    assert isinstance(resumed, Run) and resumed.status is S.RUNNING, resumed
    assert isinstance(cancelling, Run) and cancelling.status is S.CANCELLING, cancelling
    final = await store.get_run(run.id)
    check_history(run.id, events, [run, paused.run, resumed, cancelling], final)
    # Cancelling is cooperative: the resumed step is still running.
    s_status, _, a_status, _ = await _step_rows(pool, step_run_id)
    assert (s_status, a_status) == ("running", "running")


@pytest.mark.parametrize("resume", list(RESUMES))
async def test_cancel_then_resume(
    store: squidmesh.RunStore, events: list[Any], pool: asyncpg.Pool, dsn: str, resume: str
) -> None:
    run, step_run_id, attempt_id = await _running_run_at_approve(store)
    paused = await store.pause_run(run.id, step_run_id, attempt_id, {})
    cancelled, resumed = await in_order(
        dsn, run.id, lambda: store.cancel_run(run.id), lambda: RESUMES[resume](store, run.id)
    )
    assert isinstance(cancelled, Run) and cancelled.status is S.CANCELLED, cancelled
    if resume == "transition_run":
        assert isinstance(resumed, InvalidTransition), resumed
        assert (resumed.from_status, resumed.to_status) == ("cancelled", "running")
    else:
        assert resumed is None  # progress_run: the terminal no-op
    final = await store.get_run(run.id)
    assert final == cancelled
    check_history(run.id, events, [run, paused.run, cancelled], final)
    s_status, _, a_status, _ = await _step_rows(pool, step_run_id)
    assert (s_status, a_status) == ("failed", "failed")


async def test_cancel_pause_and_resume_free_for_all(
    store: squidmesh.RunStore, events: list[Any]
) -> None:
    # No forced order: 20 runs, each hit by a pause, a resume and a cancel at once.
    prepared = [await _running_run_at_approve(store) for _ in range(20)]
    start = asyncio.Event()
    results: dict[UUID, list[Run]] = defaultdict(list)

    async def go(run_id: UUID, call: Callable[[], Awaitable[Any]]) -> None:
        await start.wait()
        try:
            result = await call()
        except InvalidTransition:
            return
        if isinstance(result, PauseResult):
            if result.terminal_noop:
                return
            result = result.run
        if result is not None:
            results[run_id].append(result)

    async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
        for run, step_run_id, attempt_id in prepared:
            rid = run.id
            tg.create_task(go(rid, partial(store.pause_run, rid, step_run_id, attempt_id, {})))
            tg.create_task(go(rid, partial(store.transition_run, rid, "running")))
            tg.create_task(go(rid, partial(store.cancel_run, rid)))
        start.set()

    for run, _, _ in prepared:
        final = await store.get_run(run.id)
        check_history(run.id, events, [run, *results[run.id]], final)
        # Whatever the order, a cancel always lands: cancelling or cancelled.
        assert final.status in (S.CANCELLING, S.CANCELLED), final.status


def test_the_checker_catches_a_broken_path() -> None:
    # The invariants above must be able to fail: a lost update, a gap and an
    # illegal move are each caught.
    import datetime as dt
    from uuid import uuid4

    now = dt.datetime.now(dt.UTC)
    rid = uuid4()

    def run(status: RunStatus, version: int) -> Run:
        return Run(
            id=rid, workflow="w", trigger="t", status=status, payload={}, context={},
            current_step=None, last_error=None, replayed_from_run_id=None,
            inserted_at=now, updated_at=now, version=version,
        )  # fmt: skip

    def moved(a: RunStatus, b: RunStatus, version: int) -> RunTransitioned:
        return RunTransitioned(run=run(b, version), from_status=a, to_status=b)

    good = [moved(S.PENDING, S.RUNNING, 2), moved(S.RUNNING, S.PAUSED, 3)]
    check_history(rid, good, [e.run for e in good], run(S.PAUSED, 3))
    gap = [moved(S.PENDING, S.RUNNING, 2), moved(S.PAUSED, S.RUNNING, 3)]
    illegal = [moved(S.PENDING, S.COMPLETED, 2)]
    for broken in (gap, illegal):
        with pytest.raises(AssertionError):
            check_history(rid, broken, [e.run for e in broken], broken[-1].run)
    with pytest.raises(AssertionError, match="same version"):
        check_history(rid, good, [good[0].run, good[0].run], run(S.RUNNING, 2))
    with pytest.raises(AssertionError, match="differs"):
        check_history(rid, good, [e.run for e in good], run(S.PAUSED, 4))
