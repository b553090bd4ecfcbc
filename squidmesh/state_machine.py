"""The run state machine: pure functions, no I/O.

Statuses may be given as ``RunStatus`` or their string values. Every function
raises ``UnknownStatus`` for a value outside the eight states, except
``can_transition``, which answers ``False``.
"""

from __future__ import annotations

from types import MappingProxyType

from ._errors import InvalidTransition, UnknownStatus
from ._types import RunStatus

__all__ = (
    "STATES",
    "TRANSITIONS",
    "allowed_transitions",
    "can_transition",
    "coerce_status",
    "is_terminal",
    "schedule_next_step",
    "sources_of",
    "validate",
)

S = RunStatus

STATES: tuple[RunStatus, ...] = tuple(RunStatus)

TRANSITIONS: MappingProxyType[RunStatus, frozenset[RunStatus]] = MappingProxyType(
    {
        S.PENDING: frozenset({S.RUNNING, S.FAILED, S.CANCELLED}),
        S.RUNNING: frozenset({S.RETRYING, S.PAUSED, S.FAILED, S.COMPLETED, S.CANCELLING}),
        S.RETRYING: frozenset({S.RUNNING, S.FAILED, S.CANCELLING}),
        S.PAUSED: frozenset({S.RUNNING, S.FAILED, S.COMPLETED, S.CANCELLED}),
        S.CANCELLING: frozenset({S.CANCELLED, S.FAILED}),
        S.FAILED: frozenset(),
        S.COMPLETED: frozenset(),
        S.CANCELLED: frozenset(),
    }
)

# For each target, the states it may be reached from, in declaration order.
# The one-statement guarded write sends this list, so it is computed once.
_SOURCES: dict[RunStatus, tuple[str, ...]] = {
    to: tuple(s.value for s in STATES if to in TRANSITIONS[s]) for to in STATES
}
_BY_VALUE: dict[str, RunStatus] = {status.value: status for status in STATES}
_TERMINAL = frozenset({S.FAILED, S.COMPLETED, S.CANCELLED})
_SCHEDULABLE = frozenset({S.PENDING, S.RUNNING, S.RETRYING})


def coerce_status(value: object) -> RunStatus:
    """Return ``value`` as a ``RunStatus``, or raise ``UnknownStatus``."""
    # A RunStatus hashes and compares as its value, so one lookup serves both
    # forms; only a str is looked up, as anything else may be unhashable.
    status = _BY_VALUE.get(value) if isinstance(value, str) else None
    if status is None:
        raise UnknownStatus(value)
    return status


def allowed_transitions(status: RunStatus | str) -> frozenset[RunStatus]:
    """The states a run in ``status`` may move to."""
    return TRANSITIONS[coerce_status(status)]


def sources_of(status: RunStatus | str) -> tuple[str, ...]:
    """The states from which a run may move to ``status`` (string values)."""
    return _SOURCES[coerce_status(status)]


def can_transition(from_status: object, to_status: object) -> bool:
    """Whether the move is legal; ``False`` for unknown states."""
    try:
        return coerce_status(to_status) in TRANSITIONS[coerce_status(from_status)]
    except UnknownStatus:
        return False


def validate(from_status: RunStatus | str, to_status: RunStatus | str) -> RunStatus:
    """Check a move; return the target status.

    Raises:
        UnknownStatus: either value is not a state.
        InvalidTransition: the move is not allowed.
    """
    a, b = coerce_status(from_status), coerce_status(to_status)
    if b not in TRANSITIONS[a]:
        raise InvalidTransition(a, b)
    return b


def is_terminal(status: RunStatus | str) -> bool:
    """Whether ``status`` is failed, completed or cancelled."""
    return coerce_status(status) in _TERMINAL


def schedule_next_step(status: RunStatus | str) -> bool:
    """Whether the runtime should schedule more step work (pending, running, retrying)."""
    return coerce_status(status) in _SCHEDULABLE
