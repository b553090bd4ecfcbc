"""The dashboard's page load times (server time) for a workflow with 1M runs.

    python -m benchmarks.bench_dashboard [--dsn DSN] [--runs 1000000] [--calls 30]

Loads ``--runs`` runs of one workflow in SQL (one transition-log row each,
as the runs' trigger writes it; statuses mixed, one run every 5 seconds
back from now, so the last 24 hours hold 17,280 of them), vacuums and
analyses, then serves ``dashboard_router`` from an app whose store is opened
by ``squidmesh.fastapi.lifespan`` and asks for each page ``--calls`` times
over httpx's ASGI transport: the time measured is the server's (routing,
the store's statements, rendering), with no network and no browser. Each
page is asked for a few times first (prepared statements, plans).

Without ``--dsn`` (or ``$SQUIDMESH_DSN``) an embedded PostgreSQL is started
with its durable settings; the database is created for the run and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
from fastapi import FastAPI

from squidmesh import Field, RunStore, Step, Transition, Trigger, Workflow
from squidmesh.fastapi import dashboard_router, lifespan

from . import _harness as h

WORKFLOW: Final = "bench.dashboard"
CHUNK: Final = 100_000
DASHBOARD: Final = Workflow(
    WORKFLOW,
    triggers=[
        Trigger("manual", payload=[Field("account_id", str)]),
        Trigger("nightly", payload=[Field("account_id", str, default="all")], cron="0 3 * * *"),
    ],
    steps=[Step("load"), Step("approve", kind="approval"), Step("send"), Step("reject")],
    transitions=[
        Transition("load", on="ok", to="approve"),
        Transition("approve", on="ok", to="send"),
        Transition("approve", on="error", to="reject"),
        Transition("send", on="ok", to="complete"),
        Transition("reject", on="ok", to="complete"),
    ],
)

SQL_LOAD: Final = """\
INSERT INTO squidmesh.runs
    (id, workflow, trigger, status, payload, context, current_step, inserted_at, updated_at)
SELECT gen_random_uuid(),
       $3,
       CASE WHEN g % 7 = 0 THEN 'nightly' ELSE 'manual' END,
       (ARRAY['completed', 'completed', 'completed', 'completed', 'completed',
              'failed', 'cancelled', 'running', 'pending', 'paused'])[1 + g % 10],
       jsonb_build_object('account_id', 'acct-' || g),
       jsonb_build_object('cursor', g),
       'load',
       $4::timestamptz - g * interval '5 seconds',
       $4::timestamptz - g * interval '5 seconds' + interval '3 seconds'
FROM generate_series($1::int, $2::int) AS g"""


async def _story(store: RunStore) -> str:
    """A run with a history to draw: retried, approved, completed."""
    run = await store.create_run(WORKFLOW, {"account_id": "acct-story"})
    await store.transition_run(run.id, "running")
    load = await store.begin_step(run.id, "load", {})
    for ok in (False, False, True):
        attempt = await store.begin_attempt(load.id)
        if ok:
            await store.complete_attempt(attempt.id)
        else:
            await store.fail_attempt(attempt.id, {"message": "timeout"})
    await store.complete_step(load.id, {})
    approve = await store.begin_step(run.id, "approve", {})
    attempt = await store.begin_attempt(approve.id)
    await store.pause_run(run.id, approve.id, attempt.id)
    await store.complete_manual_step(approve.id, {}, {"type": "approved", "actor": "ops"})
    await store.transition_run(run.id, "running")
    send = await store.begin_step(run.id, "send", {})
    await store.complete_attempt((await store.begin_attempt(send.id)).id)
    await store.complete_step(send.id, {})
    await store.transition_run(run.id, "completed")
    for _ in range(3):
        await store.replay_run(run.id)
    return str(run.id)


async def _time_page(
    http: httpx.AsyncClient, path: str, calls: int, live: h.LiveLine
) -> dict[str, Any]:
    for _ in range(3):  # warm-up: prepared statements, plans, template cache
        response = await http.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
    samples = []
    live.start(f"GET {path[:40]}", calls)
    for i in range(calls):
        started = time.perf_counter()
        response = await http.get(path)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
        live.done = i + 1
    await live.stop()
    samples.sort()
    return {
        "median_ms": round(h.median(samples), 1),
        "p95_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.95))], 1),
        "min_ms": round(samples[0], 1),
        "bytes": len(response.content),
    }


async def run(dsn: str, rows: int, calls: int, live: h.LiveLine) -> dict[str, Any]:
    """Load ``rows`` runs of one workflow; time each page of the dashboard."""
    now = datetime.now(UTC)
    pool = await h.open_pool(dsn, size=4)
    try:
        live.start(f"dashboard: loading {rows:,} runs", rows)
        for start in range(1, rows + 1, CHUNK):
            stop = min(rows, start + CHUNK - 1)
            await pool.execute(SQL_LOAD, start, stop, WORKFLOW, now)
            live.done = stop
        await live.stop()
        h.status("vacuum (analyze) ...")
        await pool.execute("VACUUM (ANALYZE) squidmesh.runs")
        await pool.execute("VACUUM (ANALYZE) squidmesh.run_transitions")
    finally:
        await pool.close()

    app = FastAPI()
    app.include_router(dashboard_router(prefix="/dashboard", actions=True))
    async with lifespan(dsn, workflows=[DASHBOARD])(app):
        store: RunStore = app.state.squidmesh
        story = await _story(store)
        plain = (await store.page_runs(workflow=WORKFLOW, status="failed", limit=1)).runs[0].id
        cursor: str | None = None
        for _ in range(9):
            page = await store.page_runs(workflow=WORKFLOW, limit=50, cursor=cursor)
            cursor = page.next_cursor
        assert cursor is not None
        since = (now.replace(microsecond=0) - timedelta(days=1)).isoformat()
        pages: list[tuple[str, str, dict[str, Any]]] = [
            ("runs: the workflow, all time (counts over every run)", "/", {"workflow": WORKFLOW}),
            (
                "runs: the workflow, last 24 h",
                "/",
                {"workflow": WORKFLOW, "created_after": since},
            ),
            (
                "runs: the workflow, status failed, all time",
                "/",
                {"workflow": WORKFLOW, "status": "failed"},
            ),
            (
                "runs: the workflow, page 10 (cursor)",
                "/",
                {"workflow": WORKFLOW, "cursor": cursor},
            ),
            ("runs: no filter, all time", "/", {}),
            ("run: with its history (3 attempts, approval, 3 replays)", f"/runs/{story}", {}),
            ("run: one of the loaded runs (no history)", f"/runs/{plain}", {}),
            ("workflows", "/workflows", {}),
        ]
        transport = httpx.ASGITransport(app=app)
        results = []
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench/dashboard", timeout=120
        ) as http:
            for label, path, params in pages:
                url = path + (f"?{httpx.QueryParams(params)}" if params else "")
                results.append({"page": label, **await _time_page(http, url, calls, live)})
        counts: list[float] = []
        for _ in range(5):
            started = time.perf_counter()
            await store.count_runs_by_status(workflow=WORKFLOW)
            counts.append((time.perf_counter() - started) * 1000)
    return {
        "runs": rows,
        "calls": calls,
        "pages": results,
        "count_runs_by_status_all_time_ms": round(h.median(counts), 1),
    }


def describe(result: dict[str, Any]) -> str:
    lines = [
        f"Dashboard page load, server time (ASGI, no network), one workflow with "
        f"{result['runs']:,} runs; {result['calls']} calls each:",
        "",
        h.table(
            ("page", "median ms", "p95 ms", "min ms", "HTML bytes"),
            [
                (p["page"], p["median_ms"], p["p95_ms"], p["min_ms"], p["bytes"])
                for p in result["pages"]
            ],
        ),
        "",
        f"count_runs_by_status(workflow) over all {result['runs']:,} runs alone: "
        f"{result['count_runs_by_status_all_time_ms']} ms (median of 5).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None, *, out: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_dashboard")
    parser.add_argument("--dsn", help="a server's admin DSN (default: $SQUIDMESH_DSN, or embedded)")
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs of the workflow")
    parser.add_argument("--calls", type=int, default=30, help="timed requests per page")
    args = parser.parse_args(argv)

    async def go() -> dict[str, Any]:
        async with h.server(args.dsn) as (admin, source):
            h.status(f"server: {source}")
            async with h.fresh_database(admin, "dashboard") as dsn:
                return await run(dsn, args.runs, args.calls, h.LiveLine())

    out(describe(asyncio.run(go())))


if __name__ == "__main__":
    main()
