"""list_runs(workflow=, status=, limit=50) on a table of 1,000,000 runs.

The table is bulk-loaded in SQL (INSERT ... SELECT over generate_series, in
chunks so the progress line moves), vacuumed and analysed; 20 workflows x 8
statuses, most runs finished, as in a store that has been used for a while.
The plan of squidmesh's own query is printed with EXPLAIN (ANALYZE, BUFFERS),
and also its generic plan (the one a prepared statement may switch to after
five executions), then the call is timed next to a raw asyncpg
``SELECT <the run's columns> ... ORDER BY inserted_at DESC, id DESC LIMIT 50``
whose rows are decoded into the same values (jsonb into dicts).
"""

from __future__ import annotations

from typing import Any, Final

from squidmesh import RunStore
from squidmesh._queries import SQL

from . import _harness as h
from .bench_ops import RUN_COLUMNS, run_values

WORKFLOWS: Final = 20
TARGET_WORKFLOW: Final = "bench.list_7"
TARGET_STATUS: Final = "running"
INDEX: Final = "runs_workflow_status_inserted_idx"
CHUNK: Final = 100_000

SQL_LOAD: Final = """\
INSERT INTO squidmesh.runs
    (id, workflow, trigger, status, payload, context, current_step, inserted_at, updated_at)
SELECT gen_random_uuid(),
       'bench.list_' || (g % 20),
       'manual',
       (ARRAY['completed', 'completed', 'completed', 'completed', 'completed',
              'failed', 'cancelled', 'running', 'pending', 'paused'])[1 + (g / 20) % 10],
       jsonb_build_object('account_id', 'acct-' || g, 'posted_on', '2025-06-01'),
       jsonb_build_object('cursor', g),
       'load_invoice',
       timestamptz '2025-01-01 00:00:00+00' + g * interval '10 seconds',
       timestamptz '2025-01-01 00:00:00+00' + g * interval '10 seconds'
FROM generate_series($1::int, $2::int) AS g"""
SQL_BASELINE: Final = f"""\
SELECT {RUN_COLUMNS} FROM squidmesh.runs WHERE workflow = $1 AND status = $2
ORDER BY inserted_at DESC, id DESC LIMIT 50"""


async def run(dsn: str, rows: int, calls: int, live: h.LiveLine, rounds: int = 4) -> dict[str, Any]:
    """Load ``rows`` runs, show the plans, time list_runs against the raw SELECT."""
    pool = await h.open_pool(dsn)
    try:
        live.start(f"list: loading {rows:,} runs", rows)
        for start in range(1, rows + 1, CHUNK):
            stop = min(rows, start + CHUNK - 1)
            await pool.execute(SQL_LOAD, start, stop)
            live.done = stop
        await live.stop()
        await pool.execute("VACUUM (ANALYZE) squidmesh.runs")
        sql = SQL.list_runs_by_workflow_status
        # status, the (inserted_at, id) bound, created_after, limit, workflow
        args = (TARGET_STATUS, None, None, None, 50, TARGET_WORKFLOW)
        plan = "\n".join(r[0] for r in await pool.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args))
        generic = await _generic_plan(pool, sql, args)
        matching = await pool.fetchval(
            "SELECT count(*) FROM squidmesh.runs WHERE workflow = $1 AND status = $2",
            TARGET_WORKFLOW,
            TARGET_STATUS,
        )
        store = RunStore(pool)
        got = await store.list_runs(workflow=TARGET_WORKFLOW, status=TARGET_STATUS, limit=50)

        async def squid(_: object) -> object:
            return await store.list_runs(workflow=TARGET_WORKFLOW, status=TARGET_STATUS, limit=50)

        async def base(_: object) -> object:
            rows = await pool.fetch(SQL_BASELINE, TARGET_WORKFLOW, TARGET_STATUS)
            return [run_values(r) for r in rows]

        out_rows = []
        for conc in (1, 16):
            # Past five executions per connection, so a generic plan, if
            # PostgreSQL picks one, is what gets timed.
            warm = [None] * (16 * 8)
            live.start(f"list c={conc} warm-up", 2 * len(warm))
            await h.timed(squid, warm, 16, live)
            await h.timed(base, warm, 16, live)
            live.start(f"list c={conc}", 2 * calls)
            out_rows += await h.compare(
                ("baseline: SELECT ... LIMIT 50 + decode", base),
                ("squidmesh list_runs", squid),
                [None] * calls,
                conc,
                live,
                rounds,
            )
        return {
            "rows_in_table": rows,
            "matching_rows": matching,
            "returned": len(got),
            "filter": {"workflow": TARGET_WORKFLOW, "status": TARGET_STATUS, "limit": 50},
            "uses_index": INDEX in plan,
            "generic_plan_uses_index": None if generic is None else INDEX in generic,
            "plan": plan,
            "generic_plan": generic,
            "rows": out_rows,
        }
    finally:
        await pool.close()


async def _generic_plan(pool: Any, sql: str, args: tuple[object, ...]) -> str:
    """The plan a prepared statement uses once PostgreSQL settles on a generic plan."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"PREPARE bench_list AS {sql}")
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        values = ", ".join(_literal(a) for a in args)
        rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_list({values})")
        await conn.execute("DEALLOCATE bench_list")
    return "\n".join(r[0] for r in rows)


def _literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def describe(result: dict[str, Any]) -> str:
    f = result["filter"]
    lines = [
        f"list_runs(workflow={f['workflow']!r}, status={f['status']!r}, limit=50) on "
        f"{result['rows_in_table']:,} runs ({result['matching_rows']:,} match, "
        f"{result['returned']} returned); served by {INDEX}: {result['uses_index']}"
        + (
            ""
            if result["generic_plan_uses_index"] is None
            else f" (generic plan too: {result['generic_plan_uses_index']})"
        ),
        "EXPLAIN (ANALYZE, BUFFERS):",
        *("    " + line for line in result["plan"].splitlines()),
    ]
    if result["generic_plan"]:
        lines.append("EXPLAIN (ANALYZE, BUFFERS) with plan_cache_mode = force_generic_plan:")
        lines += ["    " + line for line in result["generic_plan"].splitlines()]
    rows = [
        (
            r["concurrency"],
            r["variant"],
            r["ops_per_s"],
            r["p50_ms"],
            r["p99_ms"],
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
        )
        for r in result["rows"]
    ]
    lines.append(h.table(("conc", "variant", "ops/s", "p50 ms", "p99 ms", "ratio"), rows))
    return "\n".join(lines)
