"""A pool the user made themselves works, whatever jsonb codec it has."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

import squidmesh
from squidmesh import RunStatus, RunStore
from tests.integration.workflows import ETL_DAILY, INVOICE_REMINDER

CONTEXT = {"nested": {"list": [1, 2.5, None, True, "\u00e9"]}, "n": 2**40}


async def _json_codec(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _binary_codec(conn: asyncpg.Connection) -> None:
    # jsonb's binary format: a version byte, then the text.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + json.dumps(v).encode(),
        decoder=lambda b: json.loads(b[1:].decode()),
        schema="pg_catalog",
        format="binary",
    )


async def _exercise(store: RunStore, pool: asyncpg.Pool, *, user_codec: bool = False) -> None:
    run = await store.create_run(INVOICE_REMINDER, {"account_id": "acct_1", "note": "hi"})
    assert run.payload["note"] == "hi"
    assert isinstance(run.payload, dict)
    assert await store.get_run(run.id) == run
    assert await store.get_run(str(run.id)) == run

    moved = await store.transition_run(
        run.id, "running", context=CONTEXT, current_step="approve", last_error={"m": "x"}
    )
    assert moved.status is RunStatus.RUNNING
    assert moved.context == CONTEXT
    assert moved.last_error == {"m": "x"}
    updated = await store.update_run(run.id, last_error=None)
    assert updated.last_error is None
    assert updated.context == CONTEXT

    other = await store.create_run(ETL_DAILY, {})
    listed = await store.list_runs()
    assert [r.id for r in listed] == [other.id, run.id]
    assert [r.id for r in await store.list_runs(status="running")] == [run.id]
    assert [r.id for r in await store.list_runs(workflow=ETL_DAILY, limit=1)] == [other.id]

    replay = await store.replay_run(run.id)
    assert replay.payload == run.payload
    assert (await store.cancel_run(replay.id)).status is RunStatus.CANCELLED

    async with pool.acquire() as conn:
        value = await conn.fetchval("SELECT context FROM squidmesh.runs WHERE id = $1", run.id)
    if user_codec:  # the user's codec is still in force on their own queries
        assert value == CONTEXT
    else:
        assert json.loads(value) == CONTEXT


@pytest.fixture
async def json_pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4, init=_json_codec)
    try:
        yield pool
    finally:
        await pool.close()


async def test_pool_with_a_json_loads_codec(json_pool: asyncpg.Pool) -> None:
    events: list[Any] = []
    store = RunStore(json_pool, workflows=[INVOICE_REMINDER, ETL_DAILY], listeners=[events.append])
    await _exercise(store, json_pool, user_codec=True)
    assert events


async def test_pool_with_a_binary_jsonb_codec(dsn: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4, init=_binary_codec)
    try:
        await _exercise(
            RunStore(pool, workflows=[INVOICE_REMINDER, ETL_DAILY]), pool, user_codec=True
        )
    finally:
        await pool.close()


async def test_default_pool_without_reset_override(dsn: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            assert isinstance(
                await conn.fetchval("SELECT '{\"a\": 1}'::jsonb"), str
            )  # asyncpg's default: jsonb as text
        await _exercise(RunStore(pool, workflows=[INVOICE_REMINDER, ETL_DAILY]), pool)
    finally:
        await pool.close()


async def test_pool_with_no_reset(dsn: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, reset=squidmesh.no_reset)
    try:
        await _exercise(RunStore(pool, workflows=[INVOICE_REMINDER, ETL_DAILY]), pool)
        # No transaction is left open on a released connection.
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT txid_current_if_assigned()") is None
    finally:
        await pool.close()


async def test_store_connect_owns_its_pool(dsn: str) -> None:
    async with RunStore.connect(dsn, workflows=[INVOICE_REMINDER, ETL_DAILY], max_size=2) as store:
        await _exercise(store, store.pool)
        pool = store.pool
    assert pool.is_closing()


async def test_pool_with_a_different_search_path(dsn: str) -> None:
    # A host app's search_path must not matter: every object is schema-qualified.
    async def init(conn: asyncpg.Connection) -> None:
        await conn.execute("SET search_path = pg_catalog")

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, init=init)
    try:
        await _exercise(RunStore(pool, workflows=[INVOICE_REMINDER, ETL_DAILY]), pool)
    finally:
        await pool.close()


async def test_pool_with_a_different_time_zone(dsn: str) -> None:
    async def init(conn: asyncpg.Connection) -> None:
        await conn.execute("SET TimeZone = 'Pacific/Kiritimati'")

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, init=init)
    try:
        store = RunStore(pool, workflows=[INVOICE_REMINDER])
        run = await store.create_run(INVOICE_REMINDER, {"account_id": "a"})
        stored = await pool.fetchval("SELECT inserted_at FROM squidmesh.runs WHERE id = $1", run.id)
        assert run.inserted_at == stored
        assert run.inserted_at.utcoffset() is not None
        assert run.inserted_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    finally:
        await pool.close()
