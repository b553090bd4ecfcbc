"""Values PostgreSQL (or msgspec) cannot store are refused before anything is written."""

from __future__ import annotations

import math
import uuid
from typing import Any

import asyncpg
import pytest

from squidmesh import InvalidPayload, InvalidRun, Run, RunChanges, RunStore, _codec
from squidmesh._values import coerce_changes
from tests.integration.workflows import INVOICE_REMINDER


async def _snapshot(pool: asyncpg.Pool, run_id: uuid.UUID) -> str:
    return str(
        await pool.fetchval(
            "SELECT row_to_json(r)::text FROM squidmesh.runs r WHERE id = $1", run_id
        )
    )


async def _count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM squidmesh.runs"))


def _kw(field: str, value: object) -> dict[str, Any]:
    return {field: value}


@pytest.fixture
async def run(store: RunStore) -> Run:
    created = await store.create_run(INVOICE_REMINDER, {"account_id": "acct_1"})
    return await store.update_run(created.id, context={"keep": 1}, last_error={"m": "old"})


BAD_MAPS: list[tuple[str, object]] = [
    ("nul-in-string", {"note": "a\x00b"}),
    ("nul-in-nested-string", {"a": [{"b": "\x00"}]}),
    ("nul-in-key", {"k\x00": 1}),
    ("nan", {"x": math.nan}),
    ("inf", {"x": math.inf}),
    ("neg-inf", {"x": [-math.inf]}),
    ("non-str-key", {1: "x"}),
    ("set", {"x": {1, 2}}),
    ("tuple", {"x": (1, 2)}),
    ("object", {"x": object()}),
    ("bytes", {"x": b"raw"}),
    ("uuid", {"x": uuid.uuid4()}),
]
NOT_MAPS: list[object] = [[], [1, 2], "text", 1, ("a", 1), {"a"}]


@pytest.mark.parametrize("field", ["context", "last_error"])
@pytest.mark.parametrize(("case", "value"), BAD_MAPS, ids=[c for c, _ in BAD_MAPS])
async def test_bad_json_is_refused_by_update_and_transition(
    store: RunStore,
    pool: asyncpg.Pool,
    events: list[Any],
    run: Run,
    field: str,
    case: str,
    value: object,
) -> None:
    before = await _snapshot(pool, run.id)
    events.clear()
    with pytest.raises(InvalidRun) as info:
        await store.update_run(run.id, **_kw(field, value))
    assert field in info.value.reason
    with pytest.raises(InvalidRun):
        await store.transition_run(run.id, "running", **_kw(field, value))
    # Valid fields given alongside are not written either.
    with pytest.raises(InvalidRun):
        await store.transition_run(run.id, "running", current_step="approve", **_kw(field, value))
    assert await _snapshot(pool, run.id) == before
    assert events == []


@pytest.mark.parametrize("field", ["context", "last_error"])
@pytest.mark.parametrize("value", NOT_MAPS, ids=repr)
async def test_a_non_dict_map_field_is_refused(
    store: RunStore, pool: asyncpg.Pool, run: Run, field: str, value: object
) -> None:
    before = await _snapshot(pool, run.id)
    with pytest.raises(InvalidRun) as info:
        await store.update_run(run.id, **_kw(field, value))
    assert "dict" in info.value.reason
    with pytest.raises(InvalidRun):
        await store.transition_run(run.id, "running", **_kw(field, value))
    assert await _snapshot(pool, run.id) == before


@pytest.mark.parametrize("value", ["", "a\x00b", "x" * 256, 5, ["approve"], b"approve"], ids=repr)
async def test_a_bad_current_step_is_refused(
    store: RunStore, pool: asyncpg.Pool, run: Run, value: object
) -> None:
    before = await _snapshot(pool, run.id)
    with pytest.raises(InvalidRun):
        await store.update_run(run.id, current_step=value)  # type: ignore[arg-type]
    with pytest.raises(InvalidRun):
        await store.transition_run(run.id, "running", current_step=value)  # type: ignore[arg-type]
    assert await _snapshot(pool, run.id) == before


async def test_a_255_character_step_name_is_fine(store: RunStore, run: Run) -> None:
    name = "s" * 255
    assert (await store.update_run(run.id, current_step=name)).current_step == name


async def test_bad_json_on_a_missing_run_is_still_invalid_run(store: RunStore) -> None:
    # Values are checked before the database is asked.
    with pytest.raises(InvalidRun):
        await store.update_run(uuid.uuid4(), context={"x": math.nan})


async def test_a_bad_id_with_bad_json_never_crashes(store: RunStore) -> None:
    # Either check may come first; neither may surface as a driver error.
    with pytest.raises((InvalidRun, LookupError)):
        await store.update_run("nope", context={"x": math.nan})


@pytest.mark.parametrize(
    ("case", "payload", "field"),
    [
        ("nul", {"account_id": "a\x00b"}, "account_id"),
        ("nul-in-optional", {"account_id": "a", "note": "\x00"}, "note"),
        ("nul-in-default-overridden", {"account_id": "a", "posted_on": "2024\x00"}, "posted_on"),
    ],
)
async def test_payload_nul_is_invalid_payload(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], case: str, payload: Any, field: str
) -> None:
    with pytest.raises(InvalidPayload) as info:
        await store.create_run(INVOICE_REMINDER, payload)
    assert set(info.value.invalid_types) == {field}
    assert info.value.expected_map is False
    assert await _count(pool) == 0
    assert events == []


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=repr)
async def test_payload_nan_is_invalid_payload(
    pool: asyncpg.Pool, events: list[Any], value: float
) -> None:
    from squidmesh import Field, Step, Trigger, Workflow

    workflow = Workflow(
        "tests.metrics",
        triggers=[
            Trigger("sample", payload=[Field("value", float), Field("tags", dict, required=False)])
        ],
        steps=[Step("record")],
    )
    store = RunStore(pool, workflows=[workflow], listeners=[events.append])
    with pytest.raises(InvalidPayload) as info:
        await store.create_run(workflow, {"value": value})
    assert set(info.value.invalid_types) == {"value"}
    with pytest.raises(InvalidPayload) as info:
        await store.create_run(workflow, {"value": 1.0, "tags": {"t": value, "u": "\x00"}})
    assert set(info.value.invalid_types) == {"tags"}
    with pytest.raises(InvalidPayload) as info:
        await store.create_run(workflow, {"value": 1.0, "tags": {1: "x"}})
    assert set(info.value.invalid_types) == {"tags"}
    assert await _count(pool) == 0
    assert events == []


async def test_payload_unknown_keys_of_any_type(store: RunStore, pool: asyncpg.Pool) -> None:
    with pytest.raises(InvalidPayload) as info:
        await store.create_run(INVOICE_REMINDER, {"account_id": "a", 1: "x", "k\x00": 2})
    assert len(info.value.unknown_fields) == 2
    assert all(isinstance(name, str) for name in info.value.unknown_fields)
    assert await _count(pool) == 0


async def test_unknown_field_keywords_are_refused(
    store: RunStore, pool: asyncpg.Pool, run: Run
) -> None:
    before = await _snapshot(pool, run.id)
    with pytest.raises(TypeError):
        await store.update_run(run.id, status="running")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        await store.transition_run(run.id, "running", payload={})  # type: ignore[call-arg]
    assert await _snapshot(pool, run.id) == before


def test_unknown_change_keys_are_invalid_run() -> None:
    with pytest.raises(InvalidRun) as info:
        coerce_changes({"context": {}, "status": "running"})
    assert "status" in info.value.reason
    with pytest.raises(InvalidRun):
        coerce_changes(["context"])  # type: ignore[arg-type]
    assert coerce_changes({"context": {"a": 1}}) == RunChanges(context={"a": 1})
    assert coerce_changes(None) == RunChanges()


@pytest.mark.parametrize("field", ["context", "last_error"])
async def test_an_oversized_value_is_refused(
    store: RunStore, pool: asyncpg.Pool, events: list[Any], run: Run, field: str
) -> None:
    big = {"blob": "x" * (_codec.MAX_ENCODED_BYTES + 1)}
    before = await _snapshot(pool, run.id)
    events.clear()
    with pytest.raises(InvalidRun) as info:
        await store.update_run(run.id, **_kw(field, big))
    assert str(_codec.MAX_ENCODED_BYTES) in info.value.reason
    with pytest.raises(InvalidRun):
        await store.transition_run(run.id, "running", **_kw(field, big))
    assert await _snapshot(pool, run.id) == before
    assert events == []


async def test_an_oversized_payload_is_refused(store: RunStore, pool: asyncpg.Pool) -> None:
    # Spec-silent: the size limit is not a field problem, so it is InvalidRun.
    with pytest.raises(InvalidRun):
        await store.create_run(
            INVOICE_REMINDER,
            {"account_id": "a", "note": "x" * (_codec.MAX_ENCODED_BYTES + 1)},
        )
    assert await _count(pool) == 0


async def test_a_large_value_under_the_limit_round_trips(store: RunStore, run: Run) -> None:
    context = {"blob": "y" * (1024 * 1024), "list": list(range(10_000))}
    assert (await store.update_run(run.id, context=context)).context == context


async def test_values_that_look_dangerous_are_stored_verbatim(store: RunStore, run: Run) -> None:
    context = {
        "sql": "'); DROP TABLE squidmesh.runs; --",
        "escaped_nul": "\\u0000",
        "json_in_str": '{"a": 1}',
        "control": "\x01\x1f\t\r\n",
        "surrogate_pair": "\U0001f600",
        "empty_key": {"": ""},
    }
    updated = await store.update_run(run.id, context=context)
    assert updated.context == context
    assert (await store.get_run(run.id)).context == context


async def test_a_database_check_violation_becomes_invalid_run(pool: asyncpg.Pool, run: Run) -> None:
    # The store refuses bad values before sending them, so drive the mapping
    # boundary directly with statements the database rejects.
    from squidmesh import _queries

    with pytest.raises(InvalidRun) as info:
        await _queries.write_value(
            pool, "UPDATE squidmesh.runs SET status = 'bogus' WHERE id = $1", run.id
        )
    assert "runs_status_check" in info.value.reason
    assert isinstance(info.value.__cause__, asyncpg.CheckViolationError)
    with pytest.raises(InvalidRun) as info:
        await _queries.write_value(pool, "SELECT '\"a\\u0000b\"'::jsonb")
    assert isinstance(info.value.__cause__, asyncpg.DataError)


async def test_infrastructure_errors_pass_through(pool: asyncpg.Pool) -> None:
    from squidmesh import _queries

    with pytest.raises(asyncpg.QueryCanceledError):
        async with pool.acquire() as conn:
            await conn.execute("SET statement_timeout = 50")
            try:
                await _queries.write_value(conn, "SELECT pg_sleep(5)")
            finally:
                await conn.execute("RESET statement_timeout")


async def test_floats_read_back_equal_and_as_floats(store: RunStore, run: Run) -> None:
    # jsonb keeps numbers as numeric, whose text form has no exponent: a float
    # such as 1e300 must still read back as the same float, not a 301-digit int.
    context = {
        "big": 1e300,
        "max": 1.7976931348623157e308,
        "neg": -1e23,
        "mid": 1.5e16,
        "exact": 1e22,
        "whole": 2.0,
        "tiny": 5e-324,
        "small": -1.5e-7,
        "list": [1e300, 3, 0.1],
        "nested": {"n": [{"x": 1e200}]},
        "text": "1e300 stays text",
        "int": 10**30,
    }
    updated = await store.update_run(run.id, context=context, last_error={"at": 1e300})
    moved = await store.transition_run(run.id, "running", context=context)
    for written in (updated, moved):
        for stored in (written, await store.get_run(run.id)):
            assert stored.context == context
            assert type(stored.context["big"]) is float
            assert type(stored.context["list"][0]) is float
            assert type(stored.context["int"]) is int
    assert (await store.get_run(run.id)).last_error == {"at": 1e300}


async def test_large_float_payload_reads_back_equal(pool: asyncpg.Pool) -> None:
    from squidmesh import Field, Step, Trigger, Workflow

    workflow = Workflow(
        "tests.floats",
        triggers=[Trigger("sample", payload=[Field("value", float)])],
        steps=[Step("record")],
    )
    store = RunStore(pool, workflows=[workflow])
    run = await store.create_run(workflow, {"value": 1e300})
    assert (await store.get_run(run.id)).payload == {"value": 1e300}
    assert type((await store.get_run(run.id)).payload["value"]) is float
    replay = await store.replay_run(run.id)
    assert replay.payload == {"value": 1e300}


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb"])
async def test_lone_surrogates_are_refused(
    store: RunStore, pool: asyncpg.Pool, run: Run, text: str
) -> None:
    value = text
    before = await _snapshot(pool, run.id)
    with pytest.raises(InvalidRun):
        await store.update_run(run.id, context={"x": value})
    with pytest.raises(InvalidRun):
        await store.update_run(run.id, last_error={value: 1})
    with pytest.raises(InvalidRun):
        await store.transition_run(run.id, "running", current_step=value)
    assert await _snapshot(pool, run.id) == before
    with pytest.raises(InvalidPayload) as info:
        await store.create_run(INVOICE_REMINDER, {"account_id": value})
    assert set(info.value.invalid_types) == {"account_id"}
    assert await _count(pool) == 1
