"""Operations over many rows at once: prune_runs, cancel_runs, sweep_stale_runs,
and prune_feed (the change feed's old ticks).

Each works in batches, one statement per batch in a READ COMMITTED
transaction of its own, so no transaction locks more than ``batch_size`` runs
and none lasts as long as the whole operation. How the batches go
(``sql/queries/retention.sql`` says it in SQL):

1. One status at a time, in index order after a cursor (the key of the last
   run the previous batch took), up to ``batch_size`` runs picked ``FOR
   UPDATE SKIP LOCKED``: each batch scans only what it takes (without the
   cursor, each would scan again past everything the batches before it
   deleted or moved, until VACUUM), and never waits for a run someone else
   holds while it holds the locks of the runs it has already taken (that
   would stall every worker waiting on those runs).
2. Then, one run per statement, waiting for its lock: what is left over, a
   run that was locked during 1 (or, for ``cancel``, that moved to a status
   already done). Each is decided on the state read under its lock, with no
   other run's lock held while waiting, as ``cancel_run`` would.

Every statement of 2 changes (or deletes) a run or ends the operation, and a
changed run is never a candidate again (it was deleted, moved out of the
status, or written, which moves its ``updated_at`` past the cut-off). The
cut-offs come from the database clock once, when the call starts, so the set
of candidates is fixed then: the loop ends even while new runs keep arriving.

``cancel`` and ``sweep`` return async generators yielding ``(runs, events)``
per committed batch, so the facade reports a batch's events after its commit
and before the next batch starts; they check their arguments when they are
called, before anything is sent.

A pruned run's rows of the transition log (its history, and the feed's
source) are deleted by the statement that deletes the run. ``prune_feed``
deletes old feed ticks, in batches too: ticks are never locked by anything
else, so it needs only the first form (SKIP LOCKED keeps concurrent prunes
apart).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from typing import Any, Final, LiteralString, NamedTuple

import asyncpg

from . import _codec, _queries, state_machine
from ._errors import InvalidArgument
from ._events import RunTransitioned
from ._queries import SQL
from ._runs import CANCELLED_WHILE_PAUSED_TEXT, cancel_events
from ._types import PruneReport, Run, RunChanges, RunStatus
from ._values import FieldWrites, aware_datetime, coerce_changes, field_writes
from ._workflow import Workflow

MAX_BATCH_SIZE: Final = 10_000
# A tick is a small row nothing else locks: larger batches are fine.
MAX_FEED_BATCH_SIZE: Final = 100_000

# What prune_runs may delete by default, and at most.
TERMINAL: Final = (RunStatus.FAILED, RunStatus.COMPLETED, RunStatus.CANCELLED)
# The statuses cancel_run changes; cancelling and the terminal ones it refuses.
CANCELLABLE: Final = (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.RETRYING, RunStatus.PAUSED)

Batch = tuple[list[Run], list[object]]


class _Filter(NamedTuple):
    """A workflow filter as the queries take it: the name, None for all, or
    ``nothing`` when no run can match (a name PostgreSQL could not store)."""

    name: str | None
    nothing: bool


class RetentionOps:
    """The bulk operations of a store (see the ``RunStore`` methods of the same names)."""

    __slots__ = ("_pool",)

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # -- prune_runs ---------------------------------------------------------

    async def prune(
        self,
        *,
        older_than: object,
        statuses: object,
        workflow: object,
        batch_size: object,
        dry_run: object,
    ) -> PruneReport:
        age = _check_age("older_than", older_than)
        chosen = _check_prune_statuses(statuses)
        size = _check_batch_size(batch_size)
        wf = _check_workflow(workflow)
        if type(dry_run) is not bool:
            raise InvalidArgument("dry_run", f"must be a bool, not {dry_run!r}")
        by_status = dict.fromkeys(chosen, 0)
        counts = {"step_runs": 0, "attempts": 0}
        cutoff = await self._cutoff(age)
        if cutoff is not None and not wf.nothing:
            values = [s.value for s in chosen]
            if dry_run:
                for row in await _queries.rows(
                    self._pool, SQL.count_prunable_runs, values, cutoff, wf.name
                ):
                    by_status[RunStatus(row["status"])] += row["runs"]
                    counts["step_runs"] += row["step_runs"]
                    counts["attempts"] += row["attempts"]
            else:
                async for rows in self._batches(
                    SQL.lock_and_prune_runs,
                    SQL.lock_and_prune_runs_waiting,
                    size,
                    values,
                    cutoff,
                    wf.name,
                ):
                    for row in rows:
                        by_status[RunStatus(row["status"])] += 1
                        counts["step_runs"] += row["step_runs"]
                        counts["attempts"] += row["attempts"]
        return PruneReport(
            runs=sum(by_status.values()),
            step_runs=counts["step_runs"],
            attempts=counts["attempts"],
            by_status=by_status,
            dry_run=dry_run,
        )

    # -- prune_feed ---------------------------------------------------------

    async def prune_feed(self, *, older_than: object, batch_size: object) -> int:
        """Delete the feed ticks made before the database clock minus ``older_than``,
        never tick 0 nor the newest; how many were deleted."""
        age = _check_age("older_than", older_than)
        size = _check_batch_size(batch_size, MAX_FEED_BATCH_SIZE)
        cutoff = await self._cutoff(age)
        if cutoff is None:
            return 0
        total = 0
        after = 0
        while True:
            (row,) = await self._batch(SQL.lock_and_prune_feed_ticks, size, after, cutoff)
            deleted: int = row["deleted"]
            total += deleted
            # Fewer than asked: none left after the cursor, or the rest is
            # held by a concurrent prune, which deletes it.
            if deleted < size:
                return total
            after = row["last_id"]

    # -- cancel_runs --------------------------------------------------------

    def cancel(
        self,
        *,
        workflow: object,
        status: object,
        created_before: object,
        batch_size: object,
    ) -> AsyncGenerator[Batch, None]:
        """Check the arguments now; the returned generator does the batches."""
        wf = _check_workflow(workflow)
        asked = CANCELLABLE if status is None else _coerce_statuses("status", status)
        # A run already cancelling, or finished, is one cancel_run would not
        # change (it refuses the finished ones): never a candidate.
        targets = [s.value for s in CANCELLABLE if s in asked]
        before = aware_datetime("created_before", created_before)
        size = _check_batch_size(batch_size)
        return self._cancel(wf, targets, before, size)

    async def _cancel(
        self, wf: _Filter, targets: list[str], before: dt.datetime | None, size: int
    ) -> AsyncGenerator[Batch, None]:
        if wf.nothing or not targets:
            return
        # Runs created after the call started are left alone, so the call
        # ends even while new runs keep arriving.
        now = await _queries.value(self._pool, SQL.retention_clock)
        bound = now if before is None else min(before, now)
        async for rows in self._batches(
            SQL.cancel_runs,
            SQL.cancel_runs_waiting,
            size,
            targets,
            wf.name,
            bound,
            CANCELLED_WHILE_PAUSED_TEXT,
        ):
            runs: list[Run] = []
            events: list[object] = []
            for _, _, from_status, text, failed_step, attempt_number, duration_s in rows:
                run = _codec.decode_run(text)
                runs.append(run)
                # As cancel_run reports them: the move, then the failed step.
                events += cancel_events(run, from_status, failed_step, attempt_number, duration_s)
            yield runs, events

    # -- sweep_stale_runs ---------------------------------------------------

    def sweep(
        self,
        *,
        status: object,
        idle_for: object,
        to_status: object,
        changes: RunChanges | Mapping[str, Any] | None,
        workflow: object,
        batch_size: object,
    ) -> AsyncGenerator[Batch, None]:
        """Check the arguments now; the returned generator does the batches."""
        from_status = state_machine.coerce_status(status)
        to = state_machine.validate(from_status, state_machine.coerce_status(to_status))
        age = _check_age("idle_for", idle_for)
        size = _check_batch_size(batch_size)
        wf = _check_workflow(workflow)
        writes = field_writes(coerce_changes(changes))
        return self._sweep(from_status, to, age, writes, wf, size)

    async def _sweep(
        self,
        from_status: RunStatus,
        to: RunStatus,
        age: dt.timedelta,
        writes: FieldWrites,
        wf: _Filter,
        size: int,
    ) -> AsyncGenerator[Batch, None]:
        if wf.nothing:
            return
        cutoff = await self._cutoff(age)
        if cutoff is None:
            return
        async for rows in self._batches(
            SQL.transition_stale_runs,
            SQL.transition_stale_runs_waiting,
            size,
            [from_status.value],
            cutoff,
            wf.name,
            to.value,
            *writes,
        ):
            runs = _codec.decode_runs(rows)
            events: list[object] = [
                RunTransitioned(run=run, from_status=from_status, to_status=to) for run in runs
            ]
            yield runs, events

    # -- the batch loop -----------------------------------------------------

    async def _cutoff(self, age: dt.timedelta) -> dt.datetime | None:
        """The database clock minus ``age``; None when that is before the year 1
        (``datetime``'s range), which no run's timestamp is."""
        now: dt.datetime = await _queries.value(self._pool, SQL.retention_clock)
        try:
            return now - age
        except OverflowError:
            return None

    async def _batches(
        self,
        in_order: LiteralString,
        waiting: LiteralString,
        size: int,
        statuses: Sequence[str],
        *args: object,
    ) -> AsyncGenerator[list[asyncpg.Record], None]:
        """Yield the rows of each committed batch (one row per run it changed).

        ``in_order`` and ``waiting`` are the two forms of one batch query:
        ``in_order(size, cursor_at, cursor_id, status, *args)`` and
        ``waiting(1, statuses, *args)``, each row starting with the run's key
        (``key_at``, ``key_id``). See the module docstring.
        """
        for status in statuses:
            cursor: tuple[object, object] = (None, None)
            while True:
                rows = await self._batch(in_order, size, *cursor, status, *args)
                if rows:
                    yield rows
                if len(rows) < size:
                    break  # none left after the cursor but runs locked by others
                cursor = max((row["key_at"], row["key_id"]) for row in rows)
        while True:
            rows = await self._batch(waiting, 1, list(statuses), *args)
            if not rows:
                return
            yield rows

    async def _batch(self, query: LiteralString, *args: object) -> list[asyncpg.Record]:
        # READ COMMITTED whatever the session's default: FOR UPDATE then
        # re-reads a row that changed under it instead of failing, and
        # squidmesh.cancel_run_v2 refuses any other level.
        async with _queries.transaction(self._pool) as conn:
            return await _queries.write_rows(conn, query, *args)


# -- argument checks: all before anything is sent -------------------------------


def _check_age(name: str, value: object) -> dt.timedelta:
    if not isinstance(value, dt.timedelta) or value < dt.timedelta(0):
        raise InvalidArgument(name, f"must be a datetime.timedelta of zero or more, not {value!r}")
    return value


def _check_batch_size(value: object, maximum: int = MAX_BATCH_SIZE) -> int:
    if type(value) is not int or not 1 <= value <= maximum:
        raise InvalidArgument("batch_size", f"must be an int from 1 to {maximum}, not {value!r}")
    return value


def _check_workflow(value: object) -> _Filter:
    name = value.name if isinstance(value, Workflow) else value
    if name is None:
        return _Filter(None, nothing=False)
    if not isinstance(name, str):
        raise InvalidArgument(
            "workflow", f"must be a Workflow, a workflow name or None, not {value!r}"
        )
    # No run can have a name PostgreSQL cannot store (creating it is refused),
    # and sending it would fail: match nothing instead.
    if _codec.text_problem(name):
        return _Filter(None, nothing=True)
    return _Filter(name, nothing=False)


def _coerce_statuses(name: str, value: object) -> frozenset[RunStatus]:
    """One status or an iterable of them (``UnknownStatus`` for a value that is not one)."""
    if isinstance(value, str):
        return frozenset({state_machine.coerce_status(value)})
    if not isinstance(value, Iterable):
        raise InvalidArgument(name, f"must be a status or an iterable of statuses, not {value!r}")
    chosen = frozenset(state_machine.coerce_status(s) for s in value)
    if not chosen:
        raise InvalidArgument(name, "must name at least one status")
    return chosen


def _check_prune_statuses(value: object) -> tuple[RunStatus, ...]:
    if value is None:
        return TERMINAL
    chosen = _coerce_statuses("statuses", value)
    live = sorted(s.value for s in chosen if s not in TERMINAL)
    if live:
        raise InvalidArgument(
            "statuses",
            "only finished runs can be pruned (failed, completed, cancelled), not "
            + ", ".join(live),
        )
    return tuple(s for s in TERMINAL if s in chosen)
