"""The operations of ``RunStore.progress_run``.

Kept apart from the top-level package so that ``progress.Transition`` (a
move of the run state machine) does not clash with ``squidmesh.Transition``
(an edge of a workflow definition). Each is a small frozen Struct with
positional fields, so ``match op: case Transition(status): ...`` works.

A dispatch is ``dispatch(conn, run) -> object``; ``conn`` is the
transaction's asyncpg connection and ``run`` the run as written so far. A
``changes_fn(run)`` (given to ``progress_run`` and the ``*_with`` operations)
returns the fields to write (``RunChanges``, a dict, or None for none) from
the run read under the lock. A ``fail_fn(run, exc)`` returns the fields for
the failed state. Each may be sync or async; a returned awaitable is awaited.

They all run inside the operation's transaction, while the run's row lock is
held:

- Keep them short: no slow remote calls, no sleeping, no waiting on other
  runs. Every other writer of the same run queues behind them.
- A dispatch may run any statements on ``conn`` (enqueue a job, write an
  outbox row, ``pg_notify``): they commit or roll back with the run change.
  A side effect outside this database (an HTTP call, a broker publish) is not
  undone by a rollback: write a row and publish it after commit.
- They must not commit, roll back or otherwise end the transaction, and must
  not change session state other than with ``SET LOCAL`` (the connection
  returns to a pool). A dispatch must not write the run's own row: the
  operation's changes are the way to write it.
- A dispatch must not swallow a database error outside a savepoint: PostgreSQL
  then aborts the transaction and would turn COMMIT into a silent rollback,
  so squidmesh raises ``asyncpg.InFailedSQLTransactionError`` instead. To
  handle an error itself, a dispatch wraps the statement in
  ``async with conn.transaction():`` (a savepoint).
- A dispatch may return ``squidmesh.DispatchEvents([...])``: those events are
  reported to listeners after commit, after the run's own event, and never
  for a rolled-back transaction. Any other return value is ignored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec

from ._types import RunChanges, RunStatus

__all__ = (
    "ChangesFn",
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

ChangesFn = Callable[[Any], Awaitable[Any] | RunChanges | Mapping[str, Any] | None]
DispatchFn = Callable[[Any, Any], Awaitable[object] | object]
FailFn = Callable[[Any, Exception], Awaitable[Any] | RunChanges | Mapping[str, Any] | None]


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
