"""The run state machine against a table written from semantics.md.

The expected table below is transcribed independently of
``squidmesh.state_machine.TRANSITIONS`` so that a change in the module that
does not match the reference semantics fails here.
"""

from __future__ import annotations

import enum
import itertools
import pickle

import pytest

import squidmesh
from squidmesh import InvalidTransition, RunStatus, UnknownStatus, state_machine

NAMES = (
    "pending",
    "running",
    "retrying",
    "paused",
    "failed",
    "completed",
    "cancelling",
    "cancelled",
)

# semantics.md, "Run lifecycle": from -> legal targets.
LEGAL: dict[str, set[str]] = {
    "pending": {"running", "failed", "cancelled"},
    "running": {"retrying", "paused", "failed", "completed", "cancelling"},
    "retrying": {"running", "failed", "cancelling"},
    "paused": {"running", "failed", "completed", "cancelled"},
    "cancelling": {"cancelled", "failed"},
    "failed": set(),
    "completed": set(),
    "cancelled": set(),
}
TERMINAL = {"failed", "completed", "cancelled"}
SCHEDULABLE = {"pending", "running", "retrying"}

PAIRS = list(itertools.product(NAMES, NAMES))
BAD_VALUES: list[object] = [
    "PENDING",
    "Running",
    " pending",
    "pending ",
    "",
    "unknown",
    "cancel",
    None,
    0,
    1,
    1.5,
    b"pending",
    ["pending"],
    object(),
]


def _both_forms(name: str) -> list[RunStatus | str]:
    return [name, RunStatus(name)]


def test_states_are_the_eight_in_order() -> None:
    assert [s.value for s in state_machine.STATES] == list(NAMES)
    assert all(isinstance(s, RunStatus) for s in state_machine.STATES)
    assert {s.value for s in RunStatus} == set(NAMES)
    assert len(PAIRS) == 64


def test_run_status_is_a_str_enum() -> None:
    for name in NAMES:
        status = RunStatus(name)
        assert status == name
        assert isinstance(status, str)
        assert str(status) == name


@pytest.mark.parametrize(("from_status", "to_status"), PAIRS)
def test_matrix_can_transition(from_status: str, to_status: str) -> None:
    expected = to_status in LEGAL[from_status]
    for a in _both_forms(from_status):
        for b in _both_forms(to_status):
            assert state_machine.can_transition(a, b) is expected


@pytest.mark.parametrize(("from_status", "to_status"), PAIRS)
def test_matrix_validate(from_status: str, to_status: str) -> None:
    for a in _both_forms(from_status):
        for b in _both_forms(to_status):
            if to_status in LEGAL[from_status]:
                result = state_machine.validate(a, b)
                assert result == to_status
                assert isinstance(result, RunStatus)
            else:
                with pytest.raises(InvalidTransition) as info:
                    state_machine.validate(a, b)
                assert info.value.from_status == from_status
                assert info.value.to_status == to_status


@pytest.mark.parametrize("status", NAMES)
def test_allowed_transitions(status: str) -> None:
    for form in _both_forms(status):
        allowed = state_machine.allowed_transitions(form)
        assert {s.value for s in allowed} == LEGAL[status]
        assert all(isinstance(s, RunStatus) for s in allowed)


@pytest.mark.parametrize("status", NAMES)
def test_is_terminal(status: str) -> None:
    for form in _both_forms(status):
        assert state_machine.is_terminal(form) is (status in TERMINAL)
    # Terminal states are exactly those with no way out.
    assert (status in TERMINAL) == (not LEGAL[status])


@pytest.mark.parametrize("status", NAMES)
def test_schedule_next_step(status: str) -> None:
    for form in _both_forms(status):
        assert state_machine.schedule_next_step(form) is (status in SCHEDULABLE)
        assert squidmesh.RunStore.schedule_next_step(form) is (status in SCHEDULABLE)


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_unknown_status_everywhere_but_can_transition(value: object) -> None:
    for fn in (
        state_machine.allowed_transitions,
        state_machine.is_terminal,
        state_machine.schedule_next_step,
        squidmesh.RunStore.schedule_next_step,
    ):
        with pytest.raises(UnknownStatus) as info:
            fn(value)  # type: ignore[arg-type]
        assert info.value.value == value
    with pytest.raises(UnknownStatus):
        state_machine.validate(value, "running")  # type: ignore[arg-type]
    with pytest.raises(UnknownStatus):
        state_machine.validate("pending", value)  # type: ignore[arg-type]
    assert state_machine.can_transition(value, "running") is False
    assert state_machine.can_transition("pending", value) is False
    assert state_machine.can_transition(value, value) is False


def test_unknown_status_wins_over_illegal_move() -> None:
    # A terminal source with an unknown target is an unknown state, not an
    # illegal move: the two errors are distinct (semantics.md).
    with pytest.raises(UnknownStatus):
        state_machine.validate("completed", "Running")
    with pytest.raises(UnknownStatus):
        state_machine.validate("bogus", "completed")


def test_unknown_status_is_a_value_error_not_an_invalid_transition() -> None:
    with pytest.raises(ValueError):
        state_machine.is_terminal("nope")
    assert not issubclass(UnknownStatus, InvalidTransition)
    assert not issubclass(InvalidTransition, UnknownStatus)


def test_schedule_next_step_takes_a_run() -> None:
    from datetime import UTC, datetime
    from uuid import uuid4

    now = datetime.now(UTC)
    for name in NAMES:
        run = squidmesh.Run(
            id=uuid4(),
            workflow="w",
            trigger="t",
            status=RunStatus(name),
            payload={},
            context={},
            current_step=None,
            last_error=None,
            replayed_from_run_id=None,
            inserted_at=now,
            updated_at=now,
        )
        assert squidmesh.RunStore.schedule_next_step(run) is (name in SCHEDULABLE)


def test_module_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        state_machine.TRANSITIONS[RunStatus.FAILED] = frozenset(  # type: ignore[index]
            {RunStatus.RUNNING}
        )
    assert state_machine.allowed_transitions("failed") == frozenset()


def test_invalid_transition_from_validate_pickles() -> None:
    with pytest.raises(InvalidTransition) as info:
        state_machine.validate("completed", "running")
    clone = pickle.loads(pickle.dumps(info.value))
    assert (clone.from_status, clone.to_status) == ("completed", "running")
    assert str(clone) == str(info.value)


class OtherEnum(enum.StrEnum):
    RUNNING = "running"


def test_coerce_status_returns_the_member() -> None:
    for name in NAMES:
        member = RunStatus(name)
        assert state_machine.coerce_status(name) is member
        assert state_machine.coerce_status(member) is member
    # Any str equal to a state's value is that state, as RunStatus(value) says.
    assert state_machine.coerce_status(OtherEnum.RUNNING) is RunStatus.RUNNING


@pytest.mark.parametrize("value", [["running"], {"running": 1}, {"running"}], ids=repr)
def test_unhashable_values_are_unknown_statuses(value: object) -> None:
    with pytest.raises(UnknownStatus) as info:
        state_machine.coerce_status(value)
    assert info.value.value == value
    assert state_machine.can_transition(value, "running") is False


def test_sources_of_are_the_inverse_of_the_table() -> None:
    for target in NAMES:
        expected = tuple(name for name in NAMES if target in LEGAL[name])
        assert state_machine.sources_of(target) == expected
        assert state_machine.sources_of(RunStatus(target)) == expected
    with pytest.raises(UnknownStatus):
        state_machine.sources_of("nope")
