"""RunStore's core run operations on a real PostgreSQL: create, get, list,
replay, transition, update, and the events they report."""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

import squidmesh
from squidmesh import (
    Field,
    InvalidPayload,
    InvalidTransition,
    InvalidTrigger,
    InvalidWorkflow,
    Run,
    RunCreated,
    RunNotFound,
    RunReplayed,
    RunStatus,
    RunStore,
    RunTransitioned,
    Step,
    Transition,
    Trigger,
    UnknownStatus,
    Workflow,
)
from tests.integration.workflows import ETL_DAILY, INVOICE_REMINDER

INVOICE = INVOICE_REMINDER.name
ETL = ETL_DAILY.name

# The entry step is declared last here: the one step no transition leads to
# is "intake", not the first declared "ship".
ENTRY_LAST = Workflow(
    "tests.entry_last",
    triggers=[
        Trigger("order", payload=[Field("sku", str), Field("qty", int, default=1)]),
        Trigger("restock", payload=[Field("weight", float)]),
    ],
    steps=[Step("ship"), Step("pack"), Step("intake")],
    transitions=[
        Transition("intake", on="ok", to="pack"),
        Transition("pack", on="ok", to="ship"),
        Transition("ship", on="ok", to="complete"),
    ],
)

ALL = [s.value for s in RunStatus]
LEGAL = {
    "pending": {"running", "failed", "cancelled"},
    "running": {"retrying", "paused", "failed", "completed", "cancelling"},
    "retrying": {"running", "failed", "cancelling"},
    "paused": {"running", "failed", "completed", "cancelled"},
    "cancelling": {"cancelled", "failed"},
    "failed": set(),
    "completed": set(),
    "cancelled": set(),
}
BAD_IDS: list[object] = ["not-a-uuid", "", "123", None, 42, 4.2, b"x", ["x"]]


async def snapshot(pool: asyncpg.Pool, run_id: uuid.UUID) -> str:
    """The whole stored row as text, timestamps and version included."""
    text = await pool.fetchval(
        "SELECT row_to_json(r)::text FROM squidmesh.runs r WHERE id = $1", run_id
    )
    assert text is not None
    return str(text)


async def force_status(pool: asyncpg.Pool, run_id: uuid.UUID, status: str) -> None:
    """Put a run in a state directly (test arrangement, not a store call)."""
    # Any status, legal move or not: the database's state machine allows it
    # for this one transaction (the operator's escape hatch).
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL squidmesh.unchecked_moves = on")
        await conn.execute(
            "UPDATE squidmesh.runs SET status = $2 WHERE id = $1 AND status <> $2", run_id, status
        )


async def count_runs(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM squidmesh.runs"))


async def new_invoice(store: RunStore, account: str = "acct_1", **payload: Any) -> Run:
    return await store.create_run(INVOICE, {"account_id": account, **payload})


def _today_candidates(before: datetime) -> set[str]:
    after = datetime.now(UTC)
    return {before.date().isoformat(), after.date().isoformat()}


# -- create_run ----------------------------------------------------------------


async def test_create_with_default_trigger(store: RunStore, pool: asyncpg.Pool) -> None:
    before = datetime.now(UTC)
    run = await store.create_run(INVOICE, {"account_id": "acct_1"})
    assert run.workflow == INVOICE
    assert run.trigger == "invoice_delivery"  # the first declared trigger
    assert run.status is RunStatus.PENDING
    assert run.context == {}
    assert run.last_error is None
    assert run.replayed_from_run_id is None
    assert run.current_step == "load_invoice"
    assert run.payload["account_id"] == "acct_1"
    assert run.payload["posted_on"] in _today_candidates(before)
    assert "note" not in run.payload  # optional without default: absent, not null
    assert run.step_runs is None and run.steps is None and run.audit_events is None
    for ts in (run.inserted_at, run.updated_at):
        assert ts.tzinfo is not None and ts.utcoffset() == timedelta(0)
        assert before - timedelta(minutes=5) < ts < datetime.now(UTC) + timedelta(minutes=5)
    assert run.updated_at >= run.inserted_at
    assert await store.get_run(run.id) == run
    assert await count_runs(pool) == 1


async def test_create_with_named_trigger(store: RunStore) -> None:
    run = await store.create_run(INVOICE, {}, trigger="nightly")
    assert run.trigger == "nightly"
    assert run.payload == {}
    assert run.current_step == "load_invoice"
    assert (await store.get_run(run.id)).trigger == "nightly"


async def test_create_takes_a_workflow_object(store: RunStore) -> None:
    run = await store.create_run(INVOICE_REMINDER, {"account_id": "a"}, trigger="invoice_delivery")
    assert run.workflow == INVOICE


async def test_given_values_win_over_defaults_and_round_trip(store: RunStore) -> None:
    payload = {"account_id": "acct_\u00e9", "note": "call first", "posted_on": "2020-01-31"}
    run = await store.create_run(INVOICE, dict(payload))
    assert run.payload == payload
    assert (await store.get_run(run.id)).payload == payload


async def test_defaults_applied_and_int_accepted_for_float(pool: asyncpg.Pool) -> None:
    store = RunStore(pool, workflows=[ENTRY_LAST])
    run = await store.create_run(ENTRY_LAST, {"sku": "X-1"})
    assert run.payload == {"sku": "X-1", "qty": 1}
    restock = await store.create_run(ENTRY_LAST, {"weight": 3}, trigger="restock")
    assert restock.payload == {"weight": 3}


async def test_create_does_not_mutate_the_callers_payload(store: RunStore) -> None:
    payload = {"account_id": "acct_1"}
    await store.create_run(INVOICE, payload)
    assert payload == {"account_id": "acct_1"}


async def test_entry_step_is_the_one_no_transition_leads_to(pool: asyncpg.Pool) -> None:
    store = RunStore(pool, workflows=[ENTRY_LAST])
    run = await store.create_run("tests.entry_last", {"sku": "X-1"})
    assert run.current_step == "intake"


async def test_dependency_based_workflow_has_no_current_step(store: RunStore) -> None:
    run = await store.create_run(ETL, {})
    assert run.trigger == "manual"
    assert run.current_step is None
    assert run.status is RunStatus.PENDING


async def test_unknown_workflow(store: RunStore, pool: asyncpg.Pool, events: list[Any]) -> None:
    with pytest.raises(InvalidWorkflow) as info:
        await store.create_run("billing.nope", {"account_id": "a"})
    assert info.value.name == "billing.nope"
    assert await count_runs(pool) == 0
    assert events == []


async def test_unknown_trigger(store: RunStore, pool: asyncpg.Pool, events: list[Any]) -> None:
    with pytest.raises(InvalidTrigger) as info:
        await store.create_run(INVOICE, {"account_id": "a"}, trigger="webhook")
    assert info.value.name == "webhook"
    assert await count_runs(pool) == 0
    assert events == []


async def test_invalid_payload_reports_every_problem(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    with pytest.raises(InvalidPayload) as info:
        await store.create_run(INVOICE, {"note": 5, "posted_on": True, "zeta": 1, "alpha": None})
    error = info.value
    assert error.missing_fields == ["account_id"]
    assert error.unknown_fields == ["alpha", "zeta"]
    assert set(error.invalid_types) == {"note", "posted_on"}
    assert error.expected_map is False
    assert await count_runs(pool) == 0
    assert events == []


async def test_trigger_without_fields_accepts_only_empty(store: RunStore) -> None:
    with pytest.raises(InvalidPayload) as info:
        await store.create_run(ETL, {"anything": 1})
    assert info.value.unknown_fields == ["anything"]


@pytest.mark.parametrize("payload", [None, [], ["account_id"], "x", 1, ("a", 1)], ids=repr)
async def test_payload_must_be_a_map(store: RunStore, pool: asyncpg.Pool, payload: object) -> None:
    with pytest.raises(InvalidPayload) as info:
        await store.create_run(INVOICE, payload)
    assert info.value.expected_map is True
    assert await count_runs(pool) == 0


async def test_bool_is_not_an_int(pool: asyncpg.Pool) -> None:
    store = RunStore(pool, workflows=[ENTRY_LAST])
    with pytest.raises(InvalidPayload) as info:
        await store.create_run(ENTRY_LAST, {"sku": "X", "qty": True})
    assert set(info.value.invalid_types) == {"qty"}


# -- get_run -------------------------------------------------------------------


async def test_get_run_by_uuid_and_by_str(store: RunStore) -> None:
    run = await new_invoice(store)
    assert await store.get_run(run.id) == run
    assert await store.get_run(str(run.id)) == run
    assert await store.get_run(str(run.id).upper()) == run
    assert await store.get_run(run.id.hex) == run


@pytest.mark.parametrize("bad_id", BAD_IDS, ids=repr)
async def test_get_run_with_a_non_uuid_id_is_not_found(store: RunStore, bad_id: object) -> None:
    await new_invoice(store)
    with pytest.raises(RunNotFound) as info:
        await store.get_run(bad_id)
    assert info.value.run_id == bad_id


async def test_get_run_missing_uuid(store: RunStore) -> None:
    missing = uuid.uuid4()
    with pytest.raises(RunNotFound) as info:
        await store.get_run(missing)
    assert info.value.run_id == missing
    with pytest.raises(RunNotFound):
        await store.get_run(str(missing))


@pytest.mark.parametrize("bad_id", ["not-a-uuid", None, 42], ids=repr)
async def test_every_method_treats_a_non_uuid_id_as_not_found(
    store: RunStore, bad_id: object, events: list[Any]
) -> None:
    with pytest.raises(RunNotFound):
        await store.transition_run(bad_id, "running")
    with pytest.raises(RunNotFound):
        await store.update_run(bad_id, context={"a": 1})
    with pytest.raises(RunNotFound):
        await store.cancel_run(bad_id)
    with pytest.raises(RunNotFound):
        await store.replay_run(bad_id)
    assert events == []


async def test_missing_uuid_is_not_found_for_every_method(store: RunStore) -> None:
    missing = uuid.uuid4()
    with pytest.raises(RunNotFound):
        await store.transition_run(missing, "running")
    with pytest.raises(RunNotFound):
        await store.update_run(missing, context={})
    with pytest.raises(RunNotFound):
        await store.cancel_run(missing)
    with pytest.raises(RunNotFound):
        await store.replay_run(missing)


# -- list_runs -----------------------------------------------------------------


async def _mixed_runs(store: RunStore, pool: asyncpg.Pool) -> list[Run]:
    runs = []
    for i in range(4):
        runs.append(await new_invoice(store, f"acct_{i}"))
    for _ in range(3):
        runs.append(await store.create_run(ETL, {}))
    await force_status(pool, runs[1].id, "running")
    await force_status(pool, runs[5].id, "running")
    await force_status(pool, runs[2].id, "failed")
    return [await store.get_run(r.id) for r in runs]


def _newest_first(runs: list[Run]) -> list[uuid.UUID]:
    return [r.id for r in sorted(runs, key=lambda r: (r.inserted_at, r.id), reverse=True)]


async def test_list_runs_newest_first(store: RunStore, pool: asyncpg.Pool) -> None:
    runs = await _mixed_runs(store, pool)
    listed = await store.list_runs()
    assert [r.id for r in listed] == _newest_first(runs)
    assert {r.id: r for r in listed} == {r.id: r for r in runs}


async def test_list_runs_order_breaks_ties_by_id(store: RunStore, pool: asyncpg.Pool) -> None:
    runs = await _mixed_runs(store, pool)
    # The same inserted_at for all: the order falls back to id descending.
    await pool.execute("UPDATE squidmesh.runs SET inserted_at = '2024-01-01T00:00:00Z'")
    listed = await store.list_runs()
    assert [r.id for r in listed] == sorted((r.id for r in runs), reverse=True)


async def test_list_runs_filters(store: RunStore, pool: asyncpg.Pool) -> None:
    runs = await _mixed_runs(store, pool)
    invoices = [r for r in runs if r.workflow == INVOICE]
    running = [r for r in runs if r.status == "running"]

    assert [r.id for r in await store.list_runs(workflow=INVOICE)] == _newest_first(invoices)
    assert [r.id for r in await store.list_runs(workflow=INVOICE_REMINDER)] == _newest_first(
        invoices
    )
    assert [r.id for r in await store.list_runs(status="running")] == _newest_first(running)
    assert [r.id for r in await store.list_runs(status=RunStatus.RUNNING)] == _newest_first(running)
    both = await store.list_runs(workflow=ETL, status=RunStatus.RUNNING)
    assert [r.id for r in both] == [runs[5].id]
    assert await store.list_runs(status="cancelled") == []
    assert await store.list_runs(workflow="nobody.registered") == []
    assert [r.id for r in await store.list_runs(workflow=ETL, status="pending")] == _newest_first(
        [runs[4], runs[6]]
    )


async def test_list_runs_limit(store: RunStore, pool: asyncpg.Pool) -> None:
    runs = await _mixed_runs(store, pool)
    order = _newest_first(runs)
    assert [r.id for r in await store.list_runs(limit=1)] == order[:1]
    assert [r.id for r in await store.list_runs(limit=3)] == order[:3]
    assert [r.id for r in await store.list_runs(limit=100)] == order
    invoices = _newest_first([r for r in runs if r.workflow == INVOICE])
    assert [r.id for r in await store.list_runs(workflow=INVOICE, limit=2)] == invoices[:2]
    assert [r.id for r in await store.list_runs(status="pending", limit=1)] == _newest_first(
        [r for r in runs if r.status == "pending"]
    )[:1]


@pytest.mark.parametrize("limit", [None, 0, -1, -100, "2", 2.0, 1.5, True, [1]], ids=repr)
async def test_list_runs_non_positive_or_non_int_limit_means_all(
    store: RunStore, pool: asyncpg.Pool, limit: object
) -> None:
    runs = await _mixed_runs(store, pool)
    listed = await store.list_runs(limit=limit)  # type: ignore[arg-type]
    assert [r.id for r in listed] == _newest_first(runs)


@pytest.mark.parametrize("status", ["bogus", "RUNNING", "Pending", "", 3], ids=repr)
async def test_list_runs_unknown_status(store: RunStore, status: object) -> None:
    await new_invoice(store)
    with pytest.raises(UnknownStatus) as info:
        await store.list_runs(status=status)  # type: ignore[arg-type]
    assert info.value.value == status


async def test_list_runs_empty(store: RunStore) -> None:
    assert await store.list_runs() == []


# -- replay_run ----------------------------------------------------------------


async def test_replay(store: RunStore, pool: asyncpg.Pool, events: list[Any]) -> None:
    source = await store.create_run(INVOICE, {"account_id": "a", "note": "n"})
    await store.transition_run(source.id, "running", current_step="send_email", context={"x": 1})
    await store.transition_run(source.id, "failed", last_error={"message": "smtp down"})
    before = await snapshot(pool, source.id)
    events.clear()

    replay = await store.replay_run(str(source.id))

    assert replay.id != source.id
    assert replay.replayed_from_run_id == source.id
    assert replay.workflow == source.workflow
    assert replay.trigger == source.trigger
    assert replay.payload == source.payload
    assert replay.status is RunStatus.PENDING
    assert replay.context == {}
    assert replay.last_error is None
    assert replay.current_step == "load_invoice"
    assert replay.inserted_at >= source.inserted_at
    assert await snapshot(pool, source.id) == before
    assert await store.get_run(replay.id) == replay
    assert events == [RunReplayed(run=replay)]


async def test_replay_of_a_replay_points_at_its_own_source(store: RunStore) -> None:
    first = await new_invoice(store)
    second = await store.replay_run(first.id)
    third = await store.replay_run(second.id)
    assert third.replayed_from_run_id == second.id


async def test_replay_of_a_named_trigger_and_dependency_workflow(store: RunStore) -> None:
    nightly = await store.create_run(INVOICE, {}, trigger="nightly")
    assert (await store.replay_run(nightly.id)).trigger == "nightly"
    etl = await store.create_run(ETL, {})
    await store.update_run(etl.id, current_step="extract")
    replay = await store.replay_run(etl.id)
    assert replay.current_step is None


async def test_replay_uses_the_registered_entry_step(pool: asyncpg.Pool) -> None:
    store = RunStore(pool, workflows=[ENTRY_LAST])
    source = await store.create_run(ENTRY_LAST, {"sku": "a"})
    await store.update_run(source.id, current_step="ship")
    assert (await store.replay_run(source.id)).current_step == "intake"


async def test_replay_missing_source(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    with pytest.raises(RunNotFound):
        await store.replay_run(uuid.uuid4())
    assert await count_runs(pool) == 0
    assert events == []


async def test_replay_of_an_unregistered_workflow(store: RunStore, pool: asyncpg.Pool) -> None:
    source = await new_invoice(store)
    bare_events: list[Any] = []
    bare = RunStore(pool, listeners=[bare_events.append])
    with pytest.raises(InvalidWorkflow) as info:
        await bare.replay_run(source.id)
    assert info.value.name == INVOICE
    assert await count_runs(pool) == 1
    assert bare_events == []


# -- transition_run ------------------------------------------------------------


@pytest.mark.parametrize("from_status", ALL)
async def test_every_legal_move_persists(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], from_status: str
) -> None:
    for to_status in sorted(LEGAL[from_status]):
        run = await new_invoice(store)
        await force_status(pool, run.id, from_status)
        before = await store.get_run(run.id)
        events.clear()

        moved = await store.transition_run(run.id, to_status)

        assert moved.status == to_status
        assert isinstance(moved.status, RunStatus)
        assert moved.version == before.version + 1
        assert moved.updated_at >= before.updated_at
        assert moved.inserted_at == before.inserted_at
        # Fields not given are unchanged.
        assert moved.context == before.context
        assert moved.current_step == before.current_step
        assert moved.last_error == before.last_error
        assert moved.payload == before.payload
        assert await store.get_run(run.id) == moved
        assert events == [
            RunTransitioned(
                run=moved, from_status=RunStatus(from_status), to_status=RunStatus(to_status)
            )
        ]


@pytest.mark.parametrize("from_status", ALL)
async def test_every_illegal_move_leaves_the_row_exactly_as_it_was(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], from_status: str
) -> None:
    run = await new_invoice(store)
    await store.update_run(run.id, context={"k": "v"}, last_error={"m": 1})
    await force_status(pool, run.id, from_status)
    for to_status in sorted(set(ALL) - LEGAL[from_status]):
        before = await snapshot(pool, run.id)
        events.clear()
        with pytest.raises(InvalidTransition) as info:
            await store.transition_run(
                run.id,
                to_status,
                context={"changed": True},
                current_step="send_email",
                last_error=None,
            )
        assert (info.value.from_status, info.value.to_status) == (from_status, to_status)
        assert await snapshot(pool, run.id) == before
        assert events == []


async def test_transition_accepts_str_id_and_enum_status(store: RunStore) -> None:
    run = await new_invoice(store)
    moved = await store.transition_run(str(run.id), RunStatus.RUNNING)
    assert moved.status is RunStatus.RUNNING


@pytest.mark.parametrize("to_status", ["bogus", "RUNNING", "", None, 1], ids=repr)
async def test_transition_to_an_unknown_status(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], to_status: object
) -> None:
    run = await new_invoice(store)
    before = await snapshot(pool, run.id)
    events.clear()
    with pytest.raises(UnknownStatus) as info:
        await store.transition_run(run.id, to_status)  # type: ignore[arg-type]
    assert info.value.value == to_status
    assert await snapshot(pool, run.id) == before
    assert events == []


async def test_transition_unknown_status_on_a_missing_run(store: RunStore) -> None:
    # The status is checked before the database is asked.
    with pytest.raises(UnknownStatus):
        await store.transition_run(uuid.uuid4(), "bogus")


async def test_transition_writes_given_fields_and_keeps_the_rest(store: RunStore) -> None:
    run = await new_invoice(store)
    moved = await store.transition_run(
        run.id, "running", context={"n": 1}, current_step="approve", last_error={"m": "x"}
    )
    assert (moved.context, moved.current_step, moved.last_error) == (
        {"n": 1},
        "approve",
        {"m": "x"},
    )
    # Only last_error given: context and current_step stay.
    retrying = await store.transition_run(run.id, "retrying", last_error={"m": "y"})
    assert (retrying.context, retrying.current_step, retrying.last_error) == (
        {"n": 1},
        "approve",
        {"m": "y"},
    )
    # None clears; context=None resets to {}.
    cleared = await store.transition_run(
        run.id, "running", context=None, current_step=None, last_error=None
    )
    assert (cleared.context, cleared.current_step, cleared.last_error) == ({}, None, None)
    assert await store.get_run(run.id) == cleared


@pytest.mark.parametrize(
    ("field", "value"),
    [("context", {"only": "context"}), ("current_step", "send_email"), ("last_error", {"e": 1})],
)
async def test_transition_one_field_at_a_time(store: RunStore, field: str, value: object) -> None:
    run = await new_invoice(store)
    await store.update_run(run.id, context={"c": 0}, current_step="approve", last_error={"e": 0})
    before = await store.get_run(run.id)
    kwargs: dict[str, Any] = {field: value}
    moved = await store.transition_run(run.id, "running", **kwargs)
    for name in ("context", "current_step", "last_error"):
        expected = value if name == field else getattr(before, name)
        assert getattr(moved, name) == expected


async def test_transition_round_trips_json_values(store: RunStore) -> None:
    run = await new_invoice(store)
    context = {
        "unicode": "\u00e9\u4e2d\U0001f600",
        "nested": {"list": [1, 2.5, None, True, "s"], "empty": {}},
        "big": 2**62,
        "neg": -1.5e-7,
        "escapes": 'quote" backslash\\ newline\n \\u0000 text',
    }
    moved = await store.transition_run(run.id, "running", context=context)
    assert moved.context == context
    assert (await store.get_run(run.id)).context == context


# -- update_run ----------------------------------------------------------------


async def test_update_run_field_rules_and_status_untouched(
    store: RunStore, pool: asyncpg.Pool, events: list[Any]
) -> None:
    run = await new_invoice(store)
    await force_status(pool, run.id, "paused")
    events.clear()

    updated = await store.update_run(run.id, context={"a": 1})
    assert updated.status is RunStatus.PAUSED
    assert updated.context == {"a": 1}
    assert updated.current_step == "load_invoice"  # not given: unchanged
    assert updated.last_error is None

    updated = await store.update_run(str(run.id), current_step="approve", last_error={"m": 1})
    assert (updated.context, updated.current_step, updated.last_error) == (
        {"a": 1},
        "approve",
        {"m": 1},
    )
    updated = await store.update_run(run.id, current_step=None)
    assert (updated.context, updated.current_step, updated.last_error) == ({"a": 1}, None, {"m": 1})
    updated = await store.update_run(run.id, context=None, last_error=None)
    assert (updated.context, updated.current_step, updated.last_error) == ({}, None, None)
    assert updated.status is RunStatus.PAUSED
    assert await store.get_run(run.id) == updated
    assert events == []  # update_run reports no event


async def test_update_run_works_in_every_state(store: RunStore, pool: asyncpg.Pool) -> None:
    for status in ALL:
        run = await new_invoice(store)
        await force_status(pool, run.id, status)
        updated = await store.update_run(run.id, context={"s": status})
        assert updated.status == status
        assert updated.context == {"s": status}


async def test_update_run_bumps_version_and_updated_at(store: RunStore) -> None:
    run = await new_invoice(store)
    updated = await store.update_run(run.id, context={"a": 1})
    assert updated.version == run.version + 1
    assert updated.updated_at >= run.updated_at
    assert updated.inserted_at == run.inserted_at


# -- runs of unregistered workflows -------------------------------------------


async def test_a_run_of_an_unregistered_workflow_still_loads(pool: asyncpg.Pool) -> None:
    writer = RunStore(pool, workflows=[ENTRY_LAST])
    created = await writer.create_run(ENTRY_LAST, {"sku": "a"})
    cancel_me = await writer.create_run(ENTRY_LAST, {"sku": "b"})

    reader = RunStore(pool)  # knows no workflow at all
    assert reader.workflows == {}
    loaded = await reader.get_run(created.id)
    assert loaded == created
    assert loaded.workflow == "tests.entry_last"
    assert loaded.current_step == "intake"
    assert {r.id for r in await reader.list_runs(workflow="tests.entry_last")} == {
        created.id,
        cancel_me.id,
    }
    moved = await reader.transition_run(created.id, "running", current_step="pack")
    assert (moved.status, moved.current_step) == (RunStatus.RUNNING, "pack")
    assert (await reader.update_run(created.id, context={"a": 1})).context == {"a": 1}
    assert (await reader.cancel_run(cancel_me.id)).status is RunStatus.CANCELLED


async def test_register_later(pool: asyncpg.Pool) -> None:
    store = RunStore(pool)
    with pytest.raises(InvalidWorkflow):
        await store.create_run(ENTRY_LAST.name, {"sku": "a"})
    store.register(ENTRY_LAST)
    run = await store.create_run(ENTRY_LAST.name, {"sku": "a"})
    assert run.current_step == "intake"


# -- events --------------------------------------------------------------------


async def test_created_event(store: RunStore, events: list[Any]) -> None:
    run = await new_invoice(store)
    assert events == [RunCreated(run=run)]
    assert isinstance(events[0].run, Run)


async def test_events_are_delivered_after_commit(pool: asyncpg.Pool) -> None:
    seen: list[tuple[str, str | None]] = []

    async def check_committed(event: Any) -> None:
        # A separate connection sees only committed data: the change must be there.
        status = await pool.fetchval(
            "SELECT status FROM squidmesh.runs WHERE id = $1", event.run.id
        )
        seen.append((type(event).__name__, status))

    store = RunStore(pool, workflows=[INVOICE_REMINDER], listeners=[check_committed])
    run = await new_invoice(store)
    await store.transition_run(run.id, "running")
    await store.cancel_run(run.id)
    replay = await store.replay_run(run.id)
    assert replay.status is RunStatus.PENDING
    assert seen == [
        ("RunCreated", "pending"),
        ("RunTransitioned", "running"),
        ("RunTransitioned", "cancelling"),
        ("RunReplayed", "pending"),
    ]


async def test_listeners_are_called_in_order(pool: asyncpg.Pool) -> None:
    calls: list[str] = []
    store = RunStore(
        pool,
        workflows=[INVOICE_REMINDER],
        listeners=[lambda e: calls.append("first"), lambda e: calls.append("second")],
    )
    await new_invoice(store)
    assert calls == ["first", "second"]


async def test_a_raising_listener_is_logged_and_harmless(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[Any] = []

    def broken(event: Any) -> None:
        raise RuntimeError("listener exploded")

    async def broken_async(event: Any) -> None:
        raise RuntimeError("async listener exploded")

    store = RunStore(
        pool, workflows=[INVOICE_REMINDER], listeners=[broken, broken_async, received.append]
    )
    with caplog.at_level(logging.ERROR, logger="squidmesh"):
        run = await new_invoice(store)
        moved = await store.transition_run(run.id, "running")
    assert moved.status is RunStatus.RUNNING
    assert (await store.get_run(run.id)).status is RunStatus.RUNNING
    assert [type(e) for e in received] == [RunCreated, RunTransitioned]
    messages = [r for r in caplog.records if r.name == "squidmesh" and r.levelno >= logging.ERROR]
    assert len(messages) == 4
    assert any("listener exploded" in str(r.exc_info[1]) for r in messages if r.exc_info)


async def test_an_async_listener_is_awaited(pool: asyncpg.Pool) -> None:
    done: list[Any] = []

    async def slow(event: Any) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        done.append(event)

    store = RunStore(pool, workflows=[INVOICE_REMINDER], listeners=[slow])
    run = await new_invoice(store)
    assert done == [RunCreated(run=run)]


async def test_transition_event_fields(store: RunStore, events: list[Any]) -> None:
    run = await new_invoice(store)
    events.clear()
    moved = await store.transition_run(run.id, "running", context={"a": 1})
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, RunTransitioned)
    assert event.run == moved
    assert event.from_status is RunStatus.PENDING
    assert event.to_status is RunStatus.RUNNING


async def test_no_event_on_failure(store: RunStore, pool: asyncpg.Pool, events: list[Any]) -> None:
    run = await new_invoice(store)
    await store.transition_run(run.id, "running")
    await store.transition_run(run.id, "completed")
    events.clear()
    failures: list[Callable[[], Awaitable[object]]] = [
        lambda: store.transition_run(run.id, "running"),
        lambda: store.cancel_run(run.id),
        lambda: store.create_run(INVOICE, {}),
        lambda: store.create_run("nope", {}),
        lambda: store.create_run(INVOICE, {"account_id": "a"}, trigger="nope"),
        lambda: store.transition_run(run.id, "bogus"),
        lambda: store.replay_run(uuid.uuid4()),
        lambda: store.transition_run(uuid.uuid4(), "running"),
        lambda: store.update_run(run.id, context={"bad": float("nan")}),
    ]
    for call in failures:
        with pytest.raises(squidmesh.SquidMeshError):
            await call()
    assert await count_runs(pool) == 1
    assert events == []


async def test_events_encode_as_json(store: RunStore, events: list[Any]) -> None:
    import msgspec

    run = await new_invoice(store)
    await store.transition_run(run.id, "running")
    decoder = msgspec.json.Decoder(RunCreated | RunReplayed | RunTransitioned)
    for event in events:
        assert decoder.decode(msgspec.json.encode(event)) == event


async def test_many_runs_have_distinct_ids(store: RunStore) -> None:
    runs = [await new_invoice(store, f"a{i}") for i in range(20)]
    assert len({r.id for r in runs}) == 20
    for a, b in itertools.pairwise(runs):
        assert a.inserted_at <= b.inserted_at
