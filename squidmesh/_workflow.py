"""Workflow definitions: Workflow, Trigger, Field, Step, Transition.

Definitions are plain immutable objects built once at import time of the
user's code. ``Workflow(...)`` checks the whole definition and raises one
``WorkflowDefinitionError`` listing every problem, so a person fixes a broken
definition in one pass instead of one error at a time.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from itertools import pairwise
from typing import Any, Final, NoReturn

from ._codec import json_problem, text_problem
from ._errors import InvalidTrigger, WorkflowDefinitionError

__all__ = (
    "COMPLETE",
    "FIELD_TYPES",
    "MAX_NAME_LENGTH",
    "NOW_ISO8601",
    "STEP_KINDS",
    "TODAY_ISO8601",
    "Field",
    "Step",
    "Transition",
    "Trigger",
    "Workflow",
)

COMPLETE: Final = "complete"
"""The reserved transition target that ends the workflow; never a step name."""

STEP_KINDS: Final = ("step", "pause", "approval")
"""Step kinds: a plain step, and the built-in manual kinds ``pause`` and ``approval``."""

MANUAL_STEP_KINDS: Final = frozenset({"pause", "approval"})

FIELD_TYPES: Final[tuple[type, ...]] = (str, int, float, bool, dict, list)
"""The types a payload field may declare."""

MAX_NAME_LENGTH: Final = 255
"""The longest workflow, trigger, step or field name: the schema's limit on the
stored names (``runs.workflow``, ``runs.trigger``, ``step_runs.step``), which
``begin_step`` and ``current_step`` writes enforce too."""

# Exact runtime types a field accepts. Exact (not isinstance) because bool is
# an int subclass that must not pass for int, and because json_problem refuses
# subclasses such as enums anyway: better to say "expected str, got Color".
_ACCEPTED: Final[dict[type, frozenset[type]]] = {
    str: frozenset({str}),
    int: frozenset({int}),
    float: frozenset({float, int}),
    bool: frozenset({bool}),
    dict: frozenset({dict}),
    list: frozenset({list}),
}
# A bool can never hold NaN, NUL, nested junk or too many digits, so the deep
# JSON check is skipped for it on the hot path. An int can be too big to store.
_SHALLOW_TYPES: Final = frozenset({bool})


class _Sentinel:
    """A named singleton; pickles and copies as itself."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return f"squidmesh.{self._name}"

    def __reduce__(self) -> str:
        # A string tells pickle and copy to look the module global up by name,
        # which keeps identity (``default is TODAY_ISO8601``) across round trips.
        return self._name


TODAY_ISO8601: Final = _Sentinel("TODAY_ISO8601")
"""Field default: the current UTC date at run creation, as ``"YYYY-MM-DD"``."""

NOW_ISO8601: Final = _Sentinel("NOW_ISO8601")
"""Field default: the current UTC time at run creation, as
``"YYYY-MM-DDTHH:MM:SS.ffffff+00:00"`` (always microseconds, always ``+00:00``,
which is what ``datetime.isoformat`` gives and ``datetime.fromisoformat`` reads)."""

_MISSING: Final = _Sentinel("_MISSING")

# How a field's default is produced; ints so the payload hot path compares cheaply.
DEFAULT_NONE: Final = 0
DEFAULT_VALUE: Final = 1
DEFAULT_FACTORY: Final = 2
DEFAULT_TODAY: Final = 3
DEFAULT_NOW: Final = 4


class _Frozen:
    """Refuse attribute writes after ``__init__``.

    A Workflow is validated once, at construction; letting its parts change
    afterwards would bypass every check.
    """

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} objects are immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} objects are immutable")


_set = object.__setattr__


def _type_name(declared: object) -> str:
    name = getattr(declared, "__name__", None)
    return name if isinstance(name, str) else repr(declared)


class Field(_Frozen):
    """One declared payload field of a trigger.

    Args:
        name: the payload key.
        type: one of ``str``, ``int``, ``float``, ``bool``, ``dict``, ``list``.
            ``bool`` is neither an ``int`` nor a ``float``; an ``int`` is
            accepted for ``float``.
        required: whether a payload must contain the field. Irrelevant when a
            default is given: the field is then never missing.
        default: used when the field is absent: a value, a zero-argument
            callable (called at each run creation, e.g. ``default=list``), or
            ``TODAY_ISO8601`` / ``NOW_ISO8601`` (only for ``str`` fields).

    A field that is optional (``required=False`` or with a default) also
    accepts an explicit ``None``, stored as JSON null.

    Attributes:
        name, type, required, default: as given (``default`` is a private
            sentinel when none was given; check ``has_default``).
        type_name: the type's name, e.g. ``"int"``, for messages.
    """

    __slots__ = (
        "_accepts",
        "_default_kind",
        "_path",
        "_shallow",
        "default",
        "name",
        "required",
        "type",
        "type_name",
    )

    name: str
    type: builtins.type
    required: bool
    default: object
    type_name: str
    _accepts: frozenset[builtins.type]
    _default_kind: int
    _path: str
    _shallow: bool

    def __init__(
        self,
        name: str,
        type: builtins.type,
        *,
        required: bool = True,
        default: object = _MISSING,
    ) -> None:
        _set(self, "name", name)
        _set(self, "type", type)
        _set(self, "required", required)
        _set(self, "default", default)
        _set(self, "type_name", _type_name(type))
        if default is _MISSING:
            kind = DEFAULT_NONE
        elif default is TODAY_ISO8601:
            kind = DEFAULT_TODAY
        elif default is NOW_ISO8601:
            kind = DEFAULT_NOW
        elif callable(default):
            kind = DEFAULT_FACTORY
        else:
            kind = DEFAULT_VALUE
        _set(self, "_default_kind", kind)
        try:
            accepts = _ACCEPTED.get(type, frozenset())
        except TypeError:  # an unhashable "type"; Workflow reports it
            accepts = frozenset()
        if kind != DEFAULT_NONE or not required:
            accepts = accepts | {builtins.type(None)}
        _set(self, "_accepts", accepts)
        try:
            shallow = type in _SHALLOW_TYPES
        except TypeError:
            shallow = False
        _set(self, "_shallow", shallow)
        # Precomputed so that validating a payload does not build strings.
        _set(self, "_path", f"$.{name}")

    @property
    def has_default(self) -> bool:
        """Whether a default fills the field when it is absent."""
        return self._default_kind != DEFAULT_NONE

    @property
    def is_optional(self) -> bool:
        """Whether a payload may leave the field out (not required, or defaulted)."""
        return not self.required or self._default_kind != DEFAULT_NONE

    def value_problem(self, value: object) -> str | None:
        """Say why ``value`` does not fit this field, or return None.

        Args:
            value: a candidate payload value.

        Returns:
            ``"expected int, got str"`` for a wrong type, a ``json_problem``
            description for a value that cannot be stored, or None.
        """
        if builtins.type(value) not in self._accepts:
            return f"expected {self.type_name}, got {_value_type_name(value)}"
        if self._shallow:
            return None
        return json_problem(value, self._path)

    def __repr__(self) -> str:
        parts = [repr(self.name), self.type_name]
        if not self.required:
            parts.append("required=False")
        if self._default_kind != DEFAULT_NONE:
            parts.append(f"default={self.default!r}")
        return f"Field({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Field):
            return NotImplemented
        return (
            self.name == other.name
            and self.type is other.type
            and self.required == other.required
            and _same_default(self.default, other.default)
        )

    def __hash__(self) -> int:
        # The default is left out: it may be unhashable (a dict), and equal
        # fields still hash equal without it.
        return hash((Field, self.name, self.type_name, self.required))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_field, (self.name, self.type, self.required, self.default))


def _rebuild_field(name: str, type_: builtins.type, required: bool, default: object) -> Field:
    return Field(name, type_, required=required, default=default)


def _same_default(a: object, b: object) -> bool:
    if a is b:
        return True
    if isinstance(a, _Sentinel) or isinstance(b, _Sentinel) or callable(a) or callable(b):
        return False
    try:
        return builtins.type(a) is builtins.type(b) and bool(a == b)
    except Exception:  # an exotic __eq__; unequal is the safe answer
        return False


def _value_type_name(value: object) -> str:
    return "None" if value is None else builtins.type(value).__name__


class Trigger(_Frozen):
    """A way to start a run, with the payload fields it accepts.

    A trigger without fields accepts only ``{}``.

    Args:
        name: the trigger's stable name, stored on each run.
        payload: the declared fields.
        cron: a cron schedule for a scheduler to fire this trigger, if any.
        timezone: the time zone the cron schedule is read in (e.g. ``"Etc/UTC"``).

    Attributes:
        name, payload (a tuple), cron, timezone: as given.
    """

    __slots__ = ("_by_name", "_fields", "cron", "name", "payload", "timezone")

    name: str
    payload: tuple[Field, ...]
    cron: str | None
    timezone: str | None
    _by_name: dict[str, Field]
    _fields: tuple[Field, ...]

    def __init__(
        self,
        name: str,
        payload: Sequence[Field] = (),
        *,
        cron: str | None = None,
        timezone: str | None = None,
    ) -> None:
        fields = tuple(payload)
        _set(self, "name", name)
        _set(self, "payload", fields)
        _set(self, "cron", cron)
        _set(self, "timezone", timezone)
        by_name: dict[str, Field] = {}
        for field in fields:
            # First declaration wins; Workflow reports duplicates and non-fields.
            if isinstance(field, Field) and isinstance(field.name, str):
                by_name.setdefault(field.name, field)
        _set(self, "_by_name", by_name)
        _set(self, "_fields", tuple(by_name.values()))

    def field(self, name: str) -> Field | None:
        """Return the declared field called ``name``, or None."""
        return self._by_name.get(name)

    def __repr__(self) -> str:
        parts = [repr(self.name)]
        if self.payload:
            parts.append(f"payload={list(self.payload)!r}")
        if self.cron is not None:
            parts.append(f"cron={self.cron!r}")
        if self.timezone is not None:
            parts.append(f"timezone={self.timezone!r}")
        return f"Trigger({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trigger):
            return NotImplemented
        return (
            self.name == other.name
            and self.payload == other.payload
            and self.cron == other.cron
            and self.timezone == other.timezone
        )

    def __hash__(self) -> int:
        return hash((Trigger, self.name, self.cron, self.timezone))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_trigger, (self.name, self.payload, self.cron, self.timezone))


def _rebuild_trigger(
    name: str, payload: tuple[Field, ...], cron: str | None, timezone: str | None
) -> Trigger:
    return Trigger(name, payload, cron=cron, timezone=timezone)


class Step(_Frozen):
    """One step of a workflow.

    Args:
        name: the step's stable name.
        kind: ``"step"`` (plain), or a manual kind: ``"pause"`` or ``"approval"``.
        after: names of the steps this one depends on. Any step with ``after``
            makes the workflow dependency-based.

    Raises:
        TypeError: ``after`` is a single string (a common slip for ``[name]``).
    """

    __slots__ = ("after", "kind", "name")

    name: str
    kind: str
    after: tuple[str, ...]

    def __init__(self, name: str, *, kind: str = "step", after: Sequence[str] = ()) -> None:
        if isinstance(after, str):
            # tuple("load") would silently mean after=("l", "o", "a", "d").
            raise TypeError(f"Step {name!r}: after must be a list of step names, not a str")
        _set(self, "name", name)
        _set(self, "kind", kind)
        _set(self, "after", tuple(after))

    @property
    def is_manual(self) -> bool:
        """Whether the step waits for a person (``pause`` or ``approval``)."""
        return self.kind in MANUAL_STEP_KINDS

    def __repr__(self) -> str:
        parts = [repr(self.name)]
        if self.kind != "step":
            parts.append(f"kind={self.kind!r}")
        if self.after:
            parts.append(f"after={list(self.after)!r}")
        return f"Step({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Step):
            return NotImplemented
        return self.name == other.name and self.kind == other.kind and self.after == other.after

    def __hash__(self) -> int:
        return hash((Step, self.name, self.kind, self.after))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_step, (self.name, self.kind, self.after))


def _rebuild_step(name: str, kind: str, after: tuple[str, ...]) -> Step:
    return Step(name, kind=kind, after=after)


class Transition(_Frozen):
    """An edge of a transition-based workflow: when ``from_step`` ends with
    outcome ``on``, continue at ``to`` (a step name, or ``COMPLETE``).

    Args:
        from_step: the source step's name.
        on: the outcome, e.g. ``"ok"`` or ``"error"``.
        to: the next step's name, or ``"complete"`` to end the workflow.
    """

    __slots__ = ("from_step", "on", "to")

    from_step: str
    on: str
    to: str

    def __init__(self, from_step: str, *, on: str, to: str) -> None:
        _set(self, "from_step", from_step)
        _set(self, "on", on)
        _set(self, "to", to)

    def __repr__(self) -> str:
        return f"Transition({self.from_step!r}, on={self.on!r}, to={self.to!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Transition):
            return NotImplemented
        return (self.from_step, self.on, self.to) == (other.from_step, other.on, other.to)

    def __hash__(self) -> int:
        return hash((Transition, self.from_step, self.on, self.to))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_transition, (self.from_step, self.on, self.to))


def _rebuild_transition(from_step: str, on: str, to: str) -> Transition:
    return Transition(from_step, on=on, to=to)


class Workflow(_Frozen):
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

    __slots__ = (
        "_entry_step",
        "_layout",
        "_steps_by_name",
        "_triggers_by_name",
        "name",
        "steps",
        "transitions",
        "triggers",
    )

    name: str
    triggers: tuple[Trigger, ...]
    steps: tuple[Step, ...]
    transitions: tuple[Transition, ...]
    _entry_step: str | None
    _layout: tuple[tuple[str, tuple[str, ...]], ...]
    _steps_by_name: dict[str, Step]
    _triggers_by_name: dict[str, Trigger]

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
        checker = _Checker(name, triggers_t, steps_t, transitions_t)
        if checker.problems:
            raise WorkflowDefinitionError(checker.problems)
        _set(self, "name", name)
        _set(self, "triggers", triggers_t)
        _set(self, "steps", steps_t)
        _set(self, "transitions", transitions_t)
        _set(self, "_triggers_by_name", {t.name: t for t in triggers_t})
        _set(self, "_steps_by_name", {s.name: s for s in steps_t})
        _set(self, "_entry_step", checker.entry_step)
        _set(self, "_layout", checker.layout())

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

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Workflow):
            return NotImplemented
        return (
            self.name == other.name
            and self.triggers == other.triggers
            and self.steps == other.steps
            and self.transitions == other.transitions
        )

    def __hash__(self) -> int:
        return hash((Workflow, self.name))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_workflow, (self.name, self.triggers, self.steps, self.transitions))


def _rebuild_workflow(
    name: str,
    triggers: tuple[Trigger, ...],
    steps: tuple[Step, ...],
    transitions: tuple[Transition, ...],
) -> Workflow:
    return Workflow(name, triggers=triggers, steps=steps, transitions=transitions)


def _is_name(value: object) -> bool:
    return isinstance(value, str) and value != ""


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


class _Checker:
    """Collect every problem of a definition; also derive entry step and layout."""

    def __init__(
        self,
        name: object,
        triggers: tuple[object, ...],
        steps: tuple[object, ...],
        transitions: tuple[object, ...],
    ) -> None:
        self.problems: list[str] = []
        self.entry_step: str | None = None
        self.steps: list[Step] = []
        problem = name_problem("workflow", name)
        if problem is not None:
            self.problems.append(problem)
        self._check_triggers(triggers)
        self._check_steps(steps)
        self._check_transitions(transitions)
        # Entry and approval checks look at every transition from a known
        # step, even one already reported (a duplicate, a bad target): it
        # still shows intent, and ignoring it would add follow-on problems.
        from_known = [
            t for t in transitions if isinstance(t, Transition) and self._is_step(t.from_step)
        ]
        self.dependency_based = any(step.after for step in self.steps)
        if self.dependency_based:
            if transitions:
                self.problems.append(
                    "steps declare `after` dependencies and the workflow declares "
                    "transitions; a workflow uses one or the other"
                )
            self._check_dependencies()
        elif self.steps:
            self._check_entry(from_known)
            self._check_approvals(from_known)

    def _check_triggers(self, triggers: tuple[object, ...]) -> None:
        if not triggers:
            self.problems.append("the workflow declares no trigger; add at least one Trigger")
        seen: set[str] = set()
        for index, trigger in enumerate(triggers):
            if not isinstance(trigger, Trigger):
                self.problems.append(f"triggers[{index}] is not a Trigger: {trigger!r}")
                continue
            problem = name_problem("trigger", trigger.name)
            if problem is not None:
                self.problems.append(f"triggers[{index}]: {problem}")
            elif trigger.name in seen:
                self.problems.append(f"duplicate trigger name {trigger.name!r}")
            else:
                seen.add(trigger.name)
            label = f"trigger {trigger.name!r}"
            if trigger.cron is not None and not _is_name(trigger.cron):
                self.problems.append(
                    f"{label}: cron must be a non-empty string, got {trigger.cron!r}"
                )
            if trigger.timezone is not None and not _is_name(trigger.timezone):
                self.problems.append(
                    f"{label}: timezone must be a non-empty string, got {trigger.timezone!r}"
                )
            self._check_fields(label, trigger.payload)

    def _check_fields(self, label: str, fields: tuple[object, ...]) -> None:
        seen: set[str] = set()
        for index, field in enumerate(fields):
            if not isinstance(field, Field):
                self.problems.append(f"{label}: payload[{index}] is not a Field: {field!r}")
                continue
            problem = name_problem("field", field.name)
            if problem is not None:
                self.problems.append(f"{label}: {problem}")
                continue
            where = f"{label}: field {field.name!r}"
            if field.name in seen:
                self.problems.append(f"{label}: duplicate field name {field.name!r}")
            seen.add(field.name)
            if not any(field.type is allowed for allowed in FIELD_TYPES):
                self.problems.append(
                    f"{where} has unknown type {field.type_name}; use one of "
                    + ", ".join(t.__name__ for t in FIELD_TYPES)
                )
                continue
            kind = field._default_kind
            if kind in (DEFAULT_TODAY, DEFAULT_NOW):
                if field.type is not str:
                    self.problems.append(
                        f"{where}: default {field.default!r} produces a str, "
                        f"but the field's type is {field.type_name}"
                    )
            elif kind == DEFAULT_VALUE:
                # A callable's result can only be checked per run; a plain
                # value is checked now so the mistake shows at import time.
                problem = field.value_problem(field.default)
                if problem is not None:
                    self.problems.append(f"{where}: invalid default: {problem}")

    def _check_steps(self, steps: tuple[object, ...]) -> None:
        if not steps:
            self.problems.append("the workflow declares no steps; add at least one Step")
        seen: set[str] = set()
        for index, step in enumerate(steps):
            if not isinstance(step, Step):
                self.problems.append(f"steps[{index}] is not a Step: {step!r}")
                continue
            problem = name_problem("step", step.name)
            if problem is not None:
                self.problems.append(f"steps[{index}]: {problem}")
                continue
            if step.name == COMPLETE:
                # Left out of the step list: as a step it could never be
                # reached (to="complete" ends the run), so it would also show
                # up as a second entry step.
                self.problems.append(
                    f"step name {COMPLETE!r} is reserved: it is the transition target "
                    "that ends the workflow"
                )
                continue
            if step.name in seen:
                self.problems.append(f"duplicate step name {step.name!r}")
                continue
            seen.add(step.name)
            if step.kind not in STEP_KINDS:
                self.problems.append(
                    f"step {step.name!r} has unknown kind {step.kind!r}; use one of "
                    + ", ".join(repr(k) for k in STEP_KINDS)
                )
            self.steps.append(step)
        self.step_names = {step.name for step in self.steps}

    def _is_step(self, name: object) -> bool:
        # Only a str is looked up: an unhashable reference (a list) would
        # raise TypeError from the set instead of being reported.
        return type(name) is str and name in self.step_names

    def _reference_problem(self, name: object) -> str | None:
        """Why a step reference (a transition end, an ``after`` entry) is invalid, or None."""
        if type(name) is str and name == COMPLETE:
            return None
        return name_problem("step", name)

    def _check_transitions(self, transitions: tuple[object, ...]) -> None:
        seen: set[tuple[str, str]] = set()
        for index, transition in enumerate(transitions):
            if not isinstance(transition, Transition):
                self.problems.append(f"transitions[{index}] is not a Transition: {transition!r}")
                continue
            ok = True
            if not _is_name(transition.on):
                self.problems.append(
                    f"{transition!r}: `on` must be a non-empty string, got {transition.on!r}"
                )
                ok = False
            from_problem = self._reference_problem(transition.from_step)
            if from_problem is not None:
                self.problems.append(f"{transition!r}: {from_problem}")
                ok = False
            elif not self._is_step(transition.from_step):
                self.problems.append(
                    f"{transition!r} starts at unknown step {transition.from_step!r}"
                )
                ok = False
            to_problem = self._reference_problem(transition.to)
            if to_problem is not None:
                self.problems.append(f"{transition!r}: {to_problem}")
                ok = False
            elif transition.to != COMPLETE and not self._is_step(transition.to):
                self.problems.append(
                    f"{transition!r} leads to unknown step {transition.to!r} "
                    f"(use {COMPLETE!r} to end the workflow)"
                )
                ok = False
            if not ok:
                continue
            key = (transition.from_step, transition.on)
            if key in seen:
                self.problems.append(
                    f"duplicate transition from step {transition.from_step!r} on {transition.on!r}"
                )
                continue
            seen.add(key)

    def _check_entry(self, transitions: list[Transition]) -> None:
        targets = {t.to for t in transitions if type(t.to) is str}
        entries = [step.name for step in self.steps if step.name not in targets]
        if len(entries) == 1:
            self.entry_step = entries[0]
        elif not entries:
            self.problems.append(
                "no entry step: a transition leads to every step, so no run could start; "
                "exactly one step must have no incoming transition"
            )
        else:
            self.problems.append(
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
        for step in self.steps:
            if step.kind != "approval":
                continue
            declared = outcomes.get(step.name, set())
            lacking = [on for on in ("ok", "error") if on not in declared]
            if lacking:
                self.problems.append(
                    f"approval step {step.name!r} must declare both an 'ok' and an 'error' "
                    "transition; missing: " + ", ".join(repr(on) for on in lacking)
                )

    def _check_dependencies(self) -> None:
        for step in self.steps:
            seen: set[str] = set()
            for dependency in step.after:
                problem = name_problem("step", dependency)
                if problem is not None:
                    self.problems.append(f"step {step.name!r}: `after` entry: {problem}")
                    continue
                if dependency == step.name:
                    self.problems.append(f"step {step.name!r} lists itself in `after`")
                elif dependency not in self.step_names:
                    self.problems.append(
                        f"step {step.name!r} runs after unknown step {dependency!r}"
                    )
                elif dependency in seen:
                    self.problems.append(
                        f"step {step.name!r} lists {dependency!r} in `after` more than once"
                    )
                seen.add(dependency)
        for cycle in self._cycles():
            self.problems.append(
                "dependency cycle: "
                + ", ".join(f"{a!r} runs after {b!r}" for a, b in pairwise(cycle))
            )

    def _edges(self) -> dict[str, list[str]]:
        # Only edges between distinct, known steps: self-references and
        # unknown names are reported on their own and would only add noise.
        return {
            step.name: [d for d in step.after if d != step.name and self._is_step(d)]
            for step in self.steps
        }

    def _cycles(self) -> list[list[str]]:
        """Find one concrete cycle per strongly connected group of steps.

        Returns:
            Each cycle as ``[a, b, ..., a]`` where each step runs after the next.
        """
        order = [step.name for step in self.steps]
        edges = self._edges()
        components = _strongly_connected(order, edges)
        cycles: list[list[str]] = []
        for component in components:
            if len(component) < 2:
                continue
            members = set(component)
            start = min(component, key=order.index)
            cycles.append(_cycle_through(start, members, edges))
        cycles.sort(key=lambda cycle: order.index(cycle[0]))
        return cycles

    def layout(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        if not self.dependency_based:
            return tuple((step.name, ()) for step in self.steps)
        edges = self._edges()
        phase: dict[str, int] = {}
        # Only called on an acyclic definition, so each sweep assigns at least
        # one step; a loop rather than recursion keeps long chains safe.
        while len(phase) < len(edges):
            for name, after in edges.items():
                if name not in phase and all(d in phase for d in after):
                    phase[name] = 1 + max((phase[d] for d in after), default=-1)
        indexed = sorted(enumerate(self.steps), key=lambda item: (phase[item[1].name], item[0]))
        return tuple((step.name, step.after) for _, step in indexed)


def _strongly_connected(order: list[str], edges: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative so that long dependency chains cannot
    hit the recursion limit."""
    index_of: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in order:
        if root in index_of:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index_of[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = edges[node]
            if child < len(targets):
                work.append((node, child + 1))
                target = targets[child]
                if target not in index_of:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index_of[target])
                continue
            if low[node] == index_of[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return components


def _cycle_through(start: str, members: set[str], edges: dict[str, list[str]]) -> list[str]:
    """Return a path ``[start, ..., start]`` inside one strongly connected group."""
    path = [start]
    visited = {start}
    iterators = [iter(edges[start])]
    while iterators:
        for target in iterators[-1]:
            if target == start:
                return [*path, start]
            if target in members and target not in visited:
                visited.add(target)
                path.append(target)
                iterators.append(iter(edges[target]))
                break
        else:
            iterators.pop()
            path.pop()
    # Unreachable for a component of two or more steps, which always has a cycle.
    return [start, start]
