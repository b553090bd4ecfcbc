"""The exception hierarchy and the one boundary that maps driver errors onto it.

Data lives on attributes; the message is derived from them so that a person
reading a log line knows what to change. Every class pickles (tests check it):
``__reduce__`` rebuilds from the attributes rather than the message.
"""

from __future__ import annotations

from typing import Any, Final

import asyncpg


class SquidMeshError(Exception):
    """Base class of every error squidmesh raises on purpose."""


class RunNotFound(SquidMeshError, LookupError):
    """Raised when no run has the given id (a string that is not a UUID included)."""

    def __init__(self, run_id: object) -> None:
        self.run_id = run_id
        super().__init__(f"run {str(run_id)!r} not found")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run_id,))


class StepRunNotFound(SquidMeshError, LookupError):
    """Raised when no step run has the given id."""

    def __init__(self, step_run_id: object) -> None:
        self.step_run_id = step_run_id
        super().__init__(f"step run {str(step_run_id)!r} not found")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.step_run_id,))


class AttemptNotFound(SquidMeshError, LookupError):
    """Raised when no step attempt has the given id."""

    def __init__(self, attempt_id: object) -> None:
        self.attempt_id = attempt_id
        super().__init__(f"step attempt {str(attempt_id)!r} not found")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.attempt_id,))


class InvalidTransition(SquidMeshError):
    """Raised when the state machine does not allow moving a run between two states."""

    def __init__(self, from_status: str, to_status: str) -> None:
        self.from_status = str(from_status)
        self.to_status = str(to_status)
        super().__init__(f"cannot move run from {self.from_status!r} to {self.to_status!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.from_status, self.to_status))


class UnknownStatus(SquidMeshError, ValueError):
    """Raised when a value is not one of the eight run states."""

    def __init__(self, value: object) -> None:
        self.value = value
        from .state_machine import STATES  # local: state_machine imports this module

        super().__init__(
            f"unknown run status {value!r}; expected one of: " + ", ".join(s.value for s in STATES)
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.value,))


class InvalidWorkflow(SquidMeshError, LookupError):
    """Raised when a workflow is not registered with the store."""

    def __init__(self, name: object) -> None:
        self.name = name
        super().__init__(
            f"workflow {name!r} is not registered; pass it to RunStore(workflows=[...]) "
            "or store.register(...)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name,))


class InvalidTrigger(SquidMeshError, LookupError):
    """Raised when a workflow declares no trigger of the given name."""

    def __init__(self, name: object, workflow: str | None = None) -> None:
        self.name = name
        self.workflow = workflow
        where = f" in workflow {workflow!r}" if workflow else ""
        super().__init__(f"trigger {name!r} is not declared{where}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.workflow))


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

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.missing_fields, self.unknown_fields, self.invalid_types, self.expected_map),
        )


class InvalidRun(SquidMeshError, ValueError):
    """Raised when a value cannot be stored: a JSON value PostgreSQL rejects,
    a value msgspec cannot encode, an oversized value, or a constraint violation."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid run: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason,))


class WorkflowDefinitionError(SquidMeshError, ValueError):
    """Raised at construction of an invalid workflow definition, listing every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "invalid workflow definition:\n" + "\n".join(f"  - {p}" for p in self.problems)
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))


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

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.version, self.reason))


class _MapDbErrors:
    """Turn data errors and constraint violations into ``InvalidRun``.

    Infrastructure errors (connection lost, statement timeout, cancellation)
    pass through unchanged: callers hold the asyncpg pool and know those types.
    A class rather than a generator-based context manager: it wraps every
    write, and this form costs a fraction as much to enter and leave.
    """

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            return
        if isinstance(exc, (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)):
            detail = getattr(exc, "constraint_name", None)
            suffix = f" (constraint {detail})" if detail else ""
            raise InvalidRun(f"the database rejected the value: {exc}{suffix}") from exc
        if isinstance(exc, asyncpg.ProgramLimitExceededError):
            raise InvalidRun(f"the value is too large to store: {exc}") from exc


_MAP_DB_ERRORS: Final = _MapDbErrors()


def map_db_errors() -> _MapDbErrors:
    """The boundary that maps driver data errors onto ``InvalidRun`` (see ``_MapDbErrors``)."""
    return _MAP_DB_ERRORS
