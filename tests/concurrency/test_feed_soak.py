"""The change feed under load: every committed change exactly once, in order per run.

Sixteen tasks make 2,000 random legal transitions on a shared set of runs
through one store: most commit at once; some are rolled back by a dispatch
that raises; some hold their transaction open for a while in a slow dispatch
(and some of those then raise); some dispatches move a second run, so a
transaction that took its id early may write a run's next version after a
younger one wrote the version before. Two consumers on another store (another
"process": its own pool, woken by the NOTIFY of the writers' ticks) follow
the feed meanwhile: one iterates ``changes``, one loops on ``read_changes``
and restarts at random from the position it saved. At the end each has every
committed change exactly once, each run's in version order, and nothing that
was rolled back; a consumer restarted from a position in the middle gets the
rest again, without loss or duplicates.

A marker run created after every writer finished is the last change of the
log: a consumer that has it has everything.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from squidmesh import InvalidTransition, Run, RunChange, RunStatus, RunStore, state_machine
from tests.concurrency.conftest import TIMEOUT_S
from tests.concurrency.test_feed_cases import (
    Consumer,
    Restarting,
    assert_exactly_once_in_version_order,
    key,
    keys,
    log_keys,
    log_statuses,
    mid_window,
)
from tests.integration.workflows import ETL_DAILY, WORKFLOWS

WRITERS = 16
TRANSITIONS = 2_000
LIVE_RUNS = 64
# Moves to a terminal status are rarer, so that runs live a while.
TERMINAL_WEIGHT = 0.15
# The share of attempts that roll back (a raising dispatch), that hold their
# transaction open (a slow dispatch), and that do both.
ROLLED_BACK = 0.12
HELD_OPEN = 0.06
HELD_THEN_ROLLED_BACK = 0.03
CHAINED = 0.08
HOLD_S = (0.01, 0.12)
# Moves that keep a run alive (a chained move makes one of these).
LIVE_MOVES = {
    "pending": ["running"],
    "running": ["retrying", "paused"],
    "retrying": ["running"],
    "paused": ["running"],
}


class Boom(Exception):
    pass


@pytest.fixture
async def writer_store(dsn: str) -> AsyncIterator[RunStore]:
    async with RunStore.connect(dsn, workflows=WORKFLOWS, max_size=WRITERS + 4) as store:
        yield store


@pytest.fixture
async def reader_store(dsn: str) -> AsyncIterator[RunStore]:
    async with RunStore.connect(dsn, workflows=WORKFLOWS, max_size=4) as store:
        yield store


class Workload:
    """The writers: what they tried, and what committed (as the store said)."""

    def __init__(self, store: RunStore, rng: random.Random) -> None:
        self.store = store
        self.rng = rng
        self.live: list[UUID] = []
        self.status: dict[UUID, RunStatus] = {}
        self.committed: set[tuple[UUID, int]] = set()
        self.attempts = 0
        self.outcomes = Counter[str]()

    async def create(self) -> UUID:
        run = await self.store.create_run(ETL_DAILY, {})
        self.committed.add((run.id, run.version))
        self.status[run.id] = run.status
        return run.id

    def target(self, status: RunStatus) -> RunStatus:
        moves = sorted(state_machine.allowed_transitions(status))
        weights = [TERMINAL_WEIGHT if state_machine.is_terminal(m) else 1.0 for m in moves]
        return self.rng.choices(moves, weights)[0]

    async def move(self, run_id: UUID, to: RunStatus) -> Run:
        roll = self.rng.random()
        if roll < ROLLED_BACK:
            kind, hold, fail = "rolled back", 0.0, True
        elif roll < ROLLED_BACK + HELD_OPEN:
            kind, hold, fail = "held open", self.rng.uniform(*HOLD_S), False
        elif roll < ROLLED_BACK + HELD_OPEN + HELD_THEN_ROLLED_BACK:
            kind, hold, fail = "held, rolled back", self.rng.uniform(*HOLD_S), True
        elif roll < ROLLED_BACK + HELD_OPEN + HELD_THEN_ROLLED_BACK + CHAINED:
            return await self.chained(run_id, to)
        else:
            run = await self.store.transition_run(run_id, to)
            self.outcomes["committed"] += 1
            return run

        async def dispatch(_conn: Any, _run: Run) -> None:
            if hold:
                await asyncio.sleep(hold)  # the transaction stays open meanwhile
            if fail:
                raise Boom

        try:
            run = await self.store.transition_and_dispatch_run(run_id, to, None, dispatch)
        except Boom:
            self.outcomes[kind] += 1
            raise
        self.outcomes[kind] += 1
        return run

    async def chained(self, run_id: UUID, to: RunStatus) -> Run:
        """A move whose dispatch also moves another run: the transaction holds
        its id (taken with the first run's lock) while it waits for the second
        run's lock, which a younger transaction may hold. Locks are taken in id
        order, so chains never deadlock."""
        others = [other for other in self.live if other > run_id]
        second = self.rng.choice(others) if others else None
        moved: list[tuple[UUID, int, str]] = []

        async def dispatch(conn: asyncpg.Connection, _run: Run) -> None:
            await asyncio.sleep(self.rng.uniform(0, HOLD_S[0]))
            if second is None:
                return
            status = await conn.fetchval(
                "SELECT status FROM squidmesh.runs WHERE id = $1 FOR UPDATE", second
            )
            if status not in LIVE_MOVES:
                return
            target = self.rng.choice(LIVE_MOVES[status])
            version = await conn.fetchval(
                "UPDATE squidmesh.runs SET status = $2 WHERE id = $1 RETURNING version",
                second,
                target,
            )
            moved.append((second, version, target))

        run = await self.store.transition_and_dispatch_run(run_id, to, None, dispatch)
        self.outcomes["chained"] += 1
        for other, version, status in moved:
            self.committed.add((other, version))
            self.status[other] = RunStatus(status)
        return run

    async def writer(self) -> None:
        while self.attempts < TRANSITIONS:
            slot = self.rng.randrange(len(self.live))
            run_id = self.live[slot]
            status = self.status[run_id]
            if state_machine.is_terminal(status):
                # Finished (another writer's move): a new run takes its place.
                if self.live[slot] == run_id:
                    self.live[slot] = await self.create()
                continue
            self.attempts += 1
            try:
                run = await self.move(run_id, self.target(status))
            except Boom:
                continue
            except InvalidTransition:
                # Another writer moved it first: take the status it left.
                self.outcomes["refused"] += 1
                self.status[run_id] = (await self.store.get_run(run_id)).status
                continue
            self.committed.add((run.id, run.version))
            self.status[run.id] = run.status


async def follow(store: RunStore, out: list[RunChange]) -> None:
    """A ``changes`` consumer: handles every change, until it is cancelled."""
    async for change in store.changes(None, batch_size=100):
        out.append(change)


async def until(done: Callable[[], bool], what: str) -> None:
    """Polls ``done`` until it holds, for at most TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        assert time.monotonic() < deadline, f"{what}: not within {TIMEOUT_S} s"
        await asyncio.sleep(0.01)


async def read_from(store: RunStore, position: str, marker: UUID) -> list[RunChange]:
    consumer = Consumer(store, position)
    await consumer.until_seen((marker, 1), limit=250)
    return consumer.seen


async def test_every_committed_change_exactly_once_in_order_under_load(
    writer_store: RunStore, reader_store: RunStore, pool: asyncpg.Pool
) -> None:
    work = Workload(writer_store, random.Random(16))
    work.live = [await work.create() for _ in range(LIVE_RUNS)]

    marker: UUID | None = None
    followed: list[RunChange] = []
    restarting = Restarting(reader_store, random.Random(2000))
    restarting.max_limit = 80
    restarting.die_rate = 0.25

    def has_marker(changes: list[RunChange]) -> Callable[[], bool]:
        return lambda: marker is not None and (marker, 1) in set(keys(changes))

    consumers = [
        asyncio.create_task(follow(reader_store, followed)),
        asyncio.create_task(restarting.run(has_marker(restarting.handled))),
    ]
    try:
        await asyncio.wait_for(
            asyncio.gather(*(work.writer() for _ in range(WRITERS))), timeout=TIMEOUT_S * 2
        )
        # Delivered while the writers wrote, not only at the end.
        during = (len(followed), len(restarting.handled))
        last = await writer_store.create_run(ETL_DAILY, {})
        work.committed.add((last.id, 1))
        marker = last.id
        await until(has_marker(followed), "the marker, through changes")
        await asyncio.wait_for(consumers[1], timeout=TIMEOUT_S)
    finally:
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)

    outcomes = work.outcomes
    assert work.attempts >= TRANSITIONS
    assert outcomes["rolled back"] > 50, outcomes
    assert outcomes["held open"] > 20, outcomes
    assert outcomes["held, rolled back"] > 10, outcomes
    assert outcomes["committed"] > 1000, outcomes
    assert outcomes["chained"] > 50, outcomes
    assert all(n > 0 for n in during), during

    # The log holds what committed, as the writers saw it, and nothing rolled back.
    log = await log_keys(pool)
    statuses = await log_statuses(pool)
    assert Counter(log) == Counter(work.committed)

    assert_exactly_once_in_version_order(followed, log, statuses)
    # Late commits happened: changes came after one with a larger seq (a
    # cursor on the largest seq seen would have skipped them).
    seq = {
        (r["run_id"], r["run_version"]): r["seq"]
        for r in await pool.fetch("SELECT run_id, run_version, seq FROM squidmesh.run_transitions")
    }
    delivered_seqs = [seq[key(c)] for c in followed]
    late = sum(1 for a, b in itertools.pairwise(delivered_seqs) if b < a)
    assert late > 0
    assert followed[-1].run_id == last.id
    assert_exactly_once_in_version_order(restarting.handled, log, statuses)
    assert restarting.deaths >= 3, restarting.deaths

    # Restarted from a saved position in the middle, a consumer resumes: the
    # rest again, nothing lost, nothing twice (windows may merge on a second
    # read, so the order across windows may differ; each run's may not).
    middle = len(followed) // 2
    assert mid_window(followed[middle].position)
    rest = await read_from(reader_store, followed[middle].position, last.id)
    assert Counter(keys(rest)) == Counter(keys(followed[middle + 1 :]))
    assert_exactly_once_in_version_order(rest, [key(c) for c in followed[middle + 1 :]], statuses)

    # The same through changes, from the restarting consumer's midpoint.
    middle = len(restarting.handled) // 3
    again: list[RunChange] = []

    async def follow_from(position: str) -> None:
        async for change in reader_store.changes(position, batch_size=50):
            again.append(change)
            if change.run_id == last.id:
                return

    await asyncio.wait_for(follow_from(restarting.handled[middle].position), timeout=TIMEOUT_S)
    assert Counter(keys(again)) == Counter(keys(restarting.handled[middle + 1 :]))
