"""Run operations: create, replay, read, list, transition, update, cancel.

Each is one statement where no caller code runs under the lock. Writes
return what they wrote and the events to report; the store reports them
after commit.
"""

from __future__ import annotations

from typing import Final
from uuid import UUID

import asyncpg

from . import _codec, _queries, state_machine
from ._errors import InvalidTransition, InvalidWorkflow, RunNotFound
from ._events import RunTransitioned, StepFailed
from ._ids import uuid7
from ._payload import build_payload
from ._queries import SQL, Conn, Executor, ServerFeatures
from ._registry import Registry
from ._types import JSONMap, Run, RunStatus
from ._values import FieldWrites, run_uuid
from ._workflow import Workflow

# Written to the paused step's step run and attempt when its run is cancelled
# (cancel_run on a paused run; pause_run on a cancelling or cancelled run).
CANCELLED_WHILE_PAUSED: Final[JSONMap] = {
    "message": "run cancelled while paused",
    "reason": "cancelled",
}
CANCELLED_WHILE_PAUSED_TEXT: Final = _codec.encode(CANCELLED_WHILE_PAUSED)

# An int past PostgreSQL's bigint cannot be a LIMIT, and no table holds that
# many rows: it means "no limit" like any other non-positive value.
_MAX_LIMIT: Final = 2**63 - 1


class RunOps:
    """The run operations of a store (see the ``RunStore`` methods of the same names)."""

    __slots__ = ("_pool", "_registry", "_server")

    def __init__(self, pool: asyncpg.Pool, registry: Registry, server: ServerFeatures) -> None:
        self._pool = pool
        self._registry = registry
        self._server = server

    # -- creation -----------------------------------------------------------

    async def insert(
        self, ex: Executor, workflow: Workflow | str, payload: object, trigger: str | None
    ) -> Run:
        """Insert a pending run through a trigger; one INSERT on ``ex``."""
        wf = self._registry.resolve(workflow)
        trig = wf.trigger(trigger)
        text = _codec.encode(build_payload(trig, payload))
        row_text = await _queries.write_value(
            ex, SQL.insert_run, uuid7(), wf.name, trig.name, text, wf.entry_step, None
        )
        return _codec.decode_run(row_text)

    async def replay(self, ex: Executor, run_id: object) -> Run:
        """Insert a replay of a run; one INSERT ... SELECT on ``ex``."""
        uid = run_uuid(run_id)
        names, entry_steps = self._registry.entry_steps()
        row = await _queries.write_row(
            ex, SQL.insert_replay, uuid7(), uid, names, entry_steps, subject=run_id
        )
        if row is None:
            raise RunNotFound(run_id)
        workflow, text = row
        if text is None:
            raise InvalidWorkflow(workflow)
        return _codec.decode_run(text)

    # -- reads --------------------------------------------------------------

    async def get(self, run_id: object) -> Run:
        text = await _queries.value(self._pool, SQL.get_run, run_uuid(run_id))
        if text is None:
            raise RunNotFound(run_id)
        return _codec.decode_run(text)

    async def find(
        self, workflow: Workflow | str | None, status: RunStatus | str | None, limit: int | None
    ) -> list[Run]:
        lim = limit if type(limit) is int and 0 < limit <= _MAX_LIMIT else None
        name: object = workflow.name if isinstance(workflow, Workflow) else workflow
        if name is not None and (not isinstance(name, str) or _codec.text_problem(name)):
            return []  # no run can have such a workflow name: inserting it is refused
        st = None if status is None else state_machine.coerce_status(status).value
        if name is None and st is None:
            found = await _queries.rows(self._pool, SQL.list_runs, lim)
        elif st is None:
            found = await _queries.rows(self._pool, SQL.list_runs_by_workflow, lim, name)
        elif name is None:
            found = await _queries.rows(self._pool, SQL.list_runs_by_status, lim, st)
        else:
            found = await _queries.rows(self._pool, SQL.list_runs_by_workflow_status, lim, name, st)
        decode = _codec.decode_run
        return [decode(row[0]) for row in found]

    # -- state changes ------------------------------------------------------

    async def transition(
        self, run_id: object, to: RunStatus, writes: FieldWrites
    ) -> tuple[Run, RunTransitioned]:
        uid = run_uuid(run_id)
        sources = state_machine.sources_of(to)
        async with _queries.connection(self._pool) as conn:
            row = None
            if self._server.fast_paths(conn):
                row = await _queries.write_row(
                    conn, SQL.transition_run_fast, uid, to.value, *writes, sources
                )
            if row is None:
                row = await _queries.write_row(
                    conn, SQL.transition_run, uid, to.value, *writes, sources
                )
        if row is None:
            raise RunNotFound(run_id)
        from_status, text = row
        if text is None:
            raise InvalidTransition(from_status, to)
        run = _codec.decode_run(text)
        return run, RunTransitioned(run=run, from_status=RunStatus(from_status), to_status=to)

    async def update(self, run_id: object, writes: FieldWrites) -> Run:
        uid = run_uuid(run_id)
        text = await _queries.write_value(self._pool, SQL.update_run, uid, *writes)
        if text is None:
            raise RunNotFound(run_id)
        return _codec.decode_run(text)

    async def cancel(self, run_id: object) -> tuple[Run, list[object]]:
        uid = run_uuid(run_id)
        failed_step = attempt_number = duration_s = None
        async with _queries.connection(self._pool) as conn:
            row = None
            if self._server.fast_paths(conn):
                row = await _queries.write_row(conn, SQL.cancel_run_fast, uid)
            if row is None:
                row = await _queries.write_row(
                    conn, SQL.cancel_run, uid, CANCELLED_WHILE_PAUSED_TEXT
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
        return run, events

    # -- inside a transaction that holds the run's lock ----------------------

    @staticmethod
    async def write(conn: Conn, run_id: UUID, status: str | None, writes: FieldWrites) -> Run:
        """Write status (None = unchanged) and fields of a row ``conn`` has locked."""
        text = await _queries.write_value(conn, SQL.write_run, run_id, status, *writes)
        if text is None:  # the caller holds the lock, so the row cannot vanish
            raise RunNotFound(run_id)
        return _codec.decode_run(text)
