"""Payload defaults and validation for run creation.

Every problem is collected and reported in one ``InvalidPayload``, so a caller
sees all missing, unknown and mistyped fields at once.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from ._errors import InvalidPayload
from ._workflow import (
    DEFAULT_FACTORY,
    DEFAULT_NONE,
    DEFAULT_NOW,
    DEFAULT_TODAY,
    DEFAULT_VALUE,
    Trigger,
)

__all__ = ("build_payload",)

_ABSENT: Any = object()
# Value defaults of these types are copied per run so that runs never share
# (and a caller never mutates) the definition's own container.
_MUTABLE = (dict, list)


def build_payload(
    trigger: Trigger, payload: object, *, now: datetime | None = None
) -> dict[str, Any]:
    """Apply the trigger's defaults to ``payload`` and validate the result.

    Args:
        trigger: the resolved trigger whose fields the payload must match.
        payload: what the caller passed; must be a dict.
        now: the creation time for ``TODAY_ISO8601`` / ``NOW_ISO8601``
            defaults; the current time when None. A naive datetime is taken
            to be UTC; an aware one is converted to UTC.

    Returns:
        A new dict in field declaration order: the given values (not copied)
        plus defaults for absent fields. The input is never changed.

    Raises:
        InvalidPayload: ``payload`` is not a dict (``expected_map``), or it
            has missing required fields, unknown fields, or values of the
            wrong type or not storable as JSON (all reported together).
    """
    if not isinstance(payload, dict):
        raise InvalidPayload(expected_map=True)
    result: dict[str, Any] = {}
    missing: list[str] | None = None
    invalid: dict[str, str] | None = None
    stamp: datetime | None = None
    present = 0
    for field in trigger._fields:
        name = field.name
        value = payload.get(name, _ABSENT)
        if value is not _ABSENT:
            present += 1
        else:
            kind = field._default_kind
            if kind == DEFAULT_NONE:
                if field.required:
                    if missing is None:
                        missing = []
                    missing.append(name)
                continue
            if kind == DEFAULT_VALUE:
                value = field.default
                if isinstance(value, _MUTABLE):
                    value = copy.deepcopy(value)
            elif kind == DEFAULT_FACTORY:
                value = field.default()  # type: ignore[operator]
            else:
                if stamp is None:
                    stamp = _utc(now)
                if kind == DEFAULT_TODAY:
                    value = stamp.date().isoformat()
                else:
                    assert kind == DEFAULT_NOW
                    value = stamp.isoformat(timespec="microseconds")
        # Defaults are checked too: a factory may return anything. A plain
        # str is decided here, without the calls (the most common value).
        if type(value) is str and field._takes_str and value.isascii() and "\x00" not in value:
            result[name] = value
            continue
        problem = field.value_problem(value)
        if problem is not None:
            if invalid is None:
                invalid = {}
            invalid[name] = problem
            continue
        result[name] = value
    unknown: list[str] | None = None
    # Each declared field found accounts for exactly one key, so any other
    # key is undeclared; the scan only runs when there is one.
    if present != len(payload):
        known = trigger._by_name
        unknown = sorted(
            key if type(key) is str else repr(key) for key in payload if key not in known
        )
    if missing is not None or unknown or invalid is not None:
        raise InvalidPayload(sorted(missing or ()), unknown, invalid)
    return result


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        return now.replace(tzinfo=UTC)
    return now.astimezone(UTC)
