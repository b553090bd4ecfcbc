"""Every error class: parents, attributes, messages, pickling."""

from __future__ import annotations

import ast
import copy
import inspect
import pickle
from pathlib import Path
from typing import NamedTuple
from uuid import UUID

import pytest

import squidmesh
from squidmesh import (
    AttemptNotFound,
    IdempotencyConflict,
    InvalidArgument,
    InvalidCursor,
    InvalidPayload,
    InvalidPosition,
    InvalidRun,
    InvalidTransition,
    InvalidTrigger,
    InvalidWorkflow,
    MigrationError,
    PoolerMisconfigured,
    RunNotFound,
    SquidMeshError,
    StepRunNotFound,
    UnknownStatus,
    VersionConflict,
    WaitTimeout,
    WorkflowDefinitionError,
    state_machine,
)

RUN_ID = UUID("01890a5d-ac96-7a7b-8c3b-0123456789ab")

# (instance, builtin parents it must have, attributes, fragments of the message)
CASES: list[tuple[SquidMeshError, tuple[type, ...], dict[str, object], tuple[str, ...]]] = [
    (RunNotFound(RUN_ID), (LookupError,), {"run_id": RUN_ID}, (str(RUN_ID), "not found")),
    (RunNotFound("nope"), (LookupError,), {"run_id": "nope"}, ("'nope'", "not found")),
    (
        StepRunNotFound(RUN_ID),
        (LookupError,),
        {"step_run_id": RUN_ID},
        (str(RUN_ID), "not found"),
    ),
    (
        AttemptNotFound(RUN_ID),
        (LookupError,),
        {"attempt_id": RUN_ID},
        (str(RUN_ID), "not found"),
    ),
    (
        InvalidTransition("completed", "cancelling"),
        (),
        {"from_status": "completed", "to_status": "cancelling"},
        ("'completed'", "'cancelling'"),
    ),
    (UnknownStatus("Running"), (ValueError,), {"value": "Running"}, ("'Running'", "pending")),
    (UnknownStatus(None), (ValueError,), {"value": None}, ("None",)),
    (
        MigrationError("0002_hardening", "role 'app' may not apply it: permission denied"),
        (),
        {"version": "0002_hardening", "reason": "role 'app' may not apply it: permission denied"},
        ("0002_hardening", "permission denied"),
    ),
    (
        PoolerMisconfigured('prepared statement "__asyncpg_stmt_9__" does not exist'),
        (),
        {"reason": 'prepared statement "__asyncpg_stmt_9__" does not exist'},
        ("__asyncpg_stmt_9__", "statement_cache_size=0", "PgBouncer >= 1.21", "max_prepared"),
    ),
    (
        IdempotencyConflict("billing.invoice_reminder", "order-7", RUN_ID),
        (),
        {"workflow": "billing.invoice_reminder", "idempotency_key": "order-7", "run_id": RUN_ID},
        ("'order-7'", "'billing.invoice_reminder'", str(RUN_ID), "new key"),
    ),
    (
        VersionConflict(RUN_ID, 3, 5),
        (),
        {"run_id": RUN_ID, "expected": 3, "actual": 5},
        (str(RUN_ID), "version 5", "not 3", "re-read"),
    ),
    (
        InvalidCursor("abc"),
        (ValueError,),
        {"cursor": "abc"},
        ("'abc'", "next_cursor"),
    ),
    (
        InvalidArgument("limit", "must be an int from 1 to 1000, not 0"),
        (ValueError,),
        {"name": "limit", "reason": "must be an int from 1 to 1000, not 0"},
        ("invalid limit", "1 to 1000"),
    ),
    (
        InvalidPosition("1.zz", "pass back a position that read_changes or changes gave"),
        (ValueError, InvalidCursor),
        {"position": "1.zz", "cursor": "1.zz"},
        ("'1.zz'", "read_changes"),
    ),
    (
        WaitTimeout(RUN_ID, ("completed", "failed"), 2.5),
        (TimeoutError,),
        {"run_id": RUN_ID, "statuses": ("completed", "failed"), "timeout": 2.5},
        (str(RUN_ID), "completed, failed", "2.5 s"),
    ),
    (
        InvalidWorkflow("billing.nope"),
        (),
        {"name": "billing.nope"},
        ("'billing.nope'", "not registered"),
    ),
    (
        InvalidTrigger("webhook", "billing.invoice_reminder"),
        (),
        {"name": "webhook", "workflow": "billing.invoice_reminder"},
        ("'webhook'", "'billing.invoice_reminder'"),
    ),
    (
        InvalidPayload(["account_id"], ["extra"], {"note": "expected str, got int"}, False),
        (ValueError,),
        {
            "missing_fields": ["account_id"],
            "unknown_fields": ["extra"],
            "invalid_types": {"note": "expected str, got int"},
            "expected_map": False,
        },
        ("account_id", "extra", "note", "expected str, got int"),
    ),
    (
        InvalidPayload(expected_map=True),
        (ValueError,),
        {"missing_fields": [], "unknown_fields": [], "invalid_types": {}, "expected_map": True},
        ("expected a map",),
    ),
    (
        InvalidRun("context cannot be stored as JSON: $: NaN"),
        (),
        {"reason": "context cannot be stored as JSON: $: NaN"},
        ("context cannot be stored as JSON",),
    ),
    (
        WorkflowDefinitionError(["no trigger", "duplicate step 'a'"]),
        (ValueError,),
        {"problems": ["no trigger", "duplicate step 'a'"]},
        ("no trigger", "duplicate step 'a'"),
    ),
]
IDS = [f"{type(c[0]).__name__}-{i}" for i, c in enumerate(CASES)]


class Case(NamedTuple):
    error: SquidMeshError
    parents: tuple[type, ...]
    attrs: dict[str, object]
    fragments: tuple[str, ...]


each_case = pytest.mark.parametrize("case", [Case(*c) for c in CASES], ids=IDS)


@each_case
def test_hierarchy(case: Case) -> None:
    error = case.error
    assert isinstance(error, SquidMeshError)
    assert isinstance(error, Exception)
    for parent in case.parents:
        assert isinstance(error, parent)


@each_case
def test_attributes_and_message(case: Case) -> None:
    error = case.error
    for name, value in case.attrs.items():
        assert getattr(error, name) == value
    message = str(error)
    assert message
    for fragment in case.fragments:
        assert fragment in message


@each_case
def test_pickle_round_trip(case: Case) -> None:
    error = case.error
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        clone = pickle.loads(pickle.dumps(error, protocol=protocol))
        assert type(clone) is type(error)
        assert str(clone) == str(error)
        assert clone.args == error.args
        for name, value in case.attrs.items():
            assert getattr(clone, name) == value
    assert str(copy.deepcopy(error)) == str(error)


def test_every_error_class_is_covered() -> None:
    classes = {
        obj
        for name in squidmesh.__all__
        if isinstance(obj := getattr(squidmesh, name), type) and issubclass(obj, BaseException)
    }
    covered = {type(case[0]) for case in CASES} | {SquidMeshError}
    assert classes == covered


def test_invalid_transition_message_is_actionable() -> None:
    error = InvalidTransition(squidmesh.RunStatus.COMPLETED, squidmesh.RunStatus.CANCELLING)
    # Enum members are stored as their plain values.
    assert error.from_status == "completed"
    assert type(error.from_status) is str
    assert str(error) == "cannot move run from 'completed' to 'cancelling'"


def test_unknown_status_lists_the_states() -> None:
    message = str(UnknownStatus("nope"))
    for status in squidmesh.RunStatus:
        assert status.value in message


def test_invalid_payload_copies_its_inputs() -> None:
    missing = ["a"]
    invalid = {"b": "expected int"}
    error = InvalidPayload(missing, [], invalid)
    missing.append("zzz")
    invalid["c"] = "x"
    assert error.missing_fields == ["a"]
    assert error.invalid_types == {"b": "expected int"}


def test_invalid_payload_defaults() -> None:
    error = InvalidPayload()
    assert error.missing_fields == []
    assert error.unknown_fields == []
    assert error.invalid_types == {}
    assert error.expected_map is False
    assert str(error)


def test_invalid_trigger_without_workflow() -> None:
    error = InvalidTrigger("webhook")
    assert error.workflow is None
    assert "'webhook'" in str(error)
    assert pickle.loads(pickle.dumps(error)).workflow is None


def test_workflow_definition_error_lists_every_problem_on_its_own_line() -> None:
    error = WorkflowDefinitionError(["one", "two", "three"])
    lines = str(error).splitlines()
    assert sum(1 for line in lines if line.strip() in {"- one", "- two", "- three"}) == 3


def test_errors_can_be_raised_and_caught_by_builtin_parent() -> None:
    with pytest.raises(LookupError):
        raise RunNotFound("x")
    with pytest.raises(ValueError):
        raise InvalidPayload(expected_map=True)
    with pytest.raises(ValueError):
        raise UnknownStatus("x")


@each_case
def test_pickling_rebuilds_from_the_attributes(case: Case) -> None:
    # Not from the message: the clone is built by calling the class again.
    reduced = case.error.__reduce__()
    assert isinstance(reduced, tuple)
    rebuild, arguments = reduced[:2]
    assert rebuild is type(case.error)
    assert str(rebuild(*arguments)) == str(case.error)
    for value in case.attrs.values():
        assert value in arguments


def test_unknown_status_lists_the_states_in_state_machine_order() -> None:
    message = str(UnknownStatus("nope"))
    expected = ", ".join(status.value for status in state_machine.STATES)
    assert message == f"unknown run status 'nope'; expected one of: {expected}"


def test_errors_module_does_not_import_the_state_machine() -> None:
    # state_machine raises these errors, so an import back (even a local one
    # inside a function) would be a cycle.
    source = Path(squidmesh.__file__).with_name("_errors.py").read_text(encoding="utf-8")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not any("state_machine" in name for name in imported), imported


def test_error_classes_keep_no_annotations() -> None:
    # squidmesh renames __module__ only for unannotated classes; tracebacks
    # show squidmesh.RunNotFound, not squidmesh._errors.RunNotFound.
    for case in CASES:
        cls = type(case[0])
        assert inspect.get_annotations(cls) == {}, cls
        assert cls.__module__ == "squidmesh"
