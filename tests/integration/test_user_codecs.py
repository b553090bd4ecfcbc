"""A pool with its own codecs for the types of a run's columns still gets the same Runs.

Runs cross the driver as plain columns (ids as bytea, jsonb as text,
timestamps as float8 seconds; see sql/queries/runs.sql): none of the types a
pool's codecs are set for. Each codec here turns its type into a marker that
no Run field may hold, and takes squidmesh's own parameter values (UUIDs,
aware datetimes) the way such a codec's encoder would.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
import pytest
from asyncpg.pgproto.pgproto import UUID as PgUUID

from squidmesh import Run, RunStatus, RunStore, _codec
from tests.integration.workflows import ETL_DAILY, INVOICE_REMINDER


class Marker:
    """What the user's decoders return: never a value of a Run."""

    def __init__(self, value: object) -> None:
        self.value = value


async def _codecs(conn: asyncpg.Connection) -> None:
    for name in ("uuid", "timestamptz", "timestamp", "json", "jsonb"):
        await conn.set_type_codec(name, encoder=str, decoder=Marker, schema="pg_catalog")


@pytest.fixture
async def codec_store(dsn: str) -> AsyncIterator[RunStore]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, init=_codecs)
    try:
        async with pool.acquire() as conn:
            assert isinstance(await conn.fetchval("SELECT now()"), Marker)
        yield RunStore(pool, workflows=[INVOICE_REMINDER, ETL_DAILY])
    finally:
        await pool.close()


def _check(run: Run) -> None:
    assert isinstance(run.id, UUID)
    assert isinstance(run.status, RunStatus)
    assert isinstance(run.payload, dict) and isinstance(run.context, dict)
    assert run.last_error is None or isinstance(run.last_error, dict)
    assert run.replayed_from_run_id is None or isinstance(run.replayed_from_run_id, UUID)
    assert isinstance(run.version, int)
    for stamp in (run.inserted_at, run.updated_at):
        assert isinstance(stamp, datetime)
        assert stamp.utcoffset() == timedelta(0)


async def test_every_operation_that_returns_runs(codec_store: RunStore, store: RunStore) -> None:
    s = codec_store
    run = await s.create_run(INVOICE_REMINDER, {"account_id": "a"})
    keyed = await s.create_run(ETL_DAILY, {}, idempotency_key="k-1")
    again = await s.create_run(ETL_DAILY, {}, idempotency_key="k-1")
    assert again == keyed
    seen: list[Run] = [run, keyed, again]
    # The same run through a store whose pool has no codecs.
    assert await store.get_run(run.id) == run

    seen.append(await s.get_run(run.id))
    seen.append(await s.transition_run(run.id, "running", context={"n": 1}))
    seen.append(await s.update_run(run.id, last_error={"m": "x"}, expected_version=2))
    replay = await s.replay_run(run.id)
    assert replay.replayed_from_run_id == run.id
    seen += [replay, await s.cancel_run(replay.id)]
    seen += await s.list_runs()
    seen += await s.list_runs(workflow=INVOICE_REMINDER, status="running", limit=5)
    first = await s.page_runs(limit=1)
    assert first.next_cursor is not None
    rest = await s.page_runs(limit=10, cursor=first.next_cursor)
    assert [r.id for r in [*first.runs, *rest.runs]] == [r.id for r in await store.list_runs()]
    seen += [*first.runs, *rest.runs]
    claimed = await s.claim_runs(workflow=ETL_DAILY)
    assert [r.id for r in claimed] == [keyed.id]
    seen += claimed

    step_run = await s.begin_step(run.id, "load_invoice", {"a": 1})
    attempt = await s.begin_attempt(step_run.id)
    full = await s.get_run(run.id, include_history=True)
    seen.append(full)
    assert full == await store.get_run(run.id, include_history=True)
    assert full.step_runs is not None and full.transitions is not None
    assert full.step_runs[0].attempts == [attempt]
    assert [(t.from_status, t.to_status) for t in full.transitions] == [
        (None, RunStatus.PENDING),
        (RunStatus.PENDING, RunStatus.RUNNING),
    ]
    for run_seen in seen:
        _check(run_seen)


async def test_a_session_time_zone_and_datestyle_change_nothing(dsn: str, store: RunStore) -> None:
    run = await store.create_run(INVOICE_REMINDER, {"account_id": "a"})
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=1,
        server_settings={"TimeZone": "America/St_Johns", "DateStyle": "SQL, DMY"},
    )
    try:
        other = RunStore(pool, workflows=[INVOICE_REMINDER])
        got = await other.get_run(run.id)
        assert got == run
        assert got.inserted_at.tzinfo is UTC
        stored: Any = await pool.fetchval(
            "SELECT inserted_at FROM squidmesh.runs WHERE id = $1", run.id
        )
        assert got.inserted_at == stored
    finally:
        await pool.close()


def test_json_round_trip_of_a_run_read_through_columns() -> None:
    # The ids of a run read through columns are asyncpg's UUID subclass;
    # they encode and compare as uuid.UUID does.
    raw = UUID("0192d7a4-8d4b-7c3e-9e2a-1b2c3d4e5f60")
    row = (
        raw.bytes,
        "w",
        "t",
        "running",
        '{"a": [1, 2.5, null]}',
        "{}",
        None,
        None,
        raw.bytes,
        3,
        None,
        1735689610.123456,
        1735689611.000001,
    )
    run = _codec.decode_run(row)
    assert type(run.id) is PgUUID and run.id == raw and hash(run.id) == hash(raw)
    assert run.replayed_from_run_id == raw
    assert run.inserted_at == datetime(2025, 1, 1, 0, 0, 10, 123456, tzinfo=UTC)
    assert run.updated_at == datetime(2025, 1, 1, 0, 0, 11, 1, tzinfo=UTC)
    assert _codec.decode_run(msgspec.json.encode(run)) == run
    assert json.loads(msgspec.json.encode(run))["id"] == str(raw)
