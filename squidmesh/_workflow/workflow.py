"""The Workflow definition: checked whole at construction, then read-only."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass

from .._errors import InvalidTrigger, WorkflowDefinitionError
from . import graph
from .checks import definition_problems
from .definitions import Definition, Step, Transition, Trigger

__all__ = ("Workflow",)

_set = object.__setattr__


@dataclass(frozen=True, slots=True, repr=False)
class Workflow(Definition):
    """A named workflow: how runs start (triggers) and what they do (steps).

    A workflow is *transition-based* when no step declares ``after``: runs
    move along ``transitions``, starting at the entry step (the one step no
    transition leads to). It is *dependency-based* when its steps declare
    ``after``: a step runs once all the steps it names have completed.

    Args:
        name: the workflow's stable name, stored on each run.
        triggers: at least one; the first is the default trigger.
        steps: at least one.
        transitions: the edges of a transition-based workflow.

    Raises:
        WorkflowDefinitionError: the definition is invalid; ``problems``
            lists every problem found.
    """

    name: str
    _: KW_ONLY
    # Equal workflows have equal names, so the name alone is a good hash
    # and the parts need not be hashed.
    triggers: tuple[Trigger, ...] = dataclasses.field(hash=False)
    steps: tuple[Step, ...] = dataclasses.field(hash=False)
    transitions: tuple[Transition, ...] = dataclasses.field(default=(), hash=False)
    _triggers_by_name: dict[str, Trigger] = dataclasses.field(init=False, compare=False)
    _steps_by_name: dict[str, Step] = dataclasses.field(init=False, compare=False)
    _entry_step: str | None = dataclasses.field(init=False, compare=False)
    _layout: tuple[tuple[str, tuple[str, ...]], ...] = dataclasses.field(init=False, compare=False)

    def __init__(
        self,
        name: str,
        *,
        triggers: Sequence[Trigger],
        steps: Sequence[Step],
        transitions: Sequence[Transition] = (),
    ) -> None:
        triggers_t = tuple(triggers)
        steps_t = tuple(steps)
        transitions_t = tuple(transitions)
        problems = definition_problems(name, triggers_t, steps_t, transitions_t)
        if problems:
            raise WorkflowDefinitionError(problems)
        dependencies = {step.name: step.after for step in steps_t}
        if any(dependencies.values()):
            entry_step = None
        else:
            # The checks made sure there is exactly one.
            (entry_step,) = graph.entry_steps(dependencies, (t.to for t in transitions_t))
        _set(self, "name", name)
        _set(self, "triggers", triggers_t)
        _set(self, "steps", steps_t)
        _set(self, "transitions", transitions_t)
        _set(self, "_triggers_by_name", {t.name: t for t in triggers_t})
        _set(self, "_steps_by_name", {s.name: s for s in steps_t})
        _set(self, "_entry_step", entry_step)
        _set(self, "_layout", graph.step_layout(dependencies))

    @property
    def default_trigger(self) -> Trigger:
        """The first declared trigger."""
        return self.triggers[0]

    @property
    def is_dependency_based(self) -> bool:
        """Whether steps declare ``after`` dependencies (rather than transitions)."""
        return self._entry_step is None

    @property
    def entry_step(self) -> str | None:
        """A new run's ``current_step``: the one step no transition leads to,
        or None for a dependency-based workflow."""
        return self._entry_step

    def trigger(self, name: str | None = None) -> Trigger:
        """Resolve a trigger by name.

        Args:
            name: a declared trigger name, or None for the default trigger.

        Raises:
            InvalidTrigger: the workflow declares no trigger called ``name``.
        """
        if name is None:
            return self.triggers[0]
        try:
            return self._triggers_by_name[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name
            raise InvalidTrigger(name, self.name) from None

    def step(self, name: str) -> Step | None:
        """Return the declared step called ``name``, or None."""
        return self._steps_by_name.get(name)

    def step_layout(self) -> list[tuple[str, list[str]]]:
        """List ``(step name, depends_on)`` in the order run history shows steps.

        A transition-based workflow lists its steps in declaration order with
        no dependencies. A dependency-based workflow lists them by dependency
        phase (a step's phase is 0 without ``after``, else one more than the
        highest phase it depends on), then declaration order; ``depends_on``
        is the step's ``after`` list.

        Returns:
            A new list on each call; the caller may change it.
        """
        return [(step, list(depends_on)) for step, depends_on in self._layout]

    def __repr__(self) -> str:
        # The full definition is long; name and shape identify it in logs.
        return (
            f"<Workflow {self.name!r}: {len(self.triggers)} trigger(s), "
            f"{len(self.steps)} step(s), {len(self.transitions)} transition(s)>"
        )
