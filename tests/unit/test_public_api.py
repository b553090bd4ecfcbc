"""The public surface of api.md: every name exists where api.md says.

The lists below are transcribed from ``/work/shared/design/api.md``; the
package may export more (api.md allows additions), never less.
"""

from __future__ import annotations

import inspect
import sys

import msgspec
import pytest

import squidmesh
from squidmesh import progress, state_machine

# api.md, everything "importable from the top-level package".
TOP_LEVEL = (
    # opening a store
    "RunStore",
    "migrate",
    # workflow definitions
    "Workflow",
    "Trigger",
    "Field",
    "Step",
    "Transition",
    "TODAY_ISO8601",
    "NOW_ISO8601",
    # public types and values
    "RunStatus",
    "Run",
    "StepRun",
    "StepAttempt",
    "RunStepState",
    "RunAuditEvent",
    "UNSET",
    "RunChanges",
    "PauseResult",
    "DispatchEvents",
    # events
    "RunCreated",
    "RunReplayed",
    "RunTransitioned",
    "StepFailed",
    # errors
    "SquidMeshError",
    "RunNotFound",
    "InvalidTransition",
    "UnknownStatus",
    "InvalidWorkflow",
    "InvalidTrigger",
    "InvalidPayload",
    "InvalidRun",
    "MigrationError",
    "WorkflowDefinitionError",
    # modules
    "progress",
    "state_machine",
)
MODULES = ("progress", "state_machine")
CONSTANTS = ("UNSET", "TODAY_ISO8601", "NOW_ISO8601")

STATE_MACHINE = (
    "STATES",
    "allowed_transitions",
    "can_transition",
    "is_terminal",
    "schedule_next_step",
    "validate",
)
PROGRESS = (
    "Update",
    "Transition",
    "Dispatch",
    "DispatchOrFail",
    "TransitionOrDispatch",
    "TransitionOrDispatchOrFail",
)

# RunStore methods of issue 2 ("Foundation"): name -> (is coroutine function).
STORE_METHODS = {
    "create_run": True,
    "get_run": True,
    "list_runs": True,
    "replay_run": True,
    "transition_run": True,
    "update_run": True,
    "cancel_run": True,
    "schedule_next_step": False,
    "register": False,
}
# api.md's runtime-level and step-history methods (all async).
RUNTIME_STORE_METHODS = (
    "create_and_dispatch_run",
    "replay_and_dispatch_run",
    "transition_and_dispatch_run",
    "update_and_dispatch_run",
    "update_run_with",
    "transition_run_with",
    "progress_run",
    "pause_run",
    "begin_step",
    "schedule_step",
    "complete_step",
    "fail_step",
    "complete_manual_step",
    "record_resume",
    "begin_attempt",
    "complete_attempt",
    "fail_attempt",
    "read_changes",
    "head_position",
    "wait_for",
    "claim_runs",
    "prune_feed",
)

# Struct fields api.md lists (a Struct may carry more, with defaults).
STRUCT_FIELDS = {
    "Run": (
        "id",
        "workflow",
        "trigger",
        "status",
        "payload",
        "context",
        "current_step",
        "last_error",
        "replayed_from_run_id",
        "inserted_at",
        "updated_at",
        "step_runs",
        "steps",
        "audit_events",
        "idempotency_key",
        "transitions",
    ),
    "RunChange": (
        "position",
        "run_id",
        "workflow",
        "run_version",
        "from_status",
        "to_status",
        "at",
    ),
    "ChangePage": ("changes", "position"),
    "StepRun": (
        "id",
        "step",
        "status",
        "input",
        "output",
        "last_error",
        "attempts",
        "inserted_at",
        "updated_at",
    ),
    "StepAttempt": ("id", "attempt_number", "status", "error", "inserted_at", "updated_at"),
    "RunStepState": (
        "step",
        "status",
        "depends_on",
        "input",
        "output",
        "last_error",
        "attempts",
        "inserted_at",
        "updated_at",
    ),
    "RunAuditEvent": ("type", "step", "actor", "comment", "metadata", "at"),
    "RunChanges": ("context", "current_step", "last_error"),
    "PauseResult": (
        "run",
        "from_status",
        "to_status",
        "terminal_noop",
        "finalized_step",
        "error",
    ),
    "RunCreated": ("run",),
    "RunReplayed": ("run",),
    "RunTransitioned": ("run", "from_status", "to_status"),
    "StepFailed": ("run", "step", "attempt_number", "duration_s", "error"),
}
FROZEN_RECORDS = ("Run", "StepRun", "StepAttempt", "RunStepState", "RunAuditEvent", "PauseResult")


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_top_level_name_exists(name: str) -> None:
    assert hasattr(squidmesh, name), f"squidmesh.{name} is missing"
    assert name in squidmesh.__all__


def test_all_is_a_tuple_of_unique_existing_names() -> None:
    assert isinstance(squidmesh.__all__, tuple)
    assert len(set(squidmesh.__all__)) == len(squidmesh.__all__)
    for name in squidmesh.__all__:
        assert hasattr(squidmesh, name), name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from squidmesh import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(squidmesh.__all__)


@pytest.mark.parametrize(
    "name",
    [n for n in squidmesh.__all__ if n not in MODULES and n not in CONSTANTS],
)
def test_classes_and_functions_report_the_public_module(name: str) -> None:
    obj = getattr(squidmesh, name)
    assert inspect.isclass(obj) or inspect.isfunction(obj), name
    # A Struct or annotated class keeps its defining module: its string
    # annotations are resolved there (tests/unit/test_introspection.py).
    keeps_its_module = inspect.isclass(obj) and (
        issubclass(obj, msgspec.Struct) or bool(inspect.get_annotations(obj))
    )
    if keeps_its_module:
        assert obj.__module__.startswith("squidmesh."), obj.__module__
        assert getattr(sys.modules[obj.__module__], obj.__qualname__) is obj
    else:
        assert obj.__module__ == "squidmesh"


def test_modules_are_the_public_modules() -> None:
    assert squidmesh.progress is progress
    assert squidmesh.state_machine is state_machine
    assert progress.__name__ == "squidmesh.progress"
    assert state_machine.__name__ == "squidmesh.state_machine"


def test_unset_is_msgspec_unset() -> None:
    assert squidmesh.UNSET is msgspec.UNSET


def test_version() -> None:
    assert isinstance(squidmesh.__version__, str)
    assert squidmesh.__version__


@pytest.mark.parametrize("name", STATE_MACHINE)
def test_state_machine_names(name: str) -> None:
    assert hasattr(state_machine, name)
    if name != "STATES":
        assert callable(getattr(state_machine, name))
        assert not inspect.iscoroutinefunction(getattr(state_machine, name))


@pytest.mark.parametrize("name", PROGRESS)
def test_progress_names(name: str) -> None:
    obj = getattr(progress, name)
    assert inspect.isclass(obj)
    assert issubclass(obj, msgspec.Struct)
    assert obj.__struct_config__.frozen


def test_progress_transition_is_not_the_workflow_transition() -> None:
    edge: object = squidmesh.Transition
    assert progress.Transition is not edge


def test_progress_operations_match_positionally() -> None:
    op: object = progress.Transition("running")
    match op:
        case progress.Transition(status):
            assert status == "running"
        case _:
            pytest.fail("progress.Transition did not match positionally")


@pytest.mark.parametrize(("name", "is_async"), STORE_METHODS.items())
def test_store_methods(name: str, is_async: bool) -> None:
    method = getattr(squidmesh.RunStore, name)
    assert inspect.iscoroutinefunction(method) is is_async


@pytest.mark.parametrize("name", RUNTIME_STORE_METHODS)
def test_runtime_store_methods(name: str) -> None:
    assert inspect.iscoroutinefunction(getattr(squidmesh.RunStore, name))


def test_changes_is_an_async_generator() -> None:
    assert inspect.isasyncgenfunction(squidmesh.RunStore.changes)


def test_store_connect_and_constructor_signatures() -> None:
    assert callable(squidmesh.RunStore.connect)
    init = inspect.signature(squidmesh.RunStore.__init__).parameters
    assert list(init)[:2] == ["self", "pool"]
    assert init["workflows"].kind is inspect.Parameter.KEYWORD_ONLY
    assert init["listeners"].kind is inspect.Parameter.KEYWORD_ONLY
    connect = inspect.signature(squidmesh.RunStore.connect).parameters
    assert "dsn" in connect
    assert connect["workflows"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize(
    ("method", "positional", "keyword_only"),
    [
        ("create_run", ["workflow", "payload"], ["trigger"]),
        ("get_run", ["run_id"], ["include_history"]),
        ("list_runs", [], ["workflow", "status", "limit"]),
        ("replay_run", ["run_id"], []),
        ("transition_run", ["run_id", "to_status"], ["context", "current_step", "last_error"]),
        ("update_run", ["run_id"], ["context", "current_step", "last_error"]),
        ("cancel_run", ["run_id"], []),
    ],
)
def test_store_method_signatures(
    method: str, positional: list[str], keyword_only: list[str]
) -> None:
    params = inspect.signature(getattr(squidmesh.RunStore, method)).parameters
    names = [p for p in params if p != "self"]
    kinds = {p.name: p.kind for p in params.values()}
    assert names[: len(positional)] == positional
    for name in positional:
        assert kinds[name] is inspect.Parameter.POSITIONAL_OR_KEYWORD
    for name in keyword_only:
        assert kinds[name] is inspect.Parameter.KEYWORD_ONLY
    for name in ("context", "current_step", "last_error"):
        if name in keyword_only:
            assert params[name].default is squidmesh.UNSET
    if method == "create_run":
        assert params["trigger"].default is None
    if method == "get_run":
        assert params["include_history"].default is False


def test_schedule_next_step_is_sync_on_the_class_and_instance() -> None:
    assert squidmesh.RunStore.schedule_next_step("pending") is True
    assert not inspect.iscoroutinefunction(squidmesh.RunStore.schedule_next_step)


@pytest.mark.parametrize(("name", "fields"), STRUCT_FIELDS.items())
def test_struct_fields(name: str, fields: tuple[str, ...]) -> None:
    cls = getattr(squidmesh, name)
    assert issubclass(cls, msgspec.Struct)
    assert set(fields) <= set(cls.__struct_fields__), set(fields) - set(cls.__struct_fields__)


@pytest.mark.parametrize("name", FROZEN_RECORDS)
def test_records_are_frozen(name: str) -> None:
    assert getattr(squidmesh, name).__struct_config__.frozen


def test_run_history_fields_default_to_none() -> None:
    defaults = dict(
        zip(
            squidmesh.Run.__struct_fields__[-len(squidmesh.Run.__struct_defaults__) :],
            squidmesh.Run.__struct_defaults__,
            strict=True,
        )
    )
    for name in ("step_runs", "steps", "audit_events", "transitions"):
        assert defaults[name] is None


def test_run_changes_default_to_unset() -> None:
    changes = squidmesh.RunChanges()
    assert changes.context is squidmesh.UNSET
    assert changes.current_step is squidmesh.UNSET
    assert changes.last_error is squidmesh.UNSET


def test_events_share_a_base_and_encode() -> None:
    for name in ("RunCreated", "RunReplayed", "RunTransitioned", "StepFailed"):
        assert issubclass(getattr(squidmesh, name), squidmesh.Event)


def test_errors_derive_from_squidmesh_error() -> None:
    for name in (
        "RunNotFound",
        "InvalidTransition",
        "UnknownStatus",
        "InvalidWorkflow",
        "InvalidTrigger",
        "InvalidPayload",
        "InvalidRun",
        "MigrationError",
        "WorkflowDefinitionError",
    ):
        assert issubclass(getattr(squidmesh, name), squidmesh.SquidMeshError)


def test_migrate_is_a_coroutine_function() -> None:
    assert inspect.iscoroutinefunction(squidmesh.migrate)
