"""Workflow definitions: every WorkflowDefinitionError problem, alone and together."""

from __future__ import annotations

import copy
import dataclasses
import enum
import pickle
from collections.abc import Sequence

import pytest

import squidmesh
from squidmesh import _workflow
from squidmesh._codec import MAX_INT_DIGITS
from squidmesh._errors import InvalidTrigger, WorkflowDefinitionError
from squidmesh._workflow import (
    COMPLETE,
    MANUAL_STEP_KINDS,
    MAX_NAME_LENGTH,
    NOW_ISO8601,
    STEP_KINDS,
    TODAY_ISO8601,
    Field,
    Step,
    Transition,
    Trigger,
    Workflow,
    graph,
    name_problem,
)
from squidmesh._workflow.checks import definition_problems

TRIGGER = Trigger("manual")


def build(
    *,
    name: object = "wf",
    triggers: Sequence[object] = (TRIGGER,),
    steps: Sequence[object] = (Step("only"),),
    transitions: Sequence[object] = (),
) -> Workflow:
    return Workflow(
        name,  # type: ignore[arg-type]
        triggers=triggers,  # type: ignore[arg-type]
        steps=steps,  # type: ignore[arg-type]
        transitions=transitions,  # type: ignore[arg-type]
    )


def problems_of(**kwargs: object) -> list[str]:
    with pytest.raises(WorkflowDefinitionError) as info:
        build(**kwargs)  # type: ignore[arg-type]
    return info.value.problems


def only_problem(**kwargs: object) -> str:
    problems = problems_of(**kwargs)
    assert len(problems) == 1, problems
    return problems[0]


def invoice_reminder() -> Workflow:
    return Workflow(
        "billing.invoice_reminder",
        triggers=[
            Trigger(
                "invoice_delivery",
                payload=[
                    Field("account_id", str),
                    Field("note", str, required=False),
                    Field("posted_on", str, default=TODAY_ISO8601),
                ],
            ),
            Trigger("nightly", cron="0 9 * * 1-5", timezone="Etc/UTC"),
        ],
        steps=[
            Step("load_invoice"),
            Step("approve", kind="approval"),
            Step("send_email"),
            Step("record_rejection"),
        ],
        transitions=[
            Transition("load_invoice", on="ok", to="approve"),
            Transition("approve", on="ok", to="send_email"),
            Transition("approve", on="error", to="record_rejection"),
            Transition("send_email", on="ok", to="complete"),
            Transition("record_rejection", on="ok", to="complete"),
        ],
    )


# -- a valid definition ------------------------------------------------------


def test_api_example_is_valid() -> None:
    wf = invoice_reminder()
    assert wf.name == "billing.invoice_reminder"
    assert [t.name for t in wf.triggers] == ["invoice_delivery", "nightly"]
    assert isinstance(wf.triggers, tuple)
    assert isinstance(wf.steps, tuple)
    assert isinstance(wf.transitions, tuple)
    assert len(wf.transitions) == 5
    assert wf.default_trigger.name == "invoice_delivery"
    assert wf.entry_step == "load_invoice"
    assert wf.is_dependency_based is False


def test_trigger_lookup() -> None:
    wf = invoice_reminder()
    assert wf.trigger(None) is wf.triggers[0]
    assert wf.trigger() is wf.triggers[0]
    assert wf.trigger("nightly") is wf.triggers[1]
    assert wf.trigger("nightly").cron == "0 9 * * 1-5"
    assert wf.trigger("nightly").timezone == "Etc/UTC"


def test_unknown_trigger_raises_invalid_trigger() -> None:
    wf = invoice_reminder()
    with pytest.raises(InvalidTrigger) as info:
        wf.trigger("webhook")
    assert info.value.name == "webhook"
    assert info.value.workflow == "billing.invoice_reminder"
    assert "webhook" in str(info.value)


def test_step_lookup() -> None:
    wf = invoice_reminder()
    approve = wf.step("approve")
    assert approve is not None
    assert approve.kind == "approval"
    assert approve.is_manual
    assert wf.step("load_invoice") == Step("load_invoice")
    assert wf.step("nope") is None
    assert wf.step(COMPLETE) is None


def test_complete_constant() -> None:
    assert COMPLETE == "complete"


# -- entry step ----------------------------------------------------------------


def test_entry_step_is_not_simply_the_first_declared() -> None:
    wf = build(
        steps=[Step("second"), Step("first"), Step("third")],
        transitions=[
            Transition("first", on="ok", to="second"),
            Transition("second", on="ok", to="third"),
            Transition("third", on="ok", to="complete"),
        ],
    )
    assert wf.entry_step == "first"
    assert wf.is_dependency_based is False


def test_entry_step_of_single_step_workflow_without_transitions() -> None:
    wf = build(steps=[Step("lonely")])
    assert wf.entry_step == "lonely"
    assert wf.is_dependency_based is False


def test_entry_step_with_loop_back_to_a_later_step() -> None:
    wf = build(
        steps=[Step("a"), Step("b"), Step("c")],
        transitions=[
            Transition("c", on="ok", to="a"),
            Transition("a", on="ok", to="b"),
            Transition("b", on="retry", to="a"),
            Transition("b", on="ok", to="complete"),
        ],
    )
    assert wf.entry_step == "c"


def test_two_entry_steps_are_a_problem() -> None:
    problem = only_problem(
        steps=[Step("a"), Step("b"), Step("c")],
        transitions=[Transition("a", on="ok", to="c"), Transition("b", on="ok", to="c")],
    )
    assert "2 entry steps" in problem
    assert "'a'" in problem and "'b'" in problem and "'c'" not in problem


def test_several_steps_without_transitions_have_several_entries() -> None:
    problem = only_problem(steps=[Step("a"), Step("b")])
    assert "2 entry steps" in problem


def test_no_entry_step_is_a_problem() -> None:
    problem = only_problem(
        steps=[Step("a"), Step("b")],
        transitions=[Transition("a", on="ok", to="b"), Transition("b", on="ok", to="a")],
    )
    assert "no entry step" in problem


def test_self_loop_removes_the_only_entry() -> None:
    problem = only_problem(steps=[Step("a")], transitions=[Transition("a", on="again", to="a")])
    assert "no entry step" in problem


# -- each problem alone ----------------------------------------------------------


@pytest.mark.parametrize("name", ["", None, 42])
def test_bad_workflow_name(name: object) -> None:
    assert "workflow name must be a non-empty string" in only_problem(name=name)


def test_no_trigger() -> None:
    assert "no trigger" in only_problem(triggers=[])


def test_no_steps() -> None:
    assert "no steps" in only_problem(steps=[])


def test_duplicate_trigger_names() -> None:
    problem = only_problem(triggers=[Trigger("t"), Trigger("u"), Trigger("t")])
    assert problem == "duplicate trigger name 't'"


def test_not_a_trigger() -> None:
    assert "triggers[1] is not a Trigger" in only_problem(triggers=[TRIGGER, "nightly"])


def test_empty_trigger_name() -> None:
    assert "trigger name must be a non-empty string" in only_problem(triggers=[Trigger("")])


def test_bad_cron_and_timezone_types() -> None:
    problems = problems_of(triggers=[Trigger("t", cron="", timezone=5)])  # type: ignore[arg-type]
    assert len(problems) == 2
    assert "cron must be a non-empty string" in problems[0]
    assert "timezone must be a non-empty string" in problems[1]


def test_duplicate_field_names_within_a_trigger() -> None:
    trigger = Trigger("t", [Field("a", str), Field("b", int), Field("a", int)])
    assert only_problem(triggers=[trigger]) == "trigger 't': duplicate field name 'a'"


def test_same_field_name_in_two_triggers_is_fine() -> None:
    build(triggers=[Trigger("t", [Field("a", str)]), Trigger("u", [Field("a", int)])])


@pytest.mark.parametrize("bad_type", [set, tuple, bytes, object, "str", None])
def test_unknown_field_type(bad_type: object) -> None:
    trigger = Trigger("t", [Field("a", bad_type)])  # type: ignore[arg-type]
    problem = only_problem(triggers=[trigger])
    assert "field 'a' has unknown type" in problem
    assert "str, int, float, bool, dict, list" in problem


@pytest.mark.parametrize("good_type", [str, int, float, bool, dict, list])
def test_every_allowed_field_type(good_type: type) -> None:
    field = Field("a", good_type)
    assert field.type_name == good_type.__name__
    build(triggers=[Trigger("t", [field])])


def test_not_a_field_and_bad_field_name() -> None:
    trigger = Trigger("t", ["a", Field("", str)])  # type: ignore[list-item]
    problems = problems_of(triggers=[trigger])
    assert len(problems) == 2
    assert "payload[0] is not a Field" in problems[0]
    assert "field name must be a non-empty string" in problems[1]


def test_sentinel_default_on_non_str_field() -> None:
    trigger = Trigger("t", [Field("d", int, default=TODAY_ISO8601)])
    problem = only_problem(triggers=[trigger])
    assert "TODAY_ISO8601" in problem and "int" in problem


@pytest.mark.parametrize(
    ("field", "fragment"),
    [
        (Field("n", int, default="1"), "expected int, got str"),
        (Field("n", int, default=True), "expected int, got bool"),
        (Field("x", float, default=float("nan")), "not a finite number"),
        (Field("s", str, default="a\x00b"), "NUL"),
        (Field("l", list, default=[{1, 2}]), "set is not a JSON value"),
    ],
)
def test_invalid_value_default(field: Field, fragment: str) -> None:
    problem = only_problem(triggers=[Trigger("t", [field])])
    assert "invalid default" in problem
    assert fragment in problem


def test_valid_defaults_are_accepted() -> None:
    build(
        triggers=[
            Trigger(
                "t",
                [
                    Field("a", float, default=1),
                    Field("b", list, default=list),
                    Field("c", str, default=NOW_ISO8601),
                    Field("d", dict, default={"k": [1, 2.5, None]}),
                    Field("e", str, default=None),
                ],
            )
        ]
    )


def test_duplicate_step_names() -> None:
    problem = only_problem(
        steps=[Step("a"), Step("b"), Step("a")],
        transitions=[Transition("a", on="ok", to="b")],
    )
    assert problem == "duplicate step name 'a'"


def test_unknown_step_kind() -> None:
    problem = only_problem(steps=[Step("a", kind="manual")])
    assert "unknown kind 'manual'" in problem
    assert "'step', 'pause', 'approval'" in problem


def test_not_a_step_and_empty_step_name() -> None:
    problems = problems_of(
        steps=[Step("a"), "b", Step("")],
    )
    assert any("steps[1] is not a Step" in p for p in problems)
    assert any("steps[2]: step name must be a non-empty string" in p for p in problems)
    assert len(problems) == 2


def test_step_named_complete() -> None:
    problem = only_problem(
        steps=[Step("a"), Step("complete")],
        transitions=[Transition("a", on="ok", to="complete")],
    )
    assert "'complete' is reserved" in problem


def test_transition_from_unknown_step() -> None:
    problem = only_problem(
        steps=[Step("a")],
        transitions=[Transition("ghost", on="ok", to="complete")],
    )
    assert "starts at unknown step 'ghost'" in problem


def test_transition_to_unknown_step() -> None:
    problem = only_problem(steps=[Step("a")], transitions=[Transition("a", on="ok", to="ghost")])
    assert "leads to unknown step 'ghost'" in problem


def test_transition_with_empty_outcome() -> None:
    problem = only_problem(steps=[Step("a")], transitions=[Transition("a", on="", to="complete")])
    assert "`on` must be a non-empty string" in problem


def test_not_a_transition() -> None:
    problem = only_problem(steps=[Step("a")], transitions=[("a", "ok", "complete")])
    assert "transitions[0] is not a Transition" in problem


def test_duplicate_transition() -> None:
    problem = only_problem(
        steps=[Step("a"), Step("b"), Step("c")],
        transitions=[
            Transition("a", on="ok", to="b"),
            Transition("b", on="ok", to="c"),
            Transition("a", on="ok", to="c"),
        ],
    )
    assert problem == "duplicate transition from step 'a' on 'ok'"


def test_same_outcome_from_different_steps_is_fine() -> None:
    wf = build(
        steps=[Step("a"), Step("b")],
        transitions=[Transition("a", on="ok", to="b"), Transition("b", on="ok", to="complete")],
    )
    assert wf.entry_step == "a"


def test_approval_step_needs_ok_and_error() -> None:
    problem = only_problem(
        steps=[Step("a"), Step("approve", kind="approval")],
        transitions=[
            Transition("a", on="ok", to="approve"),
            Transition("approve", on="ok", to="complete"),
        ],
    )
    assert "approval step 'approve'" in problem
    assert "missing: 'error'" in problem


def test_approval_step_without_any_transition() -> None:
    problem = only_problem(steps=[Step("approve", kind="approval")])
    assert "missing: 'ok', 'error'" in problem


def test_pause_step_needs_no_particular_transitions() -> None:
    wf = build(
        steps=[Step("wait", kind="pause"), Step("go")],
        transitions=[Transition("wait", on="ok", to="go")],
    )
    assert wf.entry_step == "wait"
    wait = wf.step("wait")
    assert wait is not None and wait.is_manual
    go = wf.step("go")
    assert go is not None and not go.is_manual


def test_mixing_after_and_transitions() -> None:
    problem = only_problem(
        steps=[Step("a"), Step("b", after=["a"])],
        transitions=[Transition("a", on="ok", to="b")],
    )
    assert "use one or the other" in problem or "one or the other" in problem


def test_after_unknown_step() -> None:
    problem = only_problem(steps=[Step("a"), Step("b", after=["a", "ghost"])])
    assert problem == "step 'b' runs after unknown step 'ghost'"


def test_after_itself() -> None:
    problem = only_problem(steps=[Step("a"), Step("b", after=["b"])])
    assert problem == "step 'b' lists itself in `after`"


def test_after_names_a_step_twice() -> None:
    problem = only_problem(steps=[Step("a"), Step("b", after=["a", "a"])])
    assert "more than once" in problem


def test_after_as_a_string_is_refused_at_step_construction() -> None:
    with pytest.raises(TypeError, match="list of step names"):
        Step("b", after="a")


def test_dependency_cycle_names_its_steps() -> None:
    problem = only_problem(
        steps=[
            Step("start"),
            Step("x", after=["start", "z"]),
            Step("y", after=["x"]),
            Step("z", after=["y"]),
            Step("end", after=["z"]),
        ]
    )
    assert problem.startswith("dependency cycle")
    for step in ("'x'", "'y'", "'z'"):
        assert step in problem
    assert "'start'" not in problem and "'end'" not in problem
    assert "'x' runs after 'z'" in problem
    assert "'z' runs after 'y'" in problem
    assert "'y' runs after 'x'" in problem


def test_two_separate_cycles_are_both_reported() -> None:
    problems = problems_of(
        steps=[
            Step("a", after=["b"]),
            Step("b", after=["a"]),
            Step("c", after=["d"]),
            Step("d", after=["c"]),
        ]
    )
    assert len(problems) == 2
    assert "'a'" in problems[0] and "'b'" in problems[0]
    assert "'c'" in problems[1] and "'d'" in problems[1]


def test_long_dependency_chain_is_fine() -> None:
    steps = [Step("s0")] + [Step(f"s{i}", after=[f"s{i - 1}"]) for i in range(1, 3000)]
    wf = build(steps=steps)
    layout = wf.step_layout()
    assert [name for name, _ in layout] == [f"s{i}" for i in range(3000)]


def test_long_dependency_cycle_is_reported() -> None:
    steps = [Step(f"s{i}", after=[f"s{(i - 1) % 3000}"]) for i in range(3000)]
    problem = only_problem(steps=steps)
    assert problem.startswith("dependency cycle")


# -- names that cannot be stored ----------------------------------------------------


class Color(enum.StrEnum):
    RED = "red"


# (label, name, fragment of the problem after "<role> name")
UNSTORABLE_NAMES = [
    pytest.param("nul\x00", "contains a NUL character", id="NUL"),
    pytest.param("s\ud800", "contains a lone surrogate", id="lone-surrogate"),
    pytest.param("\udfff", "contains a lone surrogate", id="only-a-surrogate"),
    pytest.param("n" * (MAX_NAME_LENGTH + 1), "is 256 characters long; the limit is 255", id="256"),
    pytest.param("n" * 300, "is 300 characters long", id="300"),
    pytest.param("", "must be a non-empty string", id="empty"),
    pytest.param(Color.RED, "must be a plain str, not Color", id="str-enum"),
]


def with_name(role: str, name: object) -> dict[str, object]:
    """build() arguments where only ``role``'s name is ``name``."""
    if role == "workflow":
        return {"name": name}
    if role == "trigger":
        return {"triggers": [Trigger(name)]}  # type: ignore[arg-type]
    if role == "field":
        return {"triggers": [Trigger("t", [Field(name, str)])]}  # type: ignore[arg-type]
    assert role == "step"
    return {"steps": [Step(name)]}  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "fragment"), UNSTORABLE_NAMES)
@pytest.mark.parametrize("role", ["workflow", "trigger", "step", "field"])
def test_a_name_that_cannot_be_stored_is_a_problem_naming_its_role(
    role: str, name: object, fragment: str
) -> None:
    problem = only_problem(**with_name(role, name))
    assert f"{role} name" in problem
    assert fragment in problem


@pytest.mark.parametrize("role", ["workflow", "trigger", "step", "field"])
def test_names_of_the_longest_storable_length_are_accepted(role: str) -> None:
    longest = "\U0001f991" * MAX_NAME_LENGTH  # characters, not UTF-8 bytes, count
    build(**with_name(role, longest))  # type: ignore[arg-type]


def test_a_long_name_is_shortened_in_the_problem() -> None:
    problem = only_problem(name="w" * 10_000)
    assert "is 10000 characters long" in problem
    assert len(problem) < 200


def test_all_unstorable_names_are_listed_together() -> None:
    problems = problems_of(
        name="w\x00",
        triggers=[Trigger("t" * 256, [Field("f\ud800", str)])],
        steps=[Step("s" * 256)],
    )
    assert len(problems) == 4, problems
    for role, problem in zip(["workflow", "trigger", "field", "step"], problems, strict=True):
        assert f"{role} name" in problem


@pytest.mark.parametrize(
    "transition",
    [
        Transition("a\x00", on="ok", to="complete"),
        Transition("a", on="ok", to="b\ud800"),
        Transition("a", on="ok", to="b" * 256),
        Transition("", on="ok", to="complete"),
        Transition("a", on="ok", to=Color.RED),
    ],
    ids=repr,
)
def test_a_transition_naming_an_unstorable_step_is_a_step_name_problem(
    transition: Transition,
) -> None:
    problem = only_problem(steps=[Step("a")], transitions=[transition])
    assert problem.startswith(f"{transition!r}: step name")
    assert "unknown step" not in problem


def test_an_after_entry_naming_an_unstorable_step_is_a_step_name_problem() -> None:
    problem = only_problem(steps=[Step("a"), Step("b", after=["a", "a\x00"])])
    assert problem.startswith("step 'b': `after` entry: step name 'a\\x00' contains a NUL")


def test_unhashable_references_are_problems_not_type_errors() -> None:
    problems = problems_of(
        steps=[Step("a"), Step("b", kind="approval")],
        transitions=[
            Transition(["a"], on="ok", to="b"),  # type: ignore[arg-type]
            Transition("a", on="ok", to=["b"]),  # type: ignore[arg-type]
            Transition("b", on=["ok"], to="complete"),  # type: ignore[arg-type]
        ],
    )
    assert sum("step name must be a non-empty string" in p for p in problems) == 2
    assert any("`on` must be a non-empty string" in p for p in problems)
    dependency = only_problem(steps=[Step("a"), Step("b", after=[["a"]])])  # type: ignore[list-item]
    assert "`after` entry: step name must be a non-empty string" in dependency


def test_an_enum_outcome_still_counts_for_an_approval() -> None:
    # `on` is not stored, so unlike names it may be a str subclass.
    class Outcome(enum.StrEnum):
        OK = "ok"
        ERROR = "error"

    build(
        steps=[Step("a", kind="approval"), Step("b")],
        transitions=[
            Transition("a", on=Outcome.OK, to="complete"),
            Transition("a", on=Outcome.ERROR, to="b"),
        ],
    )


@pytest.mark.parametrize("digits", [MAX_INT_DIGITS + 1, 4301])
def test_an_int_default_too_big_to_store_is_a_problem(digits: int) -> None:
    problem = only_problem(triggers=[Trigger("t", [Field("n", int, default=10 ** (digits - 1))])])
    assert "field 'n': invalid default" in problem
    assert f"more than {MAX_INT_DIGITS} digits" in problem


# -- several problems together ------------------------------------------------


def test_every_problem_is_listed_together() -> None:
    with pytest.raises(WorkflowDefinitionError) as info:
        Workflow(
            "",
            triggers=[
                Trigger("t", [Field("a", str), Field("a", set)]),
                Trigger("t"),
            ],
            steps=[
                Step("load"),
                Step("load"),
                Step("approve", kind="approval"),
                Step("weird", kind="robot"),
                Step("complete"),
            ],
            transitions=[
                Transition("load", on="ok", to="approve"),
                Transition("load", on="ok", to="weird"),
                Transition("ghost", on="ok", to="load"),
                Transition("approve", on="ok", to="nowhere"),
            ],
        )
    problems = info.value.problems
    expected_fragments = [
        "workflow name must be a non-empty string",
        "trigger 't': duplicate field name 'a'",
        "field 'a' has unknown type set",
        "duplicate trigger name 't'",
        "duplicate step name 'load'",
        "'complete' is reserved",
        "unknown kind 'robot'",
        "duplicate transition from step 'load' on 'ok'",
        "starts at unknown step 'ghost'",
        "leads to unknown step 'nowhere'",
        "approval step 'approve' must declare both an 'ok' and an 'error' transition; "
        "missing: 'error'",
    ]
    for fragment in expected_fragments:
        assert any(fragment in p for p in problems), (fragment, problems)
    assert len(problems) == len(expected_fragments), problems
    # The transition from the unknown step 'ghost' does not count as leading
    # to 'load', so 'load' is the one entry step and no entry problem follows.
    assert not any("entry" in p for p in problems)
    message = str(info.value)
    for problem in problems:
        assert problem in message


def test_dependency_problems_are_listed_together() -> None:
    problems = problems_of(
        triggers=[],
        steps=[
            Step("a", after=["ghost"]),
            Step("b", after=["b", "c"]),
            Step("c", after=["b"]),
            Step("d", kind="approval", after=["a"]),
        ],
        transitions=[Transition("a", on="ok", to="b")],
    )
    expected = [
        "no trigger",
        "one or the other",
        "step 'a' runs after unknown step 'ghost'",
        "step 'b' lists itself in `after`",
        "dependency cycle",
    ]
    for fragment in expected:
        assert any(fragment in p for p in problems), (fragment, problems)
    # An approval step in a dependency-based workflow needs no ok/error edges,
    # and dependency-based workflows have no entry step to complain about.
    assert not any("approval" in p or "entry" in p for p in problems)
    assert len(problems) == len(expected), problems


# -- dependency-based workflows and step layout -----------------------------------


def diamond() -> Workflow:
    return build(
        steps=[
            Step("report", after=["left", "right"]),
            Step("left", after=["fetch"]),
            Step("audit"),
            Step("right", after=["fetch"]),
            Step("fetch"),
            Step("notify", kind="approval", after=["report", "audit"]),
        ]
    )


def test_dependency_based_workflow_has_no_entry_step() -> None:
    wf = diamond()
    assert wf.is_dependency_based is True
    assert wf.entry_step is None


def test_step_layout_dependency_based_orders_by_phase_then_declaration() -> None:
    assert diamond().step_layout() == [
        ("audit", []),
        ("fetch", []),
        ("left", ["fetch"]),
        ("right", ["fetch"]),
        ("report", ["left", "right"]),
        ("notify", ["report", "audit"]),
    ]


def test_step_layout_phase_is_one_more_than_the_deepest_dependency() -> None:
    wf = build(
        steps=[
            Step("late", after=["a", "c"]),
            Step("a"),
            Step("b", after=["a"]),
            Step("c", after=["b"]),
            Step("early", after=["a"]),
        ]
    )
    assert [name for name, _ in wf.step_layout()] == ["a", "b", "early", "c", "late"]


def test_step_layout_transition_based_is_declaration_order() -> None:
    wf = build(
        steps=[Step("second"), Step("first")],
        transitions=[Transition("first", on="ok", to="second")],
    )
    assert wf.step_layout() == [("second", []), ("first", [])]


def test_step_layout_returns_a_fresh_list() -> None:
    wf = diamond()
    layout = wf.step_layout()
    layout[2][1].append("mutated")
    layout.clear()
    assert wf.step_layout()[2] == ("left", ["fetch"])


# -- the value classes ---------------------------------------------------------------


def test_sentinels() -> None:
    assert TODAY_ISO8601 is not NOW_ISO8601
    assert repr(TODAY_ISO8601) == "squidmesh.TODAY_ISO8601"
    assert repr(NOW_ISO8601) == "squidmesh.NOW_ISO8601"
    assert pickle.loads(pickle.dumps(TODAY_ISO8601)) is TODAY_ISO8601
    assert copy.deepcopy(NOW_ISO8601) is NOW_ISO8601
    assert not callable(TODAY_ISO8601)


def test_field_attributes_and_repr() -> None:
    field = Field("note", str, required=False)
    assert (field.name, field.type, field.required, field.type_name) == (
        "note",
        str,
        False,
        "str",
    )
    assert not field.has_default
    assert field.is_optional
    assert repr(field) == "Field('note', str, required=False)"
    assert repr(Field("a", int)) == "Field('a', int)"
    dated = Field("posted_on", str, default=TODAY_ISO8601)
    assert dated.has_default and dated.is_optional
    assert repr(dated) == "Field('posted_on', str, default=squidmesh.TODAY_ISO8601)"
    assert Field("x", set).type_name == "set"


def test_field_equality() -> None:
    assert Field("a", int) == Field("a", int)
    assert hash(Field("a", int)) == hash(Field("a", int))
    assert Field("a", int) != Field("a", float)
    assert Field("a", int) != Field("b", int)
    assert Field("a", int) != Field("a", int, required=False)
    assert Field("a", int, default=1) == Field("a", int, default=1)
    assert Field("a", int, default=1) != Field("a", int, default=2)
    assert Field("a", int, default=1) != Field("a", int)
    assert Field("a", str, default=TODAY_ISO8601) != Field("a", str, default=NOW_ISO8601)
    assert Field("a", dict, default={"k": 1}) == Field("a", dict, default={"k": 1})
    assert Field("a", int) != "a"  # type: ignore[comparison-overlap]


def test_step_and_transition_values() -> None:
    assert Step("a") == Step("a")
    assert Step("a") != Step("a", kind="pause")
    assert Step("b", after=["a"]) == Step("b", after=("a",))
    assert Step("b", after=["a"]).after == ("a",)
    assert repr(Step("b", kind="approval", after=["a"])) == (
        "Step('b', kind='approval', after=['a'])"
    )
    assert Step("a").kind == "step" and not Step("a").is_manual
    transition = Transition("a", on="ok", to="complete")
    assert (transition.from_step, transition.on, transition.to) == ("a", "ok", "complete")
    assert transition == Transition("a", on="ok", to="complete")
    assert transition != Transition("a", on="error", to="complete")
    assert len({transition, Transition("a", on="ok", to="complete")}) == 1
    assert repr(transition) == "Transition('a', on='ok', to='complete')"


def test_trigger_values() -> None:
    trigger = Trigger("t", [Field("a", str)], cron="* * * * *", timezone="Etc/UTC")
    assert trigger.payload == (Field("a", str),)
    assert trigger.field("a") == Field("a", str)
    assert trigger.field("b") is None
    assert trigger == Trigger("t", (Field("a", str),), cron="* * * * *", timezone="Etc/UTC")
    assert trigger != Trigger("t", [Field("a", str)])
    assert repr(Trigger("t")) == "Trigger('t')"
    assert "cron='* * * * *'" in repr(trigger)


def test_definitions_are_immutable() -> None:
    wf = invoice_reminder()
    with pytest.raises(AttributeError):
        wf.name = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        wf.steps[0].kind = "approval"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        wf.triggers[0].payload[0].required = False  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del wf.transitions[0].to


def test_workflow_equality_repr_and_pickle() -> None:
    wf = invoice_reminder()
    assert wf == invoice_reminder()
    assert hash(wf) == hash(invoice_reminder())
    assert wf != build()
    assert repr(wf) == (
        "<Workflow 'billing.invoice_reminder': 2 trigger(s), 4 step(s), 5 transition(s)>"
    )
    restored = pickle.loads(pickle.dumps(wf))
    assert restored == wf
    assert restored.entry_step == "load_invoice"
    assert restored.triggers[0].payload[2].default is TODAY_ISO8601
    assert copy.deepcopy(wf) == wf


def test_generators_are_accepted_as_sequences() -> None:
    wf = Workflow(
        "gen",
        triggers=(t for t in [TRIGGER]),  # type: ignore[arg-type]
        steps=(s for s in [Step("a")]),  # type: ignore[arg-type]
    )
    assert wf.steps == (Step("a"),)


def test_step_named_complete_is_not_counted_as_an_entry() -> None:
    problem = only_problem(steps=[Step("a"), Step("complete")])
    assert "'complete' is reserved" in problem


# -- the definitions as frozen dataclasses ------------------------------------------


def parts() -> list[Field | Trigger | Step | Transition]:
    """One of each part, with every argument given."""
    return [
        Field("f", str, required=False, default=NOW_ISO8601),
        Trigger("t", [Field("a", int, default=1)], cron="0 9 * * *", timezone="Etc/UTC"),
        Step("s", kind="pause", after=["a", "b"]),
        Transition("s", on="ok", to="complete"),
    ]


@pytest.mark.parametrize("part", parts(), ids=lambda part: type(part).__name__)
def test_each_part_pickles_and_copies_equal(part: object) -> None:
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        clone = pickle.loads(pickle.dumps(part, protocol=protocol))
        assert type(clone) is type(part)
        assert clone == part
        assert hash(clone) == hash(part)
        assert repr(clone) == repr(part)
    assert copy.copy(part) == part
    assert copy.deepcopy(part) == part


@pytest.mark.parametrize("part", parts(), ids=lambda part: type(part).__name__)
def test_the_repr_is_the_constructor_call(part: object) -> None:
    namespace = {
        "Field": Field,
        "Trigger": Trigger,
        "Step": Step,
        "Transition": Transition,
        "squidmesh": squidmesh,
        "str": str,
        "int": int,
    }
    assert eval(repr(part), namespace) == part


def test_pickling_a_workflow_rebuilds_and_rechecks_it() -> None:
    wf = diamond()
    restored = pickle.loads(pickle.dumps(wf))
    assert restored == wf
    assert restored.is_dependency_based
    assert restored.step_layout() == wf.step_layout()
    # A pickle replays the constructor, so it cannot smuggle in what the
    # constructor refuses.
    rebuild, (cls, args, kwargs) = wf.__reduce__()
    with pytest.raises(WorkflowDefinitionError):
        rebuild(cls, args, {**kwargs, "steps": ()})


def test_parts_are_dataclasses_with_the_documented_fields() -> None:
    def init_fields(cls: type) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.init]

    assert init_fields(Field) == ["name", "type", "required", "default"]
    assert init_fields(Trigger) == ["name", "payload", "cron", "timezone", "catch_up"]
    assert init_fields(Step) == ["name", "kind", "after"]
    assert init_fields(Transition) == ["from_step", "on", "to"]
    assert init_fields(Workflow) == ["name", "triggers", "steps", "transitions"]


def test_replace_goes_through_the_constructor() -> None:
    step = dataclasses.replace(Step("a"), after=("b",))
    assert step.after == ("b",)
    wf = invoice_reminder()
    renamed = dataclasses.replace(wf, name="billing.other")
    assert renamed.name == "billing.other"
    assert renamed.entry_step == wf.entry_step
    with pytest.raises(WorkflowDefinitionError):
        dataclasses.replace(wf, triggers=())


def test_field_defaults_compare_by_type_and_value() -> None:
    # 1, 1.0 and True are stored as different JSON, so they are different defaults.
    assert Field("a", float, default=1) != Field("a", float, default=1.0)
    assert Field("a", int, default=1) != Field("a", int, default=True)
    assert Field("a", list, default=list) == Field("a", list, default=list)
    assert Field("a", list, default=list) != Field("a", list, default=lambda: [])
    assert Field("a", str, default=None) == Field("a", str, default=None)


def test_field_hash_ignores_the_default() -> None:
    with_dict = Field("a", dict, default={"k": [1]})
    assert hash(with_dict) == hash(Field("a", dict, default={"k": [1]}))
    assert hash(with_dict) == hash(Field("a", dict))
    assert len({with_dict, Field("a", dict, default={"k": [1]})}) == 1


def test_a_field_of_an_unhashable_type_still_hashes_and_is_reported() -> None:
    field = Field("a", ["str"])  # type: ignore[arg-type]
    assert isinstance(hash(field), int)
    assert field.type_name == "['str']"
    assert repr(field) == "Field('a', ['str'])"
    assert "field 'a' has unknown type ['str']" in only_problem(triggers=[Trigger("t", [field])])


def test_trigger_and_workflow_hashes_leave_their_parts_out() -> None:
    assert hash(Trigger("t", [Field("a", str)])) == hash(Trigger("t"))
    unhashable = Trigger("t", [["not a field"]])  # type: ignore[list-item]
    assert isinstance(hash(unhashable), int)
    other = build(name="billing.invoice_reminder")
    assert hash(other) == hash(invoice_reminder())
    assert other != invoice_reminder()


def test_trigger_field_lookup_takes_the_first_declaration() -> None:
    first = Field("a", str)
    trigger = Trigger("t", [first, Field("a", int), "junk"])  # type: ignore[list-item]
    assert trigger.field("a") is first
    assert trigger.field("junk") is None


def test_a_repr_shows_what_differs_from_the_defaults() -> None:
    assert repr(Field("a", int, required=True)) == "Field('a', int)"
    assert repr(Field("a", int, default=0)) == "Field('a', int, default=0)"
    assert repr(Step("a", kind="step", after=())) == "Step('a')"
    assert repr(Trigger("t", [], cron=None)) == "Trigger('t')"
    assert repr(Trigger("t", timezone="Etc/UTC")) == "Trigger('t', timezone='Etc/UTC')"


# -- the package's modules -------------------------------------------------------------


def test_the_package_exports_what_the_rest_of_squidmesh_imports() -> None:
    expected = {
        "COMPLETE",
        "DEFAULT_FACTORY",
        "DEFAULT_NONE",
        "DEFAULT_NOW",
        "DEFAULT_TODAY",
        "DEFAULT_VALUE",
        "FIELD_TYPES",
        "MANUAL_STEP_KINDS",
        "MAX_NAME_LENGTH",
        "NOW_ISO8601",
        "STEP_KINDS",
        "TODAY_ISO8601",
        "Field",
        "Step",
        "Transition",
        "Trigger",
        "Workflow",
        "name_problem",
    }
    for name in expected:
        assert hasattr(_workflow, name), name
    assert MANUAL_STEP_KINDS == {"pause", "approval"}
    assert set(MANUAL_STEP_KINDS) < set(STEP_KINDS)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ok", None),
        ("n" * MAX_NAME_LENGTH, None),
        ("n" * (MAX_NAME_LENGTH + 1), "step name 'nnnn"),
        ("", "step name must be a non-empty string, got ''"),
        (None, "step name must be a non-empty string, got None"),
        ("a\x00", "step name 'a\\x00' contains a NUL"),
    ],
)
def test_name_problem(value: object, expected: str | None) -> None:
    problem = name_problem("step", value)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(expected)


def test_definition_problems_of_a_valid_definition_is_empty() -> None:
    wf = invoice_reminder()
    assert definition_problems(wf.name, wf.triggers, wf.steps, wf.transitions) == []


def test_graph_entry_steps_ignore_targets_that_are_not_str() -> None:
    assert graph.entry_steps(["a", "b", "c"], ["b", ["c"], None]) == ["a", "c"]
    assert graph.entry_steps(["a"], ["a"]) == []


def test_graph_dependency_cycles_one_per_group_in_declaration_order() -> None:
    dependencies = {"z": ["y"], "y": ["z"], "a": ["b"], "b": ["c"], "c": ["a"], "d": []}
    assert graph.dependency_cycles(dependencies) == [
        ["z", "y", "z"],
        ["a", "b", "c", "a"],
    ]
    assert graph.dependency_cycles({"a": [], "b": ["a"]}) == []


def test_graph_step_layout_without_dependencies_is_declaration_order() -> None:
    assert graph.step_layout({"b": (), "a": ()}) == (("b", ()), ("a", ()))
    assert graph.step_layout({"late": ["early"], "early": []}) == (
        ("early", ()),
        ("late", ("early",)),
    )


def test_a_generator_payload_is_read_once() -> None:
    trigger = Trigger("t", (f for f in [Field("a", str)]))  # type: ignore[arg-type]
    assert trigger.payload == (Field("a", str),)
    assert trigger.field("a") == Field("a", str)
