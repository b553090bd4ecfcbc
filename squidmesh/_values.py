"""Checks and encodings of the values a caller hands to a write.

Everything here runs before a statement is sent: a value PostgreSQL could not
store is refused with ``InvalidRun`` and nothing is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, NamedTuple
from uuid import UUID

from msgspec import UNSET

from . import _codec
from ._errors import InvalidArgument, InvalidRun, RunNotFound
from ._ids import parse_id
from ._types import RunChanges
from ._workflow import MAX_NAME_LENGTH


class FieldWrites(NamedTuple):
    """The field writes of a run write, as the queries take them.

    Each field is a (given?, value) pair so that one prepared statement
    serves every combination of fields: not given = unchanged, given None =
    cleared. The queries take the six values in this order.
    """

    context_given: bool = False
    context: str | None = None
    current_step_given: bool = False
    current_step: str | None = None
    last_error_given: bool = False
    last_error: str | None = None


NO_CHANGES: Final = FieldWrites()
_new_tuple: Final = tuple.__new__

# PostgreSQL's bigint: the largest LIMIT, version or count a statement takes.
MAX_BIGINT: Final = 2**63 - 1


def coerce_changes(changes: RunChanges | Mapping[str, Any] | None) -> RunChanges:
    """Accept a ``RunChanges``, a dict of its fields, or None (no changes)."""
    if changes is None:
        return RunChanges()
    if isinstance(changes, RunChanges):
        return changes
    if isinstance(changes, Mapping):
        check_keys("change", changes, ("context", "current_step", "last_error"))
        return RunChanges(**changes)
    raise InvalidRun(f"changes must be a RunChanges or a dict, not {type(changes).__name__}")


def check_keys(what: str, given: Mapping[Any, Any], allowed: tuple[str, ...]) -> None:
    """Refuse keys of a dict the caller passed that are not in ``allowed``."""
    unknown = set(given) - set(allowed)
    if unknown:
        raise InvalidRun(
            f"unknown {what} keys {sorted(map(str, unknown))}; allowed: {', '.join(allowed)}"
        )


def field_writes(changes: RunChanges) -> FieldWrites:
    """Check and encode field writes: UNSET = unchanged, None = clear.

    Raises ``InvalidRun`` before anything is sent when a value cannot be stored.
    """
    return field_writes_of(changes.context, changes.current_step, changes.last_error)


def field_writes_of(ctx: object, step: object, err: object) -> FieldWrites:
    """``field_writes`` of the three fields as a caller passed them (keywords of
    ``transition_run`` and ``update_run``), without a ``RunChanges`` between."""
    if ctx is UNSET and step is UNSET and err is UNSET:
        return NO_CHANGES
    ctx_text = step_val = err_text = None
    if ctx is not UNSET:
        ctx_text = "{}" if ctx is None else encode_json_map("context", ctx)
    if step is not UNSET and step is not None:
        step_val = check_step_name("current_step", step)
    if err is not UNSET and err is not None:
        err_text = encode_json_map("last_error", err)
    # tuple.__new__: a NamedTuple's own __new__ is a Python function, and
    # this runs on every write.
    return _new_tuple(
        FieldWrites,
        (ctx is not UNSET, ctx_text, step is not UNSET, step_val, err is not UNSET, err_text),
    )


def check_step_name(name: str, value: object) -> str:
    """A step name as stored: the rule definitions apply to names (``MAX_NAME_LENGTH``)."""
    if type(value) is not str:
        raise InvalidRun(f"{name} must be a str, not {type(value).__name__}")
    if not value or len(value) > MAX_NAME_LENGTH or _codec.text_problem(value):
        raise InvalidRun(
            f"{name} must be 1 to {MAX_NAME_LENGTH} characters"
            " with no NUL character or lone surrogate"
        )
    return value


def check_text(name: str, value: object) -> str | None:
    """An optional free-text value (an actor, a comment): None or a storable str."""
    if value is None:
        return None
    if type(value) is not str:
        raise InvalidRun(f"{name} must be a str or None, not {type(value).__name__}")
    problem = _codec.text_problem(value)
    if problem:
        raise InvalidRun(f"{name} {problem}")
    return value


def encode_json_map(name: str, value: object) -> str:
    """Check and encode a map-valued field (context, step input, an error...) as JSON text."""
    if type(value) is not dict:
        raise InvalidRun(f"{name} must be a dict (or None), not {type(value).__name__}")
    problem = _codec.json_problem(value, name)
    if problem:
        raise InvalidRun(f"{name} cannot be stored as JSON: {problem}")
    return _codec.encode(value)


def optional_json_map(name: str, value: object) -> str | None:
    """``encode_json_map``, with None passed through (keep the stored value)."""
    return None if value is None else encode_json_map(name, value)


def run_uuid(run_id: object) -> UUID:
    """A run id as given (UUID or str); anything that is not a UUID is an id no run has."""
    parsed = parse_id(run_id)
    if parsed is None:
        raise RunNotFound(run_id)
    return parsed


def aware_datetime(name: str, value: object) -> datetime | None:
    """A time bound as given: None, or a timezone-aware datetime."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidArgument(
            name, f"must be a timezone-aware datetime or None, not {type(value).__name__}"
        )
    if value.utcoffset() is None:
        # A naive datetime names no instant: read in the server's TimeZone it
        # would silently move the bound by the server's offset.
        raise InvalidArgument(name, "must be timezone-aware (a naive datetime names no instant)")
    return value
