"""Nothing squidmesh runs resolves a name through the caller's search_path.

A schema listed before pg_catalog may hold a function, operator or type of
the same name as a built-in; PostgreSQL then picks the user's. Here a hostile
schema shadows what squidmesh's SQL uses (now, clock_timestamp, unnest, max,
json_agg, date_part, every =, <>, + and - between the types of its columns,
and the types text, jsonb, uuid, timestamptz, float8 as always-failing
domains) and the whole API runs under ``search_path = 'evil, pg_catalog'``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

import squidmesh
from squidmesh import RunStatus, RunStore
from squidmesh.progress import Transition
from tests.integration.workflows import INVOICE_REMINDER, WORKFLOWS

EVIL_TIME = datetime(2000, 1, 1, tzinfo=UTC)

_EVIL_SCHEMA = """
CREATE SCHEMA evil;
CREATE FUNCTION evil.now() RETURNS pg_catalog.timestamptz
    LANGUAGE sql AS $$ SELECT '2000-01-01 00:00:00+00'::pg_catalog.timestamptz $$;
CREATE FUNCTION evil.clock_timestamp() RETURNS pg_catalog.timestamptz
    LANGUAGE sql AS $$ SELECT '2000-01-01 00:00:00+00'::pg_catalog.timestamptz $$;
CREATE FUNCTION evil.unnest(anyarray) RETURNS SETOF anyelement
    LANGUAGE sql AS $$ SELECT x FROM pg_catalog.unnest($1) x LIMIT 0 $$;
CREATE FUNCTION evil.date_part(pg_catalog.text, pg_catalog.interval) RETURNS pg_catalog.float8
    LANGUAGE sql AS $$ SELECT -1.0::pg_catalog.float8 $$;
CREATE AGGREGATE evil.max(pg_catalog.int4)
    (SFUNC = pg_catalog.int4smaller, STYPE = pg_catalog.int4);
CREATE FUNCTION evil.fail_agg(pg_catalog.json, anyelement) RETURNS pg_catalog.json
    LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'evil.json_agg used'; END $$;
CREATE AGGREGATE evil.json_agg(anyelement) (SFUNC = evil.fail_agg, STYPE = pg_catalog.json);
DO $$
DECLARE
    o record;
    n int := 0;
BEGIN
    FOR o IN
        SELECT op.oprname, op.oprleft::pg_catalog.regtype AS l,
               op.oprright::pg_catalog.regtype AS r, op.oprresult::pg_catalog.regtype AS res
        FROM pg_catalog.pg_operator op
        WHERE op.oprnamespace = 'pg_catalog'::pg_catalog.regnamespace
          AND op.oprname IN ('=', '<>', '+', '-')
          AND op.oprleft IN ('uuid'::pg_catalog.regtype, 'text'::pg_catalog.regtype,
                             'int8'::pg_catalog.regtype, 'int4'::pg_catalog.regtype,
                             'timestamptz'::pg_catalog.regtype, 'jsonb'::pg_catalog.regtype)
          AND op.oprright IN ('uuid'::pg_catalog.regtype, 'text'::pg_catalog.regtype,
                              'int8'::pg_catalog.regtype, 'int4'::pg_catalog.regtype,
                              'timestamptz'::pg_catalog.regtype, 'jsonb'::pg_catalog.regtype)
    LOOP
        n := n + 1;
        EXECUTE pg_catalog.format(
            'CREATE FUNCTION evil.op_%s(%s, %s) RETURNS %s LANGUAGE plpgsql AS '
            '$f$ BEGIN RAISE EXCEPTION ''evil operator %s used''; END $f$',
            n, o.l, o.r, o.res, o.oprname);
        EXECUTE pg_catalog.format(
            'CREATE OPERATOR evil.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = evil.op_%s)',
            o.oprname, o.l, o.r, n);
    END LOOP;
END $$;
CREATE DOMAIN evil.text AS pg_catalog.text CHECK (false);
CREATE DOMAIN evil.jsonb AS pg_catalog.jsonb CHECK (false);
CREATE DOMAIN evil.uuid AS pg_catalog.uuid CHECK (false);
CREATE DOMAIN evil.timestamptz AS pg_catalog.timestamptz CHECK (false);
CREATE DOMAIN evil.float8 AS pg_catalog.float8 CHECK (false);
"""


@pytest.fixture
async def evil_pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_EVIL_SCHEMA)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=4, server_settings={"search_path": "evil, pg_catalog"}
    )
    try:
        # The trap works: unqualified names now resolve to the hostile schema.
        assert await pool.fetchval("SELECT now()") == EVIL_TIME
        with pytest.raises(asyncpg.RaiseError, match="evil operator"):
            await pool.fetchval("SELECT 'a'::pg_catalog.text = 'a'::pg_catalog.text")
        yield pool
    finally:
        await pool.close()


def _recent(at: datetime) -> bool:
    return abs(datetime.now(UTC) - at) < timedelta(minutes=5)


async def test_the_whole_api_ignores_a_hostile_search_path(evil_pool: asyncpg.Pool) -> None:
    events: list[Any] = []
    store = RunStore(evil_pool, workflows=WORKFLOWS, listeners=[events.append])
    assert await squidmesh.migrate(evil_pool) == []

    run = await store.create_run(INVOICE_REMINDER, {"account_id": "a"})
    assert _recent(run.inserted_at) and _recent(run.updated_at)
    assert (await store.get_run(run.id)).id == run.id
    assert [r.id for r in await store.list_runs()] == [run.id]
    assert [r.id for r in await store.list_runs(workflow=INVOICE_REMINDER.name)] == [run.id]
    assert [r.id for r in await store.list_runs(status="pending", limit=5)] == [run.id]
    assert [
        r.id for r in await store.list_runs(workflow=INVOICE_REMINDER.name, status="pending")
    ] == [run.id]

    running = await store.transition_run(run.id, RunStatus.RUNNING, current_step="approve")
    assert _recent(running.updated_at) and running.version == 2
    with pytest.raises(squidmesh.InvalidTransition):
        await store.transition_run(run.id, RunStatus.PENDING)
    updated = await store.update_run(run.id, context={"n": 1})
    assert _recent(updated.updated_at) and updated.version == 3

    step_run = await store.begin_step(run.id, "approve", {"x": 1})
    assert step_run.step == "approve" and _recent(step_run.inserted_at)
    first = await store.begin_attempt(step_run.id)
    second = await store.begin_attempt(step_run.id)
    assert (first.attempt_number, second.attempt_number) == (1, 2)
    await store.fail_attempt(first.id, {"e": 1})
    await store.record_resume(step_run.id, {"to": "send_email"})
    paused = await store.pause_run(run.id, step_run.id, second.id)
    assert paused.run.status is RunStatus.PAUSED
    cancelled = await store.cancel_run(run.id)
    assert cancelled.status is RunStatus.CANCELLED
    failed = [e for e in events if isinstance(e, squidmesh.StepFailed)]
    assert failed and failed[-1].duration_s is not None and failed[-1].duration_s >= 0

    history = await store.get_run(run.id, include_history=True)
    assert history.step_runs is not None and len(history.step_runs[0].attempts) == 2
    assert all(_recent(a.updated_at) for a in history.step_runs[0].attempts)

    replay = await store.replay_run(run.id)
    assert replay.replayed_from_run_id == run.id and replay.current_step == "load_invoice"
    load = await store.schedule_step(replay.id, "load_invoice")
    load = await store.begin_step(replay.id, "load_invoice")
    assert load.status == "running"
    attempt = await store.begin_attempt(load.id)
    await store.complete_attempt(attempt.id)
    await store.complete_step(load.id, {"ok": True})
    approve = await store.begin_step(replay.id, "approve")
    done = await store.complete_manual_step(approve.id, {"ok": True}, {"type": "approved"})
    assert done.status == "completed"
    await store.fail_step((await store.begin_step(replay.id, "send_email")).id, {"e": 1})

    moved = await store.transition_run(replay.id, RunStatus.RUNNING)
    progressed = await store.progress_run(
        moved.id, lambda r: {"context": {"done": True}}, Transition(RunStatus.COMPLETED)
    )
    assert progressed is not None and progressed.status is RunStatus.COMPLETED
    assert _recent(progressed.updated_at)

    async def dispatch(conn: Any, current: Any) -> None:
        await conn.execute("SELECT 1")

    other = await store.create_and_dispatch_run(INVOICE_REMINDER, {"account_id": "b"}, dispatch)
    bumped = await store.update_run_with(other.id, lambda r: {"context": {"k": 1}})
    assert bumped.version == 2 and _recent(bumped.updated_at)
    assert await store.cancel_run(other.id)

    # The bulk operations (sql/queries/retention.sql).
    waiting = await store.create_run(INVOICE_REMINDER, {"account_id": "c"})
    stuck = await store.create_run(INVOICE_REMINDER, {"account_id": "d"})
    await store.transition_run(stuck.id, RunStatus.RUNNING)
    assert [r.id for r in await store.cancel_runs(status="pending")] == [waiting.id]
    swept = await store.sweep_stale_runs(
        status="running", idle_for=timedelta(0), to_status="failed"
    )
    assert [r.id for r in swept] == [stuck.id]
    dry = await store.prune_runs(older_than=timedelta(0), dry_run=True)
    assert (await store.prune_runs(older_than=timedelta(0))).runs == dry.runs == 5
