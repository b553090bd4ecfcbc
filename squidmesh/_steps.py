"""Step history writes: step runs, attempts, and ``pause_run``.

A host runtime records what it did through these writes. They lock only the
row they change (the run row is touched only through the foreign key of a
new step run), except ``pause_run``, which locks the run, then the step run,
then the attempt. They do not police the step lifecycle: completing a failed
step run or failing a completed one is the runtime's decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, LiteralString
from uuid import UUID

import asyncpg
import msgspec

from . import _codec, _queries, state_machine
from ._errors import (
    AttemptNotFound,
    InvalidRun,
    InvalidTransition,
    RunNotFound,
    StepRunNotFound,
    VersionConflict,
)
from ._events import RunTransitioned, StepFailed
from ._ids import parse_id, uuid7
from ._queries import SQL
from ._registry import Registry
from ._runs import CANCELLED_WHILE_PAUSED_TEXT
from ._types import PauseResult, RunChanges, RunStatus, StepAttempt, StepRun
from ._values import (
    check_keys,
    check_step_name,
    check_text,
    coerce_changes,
    encode_json_map,
    field_writes,
    optional_json_map,
    run_uuid,
)

_DECISIONS: Final = frozenset({"resumed", "approved", "rejected"})
_PAUSE_SOURCES: Final = state_machine.sources_of(RunStatus.PAUSED)

_step_run_decoder: Final = msgspec.json.Decoder(StepRun)
_attempt_decoder: Final = msgspec.json.Decoder(StepAttempt)


_EVENT_KEYS: Final = ("type", "step", "actor", "comment", "metadata", "at")


def _decision_params(
    event: object,
) -> tuple[str, str | None, str | None, str, datetime | None]:
    """Check a manual decision and encode it for complete_manual_step.

    ``step`` is accepted (a ``RunAuditEvent`` carries one) and ignored: the
    decision belongs to the step run it is recorded on.
    """
    if isinstance(event, Mapping):
        check_keys("event", event, _EVENT_KEYS)
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


def _step_run_uuid(step_run_id: object) -> UUID:
    uid = parse_id(step_run_id)
    if uid is None:
        raise StepRunNotFound(step_run_id)
    return uid


def _attempt_uuid(attempt_id: object) -> UUID:
    uid = parse_id(attempt_id)
    if uid is None:
        raise AttemptNotFound(attempt_id)
    return uid


class StepOps:
    """The step operations of a store (see the ``RunStore`` methods of the same names)."""

    __slots__ = ("_pool", "_registry")

    def __init__(self, pool: asyncpg.Pool, registry: Registry) -> None:
        self._pool = pool
        self._registry = registry

    # -- step runs ----------------------------------------------------------

    async def insert_step(
        self, query: LiteralString, run_id: object, step: object, input: object
    ) -> StepRun:
        """begin_step / schedule_step: one INSERT ... ON CONFLICT."""
        uid = run_uuid(run_id)
        name = check_step_name("step", step)
        input_text = encode_json_map("step input", {} if input is None else input)
        names, kinds = self._registry.manual_kinds(name)
        text = await _queries.write_value(
            self._pool, query, uuid7(), uid, name, input_text, names, kinds, subject=run_id
        )
        if text is None:
            raise RunNotFound(run_id)
        return _step_run_decoder.decode(text)

    async def write_step_run(
        self, query: LiteralString, step_run_id: object, *args: object
    ) -> StepRun:
        """One step-run write (``query`` takes the id as $1); no row = not found."""
        uid = _step_run_uuid(step_run_id)
        text = await _queries.write_value(self._pool, query, uid, *args)
        if text is None:
            raise StepRunNotFound(step_run_id)
        return _step_run_decoder.decode(text)

    async def complete_step(self, step_run_id: object, output: object) -> StepRun:
        output_text = optional_json_map("step output", output)
        return await self.write_step_run(
            SQL.finish_step, step_run_id, "completed", output_text, None
        )

    async def fail_step(self, step_run_id: object, error: object) -> StepRun:
        error_text = encode_json_map("step error", error)
        return await self.write_step_run(SQL.finish_step, step_run_id, "failed", None, error_text)

    async def complete_manual_step(
        self, step_run_id: object, output: object, event: object
    ) -> StepRun:
        output_text = optional_json_map("step output", output)
        kind, actor, comment, metadata, at = _decision_params(event)
        return await self.write_step_run(
            SQL.complete_manual_step, step_run_id, output_text, kind, actor, comment, metadata, at
        )

    async def record_resume(self, step_run_id: object, resume: object) -> StepRun:
        resume_text = encode_json_map("resume", resume)
        return await self.write_step_run(SQL.record_resume, step_run_id, resume_text)

    # -- attempts -----------------------------------------------------------

    async def begin_attempt(self, step_run_id: object) -> StepAttempt:
        uid = _step_run_uuid(step_run_id)
        try:
            text = await _queries.write_value(
                self._pool, SQL.lock_and_begin_attempt, uuid7(), uid, subject=step_run_id
            )
        except asyncpg.UniqueViolationError:
            # A competitor committed after this statement's snapshot; the
            # number it read is taken. Again, reading the max after the lock.
            async with _queries.transaction(self._pool) as conn:
                if await _queries.value(conn, SQL.lock_step_run, uid) is None:
                    raise StepRunNotFound(step_run_id) from None
                # A new statement: its snapshot sees every attempt committed
                # before we got the lock, and nobody inserts while we hold it.
                text = await _queries.write_value(
                    conn, SQL.lock_and_begin_attempt, uuid7(), uid, subject=step_run_id
                )
        if text is None:
            raise StepRunNotFound(step_run_id)
        return _attempt_decoder.decode(text)

    async def finish_attempt(
        self, attempt_id: object, status: str, error: str | None
    ) -> StepAttempt:
        uid = _attempt_uuid(attempt_id)
        text = await _queries.write_value(self._pool, SQL.finish_attempt, uid, status, error)
        if text is None:
            raise AttemptNotFound(attempt_id)
        return _attempt_decoder.decode(text)

    # -- pause --------------------------------------------------------------

    async def pause(
        self,
        run_id: object,
        step_run_id: object,
        attempt_id: object | None,
        changes: RunChanges | Mapping[str, Any] | None,
        expected: int | None,
    ) -> tuple[PauseResult, list[object]]:
        writes = field_writes(coerce_changes(changes))
        uid = run_uuid(run_id)
        step_uid = _step_run_uuid(step_run_id)
        attempt_uid = None if attempt_id is None else _attempt_uuid(attempt_id)
        row = await _queries.write_row(
            self._pool,
            SQL.lock_and_pause_run,
            uid,
            step_uid,
            attempt_uid,
            _PAUSE_SOURCES,
            *writes,
            CANCELLED_WHILE_PAUSED_TEXT,
            expected,
        )
        if row is None:
            raise RunNotFound(run_id)
        if not row["step_found"]:
            raise StepRunNotFound(step_run_id)
        if attempt_uid is not None and not row["attempt_found"]:
            raise AttemptNotFound(attempt_id)
        from_status = RunStatus(row["from_status"])
        branch = row["branch"]
        if branch == "conflict" and expected is not None:
            raise VersionConflict(run_id, expected, row["from_version"])
        if branch == "illegal":
            raise InvalidTransition(from_status, RunStatus.PAUSED)
        run = _codec.decode_run(row)
        if branch == "pause":
            moved = RunTransitioned(run=run, from_status=from_status, to_status=run.status)
            return PauseResult(run=run, from_status=from_status, to_status=run.status), [moved]
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
        result = PauseResult(
            run=run,
            from_status=from_status,
            to_status=run.status,
            terminal_noop=branch == "terminal",
            finalized_step=finalized,
            error=error,
        )
        return result, events
