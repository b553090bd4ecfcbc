"""The workflow registry: the definitions a store knows, and views of them
that statements send along."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from ._errors import InvalidWorkflow
from ._workflow import Workflow


class Registry:
    """Workflow definitions by name.

    The views that statements send as arrays (entry steps for replay, manual
    step kinds for step-run inserts) are computed once per change of the
    registry, not per call.
    """

    __slots__ = ("_entry_steps", "_manual_kinds", "_workflows")

    def __init__(self, workflows: Iterable[Workflow] = ()) -> None:
        self._workflows: dict[str, Workflow] = {}
        self._entry_steps: tuple[list[str], list[str | None]] = ([], [])
        self._manual_kinds: dict[str, tuple[list[str], list[str]]] = {}
        for workflow in workflows:
            self.register(workflow)

    def register(self, workflow: Workflow) -> None:
        """Add (or replace) a workflow definition, keyed by its name."""
        if not isinstance(workflow, Workflow):
            raise TypeError(f"register() takes a Workflow, not {type(workflow).__name__}")
        self._workflows[workflow.name] = workflow
        self._rebuild()

    def _rebuild(self) -> None:
        wfs = list(self._workflows.values())
        self._entry_steps = ([w.name for w in wfs], [w.entry_step for w in wfs])
        manual: dict[str, tuple[list[str], list[str]]] = {}
        for workflow in wfs:
            for declared in workflow.steps:
                if declared.kind != "step":
                    names, kinds = manual.setdefault(declared.name, ([], []))
                    names.append(workflow.name)
                    kinds.append(declared.kind)
        self._manual_kinds = manual

    @property
    def workflows(self) -> Mapping[str, Workflow]:
        """A read-only view of the definitions by name."""
        return MappingProxyType(self._workflows)

    def resolve(self, workflow: Workflow | str) -> Workflow:
        """The definition to use: a ``Workflow`` as given, or a registered name.

        Raises:
            InvalidWorkflow: no workflow of that name is registered.
        """
        if isinstance(workflow, Workflow):
            return workflow
        found = self._workflows.get(workflow) if isinstance(workflow, str) else None
        if found is None:
            raise InvalidWorkflow(workflow)
        return found

    def definition(self, name: str) -> Workflow | None:
        """The registered definition of a stored run's workflow, if any."""
        return self._workflows.get(name)

    def entry_steps(self) -> tuple[list[str], list[str | None]]:
        """(names, entry steps) of the registered workflows, for the one-statement replay."""
        return self._entry_steps

    def manual_kinds(self, step: str) -> tuple[list[str], list[str]]:
        """Registered workflows declaring ``step`` with a manual kind, and those kinds.

        Sent with a step-run insert so the kind is resolved from the run's
        workflow inside the same statement (no read of the run first).
        """
        return self._manual_kinds.get(step, ([], []))
