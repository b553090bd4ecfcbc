"""The exception hierarchy. (Driver errors are mapped onto it by the query layer, ``_queries``.)

Data lives on attributes; the message is derived from them so that a person
reading a log line knows what to change. Every class pickles (tests check it):
``__reduce__`` rebuilds from the attributes rather than the message.

The classes carry no class-level annotations on purpose: ``squidmesh``
renames the ``__module__`` of unannotated classes only, and a traceback should
say ``squidmesh.RunNotFound``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from ._types import RunStatus

# For UnknownStatus. Built from RunStatus, not from state_machine.STATES (the
# same order), because state_machine raises these errors: no import cycle.
_STATES: Final = ", ".join(status.value for status in RunStatus)


def _rebuilt_from(*attributes: str) -> Callable[[BaseException], tuple[Any, ...]]:
    """A ``__reduce__`` that rebuilds an error by calling its class with
    ``attributes`` (its ``__init__`` arguments, in order), not with the message."""

    def __reduce__(error: BaseException) -> tuple[Any, ...]:
        return (type(error), tuple(getattr(error, name) for name in attributes))

    return __reduce__


class SquidMeshError(Exception):
    """Base class of every error squidmesh raises on purpose."""


class RunNotFound(SquidMeshError, LookupError):
    """Raised when no run has the given id (a string that is not a UUID included)."""

    def __init__(self, run_id: object) -> None:
        self.run_id = run_id
        super().__init__(f"run {str(run_id)!r} not found")

    __reduce__ = _rebuilt_from("run_id")


class StepRunNotFound(SquidMeshError, LookupError):
    """Raised when no step run has the given id."""

    def __init__(self, step_run_id: object) -> None:
        self.step_run_id = step_run_id
        super().__init__(f"step run {str(step_run_id)!r} not found")

    __reduce__ = _rebuilt_from("step_run_id")


class AttemptNotFound(SquidMeshError, LookupError):
    """Raised when no step attempt has the given id."""

    def __init__(self, attempt_id: object) -> None:
        self.attempt_id = attempt_id
        super().__init__(f"step attempt {str(attempt_id)!r} not found")

    __reduce__ = _rebuilt_from("attempt_id")


class InvalidTransition(SquidMeshError):
    """Raised when the state machine does not allow moving a run between two states."""

    def __init__(self, from_status: str, to_status: str) -> None:
        self.from_status = str(from_status)
        self.to_status = str(to_status)
        super().__init__(f"cannot move run from {self.from_status!r} to {self.to_status!r}")

    __reduce__ = _rebuilt_from("from_status", "to_status")


class UnknownStatus(SquidMeshError, ValueError):
    """Raised when a value is not one of the eight run states."""

    def __init__(self, value: object) -> None:
        self.value = value
        super().__init__(f"unknown run status {value!r}; expected one of: {_STATES}")

    __reduce__ = _rebuilt_from("value")


class InvalidWorkflow(SquidMeshError, LookupError):
    """Raised when a workflow is not registered with the store."""

    def __init__(self, name: object) -> None:
        self.name = name
        super().__init__(
            f"workflow {name!r} is not registered; pass it to RunStore(workflows=[...]) "
            "or store.register(...)"
        )

    __reduce__ = _rebuilt_from("name")


class InvalidTrigger(SquidMeshError, LookupError):
    """Raised when a workflow declares no trigger of the given name."""

    def __init__(self, name: object, workflow: str | None = None) -> None:
        self.name = name
        self.workflow = workflow
        where = f" in workflow {workflow!r}" if workflow else ""
        super().__init__(f"trigger {name!r} is not declared{where}")

    __reduce__ = _rebuilt_from("name", "workflow")


class InvalidPayload(SquidMeshError, ValueError):
    """Raised when a payload does not match its trigger's declared fields.

    All problems are collected and reported together.

    Attributes:
        missing_fields: required fields that were absent, sorted.
        unknown_fields: fields the trigger does not declare, sorted.
        invalid_types: field -> what was expected (or why the value cannot be stored).
        expected_map: True when the payload was not a dict at all.
    """

    def __init__(
        self,
        missing_fields: list[str] | None = None,
        unknown_fields: list[str] | None = None,
        invalid_types: dict[str, str] | None = None,
        expected_map: bool = False,
    ) -> None:
        self.missing_fields = list(missing_fields or [])
        self.unknown_fields = list(unknown_fields or [])
        self.invalid_types = dict(invalid_types or {})
        self.expected_map = expected_map
        if expected_map:
            message = "invalid payload: expected a map (dict with str keys)"
        else:
            parts = []
            if self.missing_fields:
                parts.append("missing fields: " + ", ".join(self.missing_fields))
            if self.unknown_fields:
                parts.append("unknown fields: " + ", ".join(self.unknown_fields))
            if self.invalid_types:
                parts.append(
                    "invalid types: "
                    + ", ".join(f"{k} ({v})" for k, v in sorted(self.invalid_types.items()))
                )
            message = "invalid payload: " + "; ".join(parts or ["rejected"])
        super().__init__(message)

    __reduce__ = _rebuilt_from("missing_fields", "unknown_fields", "invalid_types", "expected_map")


class InvalidRun(SquidMeshError, ValueError):
    """Raised when a value cannot be stored: a JSON value PostgreSQL rejects,
    a value msgspec cannot encode, an oversized value, or a constraint violation."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid run: {reason}")

    __reduce__ = _rebuilt_from("reason")


class WorkflowDefinitionError(SquidMeshError, ValueError):
    """Raised at construction of an invalid workflow definition, listing every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "invalid workflow definition:\n" + "\n".join(f"  - {p}" for p in self.problems)
        )

    __reduce__ = _rebuilt_from("problems")


class MigrationError(SquidMeshError):
    """Raised by ``migrate()`` when the schema cannot be brought up to date.

    ``version`` is the migration that could not be applied (None when the
    bookkeeping table could not even be read); ``reason`` says what is missing.
    """

    def __init__(self, version: str | None, reason: str) -> None:
        self.version = version
        self.reason = reason
        where = f"migration {version}" if version else "squidmesh.migrate()"
        super().__init__(f"{where} failed: {reason}")

    __reduce__ = _rebuilt_from("version", "reason")


class IdempotencyConflict(SquidMeshError):
    """Raised when an idempotency key of a workflow was already used for a run
    created with another trigger or payload; ``run_id`` is that run."""

    def __init__(self, workflow: str, idempotency_key: str, run_id: object) -> None:
        self.workflow = workflow
        self.idempotency_key = idempotency_key
        self.run_id = run_id
        super().__init__(
            f"idempotency key {idempotency_key!r} of workflow {workflow!r} was used by run "
            f"{str(run_id)!r} with another trigger or payload; use a new key for a new run"
        )

    __reduce__ = _rebuilt_from("workflow", "idempotency_key", "run_id")


class VersionConflict(SquidMeshError):
    """Raised when a write names an ``expected_version`` the run no longer has.

    Nothing was written and no caller code was called: re-read the run and
    decide again.
    """

    def __init__(self, run_id: object, expected: int, actual: int) -> None:
        self.run_id = run_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"run {str(run_id)!r} is at version {actual}, not {expected}: "
            "it changed since it was read; re-read it and retry"
        )

    __reduce__ = _rebuilt_from("run_id", "expected", "actual")


class InvalidCursor(SquidMeshError, ValueError):
    """Raised when a page cursor was not made by ``page_runs``."""

    def __init__(self, cursor: object) -> None:
        self.cursor = cursor
        super().__init__(
            f"invalid cursor {cursor!r}: pass back a next_cursor that page_runs returned"
        )

    __reduce__ = _rebuilt_from("cursor")


class InvalidPosition(InvalidCursor):
    """Raised when a change-feed position was not made by squidmesh, or is
    older than the feed keeps (``prune_feed`` removes old ticks)."""

    def __init__(self, position: object, reason: str) -> None:
        self.cursor = position
        self.position = position
        self.reason = reason
        SquidMeshError.__init__(self, f"invalid feed position {position!r}: {reason}")

    __reduce__ = _rebuilt_from("position", "reason")


class WaitTimeout(SquidMeshError, TimeoutError):
    """Raised by ``wait_for`` when the run did not reach one of the statuses in time."""

    def __init__(self, run_id: object, statuses: object, timeout: float) -> None:
        self.run_id = run_id
        self.statuses = statuses
        self.timeout = timeout
        wanted = (
            ", ".join(str(s) for s in statuses)
            if isinstance(statuses, (list, tuple, frozenset, set))
            else str(statuses)
        )
        super().__init__(f"run {str(run_id)!r} did not reach {wanted} within {timeout} s")

    __reduce__ = _rebuilt_from("run_id", "statuses", "timeout")


class InvalidArgument(SquidMeshError, ValueError):
    """Raised when an argument is outside what an operation accepts."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"invalid {name}: {reason}")

    __reduce__ = _rebuilt_from("name", "reason")


class PoolerMisconfigured(SquidMeshError):
    """Raised when the pool's prepared statements do not survive a connection
    pooler between it and PostgreSQL (PgBouncer in transaction or statement
    mode): a statement prepared on one server connection was used on another.

    The statement failed; ``reason`` is the driver's error. Open the pool with
    ``statement_cache_size=0``, or use PgBouncer 1.21 or later with
    ``max_prepared_statements`` set.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            "a prepared statement did not survive the connection pooler between the pool and "
            "PostgreSQL (PgBouncer in transaction mode?): create the asyncpg pool with "
            "statement_cache_size=0, or use PgBouncer >= 1.21 with max_prepared_statements "
            f"set ({reason})"
        )

    __reduce__ = _rebuilt_from("reason")
