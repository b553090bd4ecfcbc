"""The change feed against the cases that break the obvious designs.

Each test below is one case of the list in the design notes (feed.md, "Tests
the design must pass"), written so that it fails for the design that case
names: a cursor that is the largest sequence seen skips a late commit (1,
5); reading by transaction id up to the oldest running transaction reorders
one run's changes (2) and stalls behind any long transaction (3); a "high
water mark" that waits at a hole stalls while the hole's transaction is open
(1, 3); a position that keeps only a sequence and recomputes its window
skips a late commit after a restart (5); tickers racing each other make
windows that overlap (6). The soak (7) mixes all of it.

Transactions are controlled by hand on raw asyncpg connections (a
transaction held open, ``UPDATE squidmesh.runs SET status = ...``: the
database's trigger logs every status change, whoever sends it). A change is
readable once a tick after its commit exists and a read makes one when the
newest is older than 50 ms, so a consumer reads in a loop until what it
expects has arrived, bounded by ``TIMEOUT_S``: never an assertion on how
long it took. "Nothing more" is checked with a marker: a run created after
every other transaction ended is the last change of the log, so a consumer
that has read up to it has read everything else.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from squidmesh import (
    InvalidArgument,
    InvalidPosition,
    RunChange,
    RunStatus,
    RunStore,
    state_machine,
)
from tests.concurrency.conftest import TIMEOUT_S
from tests.integration.workflows import ETL_DAILY, INVOICE_REMINDER

ROOT = Path(__file__).resolve().parents[2]
ETL = ETL_DAILY.name
INVOICE = INVOICE_REMINDER.name
# Between two reads of a consumer that found nothing new (a polling loop,
# bounded by TIMEOUT_S; not a synchronisation).
POLL_S = 0.01

Key = tuple[UUID, int]
Connect = Callable[[], Awaitable[asyncpg.Connection]]


def key(change: RunChange) -> Key:
    return (change.run_id, change.run_version)


def keys(changes: Iterable[RunChange]) -> list[Key]:
    return [key(c) for c in changes]


def window_of(position: str) -> tuple[str, str, str]:
    """(tick, window end, seq) of a position: "1.<tick>.<end>.<seq>"; end is
    empty between windows."""
    version, tick, end, seq = position.split(".")
    assert version == "1", position
    return tick, end, seq


def mid_window(position: str) -> bool:
    return window_of(position)[1] != ""


class Consumer:
    """A reader of the feed that keeps its position and what it was given."""

    def __init__(
        self, store: RunStore, after: str | None = None, *, workflow: str | None = None
    ) -> None:
        self.store = store
        self.position = after
        self.workflow = workflow
        self.seen: list[RunChange] = []

    async def read(self, limit: int = 500) -> list[RunChange]:
        page = await self.store.read_changes(self.position, workflow=self.workflow, limit=limit)
        assert isinstance(page.position, str)
        self.seen.extend(page.changes)
        self.position = page.position
        return page.changes

    async def until(
        self, done: Callable[[list[RunChange]], bool], what: str, *, limit: int = 500
    ) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not done(self.seen):
            got = await self.read(limit)
            if done(self.seen):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: not delivered within {TIMEOUT_S} s; delivered: {keys(self.seen)}"
                )
            if len(got) < limit:
                await asyncio.sleep(POLL_S)

    async def until_seen(self, *wanted: Key, limit: int = 500) -> None:
        expected = set(wanted)
        await self.until(
            lambda seen: expected <= {key(c) for c in seen}, f"{sorted(expected)}", limit=limit
        )


@pytest.fixture
async def connect(dsn: str) -> AsyncIterator[Connect]:
    """Opens raw connections (closed after the test, open transactions rolled back)."""
    opened: list[asyncpg.Connection] = []

    async def open_one() -> asyncpg.Connection:
        conn = await asyncpg.connect(dsn, server_settings={"lock_timeout": f"{TIMEOUT_S}s"})
        opened.append(conn)
        return conn

    try:
        yield open_one
    finally:
        for conn in opened:
            try:
                await asyncio.wait_for(conn.close(), timeout=TIMEOUT_S)
            except TimeoutError:
                conn.terminate()


async def set_status(conn: asyncpg.Connection, run_id: UUID, status: str) -> int:
    """A status change by plain SQL (the trigger logs it); the run's new version."""
    version = await conn.fetchval(
        "UPDATE squidmesh.runs SET status = $2 WHERE id = $1 RETURNING version", run_id, status
    )
    assert version is not None
    return int(version)


async def current_xid(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT pg_current_xact_id()::text::bigint"))


async def log_keys(pool: asyncpg.Pool, workflow: str | None = None) -> list[Key]:
    rows = await pool.fetch(
        "SELECT run_id, run_version FROM squidmesh.run_transitions"
        " WHERE $1::text IS NULL OR workflow = $1 ORDER BY seq",
        workflow,
    )
    return [(r["run_id"], r["run_version"]) for r in rows]


async def log_statuses(pool: asyncpg.Pool) -> dict[Key, tuple[str | None, str]]:
    rows = await pool.fetch(
        "SELECT run_id, run_version, from_status, to_status FROM squidmesh.run_transitions"
    )
    return {(r["run_id"], r["run_version"]): (r["from_status"], r["to_status"]) for r in rows}


def assert_exactly_once_in_version_order(
    delivered: list[RunChange], log: list[Key], statuses: dict[Key, tuple[str | None, str]]
) -> None:
    """The delivered changes are the log's, each once, each run's in version order,
    each with the statuses the log holds (not those of a rolled-back change that
    had the same version)."""
    counts = Counter(keys(delivered))
    twice = [k for k, n in counts.items() if n > 1]
    assert not twice, f"delivered more than once: {twice[:5]}"
    missing = set(log) - set(counts)
    extra = set(counts) - set(log)
    assert not missing, f"never delivered ({len(missing)}): {sorted(missing)[:5]}"
    assert not extra, f"delivered but not in the log: {sorted(extra)[:5]}"
    last: dict[UUID, int] = {}
    for change in delivered:
        previous = last.get(change.run_id, 0)
        assert change.run_version > previous, (
            f"run {change.run_id}: version {change.run_version} after {previous}"
        )
        last[change.run_id] = change.run_version
        from_status, to_status = statuses[key(change)]
        assert (change.from_status, change.to_status) == (
            None if from_status is None else RunStatus(from_status),
            RunStatus(to_status),
        ), change


# -- 1. a late commit ---------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 500])
async def test_a_late_commit_is_delivered_once_after_it_commits(
    store: RunStore, pool: asyncpg.Pool, connect: Connect, limit: int
) -> None:
    a = await store.create_run(ETL_DAILY, {})
    b = await store.create_run(ETL_DAILY, {})
    feed = Consumer(store)
    await feed.until_seen((a.id, 1), (b.id, 1), limit=limit)

    t1, t2 = await connect(), await connect()
    tx1 = t1.transaction()
    await tx1.start()
    try:
        # T1 writes first (it draws the smaller sequence number) and stays open;
        # T2 writes after it and commits.
        assert await set_status(t1, a.id, "running") == 2
        async with t2.transaction():
            assert await set_status(t2, b.id, "running") == 2
        seqs = {
            r["run_id"]: r["seq"]
            for r in await t1.fetch(
                "SELECT run_id, seq FROM squidmesh.run_transitions WHERE run_version = 2"
            )
        }
        assert seqs[a.id] < seqs[b.id], "the case needs T1's change to hold the smaller seq"

        # T2's change arrives while T1 is still open: nobody waits for the hole.
        await feed.until_seen((b.id, 2), limit=limit)
        assert (a.id, 2) not in keys(feed.seen)
        assert await t1.fetchval("SELECT pg_current_xact_id_if_assigned() IS NOT NULL")
    except BaseException:
        await tx1.rollback()
        raise
    await tx1.commit()

    # T1 arrives after its commit, although a change with a larger sequence
    # number was delivered before it.
    await feed.until_seen((a.id, 2), limit=limit)
    marker = await store.create_run(ETL_DAILY, {})
    await feed.until_seen((marker.id, 1), limit=limit)
    assert keys(feed.seen) == [(a.id, 1), (b.id, 1), (b.id, 2), (a.id, 2), (marker.id, 1)]
    late = feed.seen[3]
    assert (late.from_status, late.to_status, late.workflow) == (
        RunStatus.PENDING,
        RunStatus.RUNNING,
        ETL,
    )


async def test_many_late_commits_of_interleaved_transactions(
    store: RunStore, pool: asyncpg.Pool, connect: Connect
) -> None:
    """Eight transactions write in one order and commit in the reverse one,
    with a consumer reading between every two commits."""
    runs = [await store.create_run(ETL_DAILY, {}) for _ in range(8)]
    feed = Consumer(store)
    await feed.until_seen(*((r.id, 1) for r in runs))
    conns = [await connect() for _ in runs]
    transactions = [conn.transaction() for conn in conns]
    for conn, tx, run in zip(conns, transactions, runs, strict=True):
        await tx.start()
        await set_status(conn, run.id, "running")
    # The newest writer commits first; each commit is read before the next.
    for tx, run in zip(reversed(transactions), reversed(runs), strict=True):
        await tx.commit()
        await feed.until_seen((run.id, 2), limit=2)
    marker = await store.create_run(ETL_DAILY, {})
    await feed.until_seen((marker.id, 1))
    assert keys(feed.seen)[len(runs) :] == [(r.id, 2) for r in reversed(runs)] + [(marker.id, 1)]


# -- 2. one run, two writers --------------------------------------------------------------


@pytest.mark.parametrize("read_between", [False, True], ids=["one_read", "read_between"])
@pytest.mark.parametrize("limit", [1, 500])
async def test_one_runs_changes_come_in_version_order_when_the_later_writer_took_its_xid_first(
    store: RunStore, connect: Connect, read_between: bool, limit: int
) -> None:
    run = await store.create_run(ETL_DAILY, {})
    feed = Consumer(store)
    await feed.until_seen((run.id, 1))

    w2, w3 = await connect(), await connect()
    tx3 = w3.transaction()
    await tx3.start()
    try:
        # W3 takes its transaction id first and holds it.
        xid3 = await current_xid(w3)
        async with w2.transaction():
            assert await set_status(w2, run.id, "running") == 2
            xid2 = await current_xid(w2)
        assert xid3 < xid2
        if read_between:
            # v2 is delivered while the writer of v3 (the older xid) is open.
            await feed.until_seen((run.id, 2), limit=limit)
        assert await set_status(w3, run.id, "paused") == 3
    except BaseException:
        await tx3.rollback()
        raise
    await tx3.commit()
    await feed.until_seen((run.id, 3), limit=limit)

    mine = [c for c in feed.seen if c.run_id == run.id]
    assert [(c.run_version, c.from_status, c.to_status) for c in mine] == [
        (1, None, RunStatus.PENDING),
        (2, RunStatus.PENDING, RunStatus.RUNNING),
        (3, RunStatus.RUNNING, RunStatus.PAUSED),
    ]


# -- 3. a long unrelated transaction ------------------------------------------------------

# How long the unrelated transaction stays open while changes are delivered.
LONG_OPEN_S = 2.0


@pytest.mark.parametrize("elsewhere", ["own_table", "other_run"])
async def test_a_long_unrelated_transaction_does_not_stall_delivery(
    store: RunStore, pool: asyncpg.Pool, connect: Connect, elsewhere: str
) -> None:
    other = await store.create_run(ETL_DAILY, {})
    feed = Consumer(store)
    await feed.until_seen((other.id, 1))

    long = await connect()
    tx = long.transaction()
    await tx.start()
    try:
        # It writes (so it holds a transaction id older than every change
        # below), then stays open for seconds.
        if elsewhere == "own_table":
            await long.execute("CREATE TEMP TABLE scratch (x int)")
            await long.execute("INSERT INTO scratch VALUES (1)")
        else:
            await set_status(long, other.id, "running")
        long_xid = await current_xid(long)
        opened = time.monotonic()

        made: list[Key] = []
        while time.monotonic() - opened < LONG_OPEN_S or len(made) < 6:
            run = await store.create_run(ETL_DAILY, {})
            await store.transition_run(run.id, "running")
            made += [(run.id, 1), (run.id, 2)]
            # Each is delivered while the long transaction is still open.
            await feed.until_seen((run.id, 1), (run.id, 2))

        # It was open the whole time, and older than every change delivered.
        assert await current_xid(long) == long_xid
        running = await pool.fetchval(
            "SELECT $1::text::xid8 = ANY (ARRAY(SELECT pg_snapshot_xip(pg_current_snapshot())))",
            str(long_xid),
        )
        assert running
        xids = await pool.fetch(
            "SELECT xid::text::bigint AS x FROM squidmesh.run_transitions WHERE run_id = ANY($1)",
            [run_id for run_id, _ in made],
        )
        assert min(r["x"] for r in xids) > long_xid
    except BaseException:
        await tx.rollback()
        raise
    await tx.commit()

    marker = await store.create_run(ETL_DAILY, {})
    await feed.until_seen((marker.id, 1))
    expected = [(other.id, 1), *made]
    if elsewhere == "other_run":
        # Its own change arrives once, after it committed.
        expected.append((other.id, 2))
    assert keys(feed.seen) == [*expected, (marker.id, 1)]


# -- 4. rolled back -----------------------------------------------------------------------


class Boom(Exception):
    pass


async def test_rolled_back_changes_are_never_delivered(
    store: RunStore, pool: asyncpg.Pool, connect: Connect
) -> None:
    a, b, c = [await store.create_run(ETL_DAILY, {}) for _ in range(3)]
    feed = Consumer(store)
    await feed.until_seen((a.id, 1), (b.id, 1), (c.id, 1))
    conn = await connect()

    # A transaction rolled back.
    tx = conn.transaction()
    await tx.start()
    await set_status(conn, a.id, "running")
    await tx.rollback()

    # A savepoint rolled back inside a transaction that commits.
    async with conn.transaction():
        with pytest.raises(Boom):
            async with conn.transaction():
                await set_status(conn, b.id, "running")
                raise Boom
        await set_status(conn, c.id, "running")

    # A store write whose dispatch raises.
    async def dispatch(_conn: Any, _run: Any) -> None:
        raise Boom

    with pytest.raises(Boom):
        await store.transition_and_dispatch_run(a.id, "running", None, dispatch)

    # The rolled-back changes drew sequence numbers: the log has holes.
    seqs = [r["seq"] for r in await pool.fetch("SELECT seq FROM squidmesh.run_transitions")]
    assert max(seqs) > len(seqs)

    # The same (run, version) pairs then change for real, to other statuses.
    await store.transition_run(a.id, "failed")
    await store.transition_run(b.id, "cancelled")
    marker = await store.create_run(ETL_DAILY, {})
    await feed.until_seen((marker.id, 1))

    S = RunStatus
    assert [(c.run_id, c.run_version, c.from_status, c.to_status) for c in feed.seen[3:]] == [
        (c.id, 2, S.PENDING, S.RUNNING),
        (a.id, 2, S.PENDING, S.FAILED),
        (b.id, 2, S.PENDING, S.CANCELLED),
        (marker.id, 1, None, S.PENDING),
    ]


# -- 5. a consumer killed mid-window ------------------------------------------------------


class Restarting:
    """A consumer that handles changes one at a time, saves the position of the
    last one it handled (or, after a whole page, the page's), and dies at random
    points: its next life starts from what it saved, nothing else."""

    def __init__(self, store: RunStore, rng: random.Random, saved: str | None = None) -> None:
        self.store = store
        self.rng = rng
        self.saved = saved
        self.handled: list[RunChange] = []
        self.deaths = 0
        self.deaths_mid_window = 0
        self.max_limit = 6
        self.die_rate = 0.3

    def die(self) -> None:
        self.deaths += 1
        if self.saved is not None and mid_window(self.saved):
            # It saved a change's position: inside a window.
            self.deaths_mid_window += 1

    async def life(self, stop: Callable[[], bool]) -> None:
        """One life: reads from the saved position until it dies or ``stop()``."""
        position = self.saved
        deadline = time.monotonic() + TIMEOUT_S
        while not stop():
            if time.monotonic() > deadline:
                raise AssertionError(f"not done within {TIMEOUT_S} s: {keys(self.handled)}")
            page = await self.store.read_changes(
                position, limit=self.rng.randint(1, self.max_limit)
            )
            if not page.changes:
                position = self.saved = page.position
                await asyncio.sleep(POLL_S)
                continue
            dies_after = (
                self.rng.randrange(len(page.changes)) if self.rng.random() < self.die_rate else None
            )
            for i, change in enumerate(page.changes):
                self.handled.append(change)
                self.saved = change.position
                if i == dies_after:
                    self.die()
                    return
            position = page.position
            if self.rng.random() < 0.5:
                self.saved = page.position

    async def run(self, stop: Callable[[], bool]) -> None:
        while not stop():
            await self.life(stop)

    def has(self, *wanted: Key) -> Callable[[], bool]:
        return lambda: set(wanted) <= set(keys(self.handled))


async def test_a_consumer_killed_mid_window_resumes_without_loss_or_duplicates(
    store: RunStore, pool: asyncpg.Pool, connect: Connect
) -> None:
    rng = random.Random(20250505)
    late = await store.create_run(ETL_DAILY, {})
    first = Consumer(store)
    await first.until_seen((late.id, 1))
    consumer = Restarting(store, rng, first.position)
    consumer.handled.extend(first.seen)

    t1 = await connect()
    tx1 = t1.transaction()
    await tx1.start()
    try:
        # A late commit: the smallest sequence number of what follows.
        await set_status(t1, late.id, "running")
        # A burst: one window (or a few) of 60 changes, read in pages of 1 to 6.
        runs = [await store.create_run(ETL_DAILY, {}) for _ in range(20)]
        for run in runs:
            await store.transition_run(run.id, "running")
        for run in runs:
            await store.transition_run(run.id, rng.choice(["completed", "paused"]))

        # The consumer gets about half of the burst, dying now and then...
        burst = [(r.id, v) for r in runs for v in (1, 2, 3)]
        await consumer.run(lambda: len(consumer.handled) >= 35)
        # ... and is killed mid-window: its window has more changes after the
        # one it saved (it handles one change at a time until that is so).
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            assert time.monotonic() < deadline, "no window of the burst spans two changes"
            saved = consumer.saved
            peek = await store.read_changes(saved, limit=1)
            if (
                saved is not None
                and mid_window(saved)
                and peek.changes
                and window_of(peek.changes[0].position)[:2] == window_of(saved)[:2]
            ):
                break
            consumer.handled.extend(peek.changes)
            consumer.saved = peek.position
            if not peek.changes:
                await asyncio.sleep(POLL_S)
        consumer.die()
        assert not set(burst) <= set(keys(consumer.handled))
    except BaseException:
        await tx1.rollback()
        raise
    # While it is down, the late transaction commits and other readers make
    # the ticks after it.
    await tx1.commit()
    other = Consumer(store)
    await other.until_seen((late.id, 2))
    more = [await store.create_run(ETL_DAILY, {}) for _ in range(5)]
    for run in more:
        await store.transition_run(run.id, "running")
    marker = await store.create_run(ETL_DAILY, {})

    # It restarts from what it saved (mid-window), dying again at random.
    consumer.die_rate = 0.3
    consumer.max_limit = 6
    await consumer.run(consumer.has((marker.id, 1)))

    assert consumer.deaths_mid_window >= 2, (consumer.deaths, consumer.deaths_mid_window)
    assert_exactly_once_in_version_order(
        consumer.handled, await log_keys(pool), await log_statuses(pool)
    )
    # The other reader, who never died, got the same changes.
    await other.until_seen((marker.id, 1))
    assert sorted(keys(other.seen)) == sorted(keys(consumer.handled))


async def test_a_changes_consumer_cancelled_and_restarted_sees_each_change_once(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    """``changes`` in a task that is cancelled after a few changes, and
    started again from the position of the last one it handled, while a
    writer keeps changing runs."""
    rng = random.Random(7)
    handled: list[RunChange] = []
    saved: str | None = None
    marker: UUID | None = None
    marker_made = asyncio.Event()

    async def writer() -> None:
        nonlocal marker
        for _ in range(30):
            run = await store.create_run(ETL_DAILY, {})
            await store.transition_run(run.id, "running")
            await store.transition_run(run.id, rng.choice(["completed", "failed", "retrying"]))
            await asyncio.sleep(rng.random() * 0.01)
        marker = (await store.create_run(ETL_DAILY, {})).id
        marker_made.set()

    async def consume(stop_after: int, reached: asyncio.Event) -> None:
        nonlocal saved
        n = 0
        async for change in store.changes(saved, batch_size=rng.randint(1, 5)):
            handled.append(change)
            saved = change.position
            n += 1
            if n == stop_after or change.run_id == marker:
                reached.set()
                await asyncio.Event().wait()  # stuck until killed

    writing = asyncio.create_task(writer())
    lives = 0
    try:
        while marker is None or (marker, 1) not in keys(handled):
            reached = asyncio.Event()
            task = asyncio.create_task(consume(rng.randint(1, 12), reached))
            waits = {task, asyncio.create_task(reached.wait())}
            if not marker_made.is_set():
                # Killed when the marker is made too: a life that started
                # before knows no marker to stop at.
                waits.add(asyncio.create_task(marker_made.wait()))
            done, _ = await asyncio.wait(
                waits, timeout=TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
            assert done, f"no change within {TIMEOUT_S} s after {keys(handled)[-3:]}"
            for waiting in waits:
                waiting.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
            lives += 1
            if not task.cancelled():
                failure = task.exception()
                if failure is not None:
                    raise failure
        await writing
    finally:
        writing.cancel()
        await asyncio.gather(writing, return_exceptions=True)
    assert lives > 5
    assert_exactly_once_in_version_order(handled, await log_keys(pool), await log_statuses(pool))


# -- 6. concurrent tickers ----------------------------------------------------------------

# A ticker in another OS process: says "ready", waits for a line, calls
# feed_tick('0') until stdin has a second line (or closes), then prints the
# ids of the ticks it made (JSON).
TICKER = """
import asyncio, json, sys

import asyncpg


async def main(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    made = []
    try:
        loop = asyncio.get_running_loop()
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        stop = loop.run_in_executor(None, sys.stdin.readline)
        while not stop.done():
            tick = await conn.fetchval("SELECT squidmesh.feed_tick('0')")
            if tick is not None:
                made.append(tick)
        await stop
    finally:
        await conn.close()
    print(json.dumps(made), flush=True)


asyncio.run(main(sys.argv[1]))
"""

# Legal moves that never end a run.
LIVE_MOVES = {
    "pending": ["running"],
    "running": ["retrying", "paused"],
    "retrying": ["running"],
    "paused": ["running"],
}
N_PROCESS_TICKERS = 3
N_LOCAL_TICKERS = 6
N_WRITERS = 4
WRITES_PER_WRITER = 150

# The ticks, with tick 0 (not stored: the empty snapshot, where the feed
# starts), each with the next one.
TICK_PAIRS = """
WITH ticks AS (
    SELECT 0::bigint AS id, '1:1:'::pg_snapshot AS snapshot
    UNION ALL
    SELECT id, snapshot FROM squidmesh.feed_ticks
), t AS (
    SELECT id, snapshot,
           lead(id) OVER w AS next_id, lead(snapshot) OVER w AS next_snapshot
    FROM ticks WINDOW w AS (ORDER BY id)
)"""

# Pairs of consecutive ticks (i, j) with a transaction visible in i's snapshot
# and not in j's: the snapshots are not nested. Every xid from the smaller
# xmin to i's xmax is tried; below both xmins all are visible in both, from
# i's xmax on none is visible in i.
NOT_NESTED = (
    TICK_PAIRS
    + """
SELECT t.id, t.next_id, g.x
FROM t,
     LATERAL generate_series(
         least(pg_snapshot_xmin(t.snapshot), pg_snapshot_xmin(t.next_snapshot))::text::bigint,
         pg_snapshot_xmax(t.snapshot)::text::bigint - 1) AS g(x)
WHERE t.next_id IS NOT NULL
  AND pg_visible_in_snapshot(g.x::text::xid8, t.snapshot)
  AND NOT pg_visible_in_snapshot(g.x::text::xid8, t.next_snapshot)
LIMIT 10
"""
)

# Log rows not in exactly one window between consecutive ticks.
NOT_IN_ONE_WINDOW = (
    TICK_PAIRS
    + """
SELECT l.run_id, l.run_version, l.xid::text, count(t.id) AS windows
FROM squidmesh.run_transitions l
LEFT JOIN t ON t.next_snapshot IS NOT NULL
           AND pg_visible_in_snapshot(l.xid, t.next_snapshot)
           AND NOT pg_visible_in_snapshot(l.xid, t.snapshot)
GROUP BY l.run_id, l.run_version, l.xid
HAVING count(t.id) <> 1
LIMIT 10
"""
)


async def _start_ticker(dsn: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        TICKER,
        dsn,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=TIMEOUT_S)
    if line != b"ready\n":
        _, err = await proc.communicate()
        raise AssertionError(f"ticker did not start: {line!r}\n{err.decode()}")
    return proc


async def _say(proc: asyncio.subprocess.Process, line: bytes) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line)
    await proc.stdin.drain()


async def test_concurrent_tickers_make_nested_snapshots(
    store: RunStore, pool: asyncpg.Pool, dsn: str, connect: Connect
) -> None:
    runs = [await store.create_run(ETL_DAILY, {}) for _ in range(N_WRITERS * 8)]
    first_tick = int(await pool.fetchval("SELECT coalesce(max(id), 0) FROM squidmesh.feed_ticks"))
    rng = random.Random(6)
    writers = [await connect() for _ in range(N_WRITERS)]
    tickers = [await connect() for _ in range(N_LOCAL_TICKERS)]
    stop = asyncio.Event()
    made_here: list[list[int]] = [[] for _ in tickers]

    async def write(conn: asyncpg.Connection, mine: list[UUID]) -> None:
        # Status changes in transactions of one to three changes, some held
        # open a moment (so that ticks see them running), some rolled back.
        # Only moves that keep a run alive, so that every move is legal.
        status = {run_id: "pending" for run_id in mine}
        for _ in range(WRITES_PER_WRITER):
            tx = conn.transaction()
            await tx.start()
            planned = dict(status)
            for run_id in rng.sample(mine, rng.randint(1, 3)):
                planned[run_id] = rng.choice(LIVE_MOVES[planned[run_id]])
                await set_status(conn, run_id, planned[run_id])
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() * 0.005)
            if rng.random() < 0.2:
                await tx.rollback()
            else:
                await tx.commit()
                status = planned

    async def tick(conn: asyncpg.Connection, made: list[int]) -> None:
        while not stop.is_set():
            answer = await conn.fetchval("SELECT squidmesh.feed_tick('0')")
            if answer is not None:
                # A tick's id, or -1: another ticker held the lock.
                made.append(int(answer))
            await asyncio.sleep(0)

    procs: list[asyncio.subprocess.Process] = []
    try:
        procs = list(await asyncio.gather(*(_start_ticker(dsn) for _ in range(N_PROCESS_TICKERS))))
        for proc in procs:
            await _say(proc, b"go\n")
        ticking = [
            asyncio.create_task(tick(conn, made))
            for conn, made in zip(tickers, made_here, strict=True)
        ]
        chunks = [[r.id for r in runs[i::N_WRITERS]] for i in range(N_WRITERS)]
        await asyncio.wait_for(
            asyncio.gather(*(write(c, m) for c, m in zip(writers, chunks, strict=True))),
            timeout=TIMEOUT_S,
        )
        stop.set()
        await asyncio.wait_for(asyncio.gather(*ticking), timeout=TIMEOUT_S)
        made_there: list[list[int]] = []
        for proc in procs:
            await _say(proc, b"stop\n")
            out, err = await asyncio.wait_for(proc.communicate(), timeout=TIMEOUT_S)
            assert proc.returncode == 0, err.decode()
            made_there.append(json.loads(out))
    finally:
        stop.set()
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    # One more tick, now that every writer has ended: it covers whatever
    # committed after the last one (or there is nothing left to cover).
    await pool.fetchval("SELECT squidmesh.feed_tick('0')")

    assert await pool.fetch(NOT_NESTED) == []
    assert await pool.fetch(NOT_IN_ONE_WINDOW) == []
    ids = [r["id"] for r in await pool.fetch("SELECT id FROM squidmesh.feed_ticks ORDER BY id")]
    assert ids == list(range(1, len(ids) + 1)), "tick ids have gaps"
    answers = made_here + made_there
    made = sorted(t for m in answers for t in m if t > 0)
    # Each tick was made by exactly one caller, and they raced: several won,
    # in both kinds of ticker, and some found the lock taken.
    assert len(made) >= 20
    assert made == [i for i in ids if first_tick < i <= made[-1]]
    assert all(t > 0 or t == -1 for m in answers for t in m)
    assert sum(1 for m in answers if any(t > 0 for t in m)) >= 2, answers
    assert any(t > 0 for m in made_there for t in m), "no tick came from another process"
    assert any(t == -1 for m in answers for t in m), "the tickers never met"

    # The windows were not all trivial: transactions were running at ticks.
    running_at_ticks = await pool.fetchval(
        "SELECT count(*) FROM squidmesh.feed_ticks t, pg_snapshot_xip(t.snapshot) x"
        " WHERE t.id > $1",
        first_tick,
    )
    assert running_at_ticks > 0


# -- 7. the soak --------------------------------------------------------------------------

SOAK_WRITERS = 6
SOAK_TRANSACTIONS = 120  # per writer
SOAK_RUNS = 48


async def test_soak_writers_commit_roll_back_and_sleep_while_consumers_restart(
    store: RunStore, pool: asyncpg.Pool, connect: Connect
) -> None:
    rng = random.Random(77)
    workflows = [ETL, INVOICE]
    created: list[tuple[UUID, str]] = []
    for i in range(SOAK_RUNS):
        wf = workflows[i % 2]
        run = await store.create_run(wf, {} if wf == ETL else {"account_id": f"a{i}"})
        created.append((run.id, wf))
    run_ids = [run_id for run_id, _ in created]
    writers = [await connect() for _ in range(SOAK_WRITERS)]
    writing = True
    outcome = Counter[str]()

    async def write(conn: asyncpg.Connection, seed: int) -> None:
        wrng = random.Random(seed)
        for _ in range(SOAK_TRANSACTIONS):
            chosen = sorted(wrng.sample(run_ids, wrng.randint(1, 3)))
            tx = conn.transaction()
            await tx.start()
            try:
                # Rows locked in id order: writers never deadlock.
                rows = await conn.fetch(
                    "SELECT id, status FROM squidmesh.runs WHERE id = ANY($1)"
                    " ORDER BY id FOR UPDATE",
                    chosen,
                )
                for row in rows:
                    moves = sorted(state_machine.allowed_transitions(row["status"]))
                    if not moves:
                        # A finished run starts again (an operator's repair).
                        await conn.execute("SET LOCAL squidmesh.unchecked_moves = on")
                        moves = [RunStatus.PENDING]
                    if wrng.random() < 0.2:
                        # A change inside a savepoint that is rolled back.
                        sp = conn.transaction()
                        await sp.start()
                        await set_status(conn, row["id"], wrng.choice(moves))
                        await sp.rollback()
                    else:
                        await set_status(conn, row["id"], wrng.choice(moves))
                if wrng.random() < 0.15:
                    await asyncio.sleep(wrng.random() * 0.1)  # held open a while
            except BaseException:
                await tx.rollback()
                raise
            if wrng.random() < 0.2:
                await tx.rollback()
                outcome["rolled back"] += 1
            else:
                await tx.commit()
                outcome["committed"] += 1
            if wrng.random() < 0.1:
                await asyncio.sleep(wrng.random() * 0.02)

    consumers = [Restarting(store, random.Random(100 + i)) for i in range(3)]
    for consumer in consumers:
        consumer.max_limit = 40
        consumer.die_rate = 0.2
    filtered = Consumer(store, workflow=INVOICE)
    markers: dict[str, UUID] = {}

    def finished(consumer: Restarting) -> Callable[[], bool]:
        return lambda: not writing and consumer.has(*((m, 1) for m in markers.values()))()

    async def consume_filtered() -> None:
        while writing or INVOICE not in markers:
            await filtered.read(limit=rng.randint(1, 30))
            await asyncio.sleep(POLL_S)
        await filtered.until_seen((markers[INVOICE], 1))

    consuming = [asyncio.create_task(c.run(finished(c))) for c in consumers]
    consuming.append(asyncio.create_task(consume_filtered()))
    try:
        await asyncio.wait_for(
            asyncio.gather(*(write(c, i) for i, c in enumerate(writers))), timeout=TIMEOUT_S * 2
        )
        # Markers, after every writer's last transaction ended.
        markers[INVOICE] = (await store.create_run(INVOICE, {"account_id": "marker"})).id
        markers[ETL] = (await store.create_run(ETL, {})).id
        writing = False
        await asyncio.wait_for(asyncio.gather(*consuming), timeout=TIMEOUT_S * 2)
    finally:
        writing = False
        for task in consuming:
            task.cancel()
        await asyncio.gather(*consuming, return_exceptions=True)

    assert outcome["rolled back"] > 50 and outcome["committed"] > 300, outcome
    log = await log_keys(pool)
    statuses = await log_statuses(pool)
    assert len(log) > 700
    for consumer in consumers:
        assert consumer.deaths >= 3, consumer.deaths
        assert_exactly_once_in_version_order(consumer.handled, log, statuses)
    assert_exactly_once_in_version_order(filtered.seen, await log_keys(pool, INVOICE), statuses)
    assert {c.workflow for c in filtered.seen} == {INVOICE}


# -- the rest of the contract -------------------------------------------------------------


async def test_the_workflow_filter_delivers_that_workflows_changes_only(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    etl = [await store.create_run(ETL_DAILY, {}) for _ in range(3)]
    invoice = [await store.create_run(INVOICE_REMINDER, {"account_id": "a"}) for _ in range(3)]
    for run in etl + invoice:
        await store.transition_run(run.id, "running")
    marker_etl = await store.create_run(ETL_DAILY, {})
    marker_invoice = await store.create_run(INVOICE_REMINDER, {"account_id": "m"})

    only_etl = Consumer(store, workflow=ETL)
    only_invoice = Consumer(store, workflow=INVOICE)
    everything = Consumer(store)
    # Small pages: the filter is applied before the limit.
    await only_etl.until_seen((marker_etl.id, 1), limit=2)
    await only_invoice.until_seen((marker_invoice.id, 1), limit=2)
    await everything.until_seen((marker_etl.id, 1), (marker_invoice.id, 1), limit=2)

    assert {c.workflow for c in only_etl.seen} == {ETL}
    assert {c.workflow for c in only_invoice.seen} == {INVOICE}
    assert keys(only_etl.seen) == await log_keys(pool, ETL)
    assert keys(only_invoice.seen) == await log_keys(pool, INVOICE)
    assert sorted(keys(only_etl.seen + only_invoice.seen)) == sorted(keys(everything.seen))
    # A workflow with no runs: nothing, but the position still moves on.
    nobody = Consumer(store, workflow="no.such.workflow")
    before = nobody.position
    assert await nobody.read() == []
    assert nobody.position != before


async def test_reading_from_none_starts_at_the_beginning_of_the_log(
    store: RunStore, pool: asyncpg.Pool
) -> None:
    runs = [await store.create_run(ETL_DAILY, {}) for _ in range(4)]
    tail = Consumer(store)
    await tail.until_seen(*((r.id, 1) for r in runs))
    for run in runs:
        await store.transition_run(run.id, "running")
    await tail.until_seen(*((r.id, 2) for r in runs))
    # Many ticks later, None still means the first change ever logged.
    marker = await store.create_run(ETL_DAILY, {})
    await tail.until_seen((marker.id, 1))
    again = Consumer(store, None)
    await again.until_seen((marker.id, 1), limit=3)
    assert keys(again.seen) == await log_keys(pool)
    assert [c.from_status for c in again.seen[:4]] == [None] * 4
    assert keys(again.seen) == keys(tail.seen)


async def test_an_empty_feed_gives_a_position(store: RunStore) -> None:
    page = await store.read_changes(None)
    assert page.changes == []
    window_of(page.position)
    # Passed back, it reads on from there.
    page = await store.read_changes(page.position)
    assert page.changes == []
    run = await store.create_run(ETL_DAILY, {})
    feed = Consumer(store, page.position)
    await feed.until_seen((run.id, 1))
    assert keys(feed.seen) == [(run.id, 1)]


async def test_the_position_moves_on_when_a_page_is_empty(store: RunStore) -> None:
    start = await store.create_run(ETL_DAILY, {})
    feed = Consumer(store, workflow=ETL)
    await feed.until_seen((start.id, 1))
    position = feed.position
    # Changes this consumer filters out: its pages stay empty, its position moves.
    other = await store.create_run(INVOICE_REMINDER, {"account_id": "a"})
    await feed.until(lambda _: feed.position != position, "a new position")
    assert feed.seen == [feed.seen[0]]
    # The changes it skipped are behind it: a reader from its old position
    # without the filter gets them.
    behind = Consumer(store, position)
    await behind.until_seen((other.id, 1))
    # The new position still gets what follows.
    run = await store.create_run(ETL_DAILY, {})
    await feed.until_seen((run.id, 1))
    assert keys(feed.seen) == [(start.id, 1), (run.id, 1)]


@pytest.mark.parametrize(
    "position",
    ["abc", 123, "1.zz..0", "", "2.1..0", "1.1..5", "1.5.3.0", "1.5.5.0", b"1.1..0", "1.1.2"],
)
async def test_a_position_squidmesh_did_not_make_raises_invalid_position(
    store: RunStore, position: object
) -> None:
    with pytest.raises(InvalidPosition) as info:
        await store.read_changes(position)  # type: ignore[arg-type]
    assert info.value.position == position
    with pytest.raises(InvalidPosition):
        async for _ in store.changes(position):  # type: ignore[arg-type]
            pass


async def test_a_position_whose_tick_does_not_exist_raises_invalid_position(
    store: RunStore,
) -> None:
    with pytest.raises(InvalidPosition):
        await store.read_changes("1.fffffff..0")
    with pytest.raises(InvalidPosition):
        await store.read_changes("1.0.fffffff.0")


@pytest.mark.parametrize("limit", [0, -1, 10_001, True, "5", 1.5, None])
async def test_a_bad_limit_raises_invalid_argument(store: RunStore, limit: object) -> None:
    with pytest.raises(InvalidArgument):
        await store.read_changes(None, limit=limit)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        async for _ in store.changes(None, batch_size=limit):  # type: ignore[arg-type]
            pass


async def test_the_limits_bounds_are_accepted(store: RunStore) -> None:
    runs = [await store.create_run(ETL_DAILY, {}) for _ in range(3)]
    feed = Consumer(store)
    await feed.until_seen(*((r.id, 1) for r in runs), limit=1)
    assert (await store.read_changes(None, limit=10_000)).changes == feed.seen


async def test_head_position_skips_what_committed_before_it(store: RunStore) -> None:
    before = await store.create_run(ETL_DAILY, {})
    await asyncio.sleep(0.06)  # older than a tick interval: the head must tick past it
    head = await store.head_position()
    page = await store.read_changes(head)
    assert before.id not in {c.run_id for c in page.changes}
    after = await store.create_run(ETL_DAILY, {})
    seen: list[RunChange] = []
    deadline = time.monotonic() + 10
    position = head
    while after.id not in {c.run_id for c in seen}:
        assert time.monotonic() < deadline, "the change after the head never came"
        page = await store.read_changes(position)
        seen.extend(page.changes)
        position = page.position
        await asyncio.sleep(0.02)
    assert before.id not in {c.run_id for c in seen}
