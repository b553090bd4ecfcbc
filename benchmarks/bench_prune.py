"""prune_runs over a table of finished runs, in runs deleted per second.

The table is bulk-loaded in SQL: ``rows`` finished runs (completed, failed,
cancelled) last written 60 days ago, each with two step runs of one attempt
each (what the cascades delete with it), plus ``rows / 10`` runs that must
survive: running ones as old, and finished ones written an hour ago. Then
the table is vacuumed and analysed, ``prune_runs(older_than=30 days,
dry_run=True)`` is timed, then the prune itself (default ``batch_size``), and
the report is checked against what was loaded. The plan of the first batch
statement is printed (EXPLAIN without ANALYZE: it would delete).
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Final

from squidmesh import RunStore
from squidmesh._retention import TERMINAL
from squidmesh._sql import Q

from . import _harness as h

CHUNK: Final = 20_000
OLDER_THAN: Final = dt.timedelta(days=30)
BATCH_SIZE: Final = 1000

# $1..$2: the range of g; $3: the status expression's choice of statuses;
# $4: how long ago the runs were written.
SQL_LOAD_RUNS: Final = """\
INSERT INTO squidmesh.runs
    (id, workflow, trigger, status, payload, context, current_step, inserted_at, updated_at)
SELECT gen_random_uuid(),
       'bench.prune_' || (g % 10),
       'manual',
       ($3::text[])[1 + g % cardinality($3::text[])],
       jsonb_build_object('account_id', 'acct-' || g, 'posted_on', '2025-06-01'),
       jsonb_build_object('cursor', g),
       NULL,
       now() - $4::interval - interval '1 hour',
       now() - $4::interval
FROM generate_series($1::int, $2::int) AS g
RETURNING id"""
# Two step runs of one attempt each for every run of $1.
SQL_LOAD_STEPS: Final = """\
WITH steps AS (
    INSERT INTO squidmesh.step_runs (id, run_id, step, status, inserted_at, updated_at)
    SELECT gen_random_uuid(), r.id, s.step, 'completed', r.inserted_at, r.updated_at
    FROM squidmesh.runs r, (VALUES ('extract'), ('load')) AS s(step)
    WHERE r.id = ANY($1::uuid[])
    RETURNING id, inserted_at, updated_at
)
INSERT INTO squidmesh.step_attempts (id, step_run_id, attempt_number, status, inserted_at,
                                     updated_at)
SELECT gen_random_uuid(), steps.id, 1, 'completed', steps.inserted_at, steps.updated_at
FROM steps"""


async def run(dsn: str, rows: int, live: h.LiveLine) -> dict[str, Any]:
    """Load the table, time the dry run and the prune, check the report."""
    pool = await h.open_pool(dsn)
    try:
        survivors = rows // 10
        live.start(f"prune: loading {rows:,} finished runs (+ step runs, attempts)", rows)
        terminal = [s.value for s in TERMINAL]
        for start in range(1, rows + 1, CHUNK):
            stop = min(rows, start + CHUNK - 1)
            async with pool.acquire() as conn, conn.transaction():
                ids = await conn.fetch(SQL_LOAD_RUNS, start, stop, terminal, dt.timedelta(days=60))
                await conn.execute(SQL_LOAD_STEPS, [r[0] for r in ids])
            live.done = stop
        await live.stop()
        # Survivors: as old but still running, and finished but written an hour ago.
        half = survivors // 2
        await pool.execute(SQL_LOAD_RUNS, 1, half, ["running"], dt.timedelta(days=60))
        await pool.execute(SQL_LOAD_RUNS, 1, survivors - half, terminal, dt.timedelta(hours=1))
        await pool.execute(
            "VACUUM (ANALYZE) squidmesh.runs, squidmesh.step_runs, squidmesh.step_attempts"
        )
        cutoff = await pool.fetchval("SELECT clock_timestamp()") - OLDER_THAN
        plan = "\n".join(
            r[0]
            for r in await pool.fetch(
                "EXPLAIN " + Q["lock_and_prune_runs"],
                BATCH_SIZE,
                None,
                None,
                "completed",
                cutoff,
                None,
            )
        )
        store = RunStore(pool)

        t0 = time.perf_counter()
        dry = await store.prune_runs(older_than=OLDER_THAN, dry_run=True)
        dry_s = time.perf_counter() - t0

        h.status(f"prune: deleting {rows:,} runs in batches of {BATCH_SIZE} ...")
        t0 = time.perf_counter()
        report = await store.prune_runs(older_than=OLDER_THAN, batch_size=BATCH_SIZE)
        prune_s = time.perf_counter() - t0

        left = await pool.fetchval("SELECT count(*) FROM squidmesh.runs")
        left_steps = await pool.fetchval("SELECT count(*) FROM squidmesh.step_runs")
        ok = (
            report.runs == dry.runs == rows
            and report.step_runs == dry.step_runs == 2 * rows
            and report.attempts == dry.attempts == 2 * rows
            and left == survivors
            and left_steps == 0
        )
        return {
            "rows": rows,
            "survivors": survivors,
            "batch_size": BATCH_SIZE,
            "report": {
                "runs": report.runs,
                "step_runs": report.step_runs,
                "attempts": report.attempts,
                "by_status": {str(k): v for k, v in report.by_status.items()},
            },
            "checked": ok,
            "dry_run_s": round(dry_s, 3),
            "prune_s": round(prune_s, 3),
            "runs_per_s": rows / prune_s if prune_s else 0.0,
            "rows_per_s": 5 * rows / prune_s if prune_s else 0.0,
            "plan": plan,
        }
    finally:
        await pool.close()


def describe(result: dict[str, Any]) -> str:
    r = result["report"]
    lines = [
        f"prune_runs(older_than=30 days, batch_size={result['batch_size']}) of "
        f"{result['rows']:,} finished runs, each with 2 step runs of 1 attempt "
        f"({result['survivors']:,} other runs must stay)",
        f"report: {r['runs']:,} runs, {r['step_runs']:,} step runs, {r['attempts']:,} attempts "
        f"{r['by_status']}; matches what was loaded and left the survivors: {result['checked']}",
        "plan of one batch (EXPLAIN):",
        *("    " + line for line in result["plan"].splitlines()),
        h.table(
            ("call", "seconds", "runs/s", "rows/s (runs + step runs + attempts)"),
            [
                ("prune_runs(dry_run=True)", result["dry_run_s"], None, None),
                ("prune_runs", result["prune_s"], result["runs_per_s"], result["rows_per_s"]),
            ],
        ),
    ]
    return "\n".join(lines)
