"""The transition log, the change feed, ``wait_for`` and ``claim_runs``.

``python -m benchmarks.bench_feed [--dsn URL] [--quick] [--only PART]
[--runs N] [--rounds R]``, or as parts of ``python -m benchmarks``
(``--only transition_log`` etc.). Four parts, each on a fresh database:

- ``transition_log``: ``transition_run`` (runs moving running <-> retrying)
  with the runs_write trigger as shipped and with the same body minus the log's
  insert (the text between ``-- squidmesh:log`` and ``-- squidmesh:end-log``,
  cut from the shipped file, so the variant follows the file), in
  alternating rounds; the ratio is with / without. The shipped body is put
  back at the end.
- ``feed``: one consumer (``store.changes()``) on a store of its own while 16
  writer tasks on another store and pool move runs for a fixed time. Figures:
  changes written and delivered per second, and the latency from the write's
  return (``time.perf_counter()`` right after ``transition_run`` returns,
  keyed by the returned run's ``(id, version)``) to the consumer's receipt of
  that change. Three wake-up set-ups; and a catch-up read of the whole window
  afterwards, with no writer.
- ``wait_for``: the latency from the finishing commit (``perf_counter()``
  right after ``transition_run(..., "completed")`` returns) to ``wait_for``
  returning, with 1 waiter (repeated, a random 20-270 ms pause between the
  waiter's start and the commit) and with 1,000 concurrent waiters, each on
  its own run, finished one by one by a single writer and in one burst by 16
  writers. Three paths: the writer is the waiting store (its commit is
  observed in process); another store on another pool with LISTEN on both
  (the writer's watcher ticks after its commit, the tick's NOTIFY wakes the
  waiting store); another store with no LISTEN anywhere (the waiting store
  polls every 0.25 s).
- ``claim_runs``: runs claimed per second by 1, 4 and 16 concurrent claimer
  tasks, each calling ``claim_runs(limit=1 or 10)`` until it gets nothing,
  over a queue of pending runs loaded beforehand; against the very statement
  ``claim_runs`` sends, through raw asyncpg (its records, no ``Run`` built),
  in alternating rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast
from uuid import UUID

import asyncpg

from squidmesh import RunChange, RunStore
from squidmesh._queries import SQL
from squidmesh._values import NO_CHANGES

from . import _harness as h
from . import bench_state_machine

#: The --only names of this module's parts.
PARTS: Final = ("transition_log", "feed", "wait_for", "claim_runs")
_WORKFLOW: Final = bench_state_machine._WORKFLOW
_LOG_START: Final = "-- squidmesh:log"
_LOG_END: Final = "-- squidmesh:end-log"
_clock = time.perf_counter
Key = tuple[UUID, int]

_INSERT_RUNS: Final = """\
INSERT INTO squidmesh.runs (id, workflow, trigger, status, inserted_at, updated_at)
SELECT gen_random_uuid(), $1, 'manual', $2, clock_timestamp(), clock_timestamp()
FROM generate_series(1, $3::int)
RETURNING id"""


@dataclass(frozen=True)
class Sizes:
    """How much each part does (``of(quick)`` gives the suite's defaults)."""

    runs: int  # transition_log: transitions per variant and concurrency
    rounds: int
    concurrencies: list[int]
    feed_seconds: float
    wait_samples: int  # 1-waiter samples per path
    claim_queue: int
    feed_writers: int = 16
    waiters: int = 1000
    claimers: tuple[int, ...] = (1, 4, 16)
    batches: tuple[int, ...] = (1, 10)
    claim_rounds: int = 2

    @classmethod
    def of(
        cls,
        quick: bool,
        *,
        runs: int | None = None,
        rounds: int | None = None,
        concurrencies: list[int] | None = None,
    ) -> Sizes:
        return cls(
            runs=runs or (600 if quick else 6000),
            rounds=rounds or (3 if quick else 5),
            concurrencies=concurrencies or [1, 16],
            feed_seconds=2.0 if quick else 10.0,
            wait_samples=12 if quick else 60,
            claim_queue=600 if quick else 5000,
        )


async def run(part: str, dsn: str, sizes: Sizes, live: h.LiveLine) -> dict[str, Any]:
    """Run one part on the (fresh, migrated) database ``dsn``."""
    if part == "transition_log":
        return await run_transition_log(dsn, sizes)
    if part == "feed":
        return await run_feed(dsn, sizes, live)
    if part == "wait_for":
        return await run_wait_for(dsn, sizes, live)
    if part == "claim_runs":
        return await run_claim_runs(dsn, sizes, live)
    raise ValueError(f"no part {part!r}: one of {', '.join(PARTS)}")


def describe(part: str, result: dict[str, Any]) -> str:
    return {
        "transition_log": describe_transition_log,
        "feed": describe_feed,
        "wait_for": describe_wait_for,
        "claim_runs": describe_claim_runs,
    }[part](result)


# -- transition_log -------------------------------------------------------------


def without_log(body: str) -> str:
    """The runs_write file's text minus the log's insert: the lines from the
    ``-- squidmesh:log`` marker to the ``-- squidmesh:end-log`` one."""
    try:
        start = body.index(_LOG_START)
        end = body.index(_LOG_END, start)
    except ValueError:
        raise RuntimeError(
            f"sql/functions/runs_write.sql has no {_LOG_START} ... {_LOG_END} markers: "
            "benchmarks/bench_feed.py cannot cut the log's insert out of it"
        ) from None
    start = body.rindex("\n", 0, start) + 1
    end = body.index("\n", end) + 1
    cut = body[:start] + body[end:]
    if "run_transitions" in cut.split("$$")[1]:
        raise RuntimeError("runs_write.sql still writes the log outside its markers")
    return cut


async def run_transition_log(dsn: str, sizes: Sizes) -> dict[str, Any]:
    shipped = bench_state_machine._shipped()
    rows = await bench_state_machine.run(
        dsn,
        sizes.runs,
        sizes.rounds,
        sizes.concurrencies,
        variants={"shipped (with the log)": shipped, "without the log": without_log(shipped)},
    )
    watcher_rows = await _watcher_cost(dsn, sizes)
    return {"runs": sizes.runs, "rounds": sizes.rounds, "rows": rows, "watcher": watcher_rows}


async def _watcher_cost(dsn: str, sizes: Sizes) -> list[dict[str, Any]]:
    """transition_run from a store with a ``listen_dsn`` (``RunStore.connect``'s
    default: after its writes, its watcher makes the ticks whose NOTIFY wakes
    other processes) against a store without, on one pool, the body as shipped."""
    pool = await h.open_pool(dsn)
    plain = RunStore(pool, workflows=[_WORKFLOW])
    ticking = RunStore(pool, workflows=[_WORKFLOW], listen_dsn=dsn)
    rows: list[dict[str, Any]] = []
    try:
        ids = await _insert_runs(pool, "running", max(sizes.concurrencies) * 8)
        state = dict.fromkeys(ids, "running")

        def toggler(store: RunStore) -> Callable[[UUID], Awaitable[None]]:
            async def toggle(run_id: UUID) -> None:
                to = "retrying" if state[run_id] == "running" else "running"
                state[run_id] = to
                await store.transition_run(run_id, to)

            return toggle

        variants = {
            "with listen_dsn (its watcher ticks)": toggler(ticking),
            "without listen_dsn": toggler(plain),
        }
        await variants["with listen_dsn (its watcher ticks)"](ids[0])
        await _until(lambda: _listening(ticking), "the store's LISTEN")
        for concurrency in sizes.concurrencies:
            timings: dict[str, list[h.Timing]] = {name: [] for name in variants}
            items = list(itertools.islice(itertools.cycle(ids), sizes.runs // sizes.rounds))
            per_task = [items[i::concurrency] for i in range(concurrency)]
            for r in range(sizes.rounds):
                order = list(variants.items())
                for name, fn in order if r % 2 == 0 else order[::-1]:
                    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
                        await pool.execute("CHECKPOINT")  # as in bench_state_machine
                    timings[name].append(await bench_state_machine._timed_partitioned(fn, per_task))
                    # The watcher's last tick (50 ms after the last write) is
                    # not left to the next round.
                    await asyncio.sleep(0.1)
            names = list(variants)
            ratios = [
                a.ops_per_s / b.ops_per_s
                for a, b in zip(timings[names[0]], timings[names[1]], strict=True)
            ]
            for name in names:
                summary = h.Summary.of(timings[name])
                rows.append(
                    {
                        "concurrency": concurrency,
                        "store": name,
                        "ops_per_s": round(summary.ops_per_s, 1),
                        "p50_ms": round(summary.p50_ms, 4),
                        "p99_ms": round(summary.p99_ms, 4),
                        "ratio": round(h.median(ratios), 3) if name == names[0] else None,
                    }
                )
    finally:
        await ticking.aclose()
        await plain.aclose()
        await pool.close()
    return rows


def _cells(r: dict[str, Any], name: str) -> list[object]:
    ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
    return [r["concurrency"], r[name], r["ops_per_s"], r["p50_ms"], r["p99_ms"], ratio]


def describe_transition_log(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            "transition_log: transition_run (running <-> retrying) with runs_write as shipped,"
            " as a ratio to the same body without the log's insert"
            f" ({result['runs']} calls per variant in {result['rounds']} alternating rounds;"
            " target: ratio >= 0.9 at c1 and c16):",
            h.table(
                ["conc", "trigger", "ops/s", "p50 ms", "p99 ms", "ratio"],
                [_cells(r, "trigger") for r in result["rows"]],
            ),
            "the same calls (body as shipped) from a store with a listen_dsn"
            " (RunStore.connect's default; after its writes its watcher calls feed_tick,"
            " at most every 5 ms, and makes a tick at most every 50 ms) as a ratio to a"
            " store without one, on one pool:",
            h.table(
                ["conc", "store", "ops/s", "p50 ms", "p99 ms", "ratio"],
                [_cells(r, "store") for r in result["watcher"]],
            ),
        ]
    )


# -- shared ----------------------------------------------------------------------


async def _insert_runs(pool: asyncpg.Pool, status: str, count: int) -> list[UUID]:
    """``count`` runs of the benchmark's workflow, inserted in ``status`` (one
    statement; the insert trigger logs each run's creation)."""
    rows = await pool.fetch(_INSERT_RUNS, _WORKFLOW.name, status, count)
    return [r["id"] for r in rows]


async def _feed_end(store: RunStore) -> str:
    """A position after every change readable now."""
    position: str | None = None
    while True:
        page = await store.read_changes(position, limit=10_000)
        position = page.position
        if not page.changes:
            return position


async def _until(check: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = _clock() + within
    while not check():
        if _clock() > deadline:
            raise RuntimeError(f"benchmark: {what} did not happen in {within} s")
        await asyncio.sleep(0.005)


def _generator(feed: AsyncIterator[RunChange]) -> AsyncGenerator[RunChange, None]:
    """``changes()`` is an async generator (annotated as an iterator): closed on exit."""
    return cast("AsyncGenerator[RunChange, None]", feed)


def _listening(store: RunStore) -> bool:
    # The watcher's flag, kept for tests and this benchmark.
    return bool(store._watch.listening)


def _latency_figures(samples_s: Sequence[float]) -> dict[str, Any]:
    ns = sorted(int(s * 1e9) for s in samples_s)
    return {
        "samples": len(ns),
        "p50_ms": round(h.percentile(ns, 0.5), 3),
        "p99_ms": round(h.percentile(ns, 0.99), 3),
        "max_ms": round(ns[-1] / 1e6, 3) if ns else None,
    }


# -- feed -------------------------------------------------------------------------

# (label, the writers' store listens, the consumer's store listens)
_FEED_SETUPS: Final = (
    ("LISTEN on both stores", True, True),
    ("writers without LISTEN", False, True),
    ("no LISTEN (consumer polls)", False, False),
)


async def run_feed(dsn: str, sizes: Sizes, live: h.LiveLine) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for label, writer_listens, consumer_listens in _FEED_SETUPS:
        rows.append(
            await _feed_once(
                dsn, sizes, live, label, writer_listens, consumer_listens, catch_up=not rows
            )
        )
    return {"writers": sizes.feed_writers, "seconds": sizes.feed_seconds, "rows": rows}


async def _feed_once(
    dsn: str,
    sizes: Sizes,
    live: h.LiveLine,
    label: str,
    writer_listens: bool,
    consumer_listens: bool,
    *,
    catch_up: bool,
) -> dict[str, Any]:
    writers = sizes.feed_writers
    consumer_pool = await h.open_pool(dsn, size=4)
    writer_pool = await h.open_pool(dsn, size=writers)
    consumer = RunStore(
        consumer_pool, workflows=[_WORKFLOW], listen_dsn=dsn if consumer_listens else None
    )
    writer = RunStore(
        writer_pool, workflows=[_WORKFLOW], listen_dsn=dsn if writer_listens else None
    )
    consumer_task: asyncio.Task[None] | None = None
    try:
        ids = await _insert_runs(writer_pool, "running", writers * 4)
        state = dict.fromkeys(ids, "running")

        async def toggle(run_id: UUID) -> Key:
            to = "retrying" if state[run_id] == "running" else "running"
            state[run_id] = to
            moved = await writer.transition_run(run_id, to)
            return moved.id, moved.version

        # Warm-up: every run moves once (and a LISTENing writer's watcher starts).
        for run_id in ids:
            await toggle(run_id)
        if writer_listens:
            await _until(lambda: _listening(writer), "the writers' LISTEN")
        start = await _feed_end(consumer)

        commits: dict[Key, float] = {}
        deliveries: dict[Key, float] = {}

        async def consume() -> None:
            async with contextlib.aclosing(_generator(consumer.changes(start))) as feed:
                async for change in feed:
                    deliveries[(change.run_id, change.run_version)] = _clock()

        consumer_task = asyncio.create_task(consume())
        if consumer_listens:
            await _until(lambda: _listening(consumer), "the consumer's LISTEN")
        await asyncio.sleep(0.3)  # the consumer has read what there was and waits

        live.start(f"feed: {label}, {writers} writers", int(sizes.feed_seconds * 5000))
        t0 = _clock()
        deadline = t0 + sizes.feed_seconds

        async def write(mine: list[UUID]) -> None:
            i = 0
            while _clock() < deadline:
                key = await toggle(mine[i % len(mine)])
                commits[key] = _clock()
                i += 1
                live.done += 1

        async with asyncio.TaskGroup() as group:
            for w in range(writers):
                group.create_task(write(ids[w::writers]))
        t1 = _clock()
        await live.stop()
        with contextlib.suppress(RuntimeError):
            await _until(lambda: all(k in deliveries for k in commits), "delivery", 30.0)
        t2 = _clock()
        consumer_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer_task
        consumer_task = None

        elapsed = t1 - t0
        delivered_in_window = sum(1 for k, t in deliveries.items() if k in commits and t <= t1)
        latencies = [deliveries[k] - t for k, t in commits.items() if k in deliveries]
        row: dict[str, Any] = {
            "setup": label,
            "writes": len(commits),
            "writes_per_s": round(len(commits) / elapsed, 1),
            "delivered_per_s": round(delivered_in_window / elapsed, 1),
            "undelivered_at_stop": len(commits) - delivered_in_window,
            "drain_ms": round((t2 - t1) * 1e3, 1),
            "missing": sum(1 for k in commits if k not in deliveries),
            **_latency_figures(latencies),
        }
        if catch_up:
            row["catch_up"] = await _catch_up(dsn, start, set(commits))
        return row
    finally:
        if consumer_task is not None:
            consumer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer_task
        await consumer.aclose()
        await writer.aclose()
        await consumer_pool.close()
        await writer_pool.close()


async def _catch_up(dsn: str, start: str, keys: set[Key]) -> dict[str, Any]:
    """A new consumer reads the window just written, with no writer running."""
    pool = await h.open_pool(dsn, size=2)
    store = RunStore(pool, workflows=[_WORKFLOW])
    try:
        seen = 0
        t0 = _clock()
        async with contextlib.aclosing(_generator(store.changes(start))) as feed:
            async for change in feed:
                if (change.run_id, change.run_version) in keys:
                    seen += 1
                    if seen == len(keys):
                        break
        elapsed = _clock() - t0
        return {"changes": seen, "seconds": round(elapsed, 3), "per_s": round(seen / elapsed, 1)}
    finally:
        await store.aclose()
        await pool.close()


def describe_feed(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = [
        f"feed: one consumer (store.changes(), its own store and pool) while "
        f"{result['writers']} writer tasks (another store, a pool of {result['writers']}) move "
        f"runs running <-> retrying for {result['seconds']:g} s; latency = the consumer's "
        "receipt - the return of the transition_run that wrote the change:",
        h.table(
            [
                "wake-ups",
                "writes/s",
                "delivered/s",
                "behind at stop",
                "drain ms",
                "p50 ms",
                "p99 ms",
                "max ms",
                "missing",
            ],
            [
                [
                    r["setup"],
                    r["writes_per_s"],
                    r["delivered_per_s"],
                    r["undelivered_at_stop"],
                    r["drain_ms"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["max_ms"],
                    r["missing"],
                ]
                for r in rows
            ],
        ),
        "delivered/s: changes written in the window that the consumer received in it; "
        "behind at stop: written but not yet received when the writers stopped; "
        "drain: until the consumer had them all.",
    ]
    caught = [r["catch_up"] for r in rows if "catch_up" in r]
    if caught:
        c = caught[0]
        lines.append(
            f"catch-up: a new consumer read the {c['changes']:,} changes of the first window "
            f"with no writer running in {c['seconds']:.2f} s: {c['per_s']:,.0f} changes/s"
        )
    return "\n".join(lines)


# -- wait_for ----------------------------------------------------------------------

# (label, how the writer reaches the waiting store)
_WAIT_PATHS: Final = (
    ("same store (observe)", "same"),
    ("other store, LISTEN/NOTIFY", "notify"),
    ("other store, polling 0.25 s", "poll"),
)


async def run_wait_for(dsn: str, sizes: Sizes, live: h.LiveLine) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for label, path in _WAIT_PATHS:
        rows += await _wait_path(dsn, sizes, live, label, path)
    return {"waiters": sizes.waiters, "samples": sizes.wait_samples, "rows": rows}


async def _wait_path(
    dsn: str, sizes: Sizes, live: h.LiveLine, label: str, path: str
) -> list[dict[str, Any]]:
    writer_pool = await h.open_pool(dsn)
    waiter_pool = writer_pool if path == "same" else await h.open_pool(dsn, size=4)
    listen = dsn if path == "notify" else None
    waiting = RunStore(waiter_pool, workflows=[_WORKFLOW], listen_dsn=listen)
    writer = (
        waiting
        if path == "same"
        else RunStore(writer_pool, workflows=[_WORKFLOW], listen_dsn=listen)
    )
    rng = random.Random(12)
    rows: list[dict[str, Any]] = []

    async def wait(run_id: UUID) -> float:
        run = await waiting.wait_for(run_id, timeout=60)
        woke = _clock()
        if run.status != "completed":
            raise RuntimeError(f"wait_for returned {run.status}")
        return woke

    try:
        # Warm-up: both watchers started (and LISTENing, on the notify path).
        (warm,) = await _insert_runs(writer_pool, "running", 1)
        warm_task = asyncio.create_task(wait(warm))
        await asyncio.sleep(0.05)
        await writer.transition_run(warm, "completed")
        await warm_task
        if path == "notify":
            await _until(lambda: _listening(waiting) and _listening(writer), "LISTEN")

        # 1 waiter at a time.
        ids = await _insert_runs(writer_pool, "running", sizes.wait_samples)
        live.start(f"wait_for: {label}, 1 waiter", len(ids))
        single: list[float] = []
        for run_id in ids:
            task = asyncio.create_task(wait(run_id))
            # The watcher reads (and may tick) when a waiter registers: a pause
            # over a whole poll period (0.25 s) and several tick periods (50 ms)
            # spreads the commit over their phases.
            await asyncio.sleep(rng.uniform(0.02, 0.27))
            await writer.transition_run(run_id, "completed")
            committed = _clock()
            single.append(await task - committed)
            live.done += 1
        await live.stop()
        rows.append({"path": label, "waiters": 1, "finish": "-", **_latency_figures(single)})

        # 1,000 waiters, finished one by one, then in a burst.
        for finish, writers in (("one by one", 1), ("burst, 16 writers", 16)):
            ids = await _insert_runs(writer_pool, "running", sizes.waiters)
            tasks = {run_id: asyncio.create_task(wait(run_id)) for run_id in ids}
            await asyncio.sleep(0.5)  # every waiter registered and its run read
            if any(t.done() for t in tasks.values()):
                raise RuntimeError("a waiter returned before its run finished")
            live.start(f"wait_for: {label}, {sizes.waiters} waiters, {finish}", len(ids))
            commits: dict[UUID, float] = {}

            async def finish_runs(mine: list[UUID], commits: dict[UUID, float]) -> None:
                for run_id in mine:
                    await writer.transition_run(run_id, "completed")
                    commits[run_id] = _clock()
                    live.done += 1

            t0 = _clock()
            async with asyncio.TaskGroup() as group:
                for w in range(writers):
                    group.create_task(finish_runs(ids[w::writers], commits))
            finishing_s = _clock() - t0
            woke = {run_id: await task for run_id, task in tasks.items()}
            await live.stop()
            rows.append(
                {
                    "path": label,
                    "waiters": sizes.waiters,
                    "finish": finish,
                    "finishing_s": round(finishing_s, 3),
                    **_latency_figures([woke[r] - commits[r] for r in ids]),
                }
            )
    finally:
        await waiting.aclose()
        if writer is not waiting:
            await writer.aclose()
        await writer_pool.close()
        if waiter_pool is not writer_pool:
            await waiter_pool.close()
    return rows


def describe_wait_for(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            "wait_for: latency from the finishing commit (right after transition_run(...,"
            " 'completed') returns) to wait_for returning; 1 waiter: "
            f"{result['samples']} samples, each waiter started 20-270 ms before the commit; "
            f"{result['waiters']:,} waiters, each on its own run, finished one by one by one "
            "writer task or in a burst by 16 (finishing s: how long the writes took). "
            "Target: p50 under 50 ms.",
            h.table(
                ["path", "waiters", "finished", "finishing s", "p50 ms", "p99 ms", "max ms"],
                [
                    [
                        r["path"],
                        r["waiters"],
                        r["finish"],
                        r.get("finishing_s"),
                        r["p50_ms"],
                        r["p99_ms"],
                        r["max_ms"],
                    ]
                    for r in result["rows"]
                ],
            ),
            "same store: the commit is handed to the store's watcher in process (no query);"
            " LISTEN/NOTIFY: the writing store's watcher makes a tick (at most one per 50 ms)"
            " whose NOTIFY wakes the waiting store, which reads the feed and the runs;"
            " polling: the waiting store reads the feed every 0.25 s.",
        ]
    )


# -- claim_runs ---------------------------------------------------------------------


async def run_claim_runs(dsn: str, sizes: Sizes, live: h.LiveLine) -> dict[str, Any]:
    pool = await h.open_pool(dsn)
    store = RunStore(pool, workflows=[_WORKFLOW])
    rows: list[dict[str, Any]] = []

    async def by_store(limit: int) -> int:
        return len(await store.claim_runs(limit=limit))

    async def raw(limit: int) -> int:
        return len(await pool.fetch(SQL.claim_runs, limit, *NO_CHANGES))

    variants: list[tuple[str, Callable[[int], Awaitable[int]]]] = [
        ("squidmesh claim_runs", by_store),
        ("same SQL, raw", raw),
    ]
    try:
        for claimers in sizes.claimers:
            for batch in sizes.batches:
                results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
                for r in range(sizes.claim_rounds):
                    for name, fn in variants if r % 2 == 0 else variants[::-1]:
                        await _fill_queue(pool, sizes.claim_queue)
                        live.start(
                            f"claim_runs: {claimers} claimers, limit {batch}, {name}",
                            sizes.claim_queue,
                        )
                        drained = await _drain(fn, claimers, batch, live)
                        await live.stop()
                        # Every run claimed (none pending) and as many returned as
                        # there were runs: each was claimed exactly once.
                        pending = await pool.fetchval(
                            "SELECT count(*) FROM squidmesh.runs WHERE status = 'pending'"
                        )
                        drained["once"] = pending == 0 and drained["claimed"] == sizes.claim_queue
                        results[name].append(drained)
                ratios = [
                    s["runs_per_s"] / b["runs_per_s"]
                    for s, b in zip(results[variants[0][0]], results[variants[1][0]], strict=True)
                ]
                for name, _ in variants:
                    lat = sorted(x for res in results[name] for x in res["latencies_ns"])
                    rows.append(
                        {
                            "claimers": claimers,
                            "batch": batch,
                            "variant": name,
                            "runs_per_s": round(
                                h.median([res["runs_per_s"] for res in results[name]]), 1
                            ),
                            "claims_per_s": round(
                                h.median([res["claims_per_s"] for res in results[name]]), 1
                            ),
                            "p50_ms": round(h.percentile(lat, 0.5), 4),
                            "p99_ms": round(h.percentile(lat, 0.99), 4),
                            "all_claimed_once": all(res["once"] for res in results[name]),
                            "ratio": round(h.median(ratios), 3) if name == variants[0][0] else None,
                        }
                    )
    finally:
        await store.aclose()
        await pool.close()
    return {"queue": sizes.claim_queue, "rounds": sizes.claim_rounds, "rows": rows}


async def _fill_queue(pool: asyncpg.Pool, count: int) -> None:
    """Exactly ``count`` pending runs (and nothing else), the same start for
    every timing: the tables emptied (no dead rows for autovacuum to visit
    during the next timing), vacuumed and analysed, and a checkpoint (so that
    every timing pays the same full-page writes)."""
    await pool.execute("TRUNCATE squidmesh.runs, squidmesh.run_transitions CASCADE")
    await _insert_runs(pool, "pending", count)
    await pool.execute("VACUUM (ANALYZE) squidmesh.runs, squidmesh.run_transitions")
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await pool.execute("CHECKPOINT")


async def _drain(
    claim: Callable[[int], Awaitable[int]], claimers: int, batch: int, live: h.LiveLine
) -> dict[str, Any]:
    """Claimer tasks each claim ``batch`` at a time until a claim returns none."""
    latencies: list[int] = []
    counts: list[int] = []

    async def claimer() -> None:
        got = 0
        while True:
            t0 = time.perf_counter_ns()
            n = await claim(batch)
            if n == 0:
                break
            latencies.append(time.perf_counter_ns() - t0)
            got += n
            live.done += n
        counts.append(got)

    t0 = _clock()
    async with asyncio.TaskGroup() as group:
        for _ in range(claimers):
            group.create_task(claimer())
    wall = _clock() - t0
    claimed = sum(counts)
    return {
        "claimed": claimed,
        "runs_per_s": claimed / wall,
        "claims_per_s": len(latencies) / wall,
        "latencies_ns": latencies,
    }


def describe_claim_runs(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"claim_runs: claimer tasks each calling claim_runs(limit=batch) until it gets "
            f"nothing, over a queue of {result['queue']:,} pending runs (refilled, vacuumed "
            f"and checkpointed before every timing; {result['rounds']} alternating rounds per "
            "variant). "
            "runs/s = queue / wall time; p50/p99 per claim that got runs; ratio = squidmesh / "
            "the same statement through raw asyncpg (records, no Run built); once = every run was "
            "claimed exactly once.",
            h.table(
                [
                    "claimers",
                    "batch",
                    "variant",
                    "runs/s",
                    "claims/s",
                    "p50 ms",
                    "p99 ms",
                    "ratio",
                    "once",
                ],
                [
                    [
                        r["claimers"],
                        r["batch"],
                        r["variant"],
                        r["runs_per_s"],
                        r["claims_per_s"],
                        r["p50_ms"],
                        r["p99_ms"],
                        "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
                        "yes" if r["all_claimed_once"] else "NO",
                    ]
                    for r in result["rows"]
                ],
            ),
        ]
    )


# -- standalone -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_feed")
    parser.add_argument("--dsn", help="a server (default: an embedded durable one)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument(
        "--only", action="append", choices=PARTS, help="run only this part (repeatable)"
    )
    parser.add_argument(
        "--runs", type=int, help="transition_log: transitions per variant (default 6000)"
    )
    parser.add_argument("--rounds", type=int, help="transition_log: rounds (default 5)")
    args = parser.parse_args(argv)
    sizes = Sizes.of(args.quick, runs=args.runs, rounds=args.rounds)
    parts = [p for p in PARTS if not args.only or p in args.only]

    async def go() -> None:
        live = h.LiveLine()
        async with h.server(args.dsn) as (admin_dsn, _):
            for part in parts:
                async with h.fresh_database(admin_dsn, part) as dsn:
                    result = await run(part, dsn, sizes, live)
                print()
                print(describe(part, result))

    asyncio.run(go())
    return 0


if __name__ == "__main__":
    sys.exit(main())
