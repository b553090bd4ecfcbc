"""get_run(include_history=True) for a run with 50 step runs x 3 attempts.

Reports ops/s and p50 at each concurrency, the number of statements one call
sends (counted with asyncpg's query logger after warm-up: one statement is
one round trip), and, next to it, the textbook read of the same data with
three plain SELECTs (run, step runs, attempts) on one connection, decoded
into the same values (jsonb into dicts, attempts grouped by step run).
"""

from __future__ import annotations

from typing import Any, Final
from uuid import UUID

import asyncpg
import msgspec

from squidmesh import RunStore, Step, Trigger, Workflow

from . import _harness as h
from .bench_ops import RUN_COLUMNS, run_values

STEPS: Final = 50
ATTEMPTS: Final = 3
HISTORY_WORKFLOW: Final = Workflow(
    "bench.history",
    triggers=[Trigger("manual")],
    steps=[
        Step(f"step_{i:02d}", after=[f"step_{i - 1:02d}"] if i > 1 else [])
        for i in range(1, STEPS + 1)
    ],
)

SQL_FILL: Final = """\
WITH s AS (
    INSERT INTO squidmesh.step_runs
        (id, run_id, step, kind, status, input, output, inserted_at, updated_at)
    SELECT gen_random_uuid(), $1, 'step_' || lpad(g::text, 2, '0'), 'step', 'completed',
           jsonb_build_object('n', g, 'source', 's3://bucket/key-' || g),
           jsonb_build_object('rows', g * 100, 'ok', true),
           now() + g * interval '1 second', now() + g * interval '1 second'
    FROM generate_series(1, $2::int) AS g
    RETURNING id, inserted_at
)
INSERT INTO squidmesh.step_attempts
    (id, step_run_id, attempt_number, status, error, inserted_at, updated_at)
SELECT gen_random_uuid(), s.id, a,
       CASE WHEN a < $3::int THEN 'failed' ELSE 'completed' END,
       CASE WHEN a < $3::int THEN jsonb_build_object('message', 'timeout', 'attempt', a) END,
       s.inserted_at + a * interval '10 milliseconds',
       s.inserted_at + a * interval '10 milliseconds'
FROM s, generate_series(1, $3::int) AS a"""

SQL_BASE_RUN: Final = f"SELECT {RUN_COLUMNS} FROM squidmesh.runs WHERE id = $1"
SQL_BASE_STEPS: Final = """\
SELECT id, step, status, input, output, last_error, kind, manual, inserted_at, updated_at
FROM squidmesh.step_runs WHERE run_id = $1 ORDER BY inserted_at, id"""
SQL_BASE_ATTEMPTS: Final = """\
SELECT a.step_run_id, a.id, a.attempt_number, a.status, a.error, a.inserted_at, a.updated_at
FROM squidmesh.step_attempts a
JOIN squidmesh.step_runs s ON s.id = a.step_run_id
WHERE s.run_id = $1 ORDER BY a.step_run_id, a.attempt_number"""
_json: Final = msgspec.json.decode


def _opt(text: str | None) -> object:
    return None if text is None else _json(text)


async def _baseline(pool: asyncpg.Pool, run_id: UUID) -> object:
    """Three plain SELECTs on one connection, decoded into the values
    squidmesh returns: the run, its step runs in order (jsonb decoded), each
    with its attempts in order (grouped by step run)."""
    async with pool.acquire() as conn:
        run = await conn.fetchrow(SQL_BASE_RUN, run_id)
        steps = await conn.fetch(SQL_BASE_STEPS, run_id)
        attempts = await conn.fetch(SQL_BASE_ATTEMPTS, run_id)
    by_step: dict[UUID, list[tuple[object, ...]]] = {}
    for a in attempts:
        by_step.setdefault(a[0], []).append((a[1], a[2], a[3], _opt(a[4]), a[5], a[6]))
    step_runs = [
        (
            s[0],
            s[1],
            s[2],
            _json(s[3]),
            _opt(s[4]),
            _opt(s[5]),
            s[6],
            _opt(s[7]),
            by_step.get(s[0], []),
            s[8],
            s[9],
        )
        for s in steps
    ]
    return None if run is None else run_values(run), step_runs


async def run(dsn: str, calls: int, live: h.LiveLine, rounds: int = 4) -> dict[str, Any]:
    """Time the history read; ``{"available": False}`` while it is not implemented."""
    pool = await h.open_pool(dsn)
    try:
        store = RunStore(pool, workflows=[HISTORY_WORKFLOW])
        created = await store.create_run("bench.history", {})
        await pool.execute(SQL_FILL, created.id, STEPS, ATTEMPTS)
        await pool.execute("ANALYZE")
        try:
            full = await store.get_run(created.id, include_history=True)
        except NotImplementedError as exc:
            return {"available": False, "reason": str(exc)}
        step_runs = full.step_runs or []
        shape = {
            "step_runs": len(step_runs),
            "attempts": sum(len(s.attempts) for s in step_runs),
            "steps": len(full.steps or []),
        }
        statements = await _count(dsn, created.id)
        result: dict[str, Any] = {"available": True, "shape": shape, "statements": statements}
        rows = []
        for conc in (1, 16):
            items = [created.id] * calls

            async def squid(uid: UUID) -> object:
                return await store.get_run(uid, include_history=True)

            async def base(uid: UUID) -> object:
                return await _baseline(pool, uid)

            live.start(f"history c={conc} warm-up", 2 * max(50, 4 * conc))
            await h.timed(squid, items[: max(50, 4 * conc)], conc, live)
            await h.timed(base, items[: max(50, 4 * conc)], conc, live)
            live.start(f"history c={conc}", 2 * calls)
            rows += await h.compare(
                ("baseline: 3 SELECTs + decode (run, step runs, attempts)", base),
                ("squidmesh get_run(include_history=True)", squid),
                items,
                conc,
                live,
                rounds,
            )
        result["rows"] = rows
        return result
    finally:
        await pool.close()


async def _count(dsn: str, run_id: UUID) -> dict[str, Any]:
    counter = h.StatementCounter()
    pool = await h.open_pool(dsn, size=1, init=counter.init)
    try:
        store = RunStore(pool, workflows=[HISTORY_WORKFLOW])
        for _ in range(2):
            await store.get_run(run_id, include_history=True)
        counter.reset()
        await store.get_run(run_id, include_history=True)
        squid = counter.count
        squid_queries = list(counter.queries)
        await _baseline(pool, run_id)
        counter.reset()
        await _baseline(pool, run_id)
        base = counter.count
    finally:
        await pool.close()
    return {"squidmesh": squid, "squidmesh_queries": squid_queries, "baseline": base}


def describe(result: dict[str, Any]) -> str:
    if not result.get("available"):
        return f"history: get_run(include_history=True) not measured: {result.get('reason')}"
    shape = result["shape"]
    stmts = result["statements"]
    head = (
        f"history: one run with {shape['step_runs']} step runs x "
        f"{shape['attempts'] // max(1, shape['step_runs'])} attempts ({shape['steps']} declared "
        f"steps); statements per call: squidmesh {stmts['squidmesh']}, "
        f"textbook {stmts['baseline']}"
    )
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
    return head + "\n" + h.table(("conc", "variant", "ops/s", "p50 ms", "p99 ms", "ratio"), rows)
