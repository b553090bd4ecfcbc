"""Definition checks: every problem of a workflow definition, in one list.

``Workflow(...)`` raises one ``WorkflowDefinitionError`` listing all of them,
so a person fixes a broken definition in one pass instead of one error at a
time. The checks therefore never stop at the first problem, and they take
anything (a definition is user input): a wrong type is a problem, never a
crash.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from typing import Final, TypeVar

from .._codec import text_problem
from . import graph
from .cron import (
    MAX_CATCH_UP,
    MAX_CRON_TRIGGER_NAME,
    cron_problem,
    timezone_problem,
)
from .definitions import (
    COMPLETE,
    DEFAULT_NOW,
    DEFAULT_TODAY,
    DEFAULT_VALUE,
    FIELD_TYPES,
    STEP_KINDS,
    Definition,
    Field,
    Step,
    Transition,
    Trigger,
)

__all__ = ("MAX_NAME_LENGTH", "definition_problems", "name_problem")

MAX_NAME_LENGTH: Final = 255
"""The longest workflow, trigger, step or field name: the schema's limit on the
stored names (``runs.workflow``, ``runs.trigger``, ``step_runs.step``), which
``begin_step`` and ``current_step`` writes enforce too."""

_Part = TypeVar("_Part", bound=Definition)


def name_problem(role: str, value: object) -> str | None:
    """Say why ``value`` cannot be the name of a ``role`` ("workflow", "step", ...), or None.

    Names are stored on runs and step runs, and every registered name is sent
    along with some statements (replay, step-run inserts), so one name
    PostgreSQL cannot take would break statements about every workflow. The
    rule is the one ``begin_step`` applies to a step name: a plain ``str`` of
    1 to ``MAX_NAME_LENGTH`` characters, with no NUL and no lone surrogate.
    """
    if type(value) is str:
        if not value:
            return f"{role} name must be a non-empty string, got ''"
        if len(value) > MAX_NAME_LENGTH:
            return (
                f"{role} name {value[:40]!r}... is {len(value)} characters long; "
                f"the limit is {MAX_NAME_LENGTH}"
            )
        problem = text_problem(value)
        return None if problem is None else f"{role} name {value!r} {problem}"
    if isinstance(value, str):
        # A str subclass (an enum member) is refused as the step writes refuse
        # it: a name the definition accepts must be accepted everywhere.
        return f"{role} name must be a plain str, not {type(value).__name__} ({value!r})"
    return f"{role} name must be a non-empty string, got {value!r}"


def definition_problems(
    name: object,
    triggers: tuple[object, ...],
    steps: tuple[object, ...],
    transitions: tuple[object, ...],
) -> list[str]:
    """Every problem of a workflow definition, in a stable order; empty when valid."""
    return _Checker(name, triggers, steps, transitions).problems


def _is_name(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _field_problem(field: Field) -> str | None:
    """What is wrong with a well-named field's type or default, or None.

    The text follows the field's label: it starts with a space or a colon.
    """
    if not any(field.type is allowed for allowed in FIELD_TYPES):
        return f" has unknown type {field.type_name}; use one of " + ", ".join(
            t.__name__ for t in FIELD_TYPES
        )
    kind = field._default_kind
    if kind in (DEFAULT_TODAY, DEFAULT_NOW):
        if field.type is not str:
            return (
                f": default {field.default!r} produces a str, "
                f"but the field's type is {field.type_name}"
            )
    elif kind == DEFAULT_VALUE:
        # A callable's result can only be checked per run; a plain value is
        # checked now so the mistake shows at import time.
        problem = field.value_problem(field.default)
        if problem is not None:
            return f": invalid default: {problem}"
    return None


class _Checker:
    """Collect the problems of one definition, part by part."""

    def __init__(
        self,
        name: object,
        triggers: tuple[object, ...],
        steps: tuple[object, ...],
        transitions: tuple[object, ...],
    ) -> None:
        self.problems: list[str] = []
        # The well-named, unique steps (an unknown kind included), which
        # references are checked against.
        self.steps: dict[str, Step] = {}
        self._add(name_problem("workflow", name))
        self._check_triggers(triggers)
        self._check_steps(steps)
        self._check_transitions(transitions)
        # Entry and approval checks look at every transition from a known
        # step, even one already reported (a duplicate, a bad target): it
        # still shows intent, and ignoring it would add follow-on problems.
        from_known = [
            t for t in transitions if isinstance(t, Transition) and self._is_step(t.from_step)
        ]
        if any(step.after for step in self.steps.values()):
            if transitions:
                self._add(
                    "steps declare `after` dependencies and the workflow declares "
                    "transitions; a workflow uses one or the other"
                )
            self._check_dependencies()
        elif self.steps:
            self._check_entry(from_known)
            self._check_approvals(from_known)

    def _add(self, problem: str | None) -> None:
        if problem is not None:
            self.problems.append(problem)

    def _each(
        self, items: tuple[object, ...], kind: type[_Part], where: str
    ) -> Iterator[tuple[int, _Part]]:
        """Yield ``(index, item)`` for the items of class ``kind``; report the others."""
        for index, item in enumerate(items):
            if isinstance(item, kind):
                yield index, item
            else:
                self._add(f"{where}[{index}] is not a {kind.__name__}: {item!r}")

    def _is_step(self, name: object) -> bool:
        # Only a str is looked up: an unhashable reference (a list) would
        # raise TypeError from the dict instead of being reported.
        return type(name) is str and name in self.steps

    def _check_triggers(self, triggers: tuple[object, ...]) -> None:
        if not triggers:
            self._add("the workflow declares no trigger; add at least one Trigger")
        seen: set[str] = set()
        for index, trigger in self._each(triggers, Trigger, "triggers"):
            problem = name_problem("trigger", trigger.name)
            if problem is not None:
                self._add(f"triggers[{index}]: {problem}")
            elif trigger.name in seen:
                self._add(f"duplicate trigger name {trigger.name!r}")
            else:
                seen.add(trigger.name)
            named = problem is None
            label = f"trigger {trigger.name!r}"
            for setting, value in (("cron", trigger.cron), ("timezone", trigger.timezone)):
                if value is not None and not _is_name(value):
                    self._add(f"{label}: {setting} must be a non-empty string, got {value!r}")
            self._check_fields(label, trigger.payload)
            self._check_schedule(label, trigger, named=named)

    def _check_schedule(self, label: str, trigger: Trigger, *, named: bool) -> None:
        """The cron expression, the time zone, ``catch_up``, and what a cron
        trigger needs: fields it can fill alone, a name its runs' keys can hold."""
        cron, timezone, catch_up = trigger.cron, trigger.timezone, trigger.catch_up
        if isinstance(cron, str) and cron:
            problem = cron_problem(cron)
            if problem is not None:
                self._add(f"{label}: invalid cron expression {cron!r}: {problem}")
        if isinstance(timezone, str) and timezone:
            problem = timezone_problem(timezone)
            if problem is not None:
                self._add(f"{label}: invalid timezone {timezone!r}: {problem}")
        if type(catch_up) is not int or not 1 <= catch_up <= MAX_CATCH_UP:
            self._add(
                f"{label}: catch_up must be an int from 1 to {MAX_CATCH_UP}, got {catch_up!r}"
            )
        elif catch_up != 1 and cron is None:
            self._add(f"{label}: catch_up applies to a cron trigger only; this one has no cron")
        if cron is None:
            return
        if named and len(trigger.name) > MAX_CRON_TRIGGER_NAME:
            self._add(
                f"trigger {trigger.name[:40]!r}...: a cron trigger's name is at most "
                f"{MAX_CRON_TRIGGER_NAME} characters long, so that its runs' idempotency keys "
                "('cron:<trigger>:<tick>') fit in 255"
            )
        for field in trigger.payload:
            if isinstance(field, Field) and isinstance(field.name, str) and not field.is_optional:
                self._add(
                    f"{label}: field {field.name!r} is required and has no default, but a "
                    "cron trigger's runs get only the trigger's defaults as payload; give it "
                    "a default or required=False"
                )

    def _check_fields(self, label: str, fields: tuple[object, ...]) -> None:
        seen: set[str] = set()
        for _, field in self._each(fields, Field, f"{label}: payload"):
            problem = name_problem("field", field.name)
            if problem is not None:
                self._add(f"{label}: {problem}")
                continue
            if field.name in seen:
                self._add(f"{label}: duplicate field name {field.name!r}")
            seen.add(field.name)
            problem = _field_problem(field)
            if problem is not None:
                self._add(f"{label}: field {field.name!r}{problem}")

    def _check_steps(self, steps: tuple[object, ...]) -> None:
        if not steps:
            self._add("the workflow declares no steps; add at least one Step")
        for index, step in self._each(steps, Step, "steps"):
            problem = name_problem("step", step.name)
            if problem is not None:
                self._add(f"steps[{index}]: {problem}")
            elif step.name == COMPLETE:
                # Left out of the step list: as a step it could never be
                # reached (to="complete" ends the run), so it would also show
                # up as a second entry step.
                self._add(
                    f"step name {COMPLETE!r} is reserved: it is the transition target "
                    "that ends the workflow"
                )
            elif step.name in self.steps:
                self._add(f"duplicate step name {step.name!r}")
            else:
                if step.kind not in STEP_KINDS:
                    self._add(
                        f"step {step.name!r} has unknown kind {step.kind!r}; use one of "
                        + ", ".join(repr(k) for k in STEP_KINDS)
                    )
                self.steps[step.name] = step

    def _reference_problem(
        self, transition: Transition, name: object, verb: str, *, ends: bool = False
    ) -> str | None:
        """Why one end of a transition is invalid, or None.

        ``verb`` says what the transition does with the step (``"starts
        at"``); with ``ends``, the end may also be ``COMPLETE``.
        """
        problem = name_problem("step", name)
        if problem is not None:
            return f"{transition!r}: {problem}"
        if self._is_step(name) or (ends and name == COMPLETE):
            return None
        hint = f" (use {COMPLETE!r} to end the workflow)" if ends else ""
        return f"{transition!r} {verb} unknown step {name!r}{hint}"

    def _check_transitions(self, transitions: tuple[object, ...]) -> None:
        seen: set[tuple[str, str]] = set()
        for _, transition in self._each(transitions, Transition, "transitions"):
            reported = len(self.problems)
            if not _is_name(transition.on):
                self._add(f"{transition!r}: `on` must be a non-empty string, got {transition.on!r}")
            self._add(self._reference_problem(transition, transition.from_step, "starts at"))
            self._add(self._reference_problem(transition, transition.to, "leads to", ends=True))
            if len(self.problems) > reported:
                continue
            key = (transition.from_step, transition.on)
            if key in seen:
                self._add(
                    f"duplicate transition from step {transition.from_step!r} on {transition.on!r}"
                )
            seen.add(key)

    def _check_entry(self, transitions: list[Transition]) -> None:
        entries = graph.entry_steps(self.steps, (t.to for t in transitions))
        if not entries:
            self._add(
                "no entry step: a transition leads to every step, so no run could start; "
                "exactly one step must have no incoming transition"
            )
        elif len(entries) > 1:
            self._add(
                f"{len(entries)} entry steps ("
                + ", ".join(repr(e) for e in entries)
                + "): exactly one step may have no incoming transition; "
                "add transitions leading to the others"
            )

    def _check_approvals(self, transitions: list[Transition]) -> None:
        outcomes: dict[str, set[str]] = {}
        for transition in transitions:
            # `on` is never stored, so a str subclass (an enum) is fine; only
            # an unhashable `on` (already reported) is left out of the set.
            if isinstance(transition.on, str):
                outcomes.setdefault(transition.from_step, set()).add(transition.on)
        for step in self.steps.values():
            if step.kind != "approval":
                continue
            declared = outcomes.get(step.name, set())
            lacking = [on for on in ("ok", "error") if on not in declared]
            if lacking:
                self._add(
                    f"approval step {step.name!r} must declare both an 'ok' and an 'error' "
                    "transition; missing: " + ", ".join(repr(on) for on in lacking)
                )

    def _check_dependencies(self) -> None:
        for step in self.steps.values():
            seen: set[str] = set()
            for dependency in step.after:
                problem = name_problem("step", dependency)
                if problem is not None:
                    self._add(f"step {step.name!r}: `after` entry: {problem}")
                    continue
                if dependency == step.name:
                    self._add(f"step {step.name!r} lists itself in `after`")
                elif dependency not in self.steps:
                    self._add(f"step {step.name!r} runs after unknown step {dependency!r}")
                elif dependency in seen:
                    self._add(f"step {step.name!r} lists {dependency!r} in `after` more than once")
                seen.add(dependency)
        # Only edges between distinct, known steps: self-references and
        # unknown names are reported above and would only add noise.
        edges = {
            step.name: [d for d in step.after if d != step.name and self._is_step(d)]
            for step in self.steps.values()
        }
        for cycle in graph.dependency_cycles(edges):
            self._add(
                "dependency cycle: "
                + ", ".join(f"{a!r} runs after {b!r}" for a, b in pairwise(cycle))
            )
