"""Cron triggers that fire: ``fire_due_triggers`` and the background scheduler.

Each cron trigger of each registered workflow is due at its *ticks* (see
``_workflow.cron``). A call at ``now``:

1. reads the database clock when no ``now`` is given (one round trip);
2. leaves out the triggers this process already knows are not due: the
   first tick after the ``now`` of its last successful call that looked at
   a trigger is still later than ``now`` (no round trip when none is due);
3. reads the last tick fired of the others from ``squidmesh.cron_state``
   (one round trip);
4. picks each trigger's due ticks: without a state row (the first time the
   trigger is seen), its latest tick at or before ``now``; with one, the
   ``catch_up`` most recent ticks after the last one fired, oldest first;
5. creates a run for each, through the trigger with its defaults as payload
   and the idempotency key ``cron:<trigger>:<tick>``, and moves the state
   forward (``GREATEST``), in one statement per 1,000 runs
   (``fire_cron_ticks`` in ``sql/queries/scheduler.sql``).

Any number of processes may do this at once: a tick's key is unique per
workflow, so its run is created once whoever gets there first, and the
state only moves forward. A process that stops and one that starts later
continue from the state in the database.

The payload of a tick's run is ``build_payload(trigger, {}, now=tick)``:
every field's default, with ``TODAY_ISO8601`` and ``NOW_ISO8601`` read at
the tick (so a run caught up after downtime carries its own tick's date),
and the same fingerprint as ``create_run(workflow, {}, trigger=...,
idempotency_key=key)``, which therefore returns the tick's run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import anyio
import asyncpg

from . import _codec, _queries
from ._errors import InvalidArgument
from ._events import RunCreated
from ._ids import uuid7
from ._payload import build_payload
from ._queries import SQL
from ._registry import Registry
from ._runs import _fingerprint
from ._types import Run
from ._values import aware_datetime
from ._workflow import Trigger, Workflow
from ._workflow.cron import CronSchedule, tick_key

__all__ = ("BATCH", "MAX_BACKOFF", "SchedulerOps", "check_interval", "run_scheduler")

logger = logging.getLogger("squidmesh.scheduler")

BATCH: Final = 1000
"""The most runs one ``fire_cron_ticks`` statement creates."""

MAX_BACKOFF: Final = 30.0
"""The longest wait (seconds) between two attempts of a failing scheduler,
unless its interval is longer."""

Emit = Callable[[Sequence[object]], Awaitable[None]]


@dataclass(slots=True, eq=False)
class _Entry:
    """A cron trigger of a registered workflow, and what this process knows of it."""

    workflow: Workflow
    trigger: Trigger
    schedule: CronSchedule
    fingerprint: str
    # The first tick after the `now` of the last call that settled the
    # trigger (None: none comes); meaningful only when `settled`. Settling
    # means that the state holds the latest tick at or before that `now`, so
    # no tick between the state and `next_due` is left to fire.
    next_due: datetime | None = None
    settled: bool = False

    def due_ticks(
        self, now: datetime, last: datetime | None
    ) -> tuple[list[datetime], datetime | None]:
        """The ticks to fire at ``now`` after the state's ``last``, oldest
        first, and the first tick after ``now``."""
        if last is None:  # seen for the first time
            return self.schedule.latest(now, after=None, limit=1), self.schedule.next_after(now)
        due = self.next_due
        if self.settled and due is not None and last < due <= now:
            # The steady state: nothing was left before `due`; when the tick
            # after it is still to come, `due` is the one tick to fire.
            following = self.schedule.next_after(due)
            if following is None or following > now:
                return [due], following
        ticks = self.schedule.latest(now, after=last, limit=self.trigger.catch_up)
        return ticks, self.schedule.next_after(now)


@dataclass(slots=True)
class _Due:
    entry: _Entry
    tick: datetime
    key: str
    payload: str


class SchedulerOps:
    """The scheduler of a store (see ``RunStore.fire_due_triggers``)."""

    __slots__ = ("_entries", "_pool", "_registry", "_seen")

    def __init__(self, pool: asyncpg.Pool, registry: Registry) -> None:
        self._pool = pool
        self._registry = registry
        # The registered workflows the entries were built from (held, so
        # that identity comparisons cannot be fooled by a reused id).
        self._seen: tuple[Workflow, ...] = ()
        self._entries: list[_Entry] = []

    def _current(self) -> list[_Entry]:
        """The entries of the cron triggers registered now (rebuilt when a
        workflow was registered or replaced; an unchanged trigger keeps its
        entry and what is known of it)."""
        workflows = tuple(self._registry.workflows.values())
        if len(workflows) == len(self._seen) and all(
            a is b for a, b in zip(workflows, self._seen, strict=True)
        ):
            return self._entries
        known = {(e.workflow.name, e.trigger.name): e for e in self._entries}
        entries: list[_Entry] = []
        for workflow in workflows:
            for trigger in workflow.triggers:
                if trigger.cron is None:
                    continue
                entry = known.get((workflow.name, trigger.name))
                if entry is None or entry.trigger is not trigger:
                    # Workflow(...) checked the expression and the zone.
                    entry = _Entry(
                        workflow,
                        trigger,
                        CronSchedule(trigger.cron, trigger.timezone),
                        _fingerprint(trigger.name, {}),
                    )
                else:
                    entry.workflow = workflow
                entries.append(entry)
        self._seen, self._entries = workflows, entries
        return entries

    async def fire(self, now: datetime | None, emit: Emit) -> list[Run]:
        """Create the runs due at ``now`` (the database clock when None).

        ``emit`` reports the ``RunCreated`` events of each statement after
        it commits. A trigger whose payload cannot be built (a default
        factory that raises or returns a wrong value) is logged and left
        for the next call; the others fire.

        Returns:
            The runs this call created, by tick, then workflow and trigger.

        Raises:
            InvalidArgument: ``now`` is not a timezone-aware datetime.
        """
        now = aware_datetime("now", now)
        entries = self._current()
        if not entries:
            return []
        at: datetime = (
            now.astimezone(UTC)
            if now is not None
            else await _queries.value(self._pool, SQL.scheduler_clock)
        )
        candidates = [
            e for e in entries if not e.settled or (e.next_due is not None and e.next_due <= at)
        ]
        if not candidates:
            return []
        state: dict[tuple[str, str], datetime] = {
            (workflow, trigger): last
            for workflow, trigger, last in await _queries.rows(
                self._pool,
                SQL.read_cron_state,
                [e.workflow.name for e in candidates],
                [e.trigger.name for e in candidates],
            )
        }
        due: list[_Due] = []
        ready: list[_Entry] = []
        upcoming: dict[int, datetime | None] = {}
        for entry in candidates:
            last = state.get((entry.workflow.name, entry.trigger.name))
            ticks, upcoming[id(entry)] = entry.due_ticks(at, last)
            try:
                due += [
                    _Due(
                        entry,
                        tick,
                        tick_key(entry.trigger.name, tick),
                        _codec.encode(build_payload(entry.trigger, {}, now=tick)),
                    )
                    for tick in ticks
                ]
            except Exception:
                logger.exception(
                    "cron trigger %r of workflow %r: cannot build the payload of its run; "
                    "retrying on the next call",
                    entry.trigger.name,
                    entry.workflow.name,
                )
                continue
            ready.append(entry)
        # One global order for every caller: no two wait for each other (see
        # fire_cron_ticks).
        due.sort(key=lambda d: (d.entry.workflow.name, d.entry.trigger.name, d.tick))
        created: list[tuple[datetime, str, str, Run]] = []
        for start in range(0, len(due), BATCH):
            created += await self._insert(due[start : start + BATCH], emit)
        for entry in ready:
            entry.next_due = upcoming[id(entry)]
            entry.settled = True
        created.sort(key=lambda c: c[:3])
        return [run for *_, run in created]

    async def _insert(self, batch: list[_Due], emit: Emit) -> list[tuple[datetime, str, str, Run]]:
        """One ``fire_cron_ticks`` statement; its created runs with their sort keys."""
        last: dict[tuple[str, str], datetime] = {}
        for d in batch:  # sorted: the last tick of a trigger comes last
            last[(d.entry.workflow.name, d.entry.trigger.name)] = d.tick
        ids = [uuid7() for _ in batch]
        rows = await _queries.write_rows(
            self._pool,
            SQL.fire_cron_ticks,
            [str(run_id) for run_id in ids],
            [d.entry.workflow.name for d in batch],
            [d.entry.trigger.name for d in batch],
            [d.payload for d in batch],
            [d.entry.workflow.entry_step for d in batch],
            [d.key for d in batch],
            [d.entry.fingerprint for d in batch],
            [workflow for workflow, _ in last],
            [trigger for _, trigger in last],
            [tick.isoformat() for tick in last.values()],
        )
        by_id = dict(zip(ids, batch, strict=True))
        created: list[tuple[datetime, str, str, Run]] = []
        for run_id, text in rows:
            d = by_id[run_id]
            run = _codec.decode_run(text)
            created.append((d.tick, d.entry.workflow.name, d.entry.trigger.name, run))
            logger.info(
                "cron trigger %r of workflow %r fired for %s: run %s",
                d.entry.trigger.name,
                d.entry.workflow.name,
                d.tick.isoformat(),
                run.id,
            )
        created.sort(key=lambda c: c[:3])
        await emit([RunCreated(run=run) for *_, run in created])
        return created


def check_interval(value: object) -> float:
    """``scheduler(interval=...)``: a positive, finite number of seconds."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidArgument("interval", f"must be a positive number of seconds, not {value!r}")
    return float(value)


async def run_scheduler(fire: Callable[[], Awaitable[object]], interval: float) -> None:
    """Call ``fire()`` every ``interval`` seconds until cancelled.

    An exception is logged and the call retried after a backoff that doubles
    from ``interval`` up to ``MAX_BACKOFF`` seconds (or ``interval``, when
    longer); a database that restarts is met with failed calls, then the
    pool's fresh connections. Nothing but cancellation stops the loop.
    """
    cap = max(interval, MAX_BACKOFF)
    failures = 0
    while True:
        try:
            await fire()
        except Exception as exc:
            failures += 1
            delay = min(cap, interval * 2.0 ** min(failures, 32))
            if failures == 1:
                logger.exception("firing cron triggers failed; retrying in %.3g s", delay)
            else:
                logger.error(
                    "firing cron triggers failed %d times in a row (%s: %s); retrying in %.3g s",
                    failures,
                    type(exc).__name__,
                    exc,
                    delay,
                )
            await anyio.sleep(delay)
            continue
        if failures:
            logger.warning("firing cron triggers works again after %d failed attempt(s)", failures)
            failures = 0
        await anyio.sleep(interval)
