"""Listener delivery: what a listener may raise, and what it may write.

- A listener's own ``asyncio.CancelledError`` is a listener failure like any
  other: the committed call returns its result and later listeners still get
  the event. Only a cancellation of the caller's task propagates.
- A listener that writes to the store does not get ahead of the other
  listeners: every listener receives a run's events in version order, and
  the outermost call returns only once all of them were delivered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec
import pytest

from squidmesh import (
    DispatchEvents,
    Event,
    Run,
    RunCreated,
    RunReplayed,
    RunStatus,
    RunStore,
    RunTransitioned,
    StepFailed,
    progress,
)
from tests.integration.workflows import INVOICE_REMINDER, WORKFLOWS

PAYLOAD = {"account_id": "acct_1"}
TIMEOUT_S = 30


def versions(seen: list[Any]) -> list[tuple[str, int]]:
    return [(type(e).__name__, e.run.version) for e in seen]


def cancelled_sync(event: Any) -> None:
    raise asyncio.CancelledError


async def cancelled_async(event: Any) -> None:
    await asyncio.sleep(0)
    raise asyncio.CancelledError


def listener_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "squidmesh" and r.levelno >= logging.ERROR]


# -- a listener's own CancelledError -----------------------------------------------


@pytest.mark.parametrize("raiser", [cancelled_sync, cancelled_async], ids=["sync", "async"])
async def test_a_listener_raising_cancelled_error_does_not_fail_the_committed_call(
    pool: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
    raiser: Callable[[Any], Any],
) -> None:
    received: list[Any] = []
    store = RunStore(pool, workflows=WORKFLOWS, listeners=[raiser, received.append])

    async def outbox(conn: Any, run: Run) -> DispatchEvents:
        return DispatchEvents(["dispatched"])

    with caplog.at_level(logging.ERROR, logger="squidmesh"):
        created = await store.create_run(INVOICE_REMINDER, PAYLOAD)
        moved = await store.transition_run(created.id, "running")
        dispatched = await store.create_and_dispatch_run(INVOICE_REMINDER, PAYLOAD, outbox)

    # Each call returned what it committed, so nobody retries a write that happened.
    assert isinstance(created, Run) and created.status is RunStatus.PENDING
    assert moved.status is RunStatus.RUNNING
    assert isinstance(dispatched, Run)
    assert (await store.get_run(created.id)).status is RunStatus.RUNNING
    assert (await store.get_run(dispatched.id)).status is RunStatus.PENDING
    # The later listener got every event, in order.
    assert received == [
        RunCreated(run=created),
        RunTransitioned(run=moved, from_status=RunStatus.PENDING, to_status=RunStatus.RUNNING),
        RunCreated(run=dispatched),
        "dispatched",
    ]
    # And each swallowed CancelledError was logged, with its traceback.
    errors = listener_errors(caplog)
    assert len(errors) == 4
    assert all(r.exc_info and isinstance(r.exc_info[1], asyncio.CancelledError) for r in errors)


async def test_the_callers_own_cancellation_during_an_awaiting_listener_propagates(
    pool: asyncpg.Pool,
) -> None:
    entered = asyncio.Event()
    received: list[Any] = []

    async def waits_forever(event: Any) -> None:
        entered.set()
        await asyncio.Event().wait()

    store = RunStore(pool, workflows=WORKFLOWS, listeners=[waits_forever, received.append])
    task = asyncio.create_task(store.create_run(INVOICE_REMINDER, PAYLOAD))
    await asyncio.wait_for(entered.wait(), TIMEOUT_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, TIMEOUT_S)
    assert task.cancelled()
    assert received == []
    # The write itself had committed before the listeners ran.
    assert len(await store.list_runs()) == 1


async def test_a_timeout_around_the_call_still_interrupts_a_slow_listener(
    pool: asyncpg.Pool,
) -> None:
    # A timeout cancels the caller's task: that is the caller's cancellation.
    received: list[Any] = []
    stuck = True

    async def slow_once(event: Any) -> None:
        if stuck:
            await asyncio.Event().wait()

    store = RunStore(pool, workflows=WORKFLOWS, listeners=[slow_once, received.append])
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await store.create_run(INVOICE_REMINDER, PAYLOAD)
    assert received == []
    # The same task (same context) goes on delivering later events normally:
    # the interrupted delivery left nothing behind that would swallow them.
    stuck = False
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    assert received == [RunCreated(run=run)]


async def test_keyboard_interrupt_from_a_listener_propagates(pool: asyncpg.Pool) -> None:
    def interrupt(event: Any) -> None:
        raise KeyboardInterrupt

    store = RunStore(pool, workflows=WORKFLOWS, listeners=[interrupt])
    with pytest.raises(KeyboardInterrupt):
        await store.create_run(INVOICE_REMINDER, PAYLOAD)


# -- listeners that write ----------------------------------------------------------


async def test_a_listener_that_writes_does_not_reorder_the_next_listeners_events(
    pool: asyncpg.Pool,
) -> None:
    first_saw: list[Any] = []
    second_saw: list[Any] = []
    store: RunStore

    async def starts_the_run(event: Any) -> None:
        first_saw.append(event)
        if isinstance(event, RunCreated):
            await store.transition_run(event.run.id, "running")

    store = RunStore(pool, workflows=WORKFLOWS, listeners=[starts_the_run, second_saw.append])
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)

    assert run.version == 1
    assert versions(second_saw) == [("RunCreated", 1), ("RunTransitioned", 2)]
    assert versions(first_saw) == [("RunCreated", 1), ("RunTransitioned", 2)]
    assert second_saw[1].to_status is RunStatus.RUNNING


async def test_a_sync_listener_may_start_a_write_too(pool: asyncpg.Pool) -> None:
    # A sync listener cannot await, but may hand the store a coroutine to a
    # task; that task delivers its own events, and none is lost.
    seen: list[Any] = []
    tasks: list[asyncio.Task[Run]] = []
    store: RunStore

    def starts_the_run(event: Any) -> None:
        if isinstance(event, RunCreated):
            tasks.append(asyncio.create_task(store.transition_run(event.run.id, "running")))

    store = RunStore(pool, workflows=WORKFLOWS, listeners=[starts_the_run, seen.append])
    await store.create_run(INVOICE_REMINDER, PAYLOAD)
    await asyncio.wait_for(tasks[0], TIMEOUT_S)
    assert versions(seen) == [("RunCreated", 1), ("RunTransitioned", 2)]


async def test_three_levels_of_nested_writes_arrive_in_version_order(
    pool: asyncpg.Pool,
) -> None:
    seen: dict[str, list[Any]] = {"driver": [], "async": [], "sync": []}
    store: RunStore

    async def driver(event: Any) -> None:
        seen["driver"].append(event)
        run = event.run
        if isinstance(event, RunCreated):
            await store.transition_run(run.id, "running")
        elif isinstance(event, RunTransitioned) and event.to_status is RunStatus.RUNNING:
            await store.update_run(run.id, context={"step": 1})  # no event, but a version
            await store.transition_run(run.id, "paused")
        elif isinstance(event, RunTransitioned) and event.to_status is RunStatus.PAUSED:
            await store.transition_run(run.id, "completed")

    async def slow_recorder(event: Any) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        seen["async"].append(event)

    store = RunStore(
        pool, workflows=WORKFLOWS, listeners=[driver, slow_recorder, seen["sync"].append]
    )
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)

    expected = [
        ("RunCreated", 1),
        ("RunTransitioned", 2),
        ("RunTransitioned", 4),
        ("RunTransitioned", 5),
    ]
    # Every listener, coroutine or not, got everything before create_run returned.
    for name, got in seen.items():
        assert versions(got) == expected, name
    assert [e.to_status for e in seen["sync"][1:]] == ["running", "paused", "completed"]
    assert (await store.get_run(run.id)).status is RunStatus.COMPLETED


async def test_a_nested_write_returns_before_its_events_are_delivered(
    pool: asyncpg.Pool,
) -> None:
    # The documented consequence of in-order delivery: inside a listener, the
    # events of its own write are queued behind the event being delivered.
    recorded: list[Any] = []
    seen_at_return: list[list[tuple[str, int]]] = []
    store: RunStore

    async def starts_the_run(event: Any) -> None:
        if isinstance(event, RunCreated):
            moved = await store.transition_run(event.run.id, "running")
            assert moved.version == 2
            seen_at_return.append(versions(recorded))

    store = RunStore(pool, workflows=WORKFLOWS, listeners=[starts_the_run, recorded.append])
    await store.create_run(INVOICE_REMINDER, PAYLOAD)
    assert seen_at_return == [[]]
    assert versions(recorded) == [("RunCreated", 1), ("RunTransitioned", 2)]


async def test_a_write_through_another_store_goes_to_that_stores_listeners(
    pool: asyncpg.Pool,
) -> None:
    mine: list[Any] = []
    theirs: list[Any] = []
    other = RunStore(pool, workflows=WORKFLOWS, listeners=[theirs.append])

    async def forward(event: Any) -> None:
        if isinstance(event, RunCreated):
            await other.transition_run(event.run.id, "running")

    store = RunStore(pool, workflows=WORKFLOWS, listeners=[forward, mine.append])
    await store.create_run(INVOICE_REMINDER, PAYLOAD)
    assert versions(mine) == [("RunCreated", 1)]
    assert versions(theirs) == [("RunTransitioned", 2)]


async def test_a_failing_listener_during_nested_delivery_is_logged_and_skipped(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Any] = []
    store: RunStore

    async def starts_then_breaks(event: Any) -> None:
        if isinstance(event, RunCreated):
            await store.transition_run(event.run.id, "running")
            return
        raise RuntimeError("nested listener exploded")

    store = RunStore(pool, workflows=WORKFLOWS, listeners=[starts_then_breaks, seen.append])
    with caplog.at_level(logging.ERROR, logger="squidmesh"):
        await store.create_run(INVOICE_REMINDER, PAYLOAD)
    assert versions(seen) == [("RunCreated", 1), ("RunTransitioned", 2)]
    assert len(listener_errors(caplog)) == 1


async def test_a_task_spawned_by_a_listener_delivers_its_own_events(
    pool: asyncpg.Pool,
) -> None:
    # The spawned task inherits a copy of the caller's context. Its events
    # must not go into the caller's queue (drained or not): it delivers them
    # itself, so awaiting it from the listener cannot deadlock.
    seen: list[Any] = []
    store: RunStore

    async def awaits_a_task(event: Any) -> None:
        if isinstance(event, RunCreated):
            task = asyncio.create_task(store.transition_run(event.run.id, "running"))
            await asyncio.wait_for(task, TIMEOUT_S)

    store = RunStore(pool, workflows=WORKFLOWS, listeners=[awaits_a_task, seen.append])
    await asyncio.wait_for(store.create_run(INVOICE_REMINDER, PAYLOAD), TIMEOUT_S)
    assert sorted(versions(seen)) == [("RunCreated", 1), ("RunTransitioned", 2)]


async def test_a_background_write_after_the_delivery_ended_is_delivered(
    pool: asyncpg.Pool,
) -> None:
    seen: list[Any] = []
    done = asyncio.Event()
    background: list[asyncio.Task[None]] = []
    store: RunStore

    async def later(run_id: Any) -> None:
        await asyncio.sleep(0.05)  # the caller's delivery is over by now
        await store.transition_run(run_id, "running")
        done.set()

    def spawns(event: Any) -> None:
        if isinstance(event, RunCreated):
            background.append(asyncio.create_task(later(event.run.id)))

    store = RunStore(pool, workflows=WORKFLOWS, listeners=[spawns, seen.append])
    await store.create_run(INVOICE_REMINDER, PAYLOAD)
    assert versions(seen) == [("RunCreated", 1)]
    await asyncio.wait_for(done.wait(), TIMEOUT_S)
    assert versions(seen) == [("RunCreated", 1), ("RunTransitioned", 2)]


async def test_concurrent_callers_each_get_their_own_delivery(pool: asyncpg.Pool) -> None:
    seen: list[Any] = []
    store: RunStore

    async def starts_the_run(event: Any) -> None:
        if isinstance(event, RunCreated):
            await asyncio.sleep(0.01)  # let the other callers interleave
            await store.transition_run(event.run.id, "running")

    store = RunStore(pool, workflows=WORKFLOWS, listeners=[starts_the_run, seen.append])
    runs = await asyncio.wait_for(
        asyncio.gather(*(store.create_run(INVOICE_REMINDER, PAYLOAD) for _ in range(5))),
        TIMEOUT_S,
    )
    for run in runs:
        mine = [e for e in seen if e.run.id == run.id]
        assert versions(mine) == [("RunCreated", 1), ("RunTransitioned", 2)]


async def test_progress_run_from_a_listener_keeps_version_order(pool: asyncpg.Pool) -> None:
    seen: list[Any] = []
    store: RunStore

    async def outbox(conn: Any, run: Run) -> DispatchEvents:
        return DispatchEvents(["outbox row written"])

    async def progresses(event: Any) -> None:
        if isinstance(event, RunCreated):
            operation = progress.TransitionOrDispatch("running", outbox)
            await store.progress_run(event.run.id, lambda run: None, operation)

    store = RunStore(pool, workflows=WORKFLOWS, listeners=[progresses, seen.append])
    await store.create_run(INVOICE_REMINDER, PAYLOAD)
    assert versions(seen[:2]) == [("RunCreated", 1), ("RunTransitioned", 2)]
    assert seen[2:] == ["outbox row written"]


# -- events from a real store decode back through one tagged union -----------------


async def test_real_events_round_trip_through_one_tagged_union_decoder(
    store: RunStore, events: list[Any]
) -> None:
    run = await store.create_run(INVOICE_REMINDER, PAYLOAD)
    await store.transition_run(run.id, "running", current_step="approve", context={"a": [1]})
    step_run = await store.begin_step(run.id, "approve", {"in": 1})
    attempt = await store.begin_attempt(step_run.id)
    await store.pause_run(run.id, step_run.id, attempt.id, {})
    await store.cancel_run(run.id)  # a paused run: also fails the step
    await store.replay_run(run.id)
    assert {type(e) for e in events} == {RunCreated, RunTransitioned, StepFailed, RunReplayed}

    union: Any = RunCreated | RunReplayed | RunTransitioned | StepFailed
    decoder = msgspec.json.Decoder(union)
    for event in events:
        assert isinstance(event, Event)
        assert decoder.decode(msgspec.json.encode(event)) == event
    as_outbox = msgspec.json.encode(events)
    assert msgspec.json.decode(as_outbox, type=list[union]) == events
