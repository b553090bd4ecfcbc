"""``python -m benchmarks.load``: a realistic mix from N tasks for a fixed duration.

Each task loops, picking an operation by weight: create a run, transition a
run (to a target that was legal on its last known status; racing tasks make
some of these stale), progress a run with a dispatch that writes an outbox
row in the run's transaction and fails at ``--fail-rate`` (half through
``progress.Dispatch``, whose failure propagates and rolls back, half through
``progress.TransitionOrDispatchOrFail``, whose failure fails the run),
record step work (step run + attempt), cancel, read with history, list.

Errors that the design makes expected under races (``InvalidTransition``,
the injected dispatch failure) are counted apart from unexpected ones, which
must be zero. At the end a consistency scan checks the tables: every status
legal, no orphan step run / attempt / outbox row, no outbox row of a failed
dispatch survived, attempt numbers without gaps, as many runs as were
created, and no lost write (a run's version is 1 + the writes acknowledged to
the client, for runs only touched by single-statement writes).

Operations that do not exist yet (or raise NotImplementedError) are skipped
and reported as such.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import asyncpg

from squidmesh import (
    Field,
    InvalidTransition,
    Run,
    RunChanges,
    RunStatus,
    RunStore,
    Step,
    Transition,
    Trigger,
    Workflow,
    state_machine,
)

from . import _harness as h

LOAD_WORKFLOW: Final = Workflow(
    "load.invoice",
    triggers=[
        Trigger(
            "invoice_delivery",
            payload=[Field("account_id", str), Field("note", str, required=False)],
        )
    ],
    steps=[Step("load_invoice"), Step("send_email"), Step("archive")],
    transitions=[
        Transition("load_invoice", on="ok", to="send_email"),
        Transition("send_email", on="ok", to="archive"),
        Transition("archive", on="ok", to="complete"),
    ],
)
STEPS: Final = ("load_invoice", "send_email", "archive")
STATUSES: Final = [s.value for s in RunStatus]
WEIGHTS: Final = {
    "create": 18,
    "transition": 18,
    "progress": 14,
    "step": 10,
    "cancel": 6,
    "get_history": 20,
    "list": 14,
}
OUTBOX_DDL: Final = """\
CREATE TABLE bench_outbox (
    id               bigserial PRIMARY KEY,
    run_id           uuid      NOT NULL,
    injected_failure boolean   NOT NULL,
    inserted_at      timestamptz NOT NULL DEFAULT now()
)"""


class InjectedDispatchFailure(Exception):
    """Raised on purpose by the load's dispatch, at ``--fail-rate``."""


@dataclass
class OpStats:
    latencies_ns: list[int] = field(default_factory=list)
    expected: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)


@dataclass
class State:
    """What the client knows; the consistency scan compares it with the tables."""

    runs: list[UUID] = field(default_factory=list)
    known_status: dict[UUID, str] = field(default_factory=dict)
    acked_writes: Counter[UUID] = field(default_factory=Counter)
    max_version: dict[UUID, int] = field(default_factory=dict)
    untracked: set[UUID] = field(default_factory=set)  # touched by multi-write operations
    stats: dict[str, OpStats] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)

    def saw(self, run: Run | None) -> None:
        if run is None:
            return
        self.known_status[run.id] = run.status.value
        if run.version > self.max_version.get(run.id, 0):
            self.max_version[run.id] = run.version


class Load:
    def __init__(self, store: RunStore, fail_rate: float, rng: random.Random) -> None:
        self.store = store
        self.fail_rate = fail_rate
        self.rng = rng
        self.state = State(stats={name: OpStats() for name in WEIGHTS})
        self.ops: dict[str, Callable[[], Awaitable[None]]] = {
            "create": self.create,
            "transition": self.transition,
            "progress": self.progress,
            "step": self.step,
            "cancel": self.cancel,
            "get_history": self.get_history,
            "list": self.list,
        }
        for name in ("progress_run", "begin_step", "begin_attempt"):
            if not hasattr(store, name):
                self.state.unavailable[name] = "not in RunStore yet"

    def pick_run(self) -> UUID:
        return self.rng.choice(self.state.runs)

    # -- the operations -------------------------------------------------------

    async def create(self) -> None:
        run = await self.store.create_run(
            "load.invoice", {"account_id": f"acct-{self.rng.randrange(10_000):05d}"}
        )
        self.state.runs.append(run.id)
        self.state.saw(run)

    async def transition(self) -> None:
        uid = self.pick_run()
        known = self.state.known_status.get(uid, "pending")
        targets: list[str] = sorted(s.value for s in state_machine.allowed_transitions(known))
        if not targets:
            targets = ["running"]  # a terminal run: the move is refused, as expected
        run = await self.store.transition_run(
            uid, self.rng.choice(targets), context={"by": "load", "at": time.time()}
        )
        self.state.acked_writes[uid] += 1
        self.state.saw(run)

    async def progress(self) -> None:
        if "progress_run" in self.state.unavailable:
            return
        from squidmesh import progress

        uid = self.pick_run()
        inject = self.rng.random() < self.fail_rate

        async def dispatch(conn: Any, run: Run) -> None:
            await conn.execute(
                "INSERT INTO bench_outbox (run_id, injected_failure) VALUES ($1, $2)",
                run.id,
                inject,
            )
            if inject:
                raise InjectedDispatchFailure("injected")

        def changes(run: Run) -> RunChanges:
            return RunChanges(context={**run.context, "ticks": run.context.get("ticks", 0) + 1})

        def fail(run: Run, exc: BaseException) -> RunChanges:
            return RunChanges(last_error={"message": str(exc), "kind": type(exc).__name__})

        operation: progress.Operation
        if self.rng.random() < 0.5:
            operation = progress.Dispatch(dispatch)
        else:
            operation = progress.TransitionOrDispatchOrFail(RunStatus.RUNNING, dispatch, fail)
        self.state.untracked.add(uid)
        try:
            run = await self.store.progress_run(uid, changes, operation)
        except NotImplementedError as exc:
            self.state.unavailable["progress_run"] = str(exc)
            return
        self.state.saw(run)

    async def step(self) -> None:
        if "begin_step" in self.state.unavailable or "begin_attempt" in self.state.unavailable:
            return
        uid = self.pick_run()
        self.state.untracked.add(uid)
        try:
            step_run = await self.store.begin_step(
                uid, self.rng.choice(STEPS), {"batch": self.rng.randrange(100)}
            )
            attempt = await self.store.begin_attempt(step_run.id)
        except NotImplementedError as exc:
            self.state.unavailable["begin_step"] = str(exc)
            return
        if self.rng.random() < 0.2:
            await self.store.fail_attempt(attempt.id, {"message": "timeout"})
        else:
            await self.store.complete_attempt(attempt.id)
            await self.store.complete_step(step_run.id, {"rows": self.rng.randrange(1000)})

    async def cancel(self) -> None:
        uid = self.pick_run()
        run = await self.store.cancel_run(uid)
        self.state.acked_writes[uid] += 1
        self.state.saw(run)

    async def get_history(self) -> None:
        try:
            run = await self.store.get_run(self.pick_run(), include_history=True)
        except NotImplementedError as exc:
            self.state.unavailable["get_run(include_history=True)"] = str(exc)
            run = await self.store.get_run(self.pick_run())
        self.state.saw(run)

    async def list(self) -> None:
        await self.store.list_runs(
            workflow="load.invoice", status=self.rng.choice(STATUSES), limit=50
        )

    # -- the driver ----------------------------------------------------------

    async def worker(self, deadline: float) -> None:
        names = list(WEIGHTS)
        weights = list(WEIGHTS.values())
        clock = time.perf_counter_ns
        while time.monotonic() < deadline:
            name = self.rng.choices(names, weights)[0] if self.state.runs else "create"
            stats = self.state.stats[name]
            t0 = clock()
            try:
                await self.ops[name]()
            except (InvalidTransition, InjectedDispatchFailure) as exc:
                stats.expected[type(exc).__name__] += 1
            except Exception as exc:
                stats.unexpected[f"{type(exc).__name__}: {exc}"[:160]] += 1
                if len(self.state.samples) < 5:
                    self.state.samples.append(f"{name}: {traceback.format_exc()}")
            stats.latencies_ns.append(clock() - t0)


async def ticker(load: Load, started: float, duration: float) -> None:
    tty = sys.stderr.isatty()
    every = 0.5 if tty else 5.0
    while True:
        await asyncio.sleep(every)
        ops = sum(len(s.latencies_ns) for s in load.state.stats.values())
        expected = sum(sum(s.expected.values()) for s in load.state.stats.values())
        unexpected = sum(sum(s.unexpected.values()) for s in load.state.stats.values())
        elapsed = time.monotonic() - started
        line = (
            f"load {min(elapsed, duration):5.1f}/{duration:.0f} s  ops {ops:>8,}  "
            f"{ops / elapsed:>8,.0f}/s  runs {len(load.state.runs):>7,}  "
            f"expected errors {expected:,}  unexpected {unexpected:,}"
        )
        sys.stderr.write(("\r" + line) if tty else (line + "\n"))
        sys.stderr.flush()


# -- the consistency scan -------------------------------------------------------

CHECKS: Final = {
    "runs with an illegal status": """
        SELECT count(*) FROM squidmesh.runs WHERE status <> ALL($1::text[])""",
    "step runs without their run": """
        SELECT count(*) FROM squidmesh.step_runs s
        WHERE NOT EXISTS (SELECT 1 FROM squidmesh.runs r WHERE r.id = s.run_id)""",
    "attempts without their step run": """
        SELECT count(*) FROM squidmesh.step_attempts a
        WHERE NOT EXISTS (SELECT 1 FROM squidmesh.step_runs s WHERE s.id = a.step_run_id)""",
    "step runs with an illegal status": """
        SELECT count(*) FROM squidmesh.step_runs
        WHERE status NOT IN ('pending', 'running', 'completed', 'failed')""",
    "attempts with an illegal status": """
        SELECT count(*) FROM squidmesh.step_attempts
        WHERE status NOT IN ('running', 'completed', 'failed')""",
    "step runs whose attempt numbers have gaps": """
        SELECT count(*) FROM (
            SELECT step_run_id FROM squidmesh.step_attempts
            GROUP BY step_run_id HAVING max(attempt_number) <> count(*)) x""",
    "runs updated before they were inserted": """
        SELECT count(*) FROM squidmesh.runs WHERE updated_at < inserted_at""",
    "outbox rows of a failed dispatch that survived": """
        SELECT count(*) FROM bench_outbox WHERE injected_failure""",
    "outbox rows without their run": """
        SELECT count(*) FROM bench_outbox o
        WHERE NOT EXISTS (SELECT 1 FROM squidmesh.runs r WHERE r.id = o.run_id)""",
}


async def consistency_scan(pool: asyncpg.Pool, state: State) -> dict[str, int]:
    problems: dict[str, int] = {}
    for name, sql in CHECKS.items():
        args = (STATUSES,) if "$1" in sql else ()
        problems[name] = int(await pool.fetchval(sql, *args))
    total = int(await pool.fetchval("SELECT count(*) FROM squidmesh.runs"))
    problems["runs missing or extra (table vs acknowledged creates)"] = abs(total - len(state.runs))
    versions: dict[UUID, int] = {
        r["id"]: r["version"] for r in await pool.fetch("SELECT id, version FROM squidmesh.runs")
    }
    behind = lost = 0
    for uid in state.runs:
        stored = int(versions.get(uid, 0))
        if stored < state.max_version.get(uid, 1):
            behind += 1
        if uid not in state.untracked and stored != 1 + state.acked_writes[uid]:
            lost += 1
    problems["runs whose version is behind what a client saw"] = behind
    problems["runs whose version != 1 + acknowledged writes"] = lost
    return problems


# -- main -----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--concurrency", type=int, default=16, help="tasks (default 16)")
    parser.add_argument(
        "--fail-rate", type=float, default=0.01, help="share of dispatches that raise (0.01)"
    )
    parser.add_argument("--pool-size", type=int, default=h.POOL_SIZE, help="connections (16)")
    parser.add_argument("--dsn", help="a server (default: $SQUIDMESH_DSN, else embedded)")
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> int:
    async with h.server(args.dsn) as (admin_dsn, source):
        server = await h.server_info(admin_dsn)
        async with h.fresh_database(admin_dsn, "load") as dsn:
            pool = await h.open_pool(dsn, size=args.pool_size)
            try:
                await pool.execute(OUTBOX_DDL)
                store = RunStore(pool, workflows=[LOAD_WORKFLOW])
                load = Load(store, args.fail_rate, random.Random(args.seed))
                h.status(
                    f"load: {args.concurrency} tasks for {args.duration:.0f} s, "
                    f"fail rate {args.fail_rate}, PostgreSQL {server['version']} ({source})"
                )
                started = time.monotonic()
                tick = asyncio.get_running_loop().create_task(ticker(load, started, args.duration))
                try:
                    async with asyncio.TaskGroup() as group:
                        for _ in range(args.concurrency):
                            group.create_task(load.worker(started + args.duration))
                finally:
                    tick.cancel()
                elapsed = time.monotonic() - started
                sys.stderr.write("\n")
                problems = await consistency_scan(pool, load.state)
            finally:
                await pool.close()
    return report(args, load.state, elapsed, problems, server)


def report(
    args: argparse.Namespace,
    state: State,
    elapsed: float,
    problems: dict[str, int],
    server: dict[str, Any],
) -> int:
    rows = []
    total_ops = expected_total = unexpected_total = 0
    for name, stats in state.stats.items():
        lat = sorted(stats.latencies_ns)
        expected = sum(stats.expected.values())
        unexpected = sum(stats.unexpected.values())
        total_ops += len(lat)
        expected_total += expected
        unexpected_total += unexpected
        rows.append(
            (
                name,
                len(lat),
                len(lat) / elapsed,
                h.percentile(lat, 0.5),
                h.percentile(lat, 0.95),
                h.percentile(lat, 0.99),
                lat[-1] / 1e6 if lat else None,
                ", ".join(f"{k} {v}" for k, v in stats.expected.items()) or "0",
                unexpected,
            )
        )
    print(
        f"{total_ops:,} operations in {elapsed:.1f} s = {total_ops / elapsed:,.0f} ops/s "
        f"({args.concurrency} tasks, pool {args.pool_size}, fail rate {args.fail_rate}, "
        f"PostgreSQL {server['version']}); {len(state.runs):,} runs created"
    )
    print(
        h.table(
            ("op", "count", "ops/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "expected", "unexp."),
            rows,
        )
    )
    for name, reason in state.unavailable.items():
        print(f"skipped: {name} ({reason})")
    print(f"errors: {expected_total:,} expected by design, {unexpected_total} unexpected")
    for stats_name, stats in state.stats.items():
        for message, count in stats.unexpected.items():
            print(f"  unexpected in {stats_name} x{count}: {message}")
    for sample in state.samples[:2]:
        print(sample)
    print("consistency scan:")
    for check, count in problems.items():
        print(f"  {'ok  ' if count == 0 else 'FAIL'} {check}: {count}")
    failed = unexpected_total > 0 or any(problems.values())
    print("RESULT:", "FAIL" if failed else "OK")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "postgres": server,
                    "machine": h.machine_info(),
                    "elapsed_s": round(elapsed, 2),
                    "ops": total_ops,
                    "ops_per_s": round(total_ops / elapsed, 1),
                    "per_op": [
                        dict(
                            zip(
                                (
                                    "op",
                                    "count",
                                    "ops_per_s",
                                    "p50_ms",
                                    "p95_ms",
                                    "p99_ms",
                                    "max_ms",
                                    "expected",
                                    "unexpected",
                                ),
                                row,
                                strict=True,
                            )
                        )
                        for row in rows
                    ],
                    "unavailable": state.unavailable,
                    "consistency": problems,
                    "ok": not failed,
                },
                indent=2,
            )
            + "\n"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse_args(None))))
    except KeyboardInterrupt:
        sys.exit(130)
