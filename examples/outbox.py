"""The transactional outbox: a run change and the job it needs commit together.

A dispatch passed to ``transition_and_dispatch_run`` gets the transaction's
connection, so the job it inserts into the application's own ``jobs`` table
commits with the run's transition, or not at all.

    .venv/bin/python examples/outbox.py

Runs on ``$SQUIDMESH_DSN`` when set (it creates the squidmesh schema there and
a scratch schema ``outbox_example``, dropped at the end), otherwise on an
embedded PostgreSQL that is removed afterwards.
"""

from __future__ import annotations

import asyncio
from typing import Any

import squidmesh
from squidmesh import Field, Run, RunStore, Step, Transition, Trigger, Workflow
from squidmesh.testing import provide_dsn

monthly_report = Workflow(
    "reports.monthly",
    triggers=[Trigger("manual", payload=[Field("month", str)])],
    steps=[Step("build"), Step("email")],
    transitions=[
        Transition("build", on="ok", to="email"),
        Transition("email", on="ok", to="complete"),
    ],
)

# The application's own queue table; squidmesh knows nothing about it.
SETUP = """
DROP SCHEMA IF EXISTS outbox_example CASCADE;
CREATE SCHEMA outbox_example;
CREATE TABLE outbox_example.jobs (
    id bigserial PRIMARY KEY,
    run_id uuid NOT NULL,
    step text NOT NULL
);
"""


async def enqueue_step(conn: Any, run: Run) -> None:
    """The dispatch: runs inside the run's transaction, on its connection."""
    await conn.execute(
        "INSERT INTO outbox_example.jobs (run_id, step) VALUES ($1, $2)",
        run.id,
        run.current_step,
    )


async def enqueue_then_fail(conn: Any, run: Run) -> None:
    await enqueue_step(conn, run)  # written, then rolled back with the transition
    raise RuntimeError("the dispatch failed after inserting its job")


async def jobs_of(store: RunStore, run: Run) -> list[str]:
    rows = await store.pool.fetch(
        "SELECT step FROM outbox_example.jobs WHERE run_id = $1 ORDER BY id", run.id
    )
    return [row["step"] for row in rows]


async def main(dsn: str) -> None:
    events: list[object] = []
    async with RunStore.connect(
        dsn, workflows=[monthly_report], listeners=[events.append], migrate=True
    ) as store:
        await store.pool.execute(SETUP)
        try:
            # 1. The transition and its job commit together.
            run = await store.create_run(monthly_report, {"month": "2025-06"})
            run = await store.transition_and_dispatch_run(
                run.id, "running", {"current_step": "build"}, enqueue_step
            )
            print(f"run {run.id}: {run.status.value}, jobs: {await jobs_of(store, run)}")
            assert run.status == "running" and await jobs_of(store, run) == ["build"]

            # 2. A failing dispatch leaves neither the job nor the transition.
            other = await store.create_run(monthly_report, {"month": "2025-07"})
            events.clear()
            try:
                await store.transition_and_dispatch_run(
                    other.id, "running", {"current_step": "build"}, enqueue_then_fail
                )
            except RuntimeError as exc:
                print(f"dispatch raised: {exc}")
            after = await store.get_run(other.id)
            print(f"run {after.id}: {after.status.value}, jobs: {await jobs_of(store, after)}")
            assert after == other  # still pending, not a single field changed
            assert await jobs_of(store, after) == []
            assert events == []  # listeners never hear of a rolled-back change
            print("the failed dispatch left no job, no transition and no event")
        finally:
            await store.pool.execute("DROP SCHEMA IF EXISTS outbox_example CASCADE")


if __name__ == "__main__":
    with provide_dsn("SQUIDMESH_DSN") as dsn:
        asyncio.run(main(dsn))
    print(f"squidmesh {squidmesh.__version__}: outbox example done")
