"""``RunStore``: the facade users hold. It owns the parts and holds no SQL.

The parts (one module each): the workflow registry (``_registry``), the event
bus (``_events``), and the operations grouped by concern: runs (``_runs``),
listing and counting (``_listing``), steps (``_steps``), the history read
(``_history``), transactional progression (``_progress``) and operations on
many runs (``_retention``), all of which reach PostgreSQL only through the
query layer (``_queries``). An operation returns what it wrote and the events
to report; the facade reports them after commit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any
from uuid import UUID

import anyio
import asyncpg
from msgspec import UNSET, UnsetType

from . import state_machine
from ._claims import ClaimOps
from ._errors import RunNotFound, WaitTimeout
from ._events import EventBus, Listener, RunCreated, RunReplayed, RunTransitioned
from ._feed import FeedOps
from ._history import HistoryOps
from ._listing import ListingOps
from ._progress import ProgressOps
from ._queries import SQL, ServerFeatures
from ._registry import Registry
from ._retention import RetentionOps
from ._runs import RunOps, check_expected_version
from ._scheduler import SchedulerOps, check_interval, run_scheduler
from ._steps import StepOps
from ._types import (
    ChangePage,
    JSONMap,
    PauseResult,
    PruneReport,
    Run,
    RunAuditEvent,
    RunChange,
    RunChanges,
    RunPage,
    RunStatus,
    StepAttempt,
    StepRun,
)
from ._values import encode_json_map, field_writes_of, run_uuid
from ._watch import (
    DEFAULT_POLL_INTERVAL,
    Watcher,
    check_poll_interval,
    wait_statuses,
    wait_timeout,
)
from ._workflow import Workflow
from .progress import ChangesFn, DispatchFn, Operation


async def no_reset(conn: asyncpg.Connection) -> None:
    """Pool reset hook for pools the store owns.

    asyncpg's default reset sends a query (advisory unlock, CLOSE ALL,
    UNLISTEN, RESET ALL) on every release: one more round trip per operation.
    The store leaves no session state behind (transaction-scoped locks only),
    and asyncpg still rolls back a transaction left open before calling this.
    """


class RunStore:
    """Durable workflow runs in PostgreSQL.

    ``RunStore(pool, workflows=[...], listeners=[...])`` works on any
    ``asyncpg.Pool``, including one with its own jsonb codec: JSON crosses the
    boundary as text. A default asyncpg pool sends a reset query each time a
    connection is released (one extra round trip per operation); pass
    ``reset=squidmesh.no_reset`` to ``asyncpg.create_pool`` to avoid it, or use
    ``RunStore.connect``, which does so.

    Every state change locks the run's row inside its transaction, and the
    decision is taken on the state read under that lock. Events reach the
    listeners only after commit; a raising listener is logged and ignored.

    The store has a lifecycle: ``await store.aclose()``, or ``async with
    RunStore(pool, ...) as store:``, stops what it started. It does not close
    a pool it was given (``RunStore.connect`` closes the one it opened).

    ``wait_for`` and ``changes`` are served by one background watcher per
    store, which holds at most one pooled connection at a time. With
    ``listen_dsn`` (a direct connection URL, never a transaction-mode
    pooler's), it also LISTENs there, so changes other processes commit
    reach it within a tick (about 50 ms); otherwise it polls every
    ``poll_interval`` seconds (default 0.25) while anyone waits. A change
    this store commits reaches its own waiters at once either way.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        workflows: Iterable[Workflow] = (),
        listeners: Iterable[Listener] = (),
        listen_dsn: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        self._pool = pool
        self._registry = Registry(workflows)
        self._feed = FeedOps(pool)
        self._watch = Watcher(pool, self._feed, listen_dsn, check_poll_interval(poll_interval))
        self._bus = EventBus(listeners, self._watch.observe, self._watch.watching)
        self._server = ServerFeatures()
        self._runs = RunOps(pool, self._registry, self._server)
        self._steps = StepOps(pool, self._registry)
        self._history = HistoryOps(pool, self._registry)
        self._progress = ProgressOps(pool, self._runs)
        self._retention = RetentionOps(pool)
        self._claims = ClaimOps(pool)
        self._scheduler = SchedulerOps(pool, self._registry)
        self._listing = ListingOps(pool)
        self._closed = False

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        dsn: str,
        *,
        workflows: Iterable[Workflow] = (),
        listeners: Iterable[Listener] = (),
        migrate: bool = False,
        listen: bool = True,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        min_size: int = 1,
        max_size: int = 16,
        **pool_options: Any,
    ) -> AsyncIterator[RunStore]:
        """Open a pool of its own and yield a store on it; close both on exit.

        The pool skips asyncpg's per-release reset query (see ``no_reset``).

        Args:
            dsn: a libpq connection URL.
            workflows, listeners, poll_interval: as for ``RunStore(...)``.
            migrate: apply pending schema migrations first.
            listen: wake-ups for ``wait_for`` and ``changes`` from a LISTEN
                connection to ``dsn`` (set it to False behind a
                transaction-mode pooler, where LISTEN does not work; they
                then poll).
            min_size, max_size, pool_options: passed to ``asyncpg.create_pool``.
        """
        from ._migrate import migrate as apply_migrations

        pool_options.setdefault("reset", no_reset)
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, **pool_options)
        try:
            if migrate:
                await apply_migrations(pool)
            async with cls(
                pool,
                workflows=workflows,
                listeners=listeners,
                listen_dsn=dsn if listen else None,
                poll_interval=poll_interval,
            ) as store:
                yield store
        finally:
            await pool.close()

    # -- lifecycle ----------------------------------------------------------

    async def aclose(self) -> None:
        """Stop what the store started. Idempotent; the pool stays open.

        ``wait_for`` and ``changes`` start a background watcher (and, with a
        ``listen_dsn``, its listening connection) on first use; this stops
        it: a pending ``wait_for`` raises ``RuntimeError``, a ``changes``
        iteration ends, and both refuse to start again.
        """
        self._closed = True
        await self._watch.close()

    async def __aenter__(self) -> RunStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- registry -----------------------------------------------------------

    def register(self, workflow: Workflow) -> None:
        """Add (or replace) a workflow definition, keyed by its name."""
        self._registry.register(workflow)

    @property
    def pool(self) -> asyncpg.Pool:
        """The asyncpg pool the store runs its statements on."""
        return self._pool

    @property
    def workflows(self) -> Mapping[str, Workflow]:
        """The registered workflow definitions by name (a copy)."""
        return dict(self._registry.workflows)

    # -- creation -------------------------------------------------------

    async def create_run(
        self,
        workflow: Workflow | str,
        payload: object,
        *,
        trigger: str | None = None,
        idempotency_key: str | None = None,
    ) -> Run:
        """Create a pending run through a trigger (the default one when None).

        One round trip (one INSERT). The payload gets its defaults, then is
        validated as a whole: every problem is reported at once.

        ``workflow`` is a registered workflow's name, or a ``Workflow``
        (used as given, registered or not).

        With an ``idempotency_key`` (unique per workflow, 1 to 255
        characters), a second call with the same key and the same trigger and
        payload (as given, before defaults; key order does not matter)
        returns the run the first call created, as it is stored now, writes
        nothing and reports no event; the same key with another trigger or
        payload raises ``IdempotencyConflict``. Concurrent calls race safely
        (a unique index decides). ``get_or_create_run`` also says which
        happened.

        Raises:
            InvalidWorkflow: no workflow of that name is registered.
            InvalidTrigger: the workflow declares no such trigger.
            InvalidPayload: the payload is not a map or does not match the trigger.
            InvalidRun: the payload is larger than squidmesh stores (64 MiB encoded).
            IdempotencyConflict: the key was used with another trigger or payload.
            InvalidArgument: the key is not a str of 1 to 255 storable characters.
        """
        # _create's body, inlined: one coroutine layer less on the hot path.
        run, created = await self._runs.insert(
            self._pool, workflow, payload, trigger, idempotency_key
        )
        if created and self._bus.wanted:
            await self._bus.emit((RunCreated(run=run),))
        return run

    async def _create(
        self, workflow: Workflow | str, payload: object, trigger: str | None, key: object
    ) -> tuple[Run, bool]:
        """One INSERT (and, when a key yields, one read); ``RunCreated`` if created now."""
        run, created = await self._runs.insert(self._pool, workflow, payload, trigger, key)
        if created and self._bus.wanted:
            await self._bus.emit((RunCreated(run=run),))
        return run, created

    async def get_or_create_run(
        self,
        workflow: Workflow | str,
        payload: object,
        *,
        idempotency_key: str,
        trigger: str | None = None,
        dispatch: DispatchFn | None = None,
    ) -> tuple[Run, bool]:
        """Create a run under an idempotency key, or return the one that key made.

        Returns ``(run, created)``: ``created`` is True when this call created
        the run (an HTTP layer answers 201), False when an earlier call with
        the same key, trigger and payload did (200; the run as stored now,
        nothing written, no event, no dispatch). With ``dispatch``, the
        creation and ``dispatch(conn, run)`` share one transaction as in
        ``create_and_dispatch_run``.

        Raises:
            IdempotencyConflict: the key was used with another trigger or payload.
            InvalidArgument: the key is not a str of 1 to 255 storable characters.
            InvalidWorkflow, InvalidTrigger, InvalidPayload, InvalidRun: as
                for ``create_run``.
        """
        if dispatch is None:
            return await self._create(workflow, payload, trigger, idempotency_key)
        run, events, created = await self._progress.create_and_dispatch(
            workflow, payload, dispatch, trigger, idempotency_key
        )
        await self._bus.emit(events)
        return run, created

    async def replay_run(self, run_id: object) -> Run:
        """Create a new pending run with the source's workflow, trigger and payload.

        The source is untouched; the new run has an empty context, no error,
        the workflow's entry step and ``replayed_from_run_id`` set. One round
        trip (an INSERT ... SELECT that reads the source).

        Raises:
            RunNotFound: no run has that id.
            InvalidWorkflow: the source's workflow is not registered.
        """
        run = await self._runs.replay(self._pool, run_id)
        await self._bus.emit((RunReplayed(run=run),))
        return run

    async def create_and_dispatch_run(
        self,
        workflow: Workflow | str,
        payload: object,
        dispatch: DispatchFn,
        *,
        trigger: str | None = None,
        idempotency_key: str | None = None,
    ) -> Run:
        """Create a pending run and call ``dispatch(conn, run)`` in the same transaction.

        Validation is that of ``create_run``. If the dispatch raises, the
        transaction rolls back (no run exists, nothing the dispatch wrote
        remains, no event) and its exception propagates unchanged. After
        commit, ``RunCreated`` is reported, then the events of a returned
        ``DispatchEvents``. Round trips: BEGIN, INSERT, a transaction check,
        COMMIT (4), plus the dispatch's statements. The dispatch runs inside
        the transaction: keep it short, never commit or change session state
        (rules in ``squidmesh.progress``).

        With an ``idempotency_key``, a repeated call (same key, trigger and
        payload) returns the existing run without dispatching again and
        without events; see ``create_run``.

        Raises:
            InvalidWorkflow: the workflow is not registered.
            InvalidTrigger: the workflow declares no such trigger.
            InvalidPayload: the payload is not a map or does not match the trigger.
        """
        run, events, _ = await self._progress.create_and_dispatch(
            workflow, payload, dispatch, trigger, idempotency_key
        )
        await self._bus.emit(events)
        return run

    async def replay_and_dispatch_run(self, run_id: object, dispatch: DispatchFn) -> Run:
        """Replay a run (see ``replay_run``) and call ``dispatch(conn, new_run)`` in
        the same transaction.

        A raising dispatch rolls everything back (no replay exists) and its
        exception propagates unchanged. After commit, ``RunReplayed`` is
        reported, then the dispatch's events. Round trips: BEGIN, the
        INSERT ... SELECT, a transaction check, COMMIT (4), plus the
        dispatch's statements.

        Raises:
            RunNotFound: no run has that id.
            InvalidWorkflow: the source's workflow is not registered.
        """
        run, events = await self._progress.replay_and_dispatch(run_id, dispatch)
        await self._bus.emit(events)
        return run

    # -- reads ----------------------------------------------------------

    async def get_run(self, run_id: object, *, include_history: bool = False) -> Run:
        """Fetch one run; with ``include_history``, with its step runs,
        declared steps and audit events (otherwise those three are None).

        One round trip either way.

        Raises:
            RunNotFound: no run has that id.
        """
        if include_history:
            run = await self._history.read(run_uuid(run_id))
            if run is None:
                raise RunNotFound(run_id)
            return run
        return await self._runs.get(run_id)

    async def list_runs(
        self,
        *,
        workflow: Workflow | str | None = None,
        status: RunStatus | str | Iterable[RunStatus | str] | None = None,
        trigger: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        replayed_from: UUID | str | None = None,
        limit: int | None = None,
    ) -> list[Run]:
        """List runs newest first (inserted_at, then id, descending).

        One statement, no lock. The filters are those of ``page_runs``.
        ``limit`` is a positive int; anything else (None, zero, a negative
        number, a bool, an int past 2**63 - 1) means no limit. Each run
        arrives as its own row, so a list is bounded by the client's memory,
        not by PostgreSQL's 1 GB limit on one value. Without a limit every
        matching run is read in one statement; walk a large set with
        ``page_runs`` instead.

        Raises:
            UnknownStatus: a status is not one of the eight states.
            InvalidArgument: ``created_after`` or ``created_before`` is not a
                timezone-aware datetime.
        """
        return await self._listing.find(
            workflow=workflow,
            status=status,
            trigger=trigger,
            created_after=created_after,
            created_before=created_before,
            replayed_from=replayed_from,
            limit=limit,
        )

    async def page_runs(
        self,
        *,
        workflow: Workflow | str | None = None,
        status: RunStatus | str | Iterable[RunStatus | str] | None = None,
        trigger: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        replayed_from: UUID | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Read one page of runs, newest first (inserted_at, then id, descending).

        One statement, no lock; each filter combination is served by an
        index (see ``sql/migrations/0004_listing_indexes.sql``). Pages are
        keyset-paginated: pass ``page.next_cursor`` back as ``cursor``, with
        the same filters, for the next page; it is None on the last page.
        A page continues strictly after the last run of the one before, so
        walking every page while others insert returns each run that existed
        when the walk began exactly once (runs inserted meanwhile may or may
        not appear; a run whose status changes meanwhile may leave or enter a
        status-filtered walk). ``limit`` may change between pages.

        Args:
            workflow: a ``Workflow`` or its name. A name no run can have (not
                a str, or holding a NUL) matches nothing.
            status: one status, or an iterable of them (any of them matches;
                an empty one matches nothing); None for all.
            trigger: the name of the trigger the runs were created through.
            created_after: only runs inserted at or after this instant.
            created_before: only runs inserted strictly before this instant
                (so consecutive windows neither overlap nor leave a gap).
            replayed_from: only replays of this run (a run id; one that is
                not a UUID matches nothing).
            limit: the page size, an int from 1 to 1000.
            cursor: ``next_cursor`` of the previous page, or None for the
                first page. It is opaque, and valid only with the filters it
                was made for.

        Returns:
            ``RunPage(runs, next_cursor)``.

        Raises:
            InvalidArgument: ``limit`` is not an int from 1 to 1000 (a bool is
                not), or a timestamp is not a timezone-aware datetime.
            InvalidCursor: ``cursor`` was not made by ``page_runs``, or was
                made for other filters.
            UnknownStatus: a status is not one of the eight states.
        """
        return await self._listing.page(
            workflow=workflow,
            status=status,
            trigger=trigger,
            created_after=created_after,
            created_before=created_before,
            replayed_from=replayed_from,
            limit=limit,
            cursor=cursor,
        )

    async def count_runs(
        self,
        *,
        workflow: Workflow | str | None = None,
        status: RunStatus | str | Iterable[RunStatus | str] | None = None,
        trigger: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> int:
        """Count the runs matching the filters (those of ``page_runs``).

        One statement, no lock. The count reads one index entry per matching
        run (an index-only scan where the visibility map allows; a workflow
        together with a trigger also reads the table), so its cost grows with
        the runs counted: bound it in time with ``created_after``.

        Raises:
            InvalidArgument: a timestamp is not a timezone-aware datetime.
            UnknownStatus: a status is not one of the eight states.
        """
        return await self._listing.count(
            workflow=workflow,
            status=status,
            trigger=trigger,
            created_after=created_after,
            created_before=created_before,
        )

    async def count_runs_by_status(
        self,
        *,
        workflow: Workflow | str | None = None,
        created_after: datetime | None = None,
    ) -> dict[RunStatus, int]:
        """Count the runs in each status: all eight keys, zeros included.

        One statement, no lock; one index-only range per status, read at one
        snapshot, so the counts are consistent with each other. Its cost
        grows with the runs counted: bound it in time with ``created_after``
        (runs inserted at or after it).

        Raises:
            InvalidArgument: ``created_after`` is not a timezone-aware datetime.
        """
        return await self._listing.count_by_status(workflow=workflow, created_after=created_after)

    # -- state changes --------------------------------------------------

    async def transition_run(
        self,
        run_id: object,
        to_status: RunStatus | str,
        *,
        context: JSONMap | None | UnsetType = UNSET,
        current_step: str | None | UnsetType = UNSET,
        last_error: JSONMap | None | UnsetType = UNSET,
        expected_version: int | None = None,
    ) -> Run:
        """Move a run to ``to_status``, writing the given fields with it.

        One round trip: a single statement locks the row, checks the move
        against the state read under the lock, and writes (on PostgreSQL >=
        18 a plain guarded UPDATE with ``RETURNING old.status``; an illegal
        move or an unknown id then takes a second statement to tell which).
        Fields not given are unchanged; ``None`` clears. An illegal move
        changes nothing.

        Raises:
            VersionConflict: ``expected_version`` is given and the run has another
                (checked first, under the lock: nothing written, no caller code run).
            RunNotFound: no run has that id.
            InvalidTransition: the state machine forbids the move.
            UnknownStatus: ``to_status`` is not a state.
        """
        to = state_machine.coerce_status(to_status)
        writes = field_writes_of(context, current_step, last_error)
        run, from_status = await self._runs.transition(
            run_id, to, writes, check_expected_version(expected_version)
        )
        if self._bus.wanted:
            await self._bus.emit((RunTransitioned(run=run, from_status=from_status, to_status=to),))
        return run

    async def update_run(
        self,
        run_id: object,
        *,
        context: JSONMap | None | UnsetType = UNSET,
        current_step: str | None | UnsetType = UNSET,
        last_error: JSONMap | None | UnsetType = UNSET,
        expected_version: int | None = None,
    ) -> Run:
        """Write context / current_step / last_error without changing status.

        One round trip (the UPDATE takes the row lock). Fields not given are
        unchanged; ``None`` clears (``context=None`` resets it to ``{}``).

        Raises:
            VersionConflict: ``expected_version`` is given and the run has another
                (checked first, under the lock: nothing written, no caller code run).
            RunNotFound: no run has that id.
        """
        writes = field_writes_of(context, current_step, last_error)
        return await self._runs.update(run_id, writes, check_expected_version(expected_version))

    async def cancel_run(self, run_id: object, *, expected_version: int | None = None) -> Run:
        """Cancel a run, deciding on the state read under the row lock.

        1. pending -> cancelled;
        2. running or retrying -> cancelling (cooperative: the runtime
           finishes the current step, then finalises);
        3. paused -> cancelled at once; if the paused step's step run is
           still running, it and its latest running attempt are failed with
           ``{"message": "run cancelled while paused", "reason": "cancelled"}``
           and a ``StepFailed`` event follows the transition event.
        current_step is cleared in every case. One round trip (on PostgreSQL
        >= 18, cases 1 and 2 are a plain guarded UPDATE and the rest take a
        second statement: a call of the ``squidmesh.cancel_run`` function).

        Raises:
            VersionConflict: ``expected_version`` is given and the run has another
                (checked first, under the lock: nothing written, no caller code run).
            RunNotFound: no run has that id.
            InvalidTransition: the run is failed, completed or cancelled
                (reported as a move to ``cancelling``).
        """
        run, events = await self._runs.cancel(run_id, check_expected_version(expected_version))
        if self._bus.wanted:
            await self._bus.emit(events)
        return run

    # -- many runs at once ------------------------------------------------

    async def prune_runs(
        self,
        *,
        older_than: dt.timedelta,
        statuses: Iterable[RunStatus | str] | None = None,
        workflow: Workflow | str | None = None,
        batch_size: int = 1000,
        dry_run: bool = False,
    ) -> PruneReport:
        """Delete finished runs not written for ``older_than``, with their step runs and attempts.

        A run is pruned when its status is in ``statuses`` (default: failed,
        completed and cancelled; only those may be given) and its
        ``updated_at`` is older than the database clock at the call minus
        ``older_than``. Step runs and attempts go with their run (the foreign
        keys cascade), and so do its rows of the transition log. A replay of
        a pruned run stays, with ``replayed_from_run_id`` set to None (a
        write of the replay: its ``version`` and ``updated_at`` move).

        Works in batches of at most ``batch_size`` runs, each one statement in
        its own transaction, so a large prune never holds many locks or one
        long transaction. A batch skips runs another transaction has locked;
        once the unlocked ones are done, each remaining one is locked in turn,
        waiting for its holder, and deleted only if it still matches. Batches
        committed before an error or a cancellation stay deleted. Runs written
        after the call started are not pruned.

        Args:
            older_than: how long a run must have gone unwritten (>= 0).
            statuses: the terminal statuses to prune (one or several).
            workflow: only runs of this workflow (a ``Workflow`` or its name).
            batch_size: runs per transaction, 1 to 10000.
            dry_run: count what would be deleted, in one read, and delete nothing.

        Returns:
            A ``PruneReport``: runs, step runs and attempts deleted (or that
            would be), runs by status (every status asked for, zeros included).

        Raises:
            InvalidArgument: ``older_than`` is not a timedelta >= 0; a status
                is not terminal, or ``statuses`` is empty or not statuses;
                ``batch_size`` is out of range; ``workflow`` is not a
                workflow or a name; ``dry_run`` is not a bool.
            UnknownStatus: a status is not one of the eight.
        """
        return await self._retention.prune(
            older_than=older_than,
            statuses=statuses,
            workflow=workflow,
            batch_size=batch_size,
            dry_run=dry_run,
        )

    async def prune_feed(
        self,
        *,
        older_than: dt.timedelta = dt.timedelta(days=7),
        batch_size: int = 10000,
    ) -> int:
        """Delete the change feed's ticks made more than ``older_than`` ago.

        A tick marks where a window of the feed ends; positions that
        ``read_changes`` and ``changes`` hand out name one. A tick is deleted
        when its ``made_at`` is older than the database clock at the call
        minus ``older_than``. Tick 0 (where ``after=None`` starts reading) and
        the newest tick are never deleted, so reading from the beginning and
        following the feed keep working whatever is pruned. The transition
        log itself is not touched: a run's log rows go with the run
        (``prune_runs``).

        A consumer whose saved position names a deleted tick gets
        ``InvalidPosition`` from ``read_changes`` and ``changes``: choose
        ``older_than`` longer than any consumer may stay behind (it can start
        again from ``None``, the whole log, and deduplicate by ``(run_id,
        run_version)``).

        Works in batches of at most ``batch_size`` ticks, each one statement
        in its own transaction. Concurrent calls share the work (each skips
        the ticks another is deleting). Batches committed before an error or a
        cancellation stay deleted. Ticks made after the call started are not
        deleted.

        Args:
            older_than: how old a tick must be (>= 0; default seven days).
            batch_size: ticks per transaction, 1 to 100000.

        Returns:
            How many ticks this call deleted.

        Raises:
            InvalidArgument: ``older_than`` is not a timedelta >= 0;
                ``batch_size`` is not an int from 1 to 100000.
        """
        return await self._retention.prune_feed(older_than=older_than, batch_size=batch_size)

    async def cancel_runs(
        self,
        *,
        workflow: Workflow | str | None = None,
        status: RunStatus | str | Iterable[RunStatus | str] | None = None,
        created_before: dt.datetime | None = None,
        batch_size: int = 500,
    ) -> list[Run]:
        """Cancel every matching run ``cancel_run`` would change, by its rules.

        Matching: of ``workflow``, in ``status`` (one or several; default all)
        and created before ``created_before`` (default: the call's start;
        runs created after the call started are never included). Of those,
        the pending, running, retrying and paused runs are cancelled as
        ``cancel_run`` does it, each decided on the state read under its row
        lock: pending and paused -> cancelled, running and retrying ->
        cancelling, current_step cleared, and a paused run's running step run
        and its latest running attempt failed with ``{"message": "run
        cancelled while paused", "reason": "cancelled"}``. Runs already
        cancelling or finished are left alone and not returned.

        Works in batches of at most ``batch_size`` runs, each one statement in
        its own transaction; after each commit that batch's events are
        reported (``RunTransitioned`` per run, then ``StepFailed`` for a
        finalised paused step), before the next batch starts. A batch skips
        runs another transaction has locked; once the unlocked ones are done,
        each remaining one is locked in turn, waiting for its holder, and
        decided on what it then is. Batches committed before an error or a
        cancellation stay committed (their events were reported).

        Returns:
            The runs changed, as committed, in the order they were changed.

        Raises:
            InvalidArgument: ``batch_size`` is out of range; ``created_before``
                is not a timezone-aware datetime; ``workflow`` is not a
                workflow or a name; ``status`` is an empty iterable or
                neither a status nor an iterable of them.
            UnknownStatus: a status is not one of the eight.
        """
        changed: list[Run] = []
        batches = self._retention.cancel(
            workflow=workflow, status=status, created_before=created_before, batch_size=batch_size
        )
        async with contextlib.aclosing(batches):
            async for runs, events in batches:
                await self._bus.emit(events)
                changed += runs
        return changed

    async def sweep_stale_runs(
        self,
        *,
        status: RunStatus | str,
        idle_for: dt.timedelta,
        to_status: RunStatus | str,
        changes: RunChanges | Mapping[str, Any] | None = None,
        workflow: Workflow | str | None = None,
        batch_size: int = 500,
    ) -> list[Run]:
        """Move every run in ``status`` not written for ``idle_for`` to ``to_status``.

        A run is stale when its ``updated_at`` is older than the database
        clock at the call minus ``idle_for``; any write counts as a heartbeat
        (``update_run`` included). Each stale run moves to ``to_status`` with
        ``changes`` written (the same fields for every run; not given =
        unchanged, None = cleared). Staleness is checked again under each
        run's row lock: a run written meanwhile is left alone. Only the run
        row is written (unlike ``cancel_run``, a paused run's step runs are
        left as they are). Typical: ``status="cancelling",
        to_status="cancelled"`` after ten minutes without a worker;
        ``status="running", to_status="failed"`` with a ``last_error`` after
        an hour without a heartbeat.

        Works in batches of at most ``batch_size`` runs, each one statement in
        its own transaction; ``RunTransitioned`` events are reported after
        each commit, before the next batch. A batch skips runs another
        transaction has locked; once the unlocked ones are done, each
        remaining one is locked in turn, waiting for its holder, and moved
        only if it is still stale. Batches committed before an error or a
        cancellation stay committed.

        Returns:
            The runs moved, as committed.

        Raises:
            InvalidTransition: ``status`` -> ``to_status`` is not a legal move
                (nothing is written).
            UnknownStatus: ``status`` or ``to_status`` is not a state.
            InvalidArgument: ``idle_for`` is not a timedelta >= 0,
                ``batch_size`` is out of range, ``workflow`` is not a
                workflow or a name.
            InvalidRun: a change cannot be stored (nothing is written).
        """
        moved: list[Run] = []
        batches = self._retention.sweep(
            status=status,
            idle_for=idle_for,
            to_status=to_status,
            changes=changes,
            workflow=workflow,
            batch_size=batch_size,
        )
        async with contextlib.aclosing(batches):
            async for runs, events in batches:
                await self._bus.emit(events)
                moved += runs
        return moved

    async def claim_runs(
        self,
        *,
        workflow: Workflow | str | None = None,
        limit: int = 10,
        changes: RunChanges | Mapping[str, Any] | None = None,
    ) -> list[Run]:
        """Move up to ``limit`` pending runs to running and return them: a worker's claim.

        The oldest pending runs (by ``inserted_at``, then ``id``) are taken,
        of ``workflow`` when given, skipping runs another transaction holds
        (``FOR UPDATE SKIP LOCKED``). One statement, one round trip, its own
        transaction (READ COMMITTED semantics whatever the session's
        default): concurrent claimers, in this process or others, never get
        the same run and never wait on each other (a claim returns at once
        with what is free, possibly fewer than ``limit`` runs, or none).
        Each claimed run gets ``changes`` written with the move (the same
        fields for every run; not given = unchanged, None = cleared), its
        version bumped and a pending -> running row in the transition log.
        ``RunTransitioned`` is reported per run after commit, oldest first.
        A caller cancelled after the commit (a timeout, say) never sees the
        runs it claimed: they stay running, and
        ``sweep_stale_runs(status="running", ...)`` finds them.

        Args:
            workflow: only runs of this workflow (a ``Workflow`` or its name;
                it need not be registered: a worker may claim any
                workflow's runs by name). None for every workflow.
            limit: the most runs to claim, an int from 1 to 1000.
            changes: a ``RunChanges`` or a dict of its fields
                (``context``, ``current_step``, ``last_error``); None for none.

        Returns:
            The claimed runs as committed (status running), oldest first.

        Raises:
            InvalidArgument: ``limit`` is not an int from 1 to 1000 (a bool
                is not); ``workflow`` is not None, a ``Workflow`` or a name
                of 1 to 255 storable characters (nothing is written).
            InvalidRun: a change cannot be stored (nothing is written).
        """
        runs, events = await self._claims.claim(workflow, limit, changes)
        await self._bus.emit(events)
        return runs

    # -- changes with caller code under the lock ------------------------

    async def transition_and_dispatch_run(
        self,
        run_id: object,
        to_status: RunStatus | str,
        changes: RunChanges | Mapping[str, Any] | None,
        dispatch: DispatchFn,
        *,
        expected_version: int | None = None,
    ) -> Run:
        """Move a run to ``to_status`` with ``changes``, then call ``dispatch(conn, run)``
        in the same transaction.

        Locks the run row; the move is validated on the state read under the
        lock. A raising dispatch rolls back the move and everything it wrote,
        and its exception propagates unchanged. After commit,
        ``RunTransitioned`` is reported, then the dispatch's events. A
        terminal run raises ``InvalidTransition`` like ``transition_run``,
        and the dispatch is not called. Round trips: BEGIN, locking read,
        write, a transaction check, COMMIT (5), plus the dispatch's statements.

        Raises:
            VersionConflict: ``expected_version`` is given and the run has another
                (checked first, under the lock: nothing written, no caller code run).
            RunNotFound: no run has that id.
            InvalidTransition: the state machine forbids the move.
            UnknownStatus: ``to_status`` is not a state.
            InvalidRun: a change cannot be stored (nothing is written).
        """
        run, events = await self._progress.transition_and_dispatch(
            run_id, to_status, changes, dispatch, check_expected_version(expected_version)
        )
        await self._bus.emit(events)
        return run

    async def update_and_dispatch_run(
        self,
        run_id: object,
        changes_or_fn: RunChanges | Mapping[str, Any] | ChangesFn | None,
        dispatch: DispatchFn,
        *,
        expected_version: int | None = None,
    ) -> Run:
        """Write fields, then call ``dispatch(conn, run)`` in the same transaction.

        ``changes_or_fn`` is the changes, or a function computing them from
        the run as read under the lock. Status is untouched, whatever it is
        (like ``update_run``, a terminal run is written too). A raising
        dispatch rolls everything back and its exception propagates
        unchanged. No run event is reported (``update_run`` reports none);
        the dispatch's events are, after commit. Round trips: BEGIN, locking
        read, write (skipped when there is nothing to write), a transaction
        check, COMMIT (5), plus the dispatch's statements.

        Raises:
            VersionConflict: ``expected_version`` is given and the run has another
                (checked first, under the lock: nothing written, no caller code run).
            RunNotFound: no run has that id.
            InvalidRun: a change cannot be stored (nothing is written).
        """
        run, events = await self._progress.update_and_dispatch(
            run_id, changes_or_fn, dispatch, check_expected_version(expected_version)
        )
        await self._bus.emit(events)
        return run

    async def update_run_with(
        self, run_id: object, changes_fn: ChangesFn, *, expected_version: int | None = None
    ) -> Run:
        """Write the fields ``changes_fn(run)`` computes from the run read under the lock.

        The read-modify-write is atomic: concurrent callers queue on the row
        lock, so each sees the previous one's result (a counter incremented
        this way never loses an increment). Status is untouched; no event.
        Round trips: BEGIN, locking read, write (skipped when the function
        returns no changes), COMMIT (4).

        Raises:
            VersionConflict: ``expected_version`` is given and the run has another
                (checked first, under the lock: nothing written, no caller code run).
            RunNotFound: no run has that id.
            InvalidRun: a change cannot be stored (nothing is written).
        """
        return await self._progress.update_with(
            run_id, changes_fn, check_expected_version(expected_version)
        )

    async def transition_run_with(
        self,
        run_id: object,
        to_status: RunStatus | str,
        changes_fn: ChangesFn,
        *,
        expected_version: int | None = None,
    ) -> Run:
        """Move a run to ``to_status`` with the fields ``changes_fn(run)`` computes.

        Locks the run row and validates the move on the state read under the
        lock *before* calling ``changes_fn``, so it is never called for an
        illegal move. ``RunTransitioned`` is reported after commit. Round
        trips: BEGIN, locking read, write, COMMIT (4).

        Raises:
            VersionConflict: ``expected_version`` is given and the run has another
                (checked first, under the lock: nothing written, no caller code run).
            RunNotFound: no run has that id.
            InvalidTransition: the state machine forbids the move.
            UnknownStatus: ``to_status`` is not a state.
            InvalidRun: a change cannot be stored (nothing is written).
        """
        run, events = await self._progress.transition_with(
            run_id, to_status, changes_fn, check_expected_version(expected_version)
        )
        await self._bus.emit(events)
        return run

    async def progress_run(
        self,
        run_id: object,
        changes_fn: ChangesFn,
        operation: Operation,
        *,
        expected_version: int | None = None,
    ) -> Run | None:
        """Advance a run in one transaction: the runtime's "do the next thing" call.

        Locks the run row, then decides on the state read under the lock:

        1. terminal (failed, completed, cancelled): nothing is called or
           written; returns None.
        2. cancelling: the operation is ignored and nothing is dispatched;
           the run moves to cancelled keeping only the context
           ``changes_fn(run)`` computes (current_step and last_error are
           cleared; an UNSET context is kept as is); ``RunTransitioned``.
        3. otherwise the operation (``squidmesh.progress``) is applied with
           the fields ``changes_fn(run)`` computes:

           - ``Update()``: write the fields.
           - ``Transition(S)``: validated move to S with the fields.
           - ``Dispatch(d)``: write the fields, then ``d(conn, run)``; if it
             raises, everything rolls back and the exception propagates.
           - ``DispatchOrFail(d, f)``: the same, but ``d`` runs inside a
             savepoint; if it raises, what it wrote is undone (even if its
             SQL error aborted the transaction), the field writes stay, and
             the run moves to failed with the fields ``f(run, exc)`` returns,
             ``run`` being the run after the field writes. The move to
             failed is validated (``InvalidTransition``, everything rolled
             back, when it is illegal).
           - ``TransitionOrDispatch(S, d)``: already in S: as ``Dispatch``;
             otherwise a validated move to S with the fields, then ``d``.
           - ``TransitionOrDispatchOrFail(S, d, f)``: the same, with the fail
             branch of ``DispatchOrFail`` (``f`` sees the run after the move).

        For a move, legality is checked before ``changes_fn`` is called. After
        commit, events are reported in order: each ``RunTransitioned`` (the
        move to S, then the move to failed on the fail branch), then the
        events of a ``DispatchEvents`` the dispatch returned (dropped when
        the dispatch failed). The callables run under the row lock inside the
        transaction: keep them short, never commit or change session state
        (rules in ``squidmesh.progress``).

        Round trips: BEGIN, locking read, COMMIT, plus: one write (skipped for
        ``Update``/``Dispatch`` with no changes; none for a terminal run);
        after a plain dispatch, a transaction check; for the ``...OrFail``
        operations, SAVEPOINT and RELEASE around the dispatch instead, and on
        failure ROLLBACK TO SAVEPOINT and the write to failed.

        Returns:
            The run as committed, or None when the run was already terminal.

        Raises:
            VersionConflict: ``expected_version`` is given and the run has another
                (checked first, under the lock: nothing written, no caller code run).
            RunNotFound: no run has that id.
            InvalidTransition: the requested move (or the move to failed) is illegal.
            UnknownStatus: the operation names a status that is not a state.
            InvalidRun: a change cannot be stored (nothing is written).
            TypeError: ``operation`` is not one of ``squidmesh.progress``'s.
        """
        run, events = await self._progress.progress(
            run_id, changes_fn, operation, check_expected_version(expected_version)
        )
        await self._bus.emit(events)
        return run

    # -- reacting to runs: the change feed and waiting --------------------

    async def read_changes(
        self, after: str | None = None, *, workflow: str | None = None, limit: int = 500
    ) -> ChangePage:
        """The next committed status changes after a position, oldest first.

        ``after`` is a position this feed gave (``ChangePage.position`` or a
        ``RunChange.position``), or None for the beginning of the log. Pass
        the returned ``position`` back as ``after``: it moves even when
        ``changes`` is empty. A consumer that stores the position of the last
        change it handled (in the same transaction as what it did with it)
        and restarts from it misses nothing and sees nothing twice, also when
        transactions commit in another order than they began; a rolled-back
        change never appears. Changes of one run come in the order they were
        made (``run_version`` increasing). With ``workflow``, only that
        workflow's changes are returned (the position still moves past the
        others).

        A change becomes readable once a *tick* after its commit exists; a
        read makes one when the newest is older than 50 ms, so a change
        waits at most about that long. One round trip.

        Raises:
            InvalidPosition: ``after`` was not made by squidmesh, or its tick
                was removed by ``prune_feed``.
            InvalidArgument: ``limit`` is not an int from 1 to 10,000, or
                ``workflow`` is not a str.
        """
        return await self._feed.read(after, workflow, limit)

    async def head_position(self) -> str:
        """Where a consumer starts that wants only the changes from now on.

        Pass it as ``after`` to ``read_changes`` or ``changes``: what follows
        are changes committed after the newest tick (at most one tick
        interval, 50 ms, before the call), never any earlier one, so a
        consumer that starts here does not read the whole log first. Two
        round trips (a tick when one is due, then the newest tick).
        """
        return await self._feed.head()

    async def changes(
        self, after: str | None = None, *, workflow: str | None = None, batch_size: int = 500
    ) -> AsyncIterator[RunChange]:
        """Every status change after ``after``, as it commits, for ever.

        Catches up with ``read_changes`` (pages of ``batch_size``), then waits
        for new changes and yields them. Each ``RunChange.position`` is where
        to resume after that change. Runs until the consumer stops iterating
        (``break``, or the task is cancelled) or the store is closed. Every
        ``changes`` of the process shares the store's one watcher; waking up
        takes a tick (about 50 ms) for this store's own writes and for other
        processes' writes with a ``listen_dsn``, up to ``poll_interval``
        otherwise.

        Raises:
            InvalidPosition, InvalidArgument: as for ``read_changes``.
            RuntimeError: the store is closed.
        """
        position = after
        news = self._watch.add_consumer()
        try:
            while not self._watch.closed:
                news.clear()
                page = await self._feed.read(position, workflow, batch_size)
                for change in page.changes:
                    yield change
                position = page.position
                if len(page.changes) < batch_size and not self._watch.closed:
                    with anyio.move_on_after(self._watch.poll_interval):
                        await news.wait()
        finally:
            self._watch.remove_consumer(news)

    async def wait_for(
        self,
        run_id: object,
        *,
        statuses: Iterable[RunStatus | str] | RunStatus | str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the contract's name)
    ) -> Run:
        """The run, as soon as its status is one of ``statuses`` (default: the
        terminal ones); at once if it already is.

        The run returned is as stored when the watcher saw it in one of the
        statuses. A status the run holds only briefly between two reads of
        the watcher (a ``running`` followed at once by ``completed``) may be
        passed over; terminal statuses never are. Any number of concurrent
        waiters share the store's watcher: no connection each.

        Raises:
            RunNotFound: no run has that id.
            WaitTimeout: ``timeout`` seconds passed first (also a
                ``TimeoutError``).
            UnknownStatus: a status is not one of the eight.
            InvalidArgument: ``statuses`` is empty, or ``timeout`` is not a
                non-negative number of seconds.
            RuntimeError: the store is (or gets) closed.
        """
        uuid = run_uuid(run_id)
        wanted = wait_statuses(statuses)
        seconds = wait_timeout(timeout)
        waiter = self._watch.add_waiter(uuid, wanted)
        try:
            try:
                with anyio.fail_after(seconds):
                    return await waiter.future
            except TimeoutError:
                if waiter.future.done() and not waiter.future.cancelled():
                    return waiter.future.result()
                # A timeout shorter than the watcher's first read (0 included)
                # still answers "at once if it already is".
                run = await self.get_run(uuid)
                if run.status in wanted:
                    return run
                raise WaitTimeout(
                    run_id, tuple(s for s in state_machine.STATES if s in wanted), seconds
                ) from None
        finally:
            self._watch.remove_waiter(waiter)

    # -- cron triggers: the scheduler ------------------------------------

    async def fire_due_triggers(self, *, now: datetime | None = None) -> list[Run]:
        """Create the runs that the registered workflows' cron triggers owe at ``now``.

        For every cron trigger of every registered workflow, creates the
        runs due at ``now`` (default: the database clock) and not yet
        created, through that trigger, with its defaults as payload and the
        idempotency key ``cron:<trigger>:<tick>`` (the tick as an ISO-8601
        UTC instant, ``cron:nightly:2026-03-30T07:00:00+00:00``), so each
        tick yields exactly one run however many processes fire at once.
        Ticks are computed in the trigger's time zone (UTC when it names
        none): a daily 02:30 trigger fires once on a day without 02:30 (at
        03:00) and once on a day with two.

        The last tick fired per trigger is kept in the database
        (``squidmesh.cron_state``). The first time a trigger is seen only
        its latest due tick fires; of the ticks missed after that while
        nothing fired, the ``catch_up`` most recent fire, oldest first
        (``Trigger(..., catch_up=N)``, default 1: only the latest). The
        store remembers when each trigger is next due: a call when nothing
        is due costs one round trip (the clock; none with ``now``), the
        first call of a store one more (the state), a call that fires that
        one and another per 1,000 runs.
        ``RunCreated`` is reported for each run created. A trigger whose
        payload cannot be built (a default factory that raises) is logged
        and tried again on the next call; the others fire.

        Returns:
            The runs this call created (not those another caller created
            first), by tick, then workflow and trigger.

        Raises:
            InvalidArgument: ``now`` is not a timezone-aware datetime.
        """
        return await self._scheduler.fire(now, self._bus.emit)

    @contextlib.asynccontextmanager
    async def scheduler(self, *, interval: float = 1.0) -> AsyncIterator[None]:
        """Run ``fire_due_triggers`` in the background every ``interval``
        seconds until the block exits::

            async with store.scheduler():
                await serve_forever()

        Errors are logged (logger ``squidmesh.scheduler``) and the call
        retried after a backoff that doubles from ``interval`` up to 30 s (or
        ``interval`` if longer): a database restart delays firing, it never
        stops it. Leaving the block stops the background task and waits for
        it; an exception of the block propagates as raised. Each created run
        is logged at INFO.

        Raises:
            InvalidArgument: ``interval`` is not a positive number of seconds.
        """
        seconds = check_interval(interval)
        raised: BaseException | None = None
        async with anyio.create_task_group() as group:
            group.start_soon(run_scheduler, self.fire_due_triggers, seconds)
            try:
                yield
            except BaseException as exc:
                # Raised after the task group, so that it is not wrapped in
                # an ExceptionGroup.
                raised = exc
            finally:
                group.cancel_scope.cancel()
        if raised is not None:
            raise raised

    # -- step history ---------------------------------------------------

    async def begin_step(self, run_id: object, step: str, input: JSONMap | None = None) -> StepRun:
        """Start step ``step`` of a run: its step run, running.

        Idempotent per (run, step): when the step run exists, it is returned
        as stored (a scheduled, pending one is started with ``input``), also
        when two callers race. One round trip (INSERT ... ON CONFLICT DO
        UPDATE, which locks the step run row). The kind (``pause``,
        ``approval`` or ``step``) is taken from the registered definition of
        the run's workflow, ``step`` when it is not registered.

        Args:
            run_id: the run.
            step: the step name (1 to 255 characters).
            input: the step's input map (None means ``{}``).

        Raises:
            RunNotFound: no run has that id.
            InvalidRun: ``step`` or ``input`` cannot be stored (nothing written).
        """
        return await self._steps.insert_step(SQL.begin_step, run_id, step, input)

    async def schedule_step(
        self, run_id: object, step: str, input: JSONMap | None = None
    ) -> StepRun:
        """Record step ``step`` of a run as scheduled: its step run, pending.

        Idempotent per (run, step): an existing step run is returned
        unchanged. One round trip; ``begin_step`` later starts it.

        Raises:
            RunNotFound: no run has that id.
            InvalidRun: ``step`` or ``input`` cannot be stored (nothing written).
        """
        return await self._steps.insert_step(SQL.schedule_step, run_id, step, input)

    async def complete_step(self, step_run_id: object, output: JSONMap | None = None) -> StepRun:
        """Mark a step run completed with its output.

        One round trip (the UPDATE locks the step run row).

        Args:
            step_run_id: the step run.
            output: the output map; None keeps the stored output.

        Returns:
            The updated step run, with its attempts.

        Raises:
            StepRunNotFound: no step run has that id.
            InvalidRun: ``output`` cannot be stored (nothing written).
        """
        return await self._steps.complete_step(step_run_id, output)

    async def fail_step(self, step_run_id: object, error: JSONMap) -> StepRun:
        """Mark a step run failed with ``error`` as its last_error.

        One round trip (the UPDATE locks the step run row).

        Returns:
            The updated step run, with its attempts.

        Raises:
            StepRunNotFound: no step run has that id.
            InvalidRun: ``error`` cannot be stored (nothing written).
        """
        return await self._steps.fail_step(step_run_id, error)

    async def complete_manual_step(
        self,
        step_run_id: object,
        output: JSONMap | None,
        event: RunAuditEvent | Mapping[str, Any],
    ) -> StepRun:
        """Complete a manual (pause or approval) step run, recording the human decision.

        One round trip (the UPDATE locks the step run row). The decision
        appears in the run's history as an audit event after the step's
        ``paused`` event.

        Args:
            step_run_id: the step run.
            output: the output map; None keeps the stored output.
            event: a ``RunAuditEvent`` or a dict with ``type`` (resumed,
                approved or rejected) and optionally ``actor``, ``comment``
                (str), ``metadata`` (map) and ``at`` (an aware datetime;
                the server clock when absent). Its ``step``, if any, is ignored.

        Returns:
            The updated step run, with its attempts.

        Raises:
            StepRunNotFound: no step run has that id.
            InvalidRun: the output or the event cannot be stored (nothing written).
        """
        return await self._steps.complete_manual_step(step_run_id, output, event)

    async def record_resume(self, step_run_id: object, resume: JSONMap) -> StepRun:
        """Store what a paused step resumes to; the step run's status is unchanged.

        One round trip (the UPDATE locks the step run row).

        Returns:
            The updated step run.

        Raises:
            StepRunNotFound: no step run has that id.
            InvalidRun: ``resume`` cannot be stored (nothing written).
        """
        return await self._steps.record_resume(step_run_id, resume)

    async def begin_attempt(self, step_run_id: object) -> StepAttempt:
        """Start the next attempt of a step run (number 1, 2, ...), running.

        Numbers are unique and gap-free under concurrent callers: the step
        run row is locked, then max + 1 is inserted. Uncontended, one round
        trip (one statement). When a competitor committed after that
        statement's snapshot, the unique constraint refuses the stale number
        and the call retries once in a transaction that reads the max after
        taking the lock: BEGIN, lock, insert, COMMIT (four more round trips).

        Raises:
            StepRunNotFound: no step run has that id.
        """
        return await self._steps.begin_attempt(step_run_id)

    async def complete_attempt(self, attempt_id: object) -> StepAttempt:
        """Mark an attempt completed. One round trip (the UPDATE locks the attempt row).

        Returns:
            The updated attempt.

        Raises:
            AttemptNotFound: no attempt has that id.
        """
        return await self._steps.finish_attempt(attempt_id, "completed", None)

    async def fail_attempt(self, attempt_id: object, error: JSONMap) -> StepAttempt:
        """Mark an attempt failed with ``error``. One round trip (the UPDATE locks the row).

        Returns:
            The updated attempt.

        Raises:
            AttemptNotFound: no attempt has that id.
            InvalidRun: ``error`` cannot be stored (nothing written).
        """
        error_text = encode_json_map("attempt error", error)
        return await self._steps.finish_attempt(attempt_id, "failed", error_text)

    async def pause_run(
        self,
        run_id: object,
        step_run_id: object,
        attempt_id: object | None,
        changes: RunChanges | Mapping[str, Any] | None = None,
        *,
        expected_version: int | None = None,
    ) -> PauseResult:
        """Pause a run at a manual step, deciding on the state read under the lock.

        1. failed, completed or cancelled: the run is left as it is; the step
           run and attempt are failed if still running, with
           ``{"message": "run already finalized before pause progression",
           "status": <status>}`` (the cancellation error for a cancelled
           run); ``terminal_noop`` is True and ``finalized_step`` says whether
           anything was failed;
        2. cancelling: the step run and attempt are failed (if running) with
           ``{"message": "run cancelled while paused", "reason":
           "cancelled"}`` and the run moves to cancelled, keeping only the
           given context (current_step and last_error cleared, as
           ``progress_run`` does for a cancelling run);
        3. otherwise a validated move to paused with the given fields; the
           step run and attempt stay running until the step resumes.
        ``RunTransitioned`` is reported for branches 2 and 3, then
        ``StepFailed`` when a step was failed (branches 1 and 2).

        One round trip: a single statement locks the run, then the step run,
        then the attempt, and writes.

        Args:
            run_id: the run.
            step_run_id: the paused step's step run (it must belong to the run).
            attempt_id: its current attempt (it must belong to the step run), or None.
            changes: a ``RunChanges`` or a dict of its fields; None for none.

        Raises:
            VersionConflict: ``expected_version`` is given and the run has another
                (checked first, under the lock: nothing written, no caller code run).
            RunNotFound: no run has that id.
            StepRunNotFound: no step run of this run has that id.
            AttemptNotFound: no attempt of that step run has that id.
            InvalidTransition: the run cannot move to paused (e.g. it is pending).
            InvalidRun: a field value cannot be stored (nothing written).
        """
        result, events = await self._steps.pause(
            run_id, step_run_id, attempt_id, changes, check_expected_version(expected_version)
        )
        await self._bus.emit(events)
        return result

    # -- helpers --------------------------------------------------------

    @staticmethod
    def schedule_next_step(run_or_status: Run | RunStatus | str) -> bool:
        """Whether the runtime should schedule more step work for this run or status.

        Raises:
            UnknownStatus: the status is not a state.
        """
        status = run_or_status.status if isinstance(run_or_status, Run) else run_or_status
        return state_machine.schedule_next_step(status)
