"""How many cron triggers one scheduler process serves: ``fire_due_triggers`` timed.

``python -m benchmarks.bench_scheduler [--dsn URL] [--workflows 100] [--triggers 100] [--rounds 3]``

A store knows ``workflows x triggers`` cron triggers (10,000 by default), all
hourly or sparser, in UTC and in zones with daylight saving (Europe/Berlin,
America/New_York, Asia/Kolkata's half-hour offset). Timed, on one pool:

- **first sight**: the first call, on the database clock; every trigger is
  seen for the first time and fires its latest tick (no state to read: 10,000
  runs and 10,000 state rows written);
- **all due**: a call at the next hour (an explicit ``now``) where every
  trigger is due again: the steady state of a tick, with its state to read
  (one query), the ticks to compute, the runs and the state to write (one
  statement per 1,000 runs), ``rounds`` times;
- **none due, warm**: calls between two ticks: the process knows when each
  trigger is next due, so a call reads nothing but the clock (explicit
  ``now``: no round trip at all; database clock: one);
- **none due, cold**: the same call from a new store (a restarted process):
  it reads the state of every trigger once.

"triggers/s" is the triggers of a call over its wall time: for *all due*,
how many due triggers one process turns into runs per second; CPU is the
process's CPU time in that call (cron arithmetic, payloads, decoding the
runs), the rest is the database.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import datetime, timedelta
from typing import Any

from squidmesh import RunStore, Step, Trigger, Workflow

from . import _harness as h

# (cron, timezone): each due at every hour's start in UTC (Kolkata is UTC+05:30,
# so its :30 is UTC's :00).
_SCHEDULES = (
    ("0 * * * *", None),
    ("0 * * * *", "Europe/Berlin"),
    ("0 * * * *", "America/New_York"),
    ("30 * * * *", "Asia/Kolkata"),
    ("@hourly", "Etc/UTC"),
)


def workflows(count: int, per_workflow: int) -> list[Workflow]:
    """``count`` workflows of ``per_workflow`` cron triggers each, on the hour."""
    return [
        Workflow(
            f"bench.cron.{w:03}",
            triggers=[
                Trigger(f"t{t:03}", cron=cron, timezone=timezone)
                for t, (cron, timezone) in (
                    (t, _SCHEDULES[(w + t) % len(_SCHEDULES)]) for t in range(per_workflow)
                )
            ],
            steps=[Step("work")],
        )
        for w in range(count)
    ]


async def _timed(store: RunStore, now: datetime | None) -> tuple[float, float, int]:
    """(wall ms, CPU ms, runs created) of one fire_due_triggers."""
    cpu, start = time.process_time(), time.perf_counter()
    runs = await store.fire_due_triggers(now=now)
    return (time.perf_counter() - start) * 1e3, (time.process_time() - cpu) * 1e3, len(runs)


async def run(dsn: str, count: int, per_workflow: int, rounds: int) -> list[dict[str, Any]]:
    """The rows of the table: one per kind of call (medians over the rounds)."""
    defined = workflows(count, per_workflow)
    total = count * per_workflow
    rows: list[dict[str, Any]] = []

    def row(kind: str, samples: list[tuple[float, float, int]], note: str) -> None:
        wall = h.median([s[0] for s in samples])
        cpu = h.median([s[1] for s in samples])
        rows.append(
            {
                "call": kind,
                "runs": samples[0][2],
                "wall_ms": round(wall, 2),
                "cpu_ms": round(cpu, 2),
                "triggers_per_s": round(total / (wall / 1e3)) if wall else None,
                "note": note,
            }
        )

    pool = await h.open_pool(dsn, size=4)
    try:
        store = RunStore(pool, workflows=defined)
        h.status(f"first sight of {total:,} cron triggers ...")
        first = await _timed(store, None)
        assert first[2] == total, first
        row("first sight (database clock)", [first], "latest tick of each; no state yet")
        clock = await pool.fetchval("SELECT clock_timestamp()")
        hour = clock.replace(minute=0, second=0, microsecond=0)
        due: list[tuple[float, float, int]] = []
        between: list[tuple[float, float, int]] = []
        for r in range(1, rounds + 1):
            h.status(f"round {r}/{rounds}: all due, then none due ...")
            tick = hour + timedelta(hours=r, milliseconds=500)
            sample = await _timed(store, tick)
            assert sample[2] == total, sample
            due.append(sample)
            for k in range(20):
                sample = await _timed(store, tick + timedelta(minutes=1 + k))
                assert sample[2] == 0, sample
                between.append(sample)
        row("all due (the next hour)", due, "state read, ticks, runs and state written")
        row("none due, warm (explicit now)", between, "no round trip")
        clocked = [await _timed(store, None) for _ in range(20)]
        assert all(s[2] == 0 for s in clocked), clocked
        row("none due, warm (database clock)", clocked, "one round trip: the clock")
        cold = []
        for _ in range(rounds):
            fresh = RunStore(pool, workflows=defined)
            sample = await _timed(fresh, hour + timedelta(hours=rounds, minutes=30))
            assert sample[2] == 0, sample
            cold.append(sample)
        row("none due, cold (a new store)", cold, "every trigger's state read once")
    finally:
        await pool.close()
    return rows


def describe(rows: list[dict[str, Any]], total: int) -> str:
    return (
        f"fire_due_triggers with {total:,} cron triggers (one process, one call at a time):\n"
        + (
            h.table(
                ["call", "runs", "wall ms", "CPU ms", "triggers/s", "what it does"],
                [
                    [
                        r["call"],
                        r["runs"],
                        r["wall_ms"],
                        r["cpu_ms"],
                        r["triggers_per_s"],
                        r["note"],
                    ]
                    for r in rows
                ],
            )
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_scheduler")
    parser.add_argument("--dsn", help="a server (default: an embedded durable one)")
    parser.add_argument("--workflows", type=int, default=100, help="workflows (default 100)")
    parser.add_argument(
        "--triggers", type=int, default=100, help="cron triggers per workflow (default 100)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="ticks where all are due")
    args = parser.parse_args(argv)

    async def go() -> list[dict[str, Any]]:
        async with (
            h.server(args.dsn) as (admin_dsn, _),
            h.fresh_database(admin_dsn, "sched") as dsn,
        ):
            return await run(dsn, args.workflows, args.triggers, args.rounds)

    print(describe(asyncio.run(go()), args.workflows * args.triggers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
