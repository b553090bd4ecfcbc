"""squidmesh: durable workflow runs in PostgreSQL, for asyncio.

A Python port of ``SquidMesh.RunStore`` (squid_mesh): validated run
creation through named triggers, a strict run state machine applied under
row locks, cooperative cancellation, replay with lineage, history, and
transactional dispatch. See README.md for a tour.
"""

import inspect as _inspect

import msgspec as _msgspec
from msgspec import UNSET as UNSET

from . import progress as progress
from . import state_machine as state_machine
from ._errors import AttemptNotFound as AttemptNotFound
from ._errors import IdempotencyConflict as IdempotencyConflict
from ._errors import InvalidArgument as InvalidArgument
from ._errors import InvalidCursor as InvalidCursor
from ._errors import InvalidPayload as InvalidPayload
from ._errors import InvalidPosition as InvalidPosition
from ._errors import InvalidRun as InvalidRun
from ._errors import InvalidTransition as InvalidTransition
from ._errors import InvalidTrigger as InvalidTrigger
from ._errors import InvalidWorkflow as InvalidWorkflow
from ._errors import MigrationError as MigrationError
from ._errors import PoolerMisconfigured as PoolerMisconfigured
from ._errors import RunNotFound as RunNotFound
from ._errors import SquidMeshError as SquidMeshError
from ._errors import StepRunNotFound as StepRunNotFound
from ._errors import UnknownStatus as UnknownStatus
from ._errors import VersionConflict as VersionConflict
from ._errors import WaitTimeout as WaitTimeout
from ._errors import WorkflowDefinitionError as WorkflowDefinitionError
from ._events import DispatchEvents as DispatchEvents
from ._events import Event as Event
from ._events import RunCreated as RunCreated
from ._events import RunReplayed as RunReplayed
from ._events import RunTransitioned as RunTransitioned
from ._events import StepFailed as StepFailed
from ._migrate import migrate as migrate
from ._store import RunStore as RunStore
from ._store import no_reset as no_reset
from ._types import ChangePage as ChangePage
from ._types import PauseResult as PauseResult
from ._types import PruneReport as PruneReport
from ._types import Run as Run
from ._types import RunAuditEvent as RunAuditEvent
from ._types import RunChange as RunChange
from ._types import RunChanges as RunChanges
from ._types import RunPage as RunPage
from ._types import RunStatus as RunStatus
from ._types import RunStepState as RunStepState
from ._types import StepAttempt as StepAttempt
from ._types import StepRun as StepRun
from ._workflow import NOW_ISO8601 as NOW_ISO8601
from ._workflow import TODAY_ISO8601 as TODAY_ISO8601
from ._workflow import Field as Field
from ._workflow import Step as Step
from ._workflow import Transition as Transition
from ._workflow import Trigger as Trigger
from ._workflow import Workflow as Workflow

__version__ = "0.1.0"

__all__ = (
    # store and schema
    "RunStore",
    "migrate",
    "no_reset",
    # definitions
    "NOW_ISO8601",
    "TODAY_ISO8601",
    "Field",
    "Step",
    "Transition",
    "Trigger",
    "Workflow",
    # records
    "UNSET",
    "PauseResult",
    "PruneReport",
    "Run",
    "RunAuditEvent",
    "RunChanges",
    "RunPage",
    "RunStatus",
    "RunStepState",
    "StepAttempt",
    "StepRun",
    # events
    "DispatchEvents",
    "Event",
    "RunCreated",
    "RunReplayed",
    "RunTransitioned",
    "StepFailed",
    # errors
    "AttemptNotFound",
    "IdempotencyConflict",
    "InvalidArgument",
    "InvalidPosition",
    "WaitTimeout",
    "RunChange",
    "ChangePage",
    "InvalidCursor",
    "InvalidPayload",
    "InvalidRun",
    "InvalidTransition",
    "InvalidTrigger",
    "InvalidWorkflow",
    "MigrationError",
    "PoolerMisconfigured",
    "RunNotFound",
    "SquidMeshError",
    "StepRunNotFound",
    "UnknownStatus",
    "VersionConflict",
    "WorkflowDefinitionError",
    # modules
    "progress",
    "state_machine",
)


# Show the public path in reprs and tracebacks (squidmesh.RunNotFound, not
# squidmesh._errors.RunNotFound), but only where nothing resolves names through
# __module__. typing.get_type_hints, msgspec and schema generators evaluate a
# class's string annotations in the module it claims to live in, so a Struct or
# an annotated class renamed here would look up JSONMap, UUID, ... in this
# package and fail, or silently find another object exported under the same
# name. A function resolves its annotations through __globals__, so renaming it
# is harmless.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _safe = not issubclass(_obj, _msgspec.Struct) and not _inspect.get_annotations(_obj)
    else:
        _safe = _inspect.isfunction(_obj)
    if _safe:
        _obj.__module__ = "squidmesh"
del _name, _obj, _safe, _inspect, _msgspec
