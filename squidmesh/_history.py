"""The history read behind ``get_run(run_id, include_history=True)``.

One statement returns the run, its step runs (each with its attempts), what
each step run recorded (its kind, a human decision) and the run's status
changes from the transition log; the declared-step view and the audit events
are derived from it here, in Python.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal
from uuid import UUID

import asyncpg
import msgspec

from . import _queries
from ._queries import SQL
from ._registry import Registry
from ._types import JSONMap, Run, RunAuditEvent, RunChange, RunStepState, StepRun
from ._workflow import MANUAL_STEP_KINDS, Workflow


class _Manual(msgspec.Struct, frozen=True):
    """The human decision as stored in ``step_runs.manual``."""

    event: Literal["resumed", "approved", "rejected"]
    at: datetime
    actor: str | None = None
    comment: str | None = None
    metadata: JSONMap | None = None


class _StoredStepRun(msgspec.Struct, frozen=True):
    step_run: StepRun
    kind: str = "step"
    manual: _Manual | None = None


class _History(msgspec.Struct, frozen=True):
    run: Run
    step_runs: list[_StoredStepRun]
    # Oldest first, each with position "" (not a place in the change feed).
    transitions: list[RunChange]


_history_decoder: Final = msgspec.json.Decoder(_History)


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
        and their attempts, and its transitions arrive as one JSON text from a
        single snapshot.
        """
        text = await _queries.value(self._pool, SQL.run_history, run_id)
        if text is None:
            return None
        history = _history_decoder.decode(text)
        definition = self._registry.definition(history.run.workflow)
        step_runs = [item.step_run for item in history.step_runs]
        return msgspec.structs.replace(
            history.run,
            step_runs=step_runs,
            steps=_declared_steps(definition, step_runs),
            audit_events=_audit_events(definition, history.step_runs),
            transitions=history.transitions,
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
    for item in stored:
        step_run = item.step_run
        declared = definition.step(step_run.step) if definition is not None else None
        manual = (
            item.kind in MANUAL_STEP_KINDS
            or (declared is not None and declared.is_manual)
            or item.manual is not None
        )
        # A scheduled manual step has not started, so it has not paused yet.
        if not manual or (step_run.status == "pending" and item.manual is None):
            continue
        events.append(RunAuditEvent(type="paused", step=step_run.step, at=step_run.inserted_at))
        decision = item.manual
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
