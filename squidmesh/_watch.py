"""The store's watcher: one background reader of the feed that serves every
``wait_for`` and ``changes`` of the process.

However many waiters and consumers there are, the watcher holds at most one
pooled connection at a time (to read the feed and the runs it must check, in
one statement each) and, with a ``listen_dsn``, one direct connection that
LISTENs for the NOTIFY a tick sends. It wakes up:

- at once for a status change this store committed (``observe``: the run is
  at hand, so its waiters get it without a query);
- on a NOTIFY, when another process made a tick;
- every ``poll_interval`` otherwise (no ``listen_dsn``, a transaction-mode
  pooler where LISTEN cannot work, a lost listener connection), while anyone
  waits.

A wait never depends on a wake-up being delivered: the watcher's feed
position is gap-free, so every change after a waiter's first check is seen
on the next read, whichever way that read was triggered.

The background tasks run in one anyio task group, in one asyncio task the
watcher starts on first use; ``close`` cancels it and waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Final
from uuid import UUID

import anyio
import asyncpg

from . import _codec, state_machine
from . import _queries as q
from ._errors import InvalidArgument, InvalidPosition, RunNotFound
from ._feed import TICK_EVERY, FeedOps
from ._queries import SQL
from ._types import Run

logger = logging.getLogger("squidmesh")

CHANNEL: Final = "squidmesh_feed"
DEFAULT_POLL_INTERVAL: Final = 0.25
_READ_BATCH: Final = 1000
# Between two reads of the feed, however many wake-ups arrive: a process
# that writes without pause would otherwise read after every commit.
_MIN_GAP: Final = 0.005
_MAX_BACKOFF: Final = 5.0
_NOW: Final = timedelta(0)


def check_poll_interval(value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0.001 <= value <= 3600
    ):
        raise InvalidArgument(
            "poll_interval", f"must be a number of seconds from 0.001 to 3600, not {value!r}"
        )
    return float(value)


_TERMINAL: Final = frozenset(s.value for s in state_machine.STATES if state_machine.is_terminal(s))


def wait_statuses(statuses: object) -> frozenset[str]:
    """The statuses a waiter waits for: one, an iterable of them, or None for the terminal ones."""
    if statuses is None:
        return _TERMINAL
    if isinstance(statuses, str) or not isinstance(statuses, Iterable):
        return frozenset((state_machine.coerce_status(statuses).value,))
    wanted = frozenset(state_machine.coerce_status(s).value for s in statuses)
    if not wanted:
        raise InvalidArgument("statuses", "must name at least one status (None: the terminal ones)")
    return wanted


def wait_timeout(timeout: object) -> float:
    """Seconds to wait; ``math.inf`` for None."""
    if timeout is None:
        return math.inf
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or math.isnan(timeout)
        or timeout < 0
    ):
        raise InvalidArgument(
            "timeout", f"must be a non-negative number of seconds or None, not {timeout!r}"
        )
    return float(timeout)


class _Waiter:
    __slots__ = ("future", "run_id", "statuses")

    def __init__(self, run_id: UUID, statuses: frozenset[str], future: asyncio.Future[Run]) -> None:
        self.run_id = run_id
        self.statuses = statuses
        self.future = future


class Watcher:
    """Waiters by run id, feed consumers, and the task that serves them."""

    def __init__(
        self, pool: asyncpg.Pool, feed: FeedOps, listen_dsn: str | None, poll_interval: float
    ) -> None:
        self._pool = pool
        self._feed = feed
        self._listen_dsn = listen_dsn
        self._poll_interval = poll_interval
        self._waiters: dict[UUID, set[_Waiter]] = {}
        # Waiters whose run nobody has read since they registered.
        self._unchecked: set[_Waiter] = set()
        self._consumers: set[asyncio.Event] = set()
        self._position: str | None = None
        self._wake = asyncio.Event()
        self._recheck_at: float | None = None
        self._last_write = -math.inf  # when observe last saw a change (monotonic)
        self._task: asyncio.Task[None] | None = None
        self._scope: anyio.CancelScope | None = None
        self._closed = False
        self.listening = False  # for tests and the benchmark: LISTEN is live

    # -- what the store calls ----------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def poll_interval(self) -> float:
        return self._poll_interval

    def add_waiter(self, run_id: UUID, statuses: frozenset[str]) -> _Waiter:
        """Register a waiter; the watcher reads its run (with others, in one
        statement) and then follows the feed for it."""
        self._ensure_started()
        waiter = _Waiter(run_id, statuses, asyncio.get_running_loop().create_future())
        self._waiters.setdefault(run_id, set()).add(waiter)
        self._unchecked.add(waiter)
        self._wake.set()
        return waiter

    def remove_waiter(self, waiter: _Waiter) -> None:
        self._unchecked.discard(waiter)
        group = self._waiters.get(waiter.run_id)
        if group is not None:
            group.discard(waiter)
            if not group:
                del self._waiters[waiter.run_id]
        self._wake_if_idle()

    def add_consumer(self) -> asyncio.Event:
        """An event set whenever the feed may have news (and on close)."""
        self._ensure_started()
        event = asyncio.Event()
        self._consumers.add(event)
        return event

    def remove_consumer(self, event: asyncio.Event) -> None:
        self._consumers.discard(event)
        self._wake_if_idle()

    def _wake_if_idle(self) -> None:
        # The round that runs with nobody left forgets the position; without
        # it, the next waiter (maybe hours later) would read all it missed.
        if not self._busy():
            self._wake.set()

    def watching(self) -> bool:
        """Whether ``observe`` would use events now (it returns at once otherwise)."""
        return self._task is not None or (self._listen_dsn is not None and not self._closed)

    def observe(self, events: Iterable[object]) -> None:
        """Runs this store just changed (after commit): their waiters get them
        now, and the feed is read soon for the consumers."""
        if not self.watching():
            return
        if self._task is None:
            # A store with a listen_dsn also tells other processes: its
            # watcher makes the tick whose NOTIFY wakes their waiters.
            self._ensure_started()
        seen = False
        for event in events:
            run = getattr(event, "run", None)
            if isinstance(run, Run):
                seen = True
                self._offer(run)
        if seen:
            # A tick made after this commit holds the change: one is surely
            # due a tick interval from now, and one re-read then serves every
            # write made until it (a store that writes without pause ticks at
            # most once per interval, not once per write). Its own consumers
            # read now, in case a tick is already due; a waiting loop reads
            # at most once per interval for writes with no consumer.
            self._last_write = time.monotonic()
            if self._recheck_at is None:
                self._recheck_at = self._last_write + TICK_EVERY.total_seconds()
                self._wake.set()  # the loop may sleep with no deadline: set one
            elif self._consumers:
                self._wake.set()

    async def close(self) -> None:
        publish = self._recheck_at is not None and not self._closed
        self._fail_all("the store was closed while wait_for waited")
        task, self._task = self._task, None
        if publish and task is not None:
            # This store changed runs since its last tick: make the tick now,
            # so other processes' waiters hear of them at once rather than
            # at their next poll (a short-lived writer, such as the CLI).
            await self._final_tick()
        if task is not None:
            if self._scope is not None:
                self._scope.cancel()
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise

    async def _final_tick(self) -> None:
        with anyio.move_on_after(1):
            try:
                # -1: another process is ticking, perhaps from a snapshot
                # taken before this store's last commit; try again.
                while await q.write_value(self._pool, SQL.feed_tick, _NOW) == -1:  # noqa: ASYNC110
                    await anyio.sleep(0.005)
            except Exception:
                logger.warning("squidmesh watcher: the final tick failed", exc_info=True)

    def _fail_all(self, reason: str) -> None:
        self._closed = True
        for event in self._consumers:
            event.set()
        for group in list(self._waiters.values()):
            for waiter in group:
                if not waiter.future.done():
                    waiter.future.set_exception(RuntimeError(reason))

    # -- the background task ---------------------------------------------------

    def _ensure_started(self) -> None:
        if self._closed:
            raise RuntimeError("the store is closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="squidmesh watcher"
            )

    async def _run(self) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            async with anyio.create_task_group() as group:
                if self._listen_dsn is not None:
                    group.start_soon(self._listen, self._listen_dsn)
                group.start_soon(self._serve)

    async def _serve(self) -> None:
        backoff = 0.1
        while True:
            await self._sleep()
            self._wake.clear()
            started = time.monotonic()
            published = False
            if self._recheck_at is not None and started >= self._recheck_at:
                self._recheck_at = None
                published = True
            try:
                await self._round(published)
                backoff = 0.1
            except Exception:
                if self._pool.is_closing():
                    # The pool was closed under a store nobody closed: stop,
                    # and tell the waiters rather than leave them hanging.
                    self._fail_all("the store's pool was closed while wait_for waited")
                    return
                # A restarting server, a lost connection: log, wait, try
                # again; the waiters stay registered and the position is kept.
                logger.warning("squidmesh watcher: reading the feed failed", exc_info=True)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                self._wake.set()
                continue
            gap = _MIN_GAP - (time.monotonic() - started)
            if gap > 0:
                await anyio.sleep(gap)

    def _busy(self) -> bool:
        return bool(self._waiters or self._consumers)

    async def _sleep(self) -> None:
        """Until a wake-up, the next poll, or the re-read ``observe`` asked for."""
        if self._wake.is_set():
            return
        deadline = math.inf
        if self._busy():
            deadline = time.monotonic() + self._poll_interval
        if self._recheck_at is not None:
            deadline = min(deadline, self._recheck_at)
        timeout = None if deadline == math.inf else max(0.0, deadline - time.monotonic())
        with anyio.move_on_after(timeout if timeout is not None else math.inf):
            await self._wake.wait()

    async def _round(self, published: bool) -> None:
        """Read what the feed has after the position, then the runs to check."""
        if not self._busy():
            # Nobody waits: forget the position, so that the next waiter
            # does not make the watcher read all it missed meanwhile. After
            # this store's own writes, tick (if due) once the interval after
            # the first of them has passed, so that the NOTIFY reaches other
            # processes' waiters.
            self._position = None
            if published:
                made = await q.write_value(self._pool, SQL.feed_tick, TICK_EVERY)
                # None: not due, as a tick younger than the interval exists,
                # or nothing changed; -1: another process is ticking. A tick
                # made after this store's last write covers it: that is sure
                # once the last write is two intervals old. Until then, look
                # again an interval later.
                every = TICK_EVERY.total_seconds()
                if (made is None or made == -1) and (
                    time.monotonic() - self._last_write < 2 * every
                ):
                    self._recheck_at = time.monotonic() + every
            return
        unchecked = list(self._unchecked)
        self._unchecked.clear()
        changed: set[UUID] = set()
        if self._position is None:
            # Only waiters registered after the last round exist, and each is
            # checked below, after this: starting at the newest tick misses
            # no change they need.
            self._position = await self._feed.newest()
        else:
            try:
                while True:
                    page = await self._feed.read(self._position, None, _READ_BATCH)
                    self._position = page.position
                    changed.update(c.run_id for c in page.changes)
                    if len(page.changes) < _READ_BATCH:
                        break
            except InvalidPosition:
                self._position = await self._feed.newest()
                unchecked = [w for group in self._waiters.values() for w in group]
            if changed:
                for event in self._consumers:
                    event.set()
        ids = {w.run_id for w in unchecked}
        ids.update(run_id for run_id in changed if run_id in self._waiters)
        if not ids:
            return
        rows = await q.rows(self._pool, SQL.get_runs_by_ids, [str(i) for i in ids])
        found = {run.id: run for run in _codec.decode_runs(rows)}
        for run in found.values():
            self._offer(run)
        for waiter in unchecked:
            if waiter.run_id not in found and not waiter.future.done():
                waiter.future.set_exception(RunNotFound(waiter.run_id))

    def _offer(self, run: Run) -> None:
        for waiter in self._waiters.get(run.id, ()):
            if run.status in waiter.statuses and not waiter.future.done():
                waiter.future.set_result(run)

    async def _listen(self, dsn: str) -> None:
        backoff = 0.1
        while True:
            lost = anyio.Event()
            conn: Any = None
            try:
                conn = await asyncpg.connect(dsn)
                conn.add_termination_listener(_setter(lost))
                # Behind a transaction-mode pooler LISTEN succeeds, but the
                # server session that listens serves other clients' transactions
                # and what it hears never arrives here. So a NOTIFY made where
                # ticks are made (a pooled connection, another session) must
                # come back first; a probe channel of its own, so that no other
                # watcher is woken, unlistened before the real LISTEN.
                probe = f"squidmesh_probe_{id(self):x}_{time.monotonic_ns():x}"
                heard = anyio.Event()
                on_probe = _setter(heard)
                await conn.add_listener(probe, on_probe)
                await q.value(self._pool, SQL.notify_probe, probe)
                with anyio.move_on_after(1.0):
                    await heard.wait()
                if lost.is_set():
                    raise ConnectionError("the LISTEN connection was lost")
                if not heard.is_set():
                    logger.warning(
                        "squidmesh watcher: no notification arrives on the LISTEN connection "
                        "to listen_dsn (a transaction-mode pooler such as PgBouncer, or another "
                        "database than the pool's?): wait_for and changes poll every %s s from "
                        "now on; pass a direct connection URL as listen_dsn, or listen=False "
                        "to RunStore.connect",
                        self._poll_interval,
                    )
                    return  # for good: polling serves every wait without it
                await conn.remove_listener(probe, on_probe)
                await conn.add_listener(CHANNEL, self._notified)
                self.listening = True
                backoff = 0.1
                # What committed while no one listened is read now.
                self._wake.set()
                await lost.wait()
                logger.warning("squidmesh watcher: the listener's connection was lost")
            except Exception:
                logger.warning("squidmesh watcher: cannot LISTEN; polling", exc_info=True)
            finally:
                self.listening = False
                if conn is not None:
                    # terminate, not close: no await, so also on cancellation.
                    conn.terminate()
            self._wake.set()
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    def _notified(self, *_: object) -> None:
        self._wake.set()


def _setter(event: anyio.Event) -> Any:
    return lambda *_: event.set()
