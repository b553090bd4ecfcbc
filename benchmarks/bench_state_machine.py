"""What the database-enforced state machine costs ``transition_run``.

``python -m benchmarks.bench_state_machine [--dsn URL] [--runs N] [--rounds R]``

The runs_write trigger does four things on every UPDATE of a run: bump the
version, stamp updated_at, refuse an illegal status change and append a status
change to the transition log. This times ``transition_run`` (runs moving
running <-> retrying) with the trigger as shipped and with the same trigger
minus the legality check, in alternating rounds on one server and one pool,
and prints the ratio. The variant is cut from the shipped file's text (the
log's insert stays in it), so the ratio measures the check alone and follows
the file when it changes. The shipped body is put back at the end.
``benchmarks/bench_feed.py`` uses ``run`` with its own variants (the log's cost).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import sys
from typing import Any

import asyncpg

import squidmesh
from squidmesh import RunStore, Workflow
from squidmesh._sql import sql_root

from . import _harness as h

_WORKFLOW = Workflow(
    "bench.state_machine", triggers=[squidmesh.Trigger("manual")], steps=[squidmesh.Step("work")]
)


def _shipped() -> str:
    return sql_root().joinpath("functions", "runs_write.sql").read_text(encoding="utf-8")


# Where the legality check begins in the shipped body, and the statement that
# follows it (the log's insert, which the variant keeps).
_CHECK_START = "legal := CASE"
_CHECK_END = "-- squidmesh:log"


def without_check(body: str) -> str:
    """``body`` minus the legality check: the lines from the ``legal := CASE``
    assignment to the log's marker (the CASE and the IF that raises SQM01).
    Everything else, the log's insert included, is kept as shipped."""
    start = body.index(_CHECK_START)
    start = body.rindex("\n", 0, start) + 1
    end = body.index(_CHECK_END, start)
    end = body.rindex("\n", 0, end) + 1
    cut = body[:start] + body[end:]
    if "SQM01" in cut.split("$$")[1] or body[start:end].count("END IF;") != 1:
        raise RuntimeError(
            "runs_write.sql changed shape: benchmarks/bench_state_machine.py cannot cut "
            "the legality check out of it"
        )
    return cut


async def run(
    dsn: str,
    runs: int,
    rounds: int,
    concurrencies: list[int],
    variants: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Time transition_run under each body of runs_write in ``variants`` (name:
    the file's text; default: as shipped, and without the legality check), in
    alternating rounds; the ratio is the first variant's over the second's."""
    if variants is None:
        shipped = _shipped()
        variants = {
            "shipped (version, updated_at, legality, log)": shipped,
            "without legality": without_check(shipped),
        }
    rows: list[dict[str, Any]] = []
    pool = await h.open_pool(dsn)
    try:
        store = RunStore(pool, workflows=[_WORKFLOW])
        ids = []
        for _ in range(max(concurrencies) * 8):
            created = await store.create_run(_WORKFLOW, {})
            ids.append((await store.transition_run(created.id, "running")).id)
        state = dict.fromkeys(ids, "running")

        async def toggle(run_id: Any) -> None:
            to = "retrying" if state[run_id] == "running" else "running"
            state[run_id] = to
            await store.transition_run(run_id, to)

        try:
            for concurrency in concurrencies:
                timings: dict[str, list[h.Timing]] = {name: [] for name in variants}
                # Each task owns its runs, so no two tasks move one run at once.
                items = list(itertools.islice(itertools.cycle(ids), runs // rounds))
                for r in range(rounds):
                    order = list(variants.items())
                    for name, body in order if r % 2 == 0 else order[::-1]:
                        await pool.execute(body)
                        # A checkpoint now rather than in the middle of a round,
                        # and the same full-page writes at the start of each.
                        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
                            await pool.execute("CHECKPOINT")
                        per_task = [items[i::concurrency] for i in range(concurrency)]
                        timings[name].append(await _timed_partitioned(toggle, per_task))
                names = list(variants)
                ratios = [
                    s.ops_per_s / b.ops_per_s
                    for s, b in zip(timings[names[0]], timings[names[1]], strict=True)
                ]
                for name in names:
                    summary = h.Summary.of(timings[name])
                    rows.append(
                        {
                            "concurrency": concurrency,
                            "trigger": name,
                            "ops_per_s": round(summary.ops_per_s, 1),
                            "p50_ms": round(summary.p50_ms, 4),
                            "p99_ms": round(summary.p99_ms, 4),
                            "ratio": round(h.median(ratios), 3) if name == names[0] else None,
                        }
                    )
        finally:
            await pool.execute(_shipped())
    finally:
        await pool.close()
    return rows


async def _timed_partitioned(fn: Any, per_task: list[list[Any]]) -> h.Timing:
    """Like ``_harness.timed``, but each task walks its own items (its own runs)."""
    clock = asyncio.get_running_loop().time
    latencies: list[int] = []

    async def worker(items: list[Any]) -> None:
        for item in items:
            t0 = clock()
            await fn(item)
            latencies.append(int((clock() - t0) * 1e9))

    start = clock()
    async with asyncio.TaskGroup() as group:
        for items in per_task:
            group.create_task(worker(items))
    return h.Timing(int((clock() - start) * 1e9), latencies)


def describe(rows: list[dict[str, Any]]) -> str:
    """The rows as a table, with what they compare."""
    return (
        "transition_run (running <-> retrying) with the runs_write trigger as shipped,"
        " as a ratio to the same trigger without the legality check:\n"
        + h.table(
            ["conc", "trigger", "ops/s", "p50 ms", "ratio"],
            [
                [r["concurrency"], r["trigger"], r["ops_per_s"], r["p50_ms"], r["ratio"] or "-"]
                for r in rows
            ],
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_state_machine")
    parser.add_argument("--dsn", help="a server (default: an embedded durable one)")
    parser.add_argument("--runs", type=int, default=6000, help="transitions per variant")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--concurrency", default="1,16")
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    async def go() -> list[dict[str, Any]]:
        async with h.server(args.dsn) as (admin_dsn, _), h.fresh_database(admin_dsn, "sm") as dsn:
            return await run(dsn, args.runs, args.rounds, concurrencies)

    print(describe(asyncio.run(go())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
