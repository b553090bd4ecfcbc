"""The public records: frozen, keyword-only msgspec Structs.

Frozen is shallow: ``payload`` and ``context`` are plain dicts the caller
should treat as read-only snapshots of the row. Fields may be added later,
always with defaults, so construct these with keywords only.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, UnsetType

JSONMap = dict[str, Any]


class RunStatus(enum.StrEnum):
    """The eight states of a run (see ``squidmesh.state_machine``)."""

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    PAUSED = "paused"
    FAILED = "failed"
    COMPLETED = "completed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


StepStatus = Literal["pending", "running", "completed", "failed"]
AttemptStatus = Literal["running", "completed", "failed"]
StepStateStatus = Literal["pending", "running", "completed", "failed", "waiting"]
AuditEventType = Literal["paused", "resumed", "approved", "rejected"]


class StepAttempt(msgspec.Struct, frozen=True, kw_only=True):
    """One try at executing a step run.

    Attributes:
        id: the attempt id.
        attempt_number: 1, 2, ... unique within its step run.
        status: running, completed or failed.
        error: the failure map, or None.
        inserted_at, updated_at: UTC timestamps.
    """

    id: UUID
    attempt_number: int
    status: AttemptStatus
    error: JSONMap | None = None
    inserted_at: datetime
    updated_at: datetime


class StepRun(msgspec.Struct, frozen=True, kw_only=True):
    """The record of one step of one run (one per run and step name).

    Attributes:
        id, step, status (pending/running/completed/failed), input, output,
        last_error, attempts (in attempt_number order), inserted_at, updated_at.
    """

    id: UUID
    step: str
    status: StepStatus
    input: JSONMap = msgspec.field(default_factory=dict)
    output: JSONMap | None = None
    last_error: JSONMap | None = None
    attempts: list[StepAttempt] = msgspec.field(default_factory=list)
    inserted_at: datetime
    updated_at: datetime


class RunStepState(msgspec.Struct, frozen=True, kw_only=True):
    """A declared step of a run's workflow with its latest state.

    ``status`` is ``waiting`` (and the step-run fields None/empty) when the
    step has no step run yet.
    """

    step: str
    status: StepStateStatus
    depends_on: list[str] = msgspec.field(default_factory=list)
    input: JSONMap | None = None
    output: JSONMap | None = None
    last_error: JSONMap | None = None
    attempts: list[StepAttempt] = msgspec.field(default_factory=list)
    inserted_at: datetime | None = None
    updated_at: datetime | None = None


class RunAuditEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A human-facing event of a manual (pause or approval) step.

    Attributes:
        type: paused, resumed, approved or rejected.
        step: the step name.
        actor, comment: who decided and why (None for ``paused``).
        metadata: free-form map.
        at: when it happened (UTC).
    """

    type: AuditEventType
    step: str
    actor: str | None = None
    comment: str | None = None
    metadata: JSONMap = msgspec.field(default_factory=dict)
    at: datetime


class Run(msgspec.Struct, frozen=True, kw_only=True):
    """One execution of a workflow, as stored.

    Attributes:
        id: the run id (a time-ordered UUIDv7 for runs created by squidmesh).
        workflow, trigger: names as persisted (a run of an unregistered
            workflow still loads).
        status: a ``RunStatus``.
        payload: the validated input map; context: the runtime's map.
        current_step: the step the run is at, or None.
        last_error: the last failure map, or None.
        replayed_from_run_id: the source run of a replay, or None.
        inserted_at, updated_at: UTC timestamps, microsecond precision.
        step_runs, steps, audit_events: the history, None unless requested.
        version: incremented by every write of the run row (for If-Match style
            optimistic checks).
        idempotency_key: the key the run was created with, or None.
        transitions: every change of its status, oldest first, from the
            transition log; None unless the history was requested.
    """

    id: UUID
    workflow: str
    trigger: str
    status: RunStatus
    payload: JSONMap
    context: JSONMap
    current_step: str | None
    last_error: JSONMap | None
    replayed_from_run_id: UUID | None
    inserted_at: datetime
    updated_at: datetime
    step_runs: list[StepRun] | None = None
    steps: list[RunStepState] | None = None
    audit_events: list[RunAuditEvent] | None = None
    version: int = 1
    idempotency_key: str | None = None
    transitions: list[RunChange] | None = None


class RunChange(msgspec.Struct, frozen=True, kw_only=True):
    """One change of a run's status, from the transition log.

    Attributes:
        position: in the change feed (``read_changes``, ``changes``), where
            to resume after this change: store it with what you did with the
            change. Empty in ``Run.transitions`` (a history entry is not a
            place in the feed).
        run_id, workflow: the run.
        run_version: the run's version after the change; ``(run_id,
            run_version)`` identifies a change.
        from_status: the status before, None for the run's creation.
        to_status: the status after.
        at: when the change was written (the run's ``updated_at`` then).
    """

    position: str
    run_id: UUID
    workflow: str
    run_version: int
    from_status: RunStatus | None
    to_status: RunStatus
    at: datetime


class ChangePage(msgspec.Struct, frozen=True, kw_only=True):
    """What ``read_changes`` returns: the changes, oldest first, and the
    position to pass back as ``after`` (it moves even when ``changes`` is
    empty)."""

    changes: list[RunChange]
    position: str


class RunChanges(msgspec.Struct, frozen=True, kw_only=True):
    """Field writes for a run. ``UNSET`` (the default) leaves a field unchanged;
    ``None`` clears it (``context=None`` resets the context to ``{}``)."""

    context: JSONMap | None | UnsetType = UNSET
    current_step: str | None | UnsetType = UNSET
    last_error: JSONMap | None | UnsetType = UNSET


class PauseResult(msgspec.Struct, frozen=True, kw_only=True):
    """What ``pause_run`` did.

    Attributes:
        run: the run after the call.
        from_status, to_status: the move (equal for a terminal no-op).
        terminal_noop: True when the run was already terminal and left as is.
        finalized_step: True when the given step run / attempt were failed.
        error: the error written to the step (terminal or cancelling cases).
    """

    run: Run
    from_status: RunStatus
    to_status: RunStatus
    terminal_noop: bool = False
    finalized_step: bool = False
    error: JSONMap | None = None


class RunPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of ``page_runs``: the runs, newest first, and the cursor of the
    next page (None on the last page)."""

    runs: list[Run]
    next_cursor: str | None = None


class PruneReport(msgspec.Struct, frozen=True, kw_only=True):
    """What ``prune_runs`` deleted (or, with ``dry_run``, would delete)."""

    runs: int
    step_runs: int
    attempts: int
    by_status: dict[RunStatus, int]
    dry_run: bool
