"""The operations of ``RunStore.progress_run``.

Kept apart from the top-level package so that ``progress.Transition`` (a
move of the run state machine) does not clash with ``squidmesh.Transition``
(an edge of a workflow definition). Each is a small frozen Struct with
positional fields, so ``match op: case Transition(status): ...`` works.

A dispatch is ``async def dispatch(conn, run) -> object`` (a sync callable
works too): it runs inside the run's transaction, under the row lock, with
``conn`` the transaction's connection. A ``fail_fn(run, exc)`` returns the
fields (``RunChanges`` or dict) for the failed state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from ._types import RunChanges, RunStatus

__all__ = (
    "Dispatch",
    "DispatchFn",
    "DispatchOrFail",
    "FailFn",
    "Operation",
    "Transition",
    "TransitionOrDispatch",
    "TransitionOrDispatchOrFail",
    "Update",
)

DispatchFn = Callable[[Any, Any], Awaitable[object] | object]
FailFn = Callable[[Any, BaseException], RunChanges | dict[str, Any]]


class Update(msgspec.Struct, frozen=True):
    """Write the computed fields."""


class Transition(msgspec.Struct, frozen=True):
    """Move to ``status`` (validated) with the computed fields."""

    status: RunStatus | str


class Dispatch(msgspec.Struct, frozen=True):
    """Write the fields, then call ``dispatch`` in the same transaction;
    a raising dispatch rolls everything back and its exception propagates."""

    dispatch: DispatchFn


class DispatchOrFail(msgspec.Struct, frozen=True):
    """Like ``Dispatch``, but a raising dispatch keeps the field writes and
    moves the run to failed with ``fail_fn(run, exc)``'s fields."""

    dispatch: DispatchFn
    fail_fn: FailFn


class TransitionOrDispatch(msgspec.Struct, frozen=True):
    """If the run is already in ``status``, behave as ``Dispatch``; otherwise
    move to ``status`` and then dispatch."""

    status: RunStatus | str
    dispatch: DispatchFn


class TransitionOrDispatchOrFail(msgspec.Struct, frozen=True):
    """``TransitionOrDispatch`` with the fail branch of ``DispatchOrFail``."""

    status: RunStatus | str
    dispatch: DispatchFn
    fail_fn: FailFn


Operation = (
    Update
    | Transition
    | Dispatch
    | DispatchOrFail
    | TransitionOrDispatch
    | TransitionOrDispatchOrFail
)
