"""The history read behind ``get_run(run_id, include_history=True)``.

One statement returns the run, its step runs' attempts, its step runs (with
what each recorded: its kind, a human decision) and the run's status changes
from the transition log, as plain rows (see ``run_history`` in
sql/queries/history.sql); the StepRuns, the declared-step view and the audit
events are built from them here, in Python.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal
from uuid import UUID

import asyncpg
import msgspec
from asyncpg.pgproto.pgproto import UUID as _Id

from . import _codec, _queries
from ._queries import SQL
from ._registry import Registry
from ._types import (
    JSONMap,
    Run,
    RunAuditEvent,
    RunChange,
    RunStatus,
    RunStepState,
    StepAttempt,
    StepRun,
)
from ._workflow import MANUAL_STEP_KINDS, Workflow


class _Manual(msgspec.Struct, frozen=True):
    """The human decision as stored in ``step_runs.manual``."""

    event: Literal["resumed", "approved", "rejected"]
    at: datetime
    actor: str | None = None
    comment: str | None = None
    metadata: JSONMap | None = None


# A step run with what it recorded: its kind and a human decision.
_StoredStepRun = tuple[StepRun, str, _Manual | None]


_manual_decoder: Final = msgspec.json.Decoder(_Manual)
# The parts of run_history's rows (its last column).
_RUN: Final = 0
_ATTEMPT: Final = 1
_STEP_RUN: Final = 2


class HistoryOps:
    """The history read of a store."""

    __slots__ = ("_pool", "_registry")

    def __init__(self, pool: asyncpg.Pool, registry: Registry) -> None:
        self._pool = pool
        self._registry = registry

    async def read(self, run_id: UUID) -> Run | None:
        """The run with step_runs, steps, audit_events and transitions; None if
        it does not exist.

        One round trip (one statement, no transaction): the run, its step runs
        and their attempts, and its transitions, from a single snapshot.
        """
        rows = await _queries.rows(self._pool, SQL.run_history, run_id)
        if not rows or rows[0]["part"] != _RUN:
            return None
        run = _codec.decode_run(rows[0])
        body = rows[1:]
        # Every row after the run has both timestamps: converted in one call.
        stamps = iter(_codec.decode_times([t for row in body for t in (row[11], row[12])]))
        decode_map = _codec.decode_map
        attempts: dict[bytes, list[StepAttempt]] = {}
        stored: list[_StoredStepRun] = []
        transitions: list[RunChange] = []
        # Rows by part: the attempts (by attempt_number) come before their
        # step runs, the step runs are in (inserted_at, id) order. The column
        # names are the run's (see run_history for what each holds per part).
        for (
            key,
            name,
            kind,
            status,
            data,
            output,
            manual,
            error,
            step_run_key,
            number,
            _,
            _,
            _,
            part,
        ), inserted_at, updated_at in zip(body, stamps, stamps, strict=True):
            if part == _ATTEMPT:
                attempt = StepAttempt(
                    id=_Id(key),
                    attempt_number=number,
                    status=status,
                    error=None if error is None else decode_map(error),
                    inserted_at=inserted_at,
                    updated_at=updated_at,
                )
                of_step = attempts.get(step_run_key)
                if of_step is None:
                    attempts[step_run_key] = [attempt]
                else:
                    of_step.append(attempt)
            elif part == _STEP_RUN:
                step_run = StepRun(
                    id=_Id(key),
                    step=name,
                    status=status,
                    input=decode_map(data),
                    output=None if output is None else decode_map(output),
                    last_error=None if error is None else decode_map(error),
                    attempts=attempts.get(key, []),
                    inserted_at=inserted_at,
                    updated_at=updated_at,
                )
                stored.append(
                    (step_run, kind, None if manual is None else _manual_decoder.decode(manual))
                )
            else:
                transitions.append(
                    RunChange(
                        position="",
                        run_id=run.id,
                        workflow=name,
                        run_version=number,
                        from_status=None if kind is None else RunStatus(kind),
                        to_status=RunStatus(status),
                        at=inserted_at,
                    )
                )
        definition = self._registry.definition(run.workflow)
        step_runs = [item[0] for item in stored]
        return msgspec.structs.replace(
            run,
            step_runs=step_runs,
            steps=_declared_steps(definition, step_runs),
            audit_events=_audit_events(definition, stored),
            transitions=transitions,
        )


def _step_state(name: str, depends_on: list[str], step_run: StepRun | None) -> RunStepState:
    if step_run is None:
        return RunStepState(step=name, status="waiting", depends_on=depends_on)
    return RunStepState(
        step=name,
        status=step_run.status,
        depends_on=depends_on,
        input=step_run.input,
        output=step_run.output,
        last_error=step_run.last_error,
        attempts=step_run.attempts,
        inserted_at=step_run.inserted_at,
        updated_at=step_run.updated_at,
    )


def _declared_steps(definition: Workflow | None, step_runs: list[StepRun]) -> list[RunStepState]:
    """The declared steps in display order, then step runs of undeclared steps."""
    by_step = {step_run.step: step_run for step_run in step_runs}
    states: list[RunStepState] = []
    if definition is not None:
        for name, depends_on in definition.step_layout():
            states.append(_step_state(name, depends_on, by_step.pop(name, None)))
    # What is left (everything, for an unregistered workflow) keeps the
    # chronological order of step_runs.
    states.extend(
        _step_state(step_run.step, [], step_run)
        for step_run in step_runs
        if step_run.step in by_step
    )
    return states


def _audit_events(definition: Workflow | None, stored: list[_StoredStepRun]) -> list[RunAuditEvent]:
    """``paused`` when each manual step started, then its recorded decision."""
    events: list[RunAuditEvent] = []
    for step_run, kind, decision in stored:
        declared = definition.step(step_run.step) if definition is not None else None
        manual = (
            kind in MANUAL_STEP_KINDS
            or (declared is not None and declared.is_manual)
            or decision is not None
        )
        # A scheduled manual step has not started, so it has not paused yet.
        if not manual or (step_run.status == "pending" and decision is None):
            continue
        events.append(RunAuditEvent(type="paused", step=step_run.step, at=step_run.inserted_at))
        if decision is not None:
            events.append(
                RunAuditEvent(
                    type=decision.event,
                    step=step_run.step,
                    actor=decision.actor,
                    comment=decision.comment,
                    metadata=decision.metadata or {},
                    at=decision.at,
                )
            )
    # Stable: a decision recorded at its step's own start stays after "paused".
    events.sort(key=lambda event: event.at)
    return events
