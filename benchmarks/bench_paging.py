"""page_runs (50 runs of 1,000,000, three filter shapes) and count_runs_by_status.

The table is bulk-loaded in SQL as in ``bench_list`` (20 workflows, three
triggers, most runs finished), vacuumed and analysed. For each shape the
first ten pages are walked once to collect their cursors; the timed calls
then cycle through those pages. The baseline reads the same pages with the
best plain SQL on this schema, its rows decoded into the same values (UUIDs
and aware datetimes from asyncpg, jsonb into dicts): for one workflow and one
status, the keyset query ``WHERE workflow = $1 AND status = $2 AND
(inserted_at, id) < ($3, $4) ORDER BY inserted_at DESC, id DESC LIMIT 50``
on the composite index; for several statuses, the statement the store sends
(recorded from its own calls) with the run's columns selected plainly: no
index orders runs across statuses, so one ordered range per status merged
(the store's plan) is what a hand-written query has to do too. The plans of
the store's statements, custom and generic, are summarised by the indexes
they read. One full ``count_runs_by_status()`` of the table is timed on its
own: the cost a count grows with.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final, LiteralString

import asyncpg

from squidmesh import RunStatus, RunStore, _queries
from squidmesh._queries import SQL

from . import _harness as h
from .bench_ops import RUN_COLUMNS, run_values

#: The --only names of this module's two parts.
PARTS: Final = ("page_runs", "count_runs_by_status")
WORKFLOW: Final = "bench.list_7"
CHUNK: Final = 100_000
PAGES: Final = 10
T0: Final = datetime(2025, 1, 1, tzinfo=UTC)
STEP: Final = timedelta(seconds=10)

SQL_LOAD: Final = """\
INSERT INTO squidmesh.runs
    (id, workflow, trigger, status, payload, context, current_step, inserted_at, updated_at)
SELECT gen_random_uuid(),
       'bench.list_' || (g % 20),
       CASE WHEN g % 100 = 7 THEN 'webhook' WHEN g % 7 = 0 THEN 'nightly' ELSE 'manual' END,
       (ARRAY['completed', 'completed', 'completed', 'completed', 'completed',
              'failed', 'cancelled', 'running', 'pending', 'paused'])[1 + (g / 20) % 10],
       jsonb_build_object('account_id', 'acct-' || g, 'posted_on', '2025-06-01'),
       jsonb_build_object('cursor', g),
       'load_invoice',
       timestamptz '2025-01-01 00:00:00+00' + g * interval '10 seconds',
       timestamptz '2025-01-01 00:00:00+00' + g * interval '10 seconds'
FROM generate_series($1::int, $2::int) AS g"""


def shapes(rows: int) -> dict[str, dict[str, Any]]:
    """The three page shapes: no filter; a workflow and a status; several
    statuses within the last tenth of the table's time span."""
    recent = T0 + STEP * (rows * 9 // 10)
    return {
        "no filter": {},
        "workflow + status": {"workflow": WORKFLOW, "status": "running"},
        "3 statuses + created_after": {
            "status": ["failed", "running", "paused"],
            "created_after": recent,
        },
    }


Sent = tuple[LiteralString, tuple[object, ...]]

# The store's run columns (see sql/queries/runs.sql), and the baseline's plain ones.
STORE_COLUMNS: Final = """\
SELECT pg_catalog.uuid_send(r.id) AS id, r.workflow, r.trigger, r.status,
       r.payload::pg_catalog.text AS payload, r.context::pg_catalog.text AS context,
       r.current_step, r.last_error::pg_catalog.text AS last_error,
       pg_catalog.uuid_send(r.replayed_from_run_id) AS replayed_from_run_id,
       r.version, r.idempotency_key,
       pg_catalog.date_part('epoch', r.inserted_at) AS inserted_at,
       pg_catalog.date_part('epoch', r.updated_at) AS updated_at"""
PLAIN_COLUMNS: Final = "SELECT " + ", ".join(f"r.{c}" for c in RUN_COLUMNS.split(", "))
# page_runs(limit=50) reads 51 runs: the 51st says whether a next page exists.
PAGE_FETCH: Final = 51
SQL_KEYSET_FIRST: Final = f"""\
SELECT {RUN_COLUMNS} FROM squidmesh.runs WHERE workflow = $1 AND status = $2
ORDER BY inserted_at DESC, id DESC LIMIT {PAGE_FETCH}"""
SQL_KEYSET: Final = f"""\
SELECT {RUN_COLUMNS} FROM squidmesh.runs WHERE workflow = $1 AND status = $2
  AND (inserted_at, id) < ($3, $4)
ORDER BY inserted_at DESC, id DESC LIMIT {PAGE_FETCH}"""


def baseline_statement(sent: Sent) -> tuple[str, tuple[object, ...]]:
    """The baseline's statement for the page the store read with ``sent``."""
    query, args = sent
    if query == SQL.list_runs_by_workflow_status:
        status, at, run_id, created_after, limit, workflow = args
        assert created_after is None and limit == PAGE_FETCH
        if at is None:
            return SQL_KEYSET_FIRST, (workflow, status)
        return SQL_KEYSET, (workflow, status, at, run_id)
    assert STORE_COLUMNS in query, query
    return query.replace(STORE_COLUMNS, PLAIN_COLUMNS), args


async def _recorded(call: Callable[[], Awaitable[object]]) -> list[Sent]:
    """The statements and values a store call sends (the query layer's ``rows``)."""
    sent: list[Sent] = []
    real = _queries.rows

    async def rows(ex: Any, query: LiteralString, *args: object) -> list[asyncpg.Record]:
        sent.append((query, args))
        return await real(ex, query, *args)

    _queries.rows = rows
    try:
        await call()
    finally:
        _queries.rows = real
    return sent


async def _indexes(pool: asyncpg.Pool, sent: Sent) -> dict[str, list[str]]:
    """The indexes the statement's custom and generic plans read."""
    query, args = sent
    values = ", ".join(_literal(a) for a in args)
    out: dict[str, list[str]] = {}
    async with pool.acquire() as conn:
        await conn.execute(f"PREPARE bench_paging AS {query}")
        try:
            for mode in ("custom", "generic"):
                await conn.execute(f"SET plan_cache_mode = force_{mode}_plan")
                text = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE bench_paging({values})")
                out[mode] = _index_names(json.loads(text))
        finally:
            await conn.execute("DEALLOCATE bench_paging")
            await conn.execute("RESET plan_cache_mode")
    return out


def _literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return "ARRAY[" + ", ".join(_literal(v) for v in value) + "]::pg_catalog.text[]"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _index_names(plan: Any) -> list[str]:
    found: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if "Index Name" in node:
            name = f"{node['Node Type'].replace(' Scan', '')}:{node['Index Name']}"
            if name not in found:
                found.append(name)
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return found


async def run(
    dsn: str, rows: int, calls: int, live: h.LiveLine, parts: set[str], rounds: int = 4
) -> dict[str, Any]:
    """Load ``rows`` runs; time the selected parts against the raw statements."""
    pool = await h.open_pool(dsn)
    try:
        live.start(f"paging: loading {rows:,} runs", rows)
        for start in range(1, rows + 1, CHUNK):
            stop = min(rows, start + CHUNK - 1)
            await pool.execute(SQL_LOAD, start, stop)
            live.done = stop
        await live.stop()
        await pool.execute("VACUUM (ANALYZE) squidmesh.runs")
        store = RunStore(pool)
        result: dict[str, Any] = {"rows_in_table": rows, "pages": [], "counts": None}
        if "page_runs" in parts:
            for label, filters in shapes(rows).items():
                result["pages"].append(
                    await _page_shape(pool, store, label, filters, calls, live, rounds)
                )
        if "count_runs_by_status" in parts:
            result["counts"] = await _counts(pool, store, rows, max(calls // 4, 50), live, rounds)
        return result
    finally:
        await pool.close()


async def _page_shape(
    pool: asyncpg.Pool,
    store: RunStore,
    label: str,
    filters: dict[str, Any],
    calls: int,
    live: h.LiveLine,
    rounds: int,
) -> dict[str, Any]:
    cursors: list[str | None] = [None]
    for _ in range(PAGES - 1):
        page = await store.page_runs(limit=50, cursor=cursors[-1], **filters)
        if page.next_cursor is None:
            break
        cursors.append(page.next_cursor)
    statements: list[Sent] = []
    for cursor in cursors:

        async def call(cursor: str | None = cursor) -> object:
            return await store.page_runs(limit=50, cursor=cursor, **filters)

        statements += await _recorded(call)
    assert len(statements) == len(cursors)
    plain = [baseline_statement(sent) for sent in statements]

    async def squid(i: int) -> object:
        return await store.page_runs(limit=50, cursor=cursors[i % len(cursors)], **filters)

    async def base(i: int) -> object:
        query, args = plain[i % len(plain)]
        return [run_values(r) for r in await pool.fetch(query, *args)]

    for i in range(len(cursors)):  # the same pages
        page = await store.page_runs(limit=50, cursor=cursors[i], **filters)
        got_base: Any = await base(i)
        # (The store reads limit + 1 runs, as does the baseline, and returns limit.)
        assert [r.id for r in page.runs] == [r[0] for r in got_base][: len(page.runs)]

    got = await squid(1)
    plans = await _indexes(pool, statements[1 % len(statements)])
    out_rows = []
    for conc in (1, 16):
        # Past five executions per connection, so a generic plan, if
        # PostgreSQL picks one, is what gets timed.
        warm = list(range(16 * 8))
        live.start(f"page_runs {label} c={conc} warm-up", 2 * len(warm))
        await h.timed(squid, warm, 16, live)
        await h.timed(base, warm, 16, live)
        live.start(f"page_runs {label} c={conc}", 2 * calls)
        out_rows += await h.compare(
            ("baseline: plain SQL + decode", base),
            ("squidmesh page_runs", squid),
            list(range(calls)),
            conc,
            live,
            rounds,
        )
    return {
        "shape": label,
        "filters": {k: str(v) for k, v in filters.items()},
        "pages_cycled": len(cursors),
        "returned": len(getattr(got, "runs", [])),
        "indexes": plans,
        "rows": out_rows,
    }


async def _counts(
    pool: asyncpg.Pool,
    store: RunStore,
    rows: int,
    calls: int,
    live: h.LiveLine,
    rounds: int,
) -> dict[str, Any]:
    # The last ~50,000 runs (about the last six days of the load's timeline).
    after = T0 + STEP * max(rows - 50_000, 0)
    (statement,) = await _recorded(lambda: store.count_runs_by_status(created_after=after))
    query, args = statement

    async def squid(_: int) -> dict[RunStatus, int]:
        return await store.count_runs_by_status(created_after=after)

    async def base(_: int) -> dict[RunStatus, int]:
        counts = dict.fromkeys(RunStatus, 0)
        for status, n in await pool.fetch(query, *args):
            counts[RunStatus(status)] = n
        return counts

    assert await squid(0) == await base(0)
    plans = await _indexes(pool, statement)
    bounded = sum((await squid(0)).values())
    full_ms = []
    for _ in range(3):
        t0 = time.perf_counter()
        total = sum((await store.count_runs_by_status()).values())
        full_ms.append((time.perf_counter() - t0) * 1000)
    assert total == rows
    out_rows = []
    for conc in (1, 16):
        warm = list(range(16 * 6))
        live.start(f"count_runs_by_status c={conc} warm-up", 2 * len(warm))
        await h.timed(squid, warm, 16, live)
        await h.timed(base, warm, 16, live)
        live.start(f"count_runs_by_status c={conc}", 2 * calls)
        out_rows += await h.compare(
            ("baseline: the same SQL", base),
            ("squidmesh count_runs_by_status", squid),
            list(range(calls)),
            conc,
            live,
            rounds,
        )
    return {
        "created_after": after.isoformat(),
        "runs_counted": bounded,
        "indexes": plans,
        "full_table_ms": round(h.median(full_ms), 1),
        "full_table_runs": rows,
        "rows": out_rows,
    }


def describe(result: dict[str, Any]) -> str:
    lines = []
    table_rows = []
    for shape in result["pages"]:
        idx = shape["indexes"]
        lines.append(
            f"page_runs({shape['shape']}), 50 of {result['rows_in_table']:,} runs, "
            f"{shape['pages_cycled']} pages cycled; custom plan: {', '.join(idx['custom'])}; "
            f"generic plan: {', '.join(idx['generic'])}"
        )
        table_rows += [(shape["shape"], *_cells(r)) for r in shape["rows"]]
    counts = result["counts"]
    if counts is not None:
        idx = counts["indexes"]
        lines.append(
            f"count_runs_by_status(created_after=...) over {counts['runs_counted']:,} runs; "
            f"custom plan: {', '.join(idx['custom'])}; generic plan: {', '.join(idx['generic'])}"
        )
        lines.append(
            f"count_runs_by_status() over the whole table ({counts['full_table_runs']:,} runs): "
            f"{counts['full_table_ms']} ms (median of 3)"
        )
        table_rows += [("count_runs_by_status", *_cells(r)) for r in counts["rows"]]
    lines.append(
        h.table(("shape", "conc", "variant", "ops/s", "p50 ms", "p99 ms", "ratio"), table_rows)
    )
    return "\n".join(lines)


def _cells(r: dict[str, Any]) -> tuple[object, ...]:
    ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
    return (r["concurrency"], r["variant"], r["ops_per_s"], r["p50_ms"], r["p99_ms"], ratio)
