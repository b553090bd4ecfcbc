"""``RunStore``: durable workflow runs in PostgreSQL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

import asyncpg
from msgspec import UNSET, UnsetType

from . import _codec, state_machine
from ._base import StoreBase, fetch_write, field_params
from ._errors import InvalidTransition, InvalidWorkflow, RunNotFound, map_db_errors
from ._events import Listener, RunCreated, RunReplayed, RunTransitioned, StepFailed
from ._ids import uuid7
from ._payload import build_payload
from ._progress import ProgressOps
from ._sql import Q
from ._steps import CANCELLED_WHILE_PAUSED, StepOps
from ._steps import CANCELLED_WHILE_PAUSED_TEXT as _CANCELLED_WHILE_PAUSED_TEXT
from ._types import JSONMap, Run, RunChanges, RunStatus
from ._workflow import Workflow

_MAX_LIMIT = 2**63 - 1


async def no_reset(conn: asyncpg.Connection) -> None:
    """Pool reset hook for pools the store owns.

    asyncpg's default reset sends a query (advisory unlock, CLOSE ALL,
    UNLISTEN, RESET ALL) on every release: one more round trip per operation.
    The store leaves no session state behind (transaction-scoped locks only),
    and asyncpg still rolls back a transaction left open before calling this.
    """


class RunStore(ProgressOps, StepOps, StoreBase):
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
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        workflows: Iterable[Workflow] = (),
        listeners: Iterable[Listener] = (),
    ) -> None:
        super().__init__(pool, workflows=workflows, listeners=listeners)

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        dsn: str,
        *,
        workflows: Iterable[Workflow] = (),
        listeners: Iterable[Listener] = (),
        migrate: bool = False,
        min_size: int = 1,
        max_size: int = 16,
        **pool_options: Any,
    ) -> AsyncIterator[RunStore]:
        """Open a pool of its own and yield a store on it; close the pool on exit.

        The pool skips asyncpg's per-release reset query (see ``no_reset``).

        Args:
            dsn: a libpq connection URL.
            workflows, listeners: as for ``RunStore(...)``.
            migrate: apply pending schema migrations first.
            min_size, max_size, pool_options: passed to ``asyncpg.create_pool``.
        """
        from ._migrate import migrate as apply_migrations

        pool_options.setdefault("reset", no_reset)
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, **pool_options)
        try:
            if migrate:
                await apply_migrations(pool)
            yield cls(pool, workflows=workflows, listeners=listeners)
        finally:
            await pool.close()

    # -- creation -----------------------------------------------------------

    async def create_run(
        self, workflow: Workflow | str, payload: object, *, trigger: str | None = None
    ) -> Run:
        """Create a pending run through a trigger (the default one when None).

        One round trip (one INSERT). The payload gets its defaults, then is
        validated as a whole: every problem is reported at once.

        ``workflow`` is a registered workflow's name, or a ``Workflow``
        (used as given, registered or not).

        Raises:
            InvalidWorkflow: no workflow of that name is registered.
            InvalidTrigger: the workflow declares no such trigger.
            InvalidPayload: the payload is not a map or does not match the trigger.
            InvalidRun: the payload is larger than squidmesh stores (64 MiB encoded).
        """
        run = await self._insert_run(self._pool, workflow, payload, trigger)
        await self._emit((RunCreated(run=run),))
        return run

    async def _insert_run(
        self,
        conn: asyncpg.Pool | Any,
        workflow: Workflow | str,
        payload: object,
        trigger: str | None,
    ) -> Run:
        wf = self._workflow(workflow)
        trig = wf.trigger(trigger)
        text = _codec.encode(build_payload(trig, payload))
        with map_db_errors():
            row_text = await fetch_write(
                conn, Q["insert_run"], uuid7(), wf.name, trig.name, text, wf.entry_step, None
            )
        return _codec.decode_run(row_text)

    async def replay_run(self, run_id: object) -> Run:
        """Create a new pending run with the source's workflow, trigger and payload.

        The source is untouched; the new run has an empty context, no error,
        the workflow's entry step and ``replayed_from_run_id`` set. One round
        trip (an INSERT ... SELECT that reads the source).

        Raises:
            RunNotFound: no run has that id.
            InvalidWorkflow: the source's workflow is not registered.
        """
        run = await self._insert_replay(self._pool, run_id)
        await self._emit((RunReplayed(run=run),))
        return run

    async def _insert_replay(self, conn: asyncpg.Pool | Any, run_id: object) -> Run:
        uid = self._run_id(run_id)
        names, entry_steps = self._entry_steps()
        try:
            row = await fetch_write(
                conn, Q["insert_replay"], uuid7(), uid, names, entry_steps, row=True
            )
        except asyncpg.ForeignKeyViolationError as exc:
            raise RunNotFound(run_id) from exc  # the source was deleted meanwhile
        if row is None:
            raise RunNotFound(run_id)
        workflow, text = row
        if text is None:
            raise InvalidWorkflow(workflow)
        return _codec.decode_run(text)

    # -- reads --------------------------------------------------------------

    async def get_run(self, run_id: object, *, include_history: bool = False) -> Run:
        """Fetch one run; with ``include_history``, with its step runs,
        declared steps and audit events (otherwise those three are None).

        One round trip either way.

        Raises:
            RunNotFound: no run has that id.
        """
        uid = self._run_id(run_id)
        if include_history:
            run = await self._fetch_with_history(uid)
            if run is None:
                raise RunNotFound(run_id)
            return run
        text = await self._pool.fetchval(Q["get_run"], uid)
        if text is None:
            raise RunNotFound(run_id)
        return _codec.decode_run(text)

    async def list_runs(
        self,
        *,
        workflow: Workflow | str | None = None,
        status: RunStatus | str | None = None,
        limit: int | None = None,
    ) -> list[Run]:
        """List runs newest first (inserted_at, then id, descending).

        Each filter combination has its own index-backed query. ``limit`` is
        a positive int; anything else (None, zero, a negative number, a bool,
        an int past 2**63 - 1) means no limit. Each run arrives as its own
        row, so a list is bounded by the client's memory, not by PostgreSQL's
        1 GB limit on one value.

        Raises:
            UnknownStatus: ``status`` is not one of the eight states.
        """
        # An int past PostgreSQL's bigint cannot be a LIMIT, and no table holds
        # that many rows: it means "no limit" like any other non-positive value.
        lim = limit if type(limit) is int and 0 < limit <= _MAX_LIMIT else None
        name: object = workflow.name if isinstance(workflow, Workflow) else workflow
        if name is not None and (not isinstance(name, str) or _codec.text_problem(name)):
            return []  # no run can have such a workflow name: inserting it is refused
        st = None if status is None else state_machine.coerce_status(status).value
        if name is None and st is None:
            rows = await self._pool.fetch(Q["list_runs"], lim)
        elif st is None:
            rows = await self._pool.fetch(Q["list_runs_by_workflow"], lim, name)
        elif name is None:
            rows = await self._pool.fetch(Q["list_runs_by_status"], lim, st)
        else:
            rows = await self._pool.fetch(Q["list_runs_by_workflow_status"], lim, name, st)
        decode = _codec.decode_run
        return [decode(row[0]) for row in rows]

    # -- state changes ------------------------------------------------------

    async def transition_run(
        self,
        run_id: object,
        to_status: RunStatus | str,
        *,
        context: JSONMap | None | UnsetType = UNSET,
        current_step: str | None | UnsetType = UNSET,
        last_error: JSONMap | None | UnsetType = UNSET,
    ) -> Run:
        """Move a run to ``to_status``, writing the given fields with it.

        One round trip: a single statement locks the row, checks the move
        against the state read under the lock, and writes (on PostgreSQL >=
        18 a plain guarded UPDATE with ``RETURNING old.status``; an illegal
        move or an unknown id then takes a second statement to tell which).
        Fields not given are unchanged; ``None`` clears. An illegal move
        changes nothing.

        Raises:
            RunNotFound: no run has that id.
            InvalidTransition: the state machine forbids the move.
            UnknownStatus: ``to_status`` is not a state.
        """
        to = state_machine.coerce_status(to_status)
        uid = self._run_id(run_id)
        params = field_params(
            RunChanges(context=context, current_step=current_step, last_error=last_error)
        )
        sources = state_machine.sources_of(to)
        async with self._pool.acquire() as conn:
            row = None
            with map_db_errors():
                if self._returning_old(conn):
                    row = await fetch_write(
                        conn, Q["transition_run_fast"], uid, to.value, *params, sources, row=True
                    )
                if row is None:
                    row = await fetch_write(
                        conn, Q["transition_run"], uid, to.value, *params, sources, row=True
                    )
        if row is None:
            raise RunNotFound(run_id)
        from_status, text = row
        if text is None:
            raise InvalidTransition(from_status, to)
        run = _codec.decode_run(text)
        await self._emit(
            (RunTransitioned(run=run, from_status=RunStatus(from_status), to_status=to),)
        )
        return run

    async def update_run(
        self,
        run_id: object,
        *,
        context: JSONMap | None | UnsetType = UNSET,
        current_step: str | None | UnsetType = UNSET,
        last_error: JSONMap | None | UnsetType = UNSET,
    ) -> Run:
        """Write context / current_step / last_error without changing status.

        One round trip (the UPDATE takes the row lock). Fields not given are
        unchanged; ``None`` clears (``context=None`` resets it to ``{}``).

        Raises:
            RunNotFound: no run has that id.
        """
        uid = self._run_id(run_id)
        params = field_params(
            RunChanges(context=context, current_step=current_step, last_error=last_error)
        )
        with map_db_errors():
            text = await fetch_write(self._pool, Q["update_run"], uid, *params)
        if text is None:
            raise RunNotFound(run_id)
        return _codec.decode_run(text)

    async def cancel_run(self, run_id: object) -> Run:
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
            RunNotFound: no run has that id.
            InvalidTransition: the run is failed, completed or cancelled
                (reported as a move to ``cancelling``).
        """
        uid = self._run_id(run_id)
        failed_step = attempt_number = duration_s = None
        async with self._pool.acquire() as conn:
            row = None
            if self._returning_old(conn):
                row = await fetch_write(conn, Q["cancel_run_fast"], uid, row=True)
            if row is None:
                row = await fetch_write(
                    conn, Q["cancel_run"], uid, _CANCELLED_WHILE_PAUSED_TEXT, row=True
                )
                if row is None:
                    raise RunNotFound(run_id)
                failed_step, attempt_number, duration_s = row[2:]
        from_status, text = row[0], row[1]
        if text is None:
            raise InvalidTransition(from_status, RunStatus.CANCELLING)
        run = _codec.decode_run(text)
        events: list[object] = [
            RunTransitioned(run=run, from_status=RunStatus(from_status), to_status=run.status)
        ]
        if failed_step is not None:
            events.append(
                StepFailed(
                    run=run,
                    step=failed_step,
                    attempt_number=attempt_number,
                    duration_s=duration_s,
                    error=dict(CANCELLED_WHILE_PAUSED),
                )
            )
        await self._emit(events)
        return run

    @staticmethod
    def schedule_next_step(run_or_status: Run | RunStatus | str) -> bool:
        """Whether the runtime should schedule more step work for this run or status.

        Raises:
            UnknownStatus: the status is not a state.
        """
        status = run_or_status.status if isinstance(run_or_status, Run) else run_or_status
        return state_machine.schedule_next_step(status)
