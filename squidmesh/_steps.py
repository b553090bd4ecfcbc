"""Step history: step runs, attempts, the history read and pause_run.

A host runtime records what it did through the step writes; ``get_run(...,
include_history=True)`` reads it back in one round trip and derives the
declared-step view and the audit events in Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, Literal
from uuid import UUID

import asyncpg
import msgspec

from . import _codec, state_machine
from ._base import (
    READ_COMMITTED,
    StoreBase,
    check_step_name,
    check_text,
    coerce_changes,
    encode_json_map,
    fetch_write,
    field_params,
)
from ._errors import (
    AttemptNotFound,
    InvalidRun,
    InvalidTransition,
    RunNotFound,
    StepRunNotFound,
    map_db_errors,
)
from ._events import RunTransitioned, StepFailed
from ._ids import parse_id, uuid7
from ._sql import Q
from ._types import (
    JSONMap,
    PauseResult,
    Run,
    RunAuditEvent,
    RunChanges,
    RunStatus,
    RunStepState,
    StepAttempt,
    StepRun,
)
from ._workflow import MANUAL_STEP_KINDS, Workflow

# Written to the paused step's step run and attempt when its run is cancelled
# (cancel_run on a paused run; pause_run on a cancelling or cancelled run).
CANCELLED_WHILE_PAUSED: Final[JSONMap] = {
    "message": "run cancelled while paused",
    "reason": "cancelled",
}
CANCELLED_WHILE_PAUSED_TEXT: Final = _codec.encode(CANCELLED_WHILE_PAUSED)

_DECISIONS: Final = frozenset({"resumed", "approved", "rejected"})
_PAUSE_SOURCES: Final = state_machine.sources_of(RunStatus.PAUSED)
_UNIQUE_ATTEMPT: Final = "step_attempts_step_run_id_number_key"


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


_step_run_decoder: Final = msgspec.json.Decoder(StepRun)
_attempt_decoder: Final = msgspec.json.Decoder(StepAttempt)
_history_decoder: Final = msgspec.json.Decoder(_History)


def _optional_map(name: str, value: object) -> str | None:
    return None if value is None else encode_json_map(name, value)


_EVENT_KEYS: Final = frozenset({"type", "step", "actor", "comment", "metadata", "at"})


def _decision_params(
    event: object,
) -> tuple[str, str | None, str | None, str, datetime | None]:
    """Check a manual decision and encode it for complete_manual_step.

    ``step`` is accepted (a ``RunAuditEvent`` carries one) and ignored: the
    decision belongs to the step run it is recorded on.
    """
    if isinstance(event, Mapping):
        unknown = set(event) - _EVENT_KEYS
        if unknown:
            raise InvalidRun(
                f"unknown event keys {sorted(map(str, unknown))}; "
                "allowed: type, step, actor, comment, metadata, at"
            )
        fields = dict(event)
    else:
        fields = {key: getattr(event, key, None) for key in _EVENT_KEYS}
    kind = fields.get("type")
    if not isinstance(kind, str) or kind not in _DECISIONS:
        raise InvalidRun(f"event type must be one of resumed, approved, rejected; got {kind!r}")
    metadata = fields.get("metadata")
    metadata_text = "{}" if metadata is None else encode_json_map("event metadata", metadata)
    at = fields.get("at")
    if at is not None:
        if not isinstance(at, datetime):
            raise InvalidRun(f"event at must be a datetime or None, not {type(at).__name__}")
        if at.utcoffset() is None:
            raise InvalidRun("event at must be timezone-aware")
    return (
        str(kind),
        check_text("event actor", fields.get("actor")),
        check_text("event comment", fields.get("comment")),
        metadata_text,
        at,
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


class StepOps(StoreBase):
    """Step history writes and reads, and ``pause_run`` (mixed into ``RunStore``).

    The step writes lock only the row they change (the run row is touched
    only through the foreign key of a new step run). They do not police the
    step lifecycle: completing a failed step run or failing a completed one
    is the runtime's decision and is written as asked.
    """

    # -- reads --------------------------------------------------------------

    async def _fetch_with_history(self, run_id: UUID) -> Run | None:
        """The run with step_runs, steps and audit_events; None if it does not exist.

        One round trip (one statement, no transaction): the run, its step runs
        and their attempts arrive as one JSON text from a single snapshot.
        """
        text = await self._pool.fetchval(Q["run_history"], run_id)
        if text is None:
            return None
        history = _history_decoder.decode(text)
        definition = self._definition(history.run.workflow)
        step_runs = [item.step_run for item in history.step_runs]
        return msgspec.structs.replace(
            history.run,
            step_runs=step_runs,
            steps=_declared_steps(definition, step_runs),
            audit_events=_audit_events(definition, history.step_runs),
        )

    # -- step runs ----------------------------------------------------------

    async def _insert_step(
        self, query: str, run_id: object, step: object, input: object
    ) -> StepRun:
        uid = self._run_id(run_id)
        name = check_step_name("step", step)
        input_text = encode_json_map("step input", {} if input is None else input)
        names, kinds = self._manual_kinds(name)
        try:
            with map_db_errors():
                text = await fetch_write(
                    self._pool, query, uuid7(), uid, name, input_text, names, kinds
                )
        except InvalidRun as exc:
            # The run was deleted between the statement's read and its insert.
            if isinstance(exc.__cause__, asyncpg.ForeignKeyViolationError):
                raise RunNotFound(run_id) from None
            raise
        if text is None:
            raise RunNotFound(run_id)
        return _step_run_decoder.decode(text)

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
        return await self._insert_step(Q["begin_step"], run_id, step, input)

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
        return await self._insert_step(Q["schedule_step"], run_id, step, input)

    async def _write_step_run(self, query: str, step_run_id: object, *args: object) -> StepRun:
        """Run one step-run write (``query`` takes the id as $1); no row = not found."""
        uid = parse_id(step_run_id)
        if uid is None:
            raise StepRunNotFound(step_run_id)
        with map_db_errors():
            text = await fetch_write(self._pool, query, uid, *args)
        if text is None:
            raise StepRunNotFound(step_run_id)
        return _step_run_decoder.decode(text)

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
        return await self._write_step_run(
            Q["finish_step"], step_run_id, "completed", _optional_map("step output", output), None
        )

    async def fail_step(self, step_run_id: object, error: JSONMap) -> StepRun:
        """Mark a step run failed with ``error`` as its last_error.

        One round trip (the UPDATE locks the step run row).

        Returns:
            The updated step run, with its attempts.

        Raises:
            StepRunNotFound: no step run has that id.
            InvalidRun: ``error`` cannot be stored (nothing written).
        """
        return await self._write_step_run(
            Q["finish_step"], step_run_id, "failed", None, encode_json_map("step error", error)
        )

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
        output_text = _optional_map("step output", output)
        kind, actor, comment, metadata, at = _decision_params(event)
        return await self._write_step_run(
            Q["complete_manual_step"], step_run_id, output_text, kind, actor, comment, metadata, at
        )

    async def record_resume(self, step_run_id: object, resume: JSONMap) -> StepRun:
        """Store what a paused step resumes to; the step run's status is unchanged.

        One round trip (the UPDATE locks the step run row).

        Returns:
            The updated step run.

        Raises:
            StepRunNotFound: no step run has that id.
            InvalidRun: ``resume`` cannot be stored (nothing written).
        """
        resume_text = encode_json_map("resume", resume)
        return await self._write_step_run(Q["record_resume"], step_run_id, resume_text)

    # -- attempts -----------------------------------------------------------

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
        uid = parse_id(step_run_id)
        if uid is None:
            raise StepRunNotFound(step_run_id)
        try:
            text = await fetch_write(self._pool, Q["lock_and_begin_attempt"], uuid7(), uid)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != _UNIQUE_ATTEMPT:
                raise
            # READ COMMITTED explicitly: each statement then gets a fresh
            # snapshot even on a pool whose default isolation is stricter.
            async with (
                self._pool.acquire() as conn,
                conn.transaction(isolation=READ_COMMITTED),
            ):
                if await conn.fetchval(Q["lock_step_run"], uid) is None:
                    raise StepRunNotFound(step_run_id) from None
                # A new statement: its snapshot sees every attempt committed
                # before we got the lock, and nobody inserts while we hold it.
                text = await conn.fetchval(Q["lock_and_begin_attempt"], uuid7(), uid)
        if text is None:
            raise StepRunNotFound(step_run_id)
        return _attempt_decoder.decode(text)

    async def _finish_attempt(
        self, attempt_id: object, status: str, error: str | None
    ) -> StepAttempt:
        uid = parse_id(attempt_id)
        if uid is None:
            raise AttemptNotFound(attempt_id)
        with map_db_errors():
            text = await fetch_write(self._pool, Q["finish_attempt"], uid, status, error)
        if text is None:
            raise AttemptNotFound(attempt_id)
        return _attempt_decoder.decode(text)

    async def complete_attempt(self, attempt_id: object) -> StepAttempt:
        """Mark an attempt completed. One round trip (the UPDATE locks the attempt row).

        Returns:
            The updated attempt.

        Raises:
            AttemptNotFound: no attempt has that id.
        """
        return await self._finish_attempt(attempt_id, "completed", None)

    async def fail_attempt(self, attempt_id: object, error: JSONMap) -> StepAttempt:
        """Mark an attempt failed with ``error``. One round trip (the UPDATE locks the row).

        Returns:
            The updated attempt.

        Raises:
            AttemptNotFound: no attempt has that id.
            InvalidRun: ``error`` cannot be stored (nothing written).
        """
        return await self._finish_attempt(
            attempt_id, "failed", encode_json_map("attempt error", error)
        )

    # -- pause --------------------------------------------------------------

    async def pause_run(
        self,
        run_id: object,
        step_run_id: object,
        attempt_id: object | None,
        changes: RunChanges | Mapping[str, Any] | None = None,
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
            RunNotFound: no run has that id.
            StepRunNotFound: no step run of this run has that id.
            AttemptNotFound: no attempt of that step run has that id.
            InvalidTransition: the run cannot move to paused (e.g. it is pending).
            InvalidRun: a field value cannot be stored (nothing written).
        """
        params = field_params(coerce_changes(changes))
        uid = self._run_id(run_id)
        step_uid = parse_id(step_run_id)
        if step_uid is None:
            raise StepRunNotFound(step_run_id)
        attempt_uid: UUID | None = None
        if attempt_id is not None:
            attempt_uid = parse_id(attempt_id)
            if attempt_uid is None:
                raise AttemptNotFound(attempt_id)
        with map_db_errors():
            row = await fetch_write(
                self._pool,
                Q["lock_and_pause_run"],
                uid,
                step_uid,
                attempt_uid,
                _PAUSE_SOURCES,
                *params,
                CANCELLED_WHILE_PAUSED_TEXT,
                row=True,
            )
        if row is None:
            raise RunNotFound(run_id)
        if not row["step_found"]:
            raise StepRunNotFound(step_run_id)
        if attempt_uid is not None and not row["attempt_found"]:
            raise AttemptNotFound(attempt_id)
        from_status = RunStatus(row["from_status"])
        branch = row["branch"]
        if branch == "illegal":
            raise InvalidTransition(from_status, RunStatus.PAUSED)
        run = _codec.decode_run(row["run"])
        if branch == "pause":
            await self._emit(
                (RunTransitioned(run=run, from_status=from_status, to_status=run.status),)
            )
            return PauseResult(run=run, from_status=from_status, to_status=run.status)
        # Branches 1 and 2: the step is finalised with the error.
        error = _codec.decode_map(row["error"])
        finalized = bool(row["step_failed"]) or row["attempt_number"] is not None
        events: list[object] = []
        if branch == "cancel":
            events.append(RunTransitioned(run=run, from_status=from_status, to_status=run.status))
        if finalized:
            events.append(
                StepFailed(
                    run=run,
                    step=row["step"],
                    attempt_number=row["attempt_number"],
                    duration_s=row["duration_s"],
                    error=dict(error),
                )
            )
        await self._emit(events)
        return PauseResult(
            run=run,
            from_status=from_status,
            to_status=run.status,
            terminal_noop=branch == "terminal",
            finalized_step=finalized,
            error=error,
        )
