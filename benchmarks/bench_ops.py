"""The run operations against raw asyncpg doing the same work in one statement.

For each operation the suite times, on the same server, the same pool
configuration (16 connections, ``reset=squidmesh.no_reset``, as
``RunStore.connect`` opens it) and in the same process:

* ``baseline``: raw asyncpg and the best plain SQL for the operation, one
  statement (a guarded ``UPDATE ... WHERE id = $1 AND status = ANY($3)
  RETURNING <columns>``, a single ``INSERT ... RETURNING``, ``SELECT
  <columns> WHERE id = $1``, ``... ORDER BY inserted_at DESC, id DESC LIMIT
  50`` on the composite index), returning the values squidmesh returns:
  asyncpg's UUIDs and aware datetimes, payload, context and last_error
  decoded into dicts with msgspec, as a tuple;
* ``squidmesh``: the public ``RunStore`` call;
* ``same SQL + decode, raw``: squidmesh's own statement through raw asyncpg,
  its row decoded by ``squidmesh._codec.decode_run`` and no other Python,
  which splits a gap into "the SQL costs more" and "the Python costs more";
* for ``transition_run`` also the textbook ``BEGIN; SELECT ... FOR UPDATE;
  UPDATE; COMMIT`` on the same pool and on a default asyncpg pool (which
  sends a reset query on every release), and squidmesh on a default pool.

Variants run in rounds with a rotating order, each round on fresh runs, so
that the drift of a noisy shared machine hits every variant alike; the
baseline and squidmesh always run back to back (in alternating order), and
the ratio is the median over the rounds of (variant ops/s) / (baseline
ops/s) of the same round.
"""

from __future__ import annotations

import cProfile
import pstats
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, LiteralString
from uuid import UUID

import asyncpg
import msgspec

from squidmesh import (
    Field,
    RunStatus,
    RunStore,
    Step,
    Transition,
    Trigger,
    Workflow,
    _codec,
    state_machine,
)
from squidmesh._ids import uuid7
from squidmesh._queries import SQL

from . import _harness as h

BENCH_WORKFLOW: Final = Workflow(
    "bench.invoice",
    triggers=[
        Trigger(
            "invoice_delivery",
            payload=[Field("account_id", str), Field("note", str, required=False)],
        )
    ],
    steps=[Step("load_invoice"), Step("send_email")],
    transitions=[
        Transition("load_invoice", on="ok", to="send_email"),
        Transition("send_email", on="ok", to="complete"),
    ],
)
PAYLOAD: Final = {"account_id": "acct-000042", "note": "second reminder"}
CONTEXT: Final = {"attempt": 1, "cursor": "2025-06-01T00:00:00Z", "ok": True}
LIST_WORKFLOW: Final = "bench.seed_3"
SOURCES_RUNNING: Final = list(state_machine.sources_of(RunStatus.RUNNING))
_encoder: Final = msgspec.json.Encoder()

# -- the raw baselines: one statement each ------------------------------------
#
# What a skilled user of asyncpg writes for the same operation on the same
# schema: the columns a Run holds (not *), one statement, and the values
# squidmesh returns: asyncpg's own UUIDs and aware datetimes (binary), the
# jsonb columns decoded into dicts with msgspec. The runs_write trigger
# belongs to the table, so it stamps version and updated_at for these
# UPDATEs too, as it does for squidmesh's.

RUN_COLUMNS: Final = (
    "id, workflow, trigger, status, payload, context, current_step, last_error, "
    "replayed_from_run_id, version, idempotency_key, inserted_at, updated_at"
)
SQL_INSERT: Final = f"""\
INSERT INTO squidmesh.runs (id, workflow, trigger, status, payload, current_step)
VALUES ($1, $2, $3, 'pending', $4::text::jsonb, $5)
RETURNING {RUN_COLUMNS}"""
SQL_GET: Final = f"SELECT {RUN_COLUMNS} FROM squidmesh.runs WHERE id = $1"
SQL_TRANSITION: Final = f"""\
UPDATE squidmesh.runs SET status = $2
WHERE id = $1 AND status = ANY($3::text[])
RETURNING {RUN_COLUMNS}"""
SQL_UPDATE: Final = f"""\
UPDATE squidmesh.runs SET context = $2::text::jsonb
WHERE id = $1
RETURNING {RUN_COLUMNS}"""
SQL_CANCEL: Final = f"""\
UPDATE squidmesh.runs SET
    status = CASE WHEN status IN ('pending', 'paused') THEN 'cancelled' ELSE 'cancelling' END,
    current_step = NULL
WHERE id = $1 AND status IN ('pending', 'paused', 'running', 'retrying')
RETURNING {RUN_COLUMNS}"""
SQL_LIST: Final = f"""\
SELECT {RUN_COLUMNS} FROM squidmesh.runs WHERE workflow = $1 AND status = $2
ORDER BY inserted_at DESC, id DESC LIMIT 50"""
SQL_LOCK: Final = "SELECT status FROM squidmesh.runs WHERE id = $1 FOR UPDATE"
SQL_TEXTBOOK_WRITE: Final = f"""\
UPDATE squidmesh.runs SET status = $2
WHERE id = $1
RETURNING {RUN_COLUMNS}"""
_json: Final = msgspec.json.decode


def run_values(r: asyncpg.Record) -> tuple[object, ...]:
    """A baseline's run: the values of a squidmesh ``Run``, as a tuple (the
    cheapest container), with payload, context and last_error decoded."""
    last_error = r[7]
    return (
        r[0],
        r[1],
        r[2],
        r[3],
        _json(r[4]),
        _json(r[5]),
        r[6],
        None if last_error is None else _json(last_error),
        r[8],
        r[9],
        r[10],
        r[11],
        r[12],
    )


def one_run(r: asyncpg.Record | None) -> tuple[object, ...] | None:
    return None if r is None else run_values(r)


# Bulk setup, outside the timed part.
SQL_SEED_PENDING: Final = """\
INSERT INTO squidmesh.runs (id, workflow, trigger, status, payload, current_step)
SELECT id, 'bench.invoice', 'invoice_delivery', 'pending', $2::text::jsonb, 'load_invoice'
FROM unnest($1::uuid[]) AS id"""
SQL_SEED_LIST: Final = """\
INSERT INTO squidmesh.runs (id, workflow, trigger, status, payload, inserted_at, updated_at)
SELECT gen_random_uuid(), 'bench.seed_' || (g % 10), 'manual',
       (ARRAY['completed', 'completed', 'completed', 'failed', 'running',
              'pending', 'cancelled', 'paused'])[1 + (g / 10) % 8],
       jsonb_build_object('account_id', 'acct-' || g),
       now() - g * interval '1 second', now() - g * interval '1 second'
FROM generate_series(1, $1) AS g"""


@dataclass
class Env:
    """The pools and stores the variants run on."""

    pool: asyncpg.Pool  # reset-free, as RunStore.connect opens it
    default_pool: asyncpg.Pool  # asyncpg's defaults: a reset query per release
    store: RunStore
    default_store: RunStore


Call = Callable[[Any], Awaitable[object]]


@dataclass
class Variant:
    name: str
    role: str  # "baseline", "squidmesh" or "extra"
    make: Callable[[Env], Call]


@dataclass
class OpBench:
    name: str
    prepare: Callable[[Env, int], Awaitable[Sequence[Any]]]
    variants: list[Variant]


async def pending_runs(env: Env, n: int) -> list[UUID]:
    """``n`` new pending runs in one statement (so that each timed move is legal)."""
    ids = [uuid7() for _ in range(n)]
    await env.pool.execute(SQL_SEED_PENDING, ids, _encoder.encode(PAYLOAD).decode())
    return ids


def cycling(count: int) -> Callable[[Env, int], Awaitable[Sequence[Any]]]:
    """Items that cycle over ``count`` existing pending runs (created once)."""
    cache: dict[int, list[UUID]] = {}

    async def prepare(env: Env, n: int) -> Sequence[Any]:
        key = id(env.pool)
        if key not in cache:
            cache[key] = await pending_runs(env, count)
        ids = cache[key]
        return [ids[i % count] for i in range(n)]

    return prepare


async def nothing(env: Env, n: int) -> Sequence[Any]:
    return range(n)


def _payload_text() -> str:
    return _encoder.encode(PAYLOAD).decode()


def _context_text() -> str:
    return _encoder.encode(CONTEXT).decode()


def _raw_insert(env: Env) -> Call:
    pool = env.pool

    async def call(_: object) -> object:
        return one_run(
            await pool.fetchrow(
                SQL_INSERT,
                uuid7(),
                "bench.invoice",
                "invoice_delivery",
                _payload_text(),
                "load_invoice",
            )
        )

    return call


def _raw(sql: str, *args: object) -> Callable[[Env], Call]:
    """The baseline: ``sql`` with the item (a run id) as $1, its run decoded."""

    def make(env: Env) -> Call:
        pool = env.pool

        async def call(uid: UUID) -> object:
            return one_run(await pool.fetchrow(sql, uid, *args))

        return call

    return make


def _same_sql(
    query: LiteralString, args: Callable[[Any], tuple[object, ...]], *, many: bool = False
) -> Callable[[Env], Call]:
    """squidmesh's own statement through raw asyncpg, its runs decoded the way
    the store decodes them (``_codec``), and no other Python around it."""

    def make(env: Env) -> Call:
        pool = env.pool
        decode = _codec.decode_run
        decode_many = _codec.decode_runs

        if many:

            async def call_many(item: Any) -> object:
                return decode_many(await pool.fetch(query, *args(item)))

            return call_many

        async def call(item: Any) -> object:
            row = await pool.fetchrow(query, *args(item))
            assert row is not None
            return decode(row)

        return call

    return make


def _raw_update(env: Env) -> Call:
    pool = env.pool

    async def call(uid: UUID) -> object:
        return one_run(await pool.fetchrow(SQL_UPDATE, uid, _context_text()))

    return call


def _textbook(pool_of: Callable[[Env], asyncpg.Pool]) -> Callable[[Env], Call]:
    def make(env: Env) -> Call:
        pool = pool_of(env)

        async def call(uid: UUID) -> object:
            async with pool.acquire() as conn, conn.transaction():
                status = await conn.fetchval(SQL_LOCK, uid)
                if status not in SOURCES_RUNNING:
                    raise RuntimeError(f"unexpected status {status}")
                return one_run(await conn.fetchrow(SQL_TEXTBOOK_WRITE, uid, "running"))

        return call

    return make


def _list_baseline(env: Env) -> Call:
    pool = env.pool

    async def call(_: object) -> object:
        return [run_values(r) for r in await pool.fetch(SQL_LIST, LIST_WORKFLOW, "running")]

    return call


NO_FIELDS: Final = (False, None, False, None, False, None)
SAME_SQL: Final = "same SQL + decode, raw"


def operations() -> list[OpBench]:
    """The benchmarked operations, each with its variants (baseline first)."""
    running = RunStatus.RUNNING
    return [
        OpBench(
            "create_run",
            nothing,
            [
                Variant("baseline: INSERT ... RETURNING", "baseline", _raw_insert),
                Variant(
                    "squidmesh",
                    "squidmesh",
                    lambda e: lambda _: e.store.create_run("bench.invoice", PAYLOAD),
                ),
                Variant(
                    SAME_SQL,
                    "extra",
                    _same_sql(
                        SQL.insert_run,
                        lambda _: (
                            uuid7(),
                            "bench.invoice",
                            "invoice_delivery",
                            _payload_text(),
                            "load_invoice",
                            None,
                        ),
                    ),
                ),
            ],
        ),
        OpBench(
            "get_run",
            cycling(512),
            [
                Variant("baseline: SELECT ... WHERE id", "baseline", _raw(SQL_GET)),
                Variant("squidmesh", "squidmesh", lambda e: lambda uid: e.store.get_run(uid)),
                Variant(SAME_SQL, "extra", _same_sql(SQL.get_run, lambda uid: (uid,))),
            ],
        ),
        OpBench(
            "transition_run",
            pending_runs,
            [
                Variant(
                    "baseline: guarded UPDATE",
                    "baseline",
                    _raw(SQL_TRANSITION, "running", SOURCES_RUNNING),
                ),
                Variant(
                    "squidmesh",
                    "squidmesh",
                    lambda e: lambda uid: e.store.transition_run(uid, running),
                ),
                Variant(
                    SAME_SQL,
                    "extra",
                    _same_sql(
                        SQL.transition_run_fast,
                        lambda uid: (uid, "running", *NO_FIELDS, SOURCES_RUNNING, None),
                    ),
                ),
                Variant(
                    "textbook BEGIN/FOR UPDATE/UPDATE/COMMIT", "extra", _textbook(lambda e: e.pool)
                ),
                Variant(
                    "textbook, default asyncpg pool", "extra", _textbook(lambda e: e.default_pool)
                ),
                Variant(
                    "squidmesh, default asyncpg pool",
                    "extra",
                    lambda e: lambda uid: e.default_store.transition_run(uid, running),
                ),
            ],
        ),
        OpBench(
            "update_run",
            cycling(512),
            [
                Variant(
                    "baseline: UPDATE ... RETURNING",
                    "baseline",
                    _raw_update,
                ),
                Variant(
                    "squidmesh",
                    "squidmesh",
                    lambda e: lambda uid: e.store.update_run(uid, context=CONTEXT),
                ),
                Variant(
                    SAME_SQL,
                    "extra",
                    _same_sql(
                        SQL.update_run,
                        lambda uid: (uid, True, _context_text(), False, None, False, None, None),
                    ),
                ),
            ],
        ),
        OpBench(
            "cancel_run",
            pending_runs,
            [
                Variant("baseline: guarded UPDATE", "baseline", _raw(SQL_CANCEL)),
                Variant("squidmesh", "squidmesh", lambda e: lambda uid: e.store.cancel_run(uid)),
                Variant(SAME_SQL, "extra", _same_sql(SQL.cancel_run_fast, lambda uid: (uid, None))),
            ],
        ),
        OpBench(
            "list_runs",
            nothing,
            [
                Variant("baseline: SELECT ... LIMIT 50", "baseline", _list_baseline),
                Variant(
                    "squidmesh",
                    "squidmesh",
                    lambda e: (
                        lambda _: e.store.list_runs(
                            workflow=LIST_WORKFLOW, status="running", limit=50
                        )
                    ),
                ),
                Variant(
                    SAME_SQL,
                    "extra",
                    _same_sql(
                        SQL.list_runs_by_workflow_status,
                        lambda _: ("running", None, None, None, 50, LIST_WORKFLOW),
                        many=True,
                    ),
                ),
            ],
        ),
    ]


# -- running ------------------------------------------------------------------


@dataclass
class VariantResult:
    op: str
    concurrency: int
    variant: str
    role: str
    summary: h.Summary
    ratio: float | None  # median over rounds of ops/s vs the baseline's
    statements: int | None = None
    round_ratios: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "concurrency": self.concurrency,
            "variant": self.variant,
            "role": self.role,
            "ops": self.summary.ops,
            "ops_per_s": round(self.summary.ops_per_s, 1),
            "p50_ms": round(self.summary.p50_ms, 4),
            "p99_ms": round(self.summary.p99_ms, 4),
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "round_ops_per_s": [round(x, 1) for x in self.summary.rounds],
            "round_ratios": [round(x, 3) for x in self.round_ratios],
            "statements": self.statements,
        }


async def open_env(
    dsn: str,
    *,
    size: int = h.POOL_SIZE,
    init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> Env:
    pool = await h.open_pool(dsn, size=size, init=init)
    default_pool = await h.open_pool(dsn, size=size, init=init, reset_free=False)
    return Env(
        pool=pool,
        default_pool=default_pool,
        store=RunStore(pool, workflows=[BENCH_WORKFLOW]),
        default_store=RunStore(default_pool, workflows=[BENCH_WORKFLOW]),
    )


async def close_env(env: Env) -> None:
    await env.pool.close()
    await env.default_pool.close()


async def seed_list_table(env: Env, rows: int) -> None:
    """Runs for list_runs to find: 10 workflows x 8 statuses."""
    await env.pool.execute(SQL_SEED_LIST, rows)
    await env.pool.execute("ANALYZE squidmesh.runs")


async def count_statements(dsn: str, bench: OpBench) -> dict[str, int]:
    """Statements one call of each variant sends (after warm-up), by variant name.

    Counted on a one-connection pool with asyncpg's query logger; a default
    pool's reset query counts, as it is a round trip of its own.
    """
    counter = h.StatementCounter()
    env = await open_env(dsn, size=1, init=counter.init)
    counts: dict[str, int] = {}
    try:
        for variant in bench.variants:
            items = list(await bench.prepare(env, 4))
            call = variant.make(env)
            for item in items[:3]:
                await call(item)
            counter.reset()
            await call(items[3])
            counts[variant.name] = counter.count
    finally:
        await close_env(env)
    return counts


async def run_ops(
    dsn: str,
    benches: Sequence[OpBench],
    concurrencies: Sequence[int],
    runs: int,
    rounds: int,
    live: h.LiveLine,
    *,
    seed_rows: int = 20_000,
) -> list[VariantResult]:
    """Time every variant of every operation at each concurrency, in rounds."""
    results: list[VariantResult] = []
    env = await open_env(dsn)
    try:
        if any(b.name == "list_runs" for b in benches):
            await seed_list_table(env, seed_rows)
        for bench in benches:
            counts = await count_statements(dsn, bench)
            for conc in concurrencies:
                results += await _run_block(env, bench, conc, runs, rounds, live, counts)
    finally:
        await close_env(env)
    return results


async def _run_block(
    env: Env,
    bench: OpBench,
    conc: int,
    runs: int,
    rounds: int,
    live: h.LiveLine,
    counts: dict[str, int],
) -> list[VariantResult]:
    per_round = max(conc, runs // rounds)
    warm = max(4 * conc, min(200, per_round))
    variants = bench.variants
    calls = {v.name: v.make(env) for v in variants}
    live.start(f"{bench.name} c={conc} warm-up", warm * len(variants))
    for v in variants:
        # Prepares each statement on every connection the timed part will use.
        await h.timed(calls[v.name], await bench.prepare(env, warm), conc, live)
    live.start(f"{bench.name} c={conc}", per_round * rounds * len(variants))
    timings: dict[str, list[h.Timing]] = {v.name: [] for v in variants}
    for r in range(rounds):
        for v in _round_order(variants, r):
            items = await bench.prepare(env, per_round)
            live.label = f"{bench.name} c={conc} r{r + 1}/{rounds} {v.name}"[:52]
            timings[v.name].append(await h.timed(calls[v.name], items, conc, live))
    live.label = f"{bench.name} c={conc} done"
    await live.stop()
    base = timings[variants[0].name]
    out = []
    for v in variants:
        mine = timings[v.name]
        ratios = [m.ops_per_s / b.ops_per_s for m, b in zip(mine, base, strict=True)]
        out.append(
            VariantResult(
                op=bench.name,
                concurrency=conc,
                variant=v.name,
                role=v.role,
                summary=h.Summary.of(mine),
                ratio=None if v.role == "baseline" else h.median(ratios),
                statements=counts.get(v.name),
                round_ratios=ratios,
            )
        )
    return out


def _round_order(variants: Sequence[Variant], r: int) -> list[Variant]:
    """Round ``r``'s order: the baseline and squidmesh run back to back, in
    alternating order, so the ratio compares two neighbours in time; the pair
    and the extras rotate, so no variant always runs first or last."""
    base, squid, *extras = variants
    assert (base.role, squid.role) == ("baseline", "squidmesh")
    pair = [base, squid] if r % 2 == 0 else [squid, base]
    units = [pair, *([v] for v in extras)]
    shift = r % len(units)
    return [v for unit in units[shift:] + units[:shift] for v in unit]


def results_table(results: Sequence[VariantResult]) -> str:
    rows = [
        (
            r.op if r.role == "baseline" else "",
            r.concurrency,
            r.variant,
            r.summary.ops_per_s,
            r.summary.p50_ms,
            r.summary.p99_ms,
            "-" if r.ratio is None else f"{r.ratio:.2f}",
            r.statements,
        )
        for r in results
    ]
    return h.table(
        ("operation", "conc", "variant", "ops/s", "p50 ms", "p99 ms", "ratio", "stmts"), rows
    )


# -- profile ------------------------------------------------------------------

_CATEGORIES: Final = (
    ("waiting on I/O (event loop poll)", ("select.epoll", "selectors.py:", "'poll' of")),
    ("socket syscalls (send/recv)", ("_socket.socket", "'recv' of", "'send' of")),
    ("squidmesh (Python)", ("/squidmesh/",)),
    ("msgspec (encode/decode, Structs)", ("msgspec",)),
    ("asyncpg (driver)", ("asyncpg",)),
    ("asyncio (event loop, tasks)", ("/asyncio/", "_asyncio", "contextvars")),
    ("benchmark harness", ("/benchmarks/",)),
)


def _category(key: tuple[str, int, str]) -> str:
    filename, _, func = key
    where = f"{filename}:{func}"
    for name, needles in _CATEGORIES:
        if any(n in where for n in needles):
            return name
    return "other (builtins, uuid, ...)"


async def profile_op(dsn: str, op_name: str, n: int) -> tuple[str, dict[str, float]]:
    """Run the squidmesh side of one operation at concurrency 1 under cProfile.

    Returns a report and the share of profiled time per category. cProfile's
    own overhead inflates Python-heavy code, so the Python shares are upper
    bounds.
    """
    bench = next((b for b in operations() if b.name == op_name), None)
    if bench is None:
        raise SystemExit(f"--profile: no operation {op_name!r}")
    variant = next(v for v in bench.variants if v.role == "squidmesh")
    env = await open_env(dsn)
    try:
        if op_name == "list_runs":
            await seed_list_table(env, 20_000)
        call = variant.make(env)
        await h.timed(call, await bench.prepare(env, 200), 1)
        items = await bench.prepare(env, n)
        profiler = cProfile.Profile()
        profiler.enable()
        timing = await h.timed(call, items, 1)
        profiler.disable()
    finally:
        await close_env(env)
    stats = pstats.Stats(profiler)
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    shares: dict[str, float] = {}
    top: list[tuple[float, str]] = []
    for key, value in raw.items():
        tottime = float(value[2])
        cat = _category(key)
        shares[cat] = shares.get(cat, 0.0) + tottime
        top.append((tottime, f"{key[0].rsplit('/', 1)[-1]}:{key[1]}({key[2]})"))
    total = sum(shares.values()) or 1.0
    rows = sorted(
        ((c, t / total * 100, t / n * 1e6) for c, t in shares.items()), key=lambda r: -r[1]
    )
    report = [
        f"profile of squidmesh {op_name}, {n} calls at concurrency 1 "
        f"({timing.ops_per_s:,.0f} ops/s under the profiler)",
        h.table(("where the time went (tottime)", "share %", "us/op"), rows),
        "",
        "top functions by own time:",
    ]
    top.sort(reverse=True)
    report += [f"  {t / n * 1e6:8.2f} us/op  {name}" for t, name in top[:15]]
    return "\n".join(report), {c: round(t / total * 100, 2) for c, t in shares.items()}
