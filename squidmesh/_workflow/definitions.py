"""The parts of a workflow definition: Field, Trigger, Step, Transition.

Each is a frozen dataclass: equality, hashing and immutability come from
``dataclasses``. They are dataclasses rather than msgspec Structs because they
hold Python types and callables (``Field("n", int, default=list)``), which no
JSON schema or decoder can describe, while every public Struct is expected to
build both (tests/unit/test_introspection.py).
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar, Final

from .._codec import json_problem

__all__ = (
    "COMPLETE",
    "DEFAULT_FACTORY",
    "DEFAULT_NONE",
    "DEFAULT_NOW",
    "DEFAULT_TODAY",
    "DEFAULT_VALUE",
    "FIELD_TYPES",
    "MANUAL_STEP_KINDS",
    "NOW_ISO8601",
    "STEP_KINDS",
    "TODAY_ISO8601",
    "Definition",
    "Field",
    "Step",
    "Transition",
    "Trigger",
)

COMPLETE: Final = "complete"
"""The reserved transition target that ends the workflow; never a step name."""

STEP_KINDS: Final = ("step", "pause", "approval")
"""Step kinds: a plain step, and the built-in manual kinds ``pause`` and ``approval``."""

MANUAL_STEP_KINDS: Final = frozenset({"pause", "approval"})

FIELD_TYPES: Final[tuple[type, ...]] = (str, int, float, bool, dict, list)
"""The types a payload field may declare."""

# Exact runtime types a field accepts. Exact (not isinstance) because bool is
# an int subclass that must not pass for int, and because json_problem refuses
# subclasses such as enums anyway: better to say "expected str, got Color".
# The types whose JSON never holds a float.
_FLOATLESS: Final = frozenset({str, int, bool, type(None)})
_ACCEPTED: Final[dict[type, frozenset[type]]] = {
    str: frozenset({str}),
    int: frozenset({int}),
    float: frozenset({float, int}),
    bool: frozenset({bool}),
    dict: frozenset({dict}),
    list: frozenset({list}),
}


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

_set = object.__setattr__


def _same_value(a: object, b: object) -> bool:
    """Whether two defaults (or other argument values) produce the same thing.

    Sentinels and callables are the same only when identical; other values
    when they have the same type and compare equal, so ``1``, ``1.0`` and
    ``True`` stay distinct (they are stored as different JSON).
    """
    if a is b:
        return True
    if isinstance(a, _Sentinel) or isinstance(b, _Sentinel) or callable(a) or callable(b):
        return False
    try:
        return builtins.type(a) is builtins.type(b) and bool(a == b)
    except Exception:  # an exotic __eq__; unequal is the safe answer
        return False


class _SameValue:
    """Wraps a field's default so that dataclass equality uses ``_same_value``."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SameValue) and _same_value(self.value, other.value)

    # Field's hash leaves the default out (it may be a dict), so this is
    # never hashed.
    __hash__ = None  # type: ignore[assignment]


class Definition:
    """Base of the definition classes (frozen dataclasses).

    The repr is the constructor call that builds an equal object, and pickling
    and copying replay that call. A definition is therefore rebuilt (and a
    Workflow checked again) instead of restored attribute by attribute, and
    what a constructor derives is never stored.

    An argument without a default is shown positionally unless it is
    keyword-only; one with a default is shown by keyword, and left out while
    it has its default value.
    """

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def _arguments(self) -> tuple[list[object], dict[str, object]]:
        args: list[object] = []
        kwargs: dict[str, object] = {}
        for spec in dataclasses.fields(self):
            if not spec.init:
                continue
            value = getattr(self, spec.name)
            if spec.default is dataclasses.MISSING and not spec.kw_only:
                args.append(value)
            elif not _same_value(value, spec.default):
                kwargs[spec.name] = value
        return args, kwargs

    def __repr__(self) -> str:
        args, kwargs = self._arguments()
        shown = [_show(value) for value in args]
        shown += [f"{name}={_show(value)}" for name, value in kwargs.items()]
        return f"{type(self).__name__}({', '.join(shown)})"

    def __reduce__(self) -> tuple[Any, ...]:
        args, kwargs = self._arguments()
        return (_construct, (type(self), tuple(args), kwargs))


def _construct(cls: type[Definition], args: tuple[object, ...], kwargs: dict[str, Any]) -> Any:
    return cls(*args, **kwargs)


def _show(value: object) -> str:
    # A type reads as its name (``int``), and a stored tuple as the list the
    # constructor is usually given (``after=['a']``).
    if isinstance(value, type):
        return value.__name__
    if type(value) is tuple:
        return repr(list(value))
    return repr(value)


def _type_name(declared: object) -> str:
    """The name of a declared field type, for messages (``"int"``)."""
    name = getattr(declared, "__name__", None)
    return name if isinstance(name, str) else repr(declared)


def _default_kind(default: object) -> int:
    if default is _MISSING:
        return DEFAULT_NONE
    if default is TODAY_ISO8601:
        return DEFAULT_TODAY
    if default is NOW_ISO8601:
        return DEFAULT_NOW
    return DEFAULT_FACTORY if callable(default) else DEFAULT_VALUE


@dataclass(frozen=True, slots=True, repr=False)
class Field(Definition):
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

    name: str
    # Hashed through type_name: a "type" that is not hashable (reported by
    # Workflow) must not make the field unhashable.
    type: builtins.type = dataclasses.field(hash=False)
    _: KW_ONLY
    required: bool = True
    # Compared through _default instead, so that 1, 1.0 and True differ.
    default: object = dataclasses.field(default=_MISSING, compare=False)
    # Derived in __post_init__, so that validating a payload reads attributes
    # and builds no strings.
    type_name: str = dataclasses.field(init=False, compare=False, hash=True)
    _default: _SameValue = dataclasses.field(init=False, hash=False)
    _default_kind: int = dataclasses.field(init=False, compare=False)
    _accepts: frozenset[builtins.type] = dataclasses.field(init=False, compare=False)
    _path: str = dataclasses.field(init=False, compare=False)
    _shallow: bool = dataclasses.field(init=False, compare=False)
    _takes_str: bool = dataclasses.field(init=False, compare=False)

    def __post_init__(self) -> None:
        kind = _default_kind(self.default)
        accepts = next(
            (accepted for declared, accepted in _ACCEPTED.items() if declared is self.type),
            frozenset(),
        )
        if kind != DEFAULT_NONE or not self.required:
            accepts = accepts | {builtins.type(None)}
        _set(self, "type_name", _type_name(self.type))
        _set(self, "_default", _SameValue(self.default))
        _set(self, "_default_kind", kind)
        _set(self, "_accepts", accepts)
        _set(self, "_path", f"$.{self.name}")
        # A bool can never hold NaN, NUL, nested junk or too many digits, so
        # the deep JSON check is skipped for it on the hot path. An int can be
        # too big to store.
        _set(self, "_shallow", self.type is bool)
        _set(self, "_takes_str", str in accepts)

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
            got = "None" if value is None else builtins.type(value).__name__
            return f"expected {self.type_name}, got {got}"
        if self._shallow:
            return None
        return json_problem(value, self._path)


@dataclass(frozen=True, slots=True, repr=False)
class Trigger(Definition):
    """A way to start a run, with the payload fields it accepts.

    A trigger without fields accepts only ``{}``.

    Args:
        name: the trigger's stable name, stored on each run.
        payload: the declared fields.
        cron: a cron schedule (five fields, ``"0 9 * * 1-5"``, or a nickname
            such as ``"@daily"``) on which ``RunStore.fire_due_triggers`` and
            the scheduler create runs through this trigger, with its
            defaults as payload. Every field of a cron trigger needs a
            default or ``required=False``.
        timezone: the IANA time zone the cron schedule is read in (e.g.
            ``"Europe/Berlin"``); UTC when None.
        catch_up: how many of the ticks missed while no scheduler ran fire
            when one runs again, the most recent ones (oldest of them first):
            from 1 (the default: only the latest) to 1000. Only for a cron
            trigger.

    Attributes:
        name, payload (a tuple), cron, timezone, catch_up: as given.
    """

    name: str
    # Left out of the hash: a payload that is not a sequence of Fields
    # (reported by Workflow) may hold unhashable things.
    payload: tuple[Field, ...] = dataclasses.field(default=(), hash=False)
    _: KW_ONLY
    cron: str | None = None
    timezone: str | None = None
    # Left out of the hash, as payload: a wrong value (reported by Workflow)
    # may be unhashable.
    catch_up: int = dataclasses.field(default=1, hash=False)
    _by_name: dict[str, Field] = dataclasses.field(init=False, compare=False)
    _fields: tuple[Field, ...] = dataclasses.field(init=False, compare=False)
    # No field takes a float, a dict or a list, so no valid payload of this
    # trigger holds a float: its encoding needs no look for exponent forms.
    _no_floats: bool = dataclasses.field(init=False, compare=False)

    def __init__(
        self,
        name: str,
        payload: Sequence[Field] = (),
        *,
        cron: str | None = None,
        timezone: str | None = None,
        catch_up: int = 1,
    ) -> None:
        fields = tuple(payload)
        by_name: dict[str, Field] = {}
        for field in fields:
            # First declaration wins; Workflow reports duplicates and non-fields.
            if isinstance(field, Field) and isinstance(field.name, str):
                by_name.setdefault(field.name, field)
        _set(self, "name", name)
        _set(self, "payload", fields)
        _set(self, "cron", cron)
        _set(self, "timezone", timezone)
        _set(self, "catch_up", catch_up)
        _set(self, "_by_name", by_name)
        _set(self, "_fields", tuple(by_name.values()))
        _set(self, "_no_floats", all(f._accepts <= _FLOATLESS for f in by_name.values()))

    def field(self, name: str) -> Field | None:
        """Return the declared field called ``name``, or None."""
        return self._by_name.get(name)


@dataclass(frozen=True, slots=True, repr=False)
class Step(Definition):
    """One step of a workflow.

    Args:
        name: the step's stable name.
        kind: ``"step"`` (plain), or a manual kind: ``"pause"`` or ``"approval"``.
        after: names of the steps this one depends on. Any step with ``after``
            makes the workflow dependency-based.

    Raises:
        TypeError: ``after`` is a single string (a common slip for ``[name]``).
    """

    name: str
    _: KW_ONLY
    kind: str = "step"
    after: tuple[str, ...] = ()

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


@dataclass(frozen=True, slots=True, repr=False)
class Transition(Definition):
    """An edge of a transition-based workflow: when ``from_step`` ends with
    outcome ``on``, continue at ``to`` (a step name, or ``COMPLETE``).

    Args:
        from_step: the source step's name.
        on: the outcome, e.g. ``"ok"`` or ``"error"``.
        to: the next step's name, or ``"complete"`` to end the workflow.
    """

    from_step: str
    _: KW_ONLY
    on: str
    to: str
