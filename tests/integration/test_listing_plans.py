"""The plans of page_runs, count_runs and count_runs_by_status on 100,000 runs.

For every filter combination the store's own call is made and the statement
and values it sends are recorded; each is then explained with EXPLAIN
(ANALYZE, FORMAT JSON) EXECUTE, once as a custom plan (the values known to the
planner, as in a statement's first five executions) and once as the generic
plan asyncpg's prepared statement may switch to after that. Each plan must:

- read squidmesh.runs through the indexes meant for its shape, never a
  sequential scan or a hash join;
- for a page, read at most limit + 1 index entries per status (plus, for a
  workflow with a trigger, the entries of the runs its other filter skips),
  sort at most statuses x (limit + 1) keys, and fetch at most limit + 1 runs;
- for a count, read only the index (an index-only scan) unless both a
  workflow and a trigger are given, and sort nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from squidmesh import RunStatus, RunStore, _queries
from squidmesh._queries import SQL

ROWS = 100_000
LIMIT = 50
T0 = datetime(2025, 1, 1, tzinfo=UTC)
WORKFLOW = "wf_07"  # 1 run in 20
RARE_TRIGGER = "webhook"  # 1 run in 100

# One statement: 20 workflows; triggers manual / cron / webhook (85 / 14 / 1 %);
# statuses skewed as in a store that has run for a while (retrying 1 run in
# 500, cancelling none); two runs per second (ties on inserted_at); every 97th
# run a replay of one of about a hundred sources.
LOAD = """
INSERT INTO squidmesh.runs
    (id, workflow, trigger, status, replayed_from_run_id, inserted_at, updated_at)
SELECT md5(g::text)::uuid,
       'wf_' || lpad((g % 20)::text, 2, '0'),
       CASE WHEN g % 100 = 7 THEN 'webhook' WHEN g % 7 = 0 THEN 'cron' ELSE 'manual' END,
       CASE WHEN g % 499 = 0 THEN 'retrying' ELSE
       (ARRAY['completed', 'completed', 'completed', 'completed', 'completed', 'completed',
              'completed', 'completed', 'completed', 'completed', 'completed', 'completed',
              'failed', 'failed', 'failed', 'cancelled', 'cancelled', 'running', 'pending',
              'paused'])[1 + (g * 7) % 20] END,
       CASE WHEN g % 97 = 0 THEN md5(((g / 970) * 970 + 1)::text)::uuid END,
       timestamptz '2025-01-01 00:00:00+00' + (g / 2) * interval '1 second',
       timestamptz '2025-01-01 00:00:00+00' + (g / 2) * interval '1 second'
FROM generate_series(1, $1::int) AS g
"""

SOURCE = UUID("6602294b-e910-b1e3-c457-1bd98c4d5484")  # md5('971'): ten replays
AFTER = T0 + timedelta(hours=4)
BEFORE = T0 + timedelta(hours=10)

STATUS_FILTERS: list[Any] = [None, "retrying", ["running", "failed", "paused"]]
RANGES: list[dict[str, Any]] = [
    {},
    {"created_after": AFTER},
    {"created_before": BEFORE},
    {"created_after": AFTER, "created_before": BEFORE},
]

# The indexes each shape may read (runs_pkey: the page's runs, by id).
STATUS_IDX = "runs_status_inserted_idx"
WORKFLOW_IDX = "runs_workflow_status_inserted_idx"
TRIGGER_IDX = "runs_trigger_status_inserted_idx"
REPLAYS_IDX = "runs_replayed_from_inserted_idx"
PAGE_INDEXES = {
    SQL.select_runs: {STATUS_IDX},
    SQL.select_runs_by_workflow: {WORKFLOW_IDX},
    SQL.select_runs_by_trigger: {TRIGGER_IDX},
    SQL.select_runs_by_workflow_trigger: {WORKFLOW_IDX, TRIGGER_IDX},
    SQL.select_runs_by_replayed_from: {REPLAYS_IDX},
    # The first page of one status (with a workflow or not): one range, read directly.
    SQL.list_runs_by_status: {STATUS_IDX},
    SQL.list_runs_by_workflow_status: {WORKFLOW_IDX},
}
# A count may skip-scan (PostgreSQL >= 18) any index that holds status and
# inserted_at when it has no equality of its own.
COUNT_INDEXES = {
    SQL.count_runs: {STATUS_IDX, WORKFLOW_IDX, TRIGGER_IDX},
    SQL.count_runs_by_workflow: {WORKFLOW_IDX},
    SQL.count_runs_by_trigger: {TRIGGER_IDX},
    SQL.count_runs_by_workflow_trigger: {WORKFLOW_IDX, TRIGGER_IDX},
}
# No index holds both: the runs of one filter that the other skips are read.
RESIDUAL = {SQL.select_runs_by_workflow_trigger, SQL.count_runs_by_workflow_trigger}
MODES = ("force_custom_plan", "force_generic_plan")


@dataclass
class Recorder:
    """The statements and values the store sends, in order."""

    sent: list[tuple[str, tuple[object, ...]]] = field(default_factory=list)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    real = _queries.rows

    async def rows(ex: Any, query: Any, *args: object) -> list[asyncpg.Record]:
        recorder.sent.append((query, args))
        return await real(ex, query, *args)

    monkeypatch.setattr(_queries, "rows", rows)
    return recorder


VISIBLE = """
SELECT c.relallvisible::float8 / greatest(c.relpages, 1)
FROM pg_class c WHERE c.oid = 'squidmesh.runs'::regclass
"""


@pytest.fixture
async def loaded(pool: asyncpg.Pool) -> None:
    """The runs, and statistics for the planner; the visibility map is left
    empty, as after a bulk load that autovacuum has not reached yet."""
    async with pool.acquire() as conn, conn.transaction():
        # The test server commits asynchronously, and VACUUM cannot mark a
        # page all-visible until the commit of the rows on it is flushed;
        # this commit waits for its flush.
        await conn.execute("SET LOCAL synchronous_commit = on")
        await conn.execute(LOAD, ROWS)
    await pool.execute("ANALYZE squidmesh.runs")


async def _vacuum(pool: asyncpg.Pool) -> None:
    """Set the visibility map, which lets an index-only scan skip the table
    (autovacuum keeps it set in production)."""
    # An autovacuum ANALYZE started by the load may hold a snapshot older than
    # the load for a moment, during which VACUUM cannot mark the pages.
    for _ in range(100):
        await pool.execute("VACUUM squidmesh.runs")
        if await pool.fetchval(VISIBLE) > 0.95:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("VACUUM never set the visibility map of squidmesh.runs")


def _literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return "ARRAY[" + ", ".join(_literal(v) for v in value) + "]::pg_catalog.text[]"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'"
    if isinstance(value, UUID | str):
        return "'" + str(value).replace("'", "''") + "'"
    raise TypeError(value)


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


@dataclass
class Explained:
    query: str
    args: tuple[object, ...]
    mode: str
    plan: dict[str, Any]

    def nodes(self) -> list[dict[str, Any]]:
        return list(_nodes(self.plan))

    def describe(self) -> str:
        return f"{self.mode} {self.args!r}\n" + json.dumps(self.plan, indent=1)[:6000]


async def _explain(conn: Any, sent: list[tuple[str, tuple[object, ...]]]) -> list[Explained]:
    names: dict[str, str] = {}
    out = []
    for mode in MODES:
        await conn.execute(f"SET plan_cache_mode = {mode}")
        for query, args in sent:
            if query not in names:
                names[query] = f"listing_{len(names)}"
                await conn.execute(f"PREPARE {names[query]} AS {query}")
            values = ", ".join(_literal(a) for a in args)
            text = await conn.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {names[query]}({values})"
            )
            out.append(Explained(query, args, mode, json.loads(text)[0]["Plan"]))
        # A fresh plan per statement in the next mode. (Not DEALLOCATE ALL:
        # asyncpg's own prepared statements live on this connection too.)
        for name in names.values():
            await conn.execute(f"DEALLOCATE {name}")
        names.clear()
    await conn.execute("RESET plan_cache_mode")
    return out


def _check_scans(e: Explained, allowed: set[str]) -> None:
    for node in e.nodes():
        kind = node["Node Type"]
        assert kind not in ("Seq Scan", "Hash Join", "Tid Scan"), e.describe()
        if "Index Name" in node:
            assert node["Index Name"] in allowed | {"runs_pkey"}, e.describe()


def _walked(node: dict[str, Any]) -> int:
    """Index entries a scan node read: those it returned and those it dropped
    (EXPLAIN reports both per loop)."""
    dropped = node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
    return round(float((node["Actual Rows"] + dropped) * node["Actual Loops"]))


def _check_page(e: Explained, statuses: int, replays: int) -> None:
    _check_scans(e, PAGE_INDEXES[e.query])
    fetched = LIMIT + 1
    for node in e.nodes():
        name = node.get("Index Name")
        if node["Node Type"] == "Sort":
            (child,) = node["Plans"]
            sorted_rows = child["Actual Rows"] * child["Actual Loops"]
            bound = replays if e.query == SQL.select_runs_by_replayed_from else statuses * fetched
            assert sorted_rows <= bound, e.describe()
        if name == "runs_pkey":
            assert node["Actual Loops"] <= fetched, e.describe()
        elif name is not None and e.query == SQL.select_runs_by_replayed_from:
            assert _walked(node) <= replays, e.describe()
        elif name is not None and e.query not in RESIDUAL:
            # The keys of each status's range: no more than the page needs.
            assert node.get("Rows Removed by Filter", 0) == 0, e.describe()
            assert _walked(node) <= node["Actual Loops"] * fetched, e.describe()


def _check_count(e: Explained) -> None:
    _check_scans(e, COUNT_INDEXES[e.query])
    for node in e.nodes():
        assert node["Node Type"] != "Sort", e.describe()
        if e.query not in RESIDUAL and node["Node Type"].endswith("Scan") and "Index Name" in node:
            assert node["Node Type"] == "Index Only Scan", e.describe()


def _page_filters() -> Iterator[dict[str, Any]]:
    for workflow, trigger, status, bounds in itertools.product(
        [None, WORKFLOW], [None, RARE_TRIGGER], STATUS_FILTERS, RANGES
    ):
        filters = {"workflow": workflow, "trigger": trigger, "status": status, **bounds}
        yield {k: v for k, v in filters.items() if v is not None}
    for status, extra, bounds in itertools.product(
        [None, "failed"], [{}, {"workflow": "wf_11", "trigger": "manual"}], RANGES[:2]
    ):
        filters = {"replayed_from": SOURCE, "status": status, **extra, **bounds}
        yield {k: v for k, v in filters.items() if v is not None}


@pytest.mark.parametrize("vacuumed", [False, True], ids=["fresh", "vacuumed"])
async def test_every_page_shape_is_served_by_its_index(
    store: RunStore, pool: asyncpg.Pool, loaded: None, recorder: Recorder, vacuumed: bool
) -> None:
    if vacuumed:
        await _vacuum(pool)
    replays = await pool.fetchval(
        "SELECT count(*) FROM squidmesh.runs WHERE replayed_from_run_id = $1", SOURCE
    )
    assert replays == 10
    statuses: list[int] = []  # how many statuses each statement sent asked for
    for filters in _page_filters():
        status = filters.get("status")
        asked = 8 if status is None else 1 if isinstance(status, str) else len(status)
        first = await store.page_runs(limit=LIMIT, **filters)
        statuses.append(asked)
        if first.next_cursor is not None:  # and a page from the middle of the walk
            await store.page_runs(limit=LIMIT, cursor=first.next_cursor, **filters)
            statuses.append(asked)
        assert len(recorder.sent) == len(statuses)  # one statement per page
    assert len(statuses) > 70
    assert {q for q, _ in recorder.sent} == set(PAGE_INDEXES)
    async with pool.acquire() as conn:
        explained = await _explain(conn, recorder.sent)
    assert len(explained) == len(MODES) * len(statuses)
    for at, e in enumerate(explained):
        _check_page(e, statuses[at % len(statuses)], replays)


async def test_every_count_shape_is_served_by_an_index_only(
    store: RunStore, pool: asyncpg.Pool, loaded: None, recorder: Recorder
) -> None:
    await _vacuum(pool)
    for workflow, trigger, status, bounds in itertools.product(
        [None, WORKFLOW], [None, RARE_TRIGGER], STATUS_FILTERS, RANGES
    ):
        filters = {"workflow": workflow, "trigger": trigger, "status": status, **bounds}
        await store.count_runs(**{k: v for k, v in filters.items() if v is not None})
    for workflow, after in itertools.product([None, WORKFLOW], [None, AFTER]):
        counts = await store.count_runs_by_status(workflow=workflow, created_after=after)
        assert counts[RunStatus.CANCELLING] == 0
        assert counts[RunStatus.RETRYING] > 0 and counts[RunStatus.COMPLETED] > 0
    assert {q for q, _ in recorder.sent} == set(COUNT_INDEXES)
    async with pool.acquire() as conn:
        for e in await _explain(conn, recorder.sent):
            _check_count(e)
