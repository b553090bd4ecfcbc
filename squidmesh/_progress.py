"""Transactional progression: ``progress_run``, the ``*_and_dispatch`` and ``*_with`` operations.

Every operation here runs caller code (a changes function, a dispatch, a
``fail_fn``) inside one PostgreSQL transaction, after the run's row is locked
(or, for creation and replay, after the new row is inserted). Whatever the
caller code writes through the connection it is given commits or rolls back
together with the run change: the transactional-outbox guarantee.

The rules for that caller code (what a dispatch, a changes function and a
``fail_fn`` may and may not do) are in the docstring of the public module
``squidmesh.progress``. Each operation returns the run as committed and the
events to report after commit; round trips are counted in the docstrings of
the ``RunStore`` methods.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

import asyncpg

from . import _codec, _queries, state_machine
from ._errors import InvalidTransition, RunNotFound, VersionConflict
from ._events import DispatchEvents, RunCreated, RunReplayed, RunTransitioned
from ._queries import SQL, Conn
from ._runs import RunOps
from ._types import Run, RunChanges, RunStatus
from ._values import NO_CHANGES, FieldWrites, coerce_changes, field_writes, run_uuid
from ._workflow import Workflow
from .progress import (
    ChangesFn,
    Dispatch,
    DispatchFn,
    DispatchOrFail,
    FailFn,
    Operation,
    Transition,
    TransitionOrDispatch,
    TransitionOrDispatchOrFail,
    Update,
)

# Utility statements go through the simple query protocol (``execute``
# without arguments): PostgreSQL cannot PREPARE them, so they do not belong
# with the named queries. A fixed savepoint name is safe: PostgreSQL stacks
# savepoints, and a dispatch's own nested transactions use asyncpg's names.
_SAVEPOINT: Final = "SAVEPOINT squidmesh_dispatch"
_RELEASE: Final = "RELEASE SAVEPOINT squidmesh_dispatch"
_ROLLBACK_TO: Final = "ROLLBACK TO SAVEPOINT squidmesh_dispatch"
# Sent after a dispatch outside a savepoint. COMMIT of an aborted transaction
# "succeeds" with the tag ROLLBACK, which asyncpg does not report; this fails
# loudly instead when the dispatch swallowed a database error.
_CHECK_TRANSACTION: Final = "SELECT 1"

_ABORTED_NOTE: Final = (
    "squidmesh: the dispatch returned normally but left the transaction aborted "
    "(it caught a database error outside a savepoint); everything was rolled back. "
    "Wrap a statement whose failure you handle in `async with conn.transaction():`."
)

Outcome = tuple[Run, list[object]]


async def _call(fn: Callable[..., Any], *args: object) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _computed(changes_fn: ChangesFn, run: Run) -> FieldWrites:
    return field_writes(coerce_changes(await _call(changes_fn, run)))


def _dispatch_events(result: object) -> list[object]:
    return list(result.events) if isinstance(result, DispatchEvents) else []


def _moved(run: Run, from_status: RunStatus) -> RunTransitioned:
    return RunTransitioned(run=run, from_status=from_status, to_status=run.status)


class ProgressOps:
    """The operations of a store that run caller code under the run's row lock."""

    __slots__ = ("_pool", "_runs")

    def __init__(self, pool: asyncpg.Pool, runs: RunOps) -> None:
        self._pool = pool
        self._runs = runs

    @contextlib.asynccontextmanager
    async def _locked(
        self, run_id: object, expected: int | None
    ) -> AsyncIterator[tuple[Conn, Run]]:
        """A READ COMMITTED transaction holding the run's row lock, and the run as read
        under it. An unparsable id fails before a connection is taken; a version
        other than ``expected`` fails before any caller code runs."""
        uid = run_uuid(run_id)
        async with _queries.transaction(self._pool) as conn:
            row = await _queries.row(conn, SQL.lock_run, uid)
            if row is None:
                raise RunNotFound(run_id)
            run = _codec.decode_run(row)
            if expected is not None and run.version != expected:
                raise VersionConflict(run_id, expected, run.version)
            yield conn, run

    # -- creation with a dispatch -------------------------------------------

    async def create_and_dispatch(
        self,
        workflow: Workflow | str,
        payload: object,
        dispatch: DispatchFn,
        trigger: str | None,
        idempotency_key: object,
    ) -> tuple[Run, list[object], bool]:
        """(the run, the events, whether it was created now). An existing run of
        the same idempotency key is returned as stored: no dispatch, no event."""
        async with _queries.transaction(self._pool) as conn:
            run, created = await self._runs.insert(
                conn, workflow, payload, trigger, idempotency_key
            )
            if not created:
                return run, [], False
            extra = await _dispatch(conn, dispatch, run)
        return run, [RunCreated(run=run), *extra], True

    async def replay_and_dispatch(self, run_id: object, dispatch: DispatchFn) -> Outcome:
        run_uuid(run_id)  # an unparsable id fails before a connection is taken
        async with _queries.transaction(self._pool) as conn:
            run = await self._runs.replay(conn, run_id)
            extra = await _dispatch(conn, dispatch, run)
        return run, [RunReplayed(run=run), *extra]

    # -- changes of a locked run --------------------------------------------

    async def transition_and_dispatch(
        self,
        run_id: object,
        to_status: RunStatus | str,
        changes: RunChanges | Mapping[str, Any] | None,
        dispatch: DispatchFn,
        expected: int | None,
    ) -> Outcome:
        to = state_machine.coerce_status(to_status)
        writes = field_writes(coerce_changes(changes))
        async with self._locked(run_id, expected) as (conn, locked):
            state_machine.validate(locked.status, to)
            run = await RunOps.write(conn, locked.id, to.value, writes)
            extra = await _dispatch(conn, dispatch, run)
        return run, [_moved(run, locked.status), *extra]

    async def update_and_dispatch(
        self,
        run_id: object,
        changes_or_fn: RunChanges | Mapping[str, Any] | ChangesFn | None,
        dispatch: DispatchFn,
        expected: int | None,
    ) -> Outcome:
        changes_fn: ChangesFn | None = None
        given = NO_CHANGES
        if callable(changes_or_fn):
            changes_fn = changes_or_fn
        else:
            given = field_writes(coerce_changes(changes_or_fn))
        async with self._locked(run_id, expected) as (conn, locked):
            if changes_fn is not None:
                given = await _computed(changes_fn, locked)
            run = await _write_fields(conn, locked, given)
            extra = await _dispatch(conn, dispatch, run)
        return run, extra

    async def update_with(self, run_id: object, changes_fn: ChangesFn, expected: int | None) -> Run:
        async with self._locked(run_id, expected) as (conn, locked):
            return await _write_fields(conn, locked, await _computed(changes_fn, locked))

    async def transition_with(
        self,
        run_id: object,
        to_status: RunStatus | str,
        changes_fn: ChangesFn,
        expected: int | None,
    ) -> Outcome:
        to = state_machine.coerce_status(to_status)
        async with self._locked(run_id, expected) as (conn, locked):
            state_machine.validate(locked.status, to)  # before any caller code runs
            writes = await _computed(changes_fn, locked)
            run = await RunOps.write(conn, locked.id, to.value, writes)
        return run, [_moved(run, locked.status)]

    async def progress(
        self, run_id: object, changes_fn: ChangesFn, operation: Operation, expected: int | None
    ) -> tuple[Run | None, list[object]]:
        target = _target_status(operation)
        events: list[object] = []
        async with self._locked(run_id, expected) as (conn, locked):
            if state_machine.is_terminal(locked.status):
                return None, []
            if locked.status is RunStatus.CANCELLING:
                computed = coerce_changes(await _call(changes_fn, locked))
                writes = field_writes(
                    RunChanges(context=computed.context, current_step=None, last_error=None)
                )
                run = await RunOps.write(conn, locked.id, RunStatus.CANCELLED.value, writes)
                return run, [_moved(run, locked.status)]
            # Transition(S) always moves (S -> S is never legal, so it
            # raises); the TransitionOrDispatch variants only when not in S.
            if target is not None and (
                target is not locked.status or isinstance(operation, Transition)
            ):
                state_machine.validate(locked.status, target)
                writes = await _computed(changes_fn, locked)
                run = await RunOps.write(conn, locked.id, target.value, writes)
                events.append(_moved(run, locked.status))
            else:
                run = await _write_fields(conn, locked, await _computed(changes_fn, locked))
            match operation:
                case Update() | Transition():
                    pass
                case Dispatch(dispatch) | TransitionOrDispatch(_, dispatch):
                    events += await _dispatch(conn, dispatch, run)
                case DispatchOrFail(dispatch, fail_fn) | TransitionOrDispatchOrFail(
                    _, dispatch, fail_fn
                ):
                    run, more = await _dispatch_or_fail(conn, dispatch, fail_fn, run)
                    events += more
        return run, events


async def _write_fields(conn: Conn, locked: Run, writes: FieldWrites) -> Run:
    """Write fields without a status change; nothing to write costs no round trip."""
    if writes == NO_CHANGES:
        return locked
    return await RunOps.write(conn, locked.id, None, writes)


async def _dispatch(conn: Conn, dispatch: DispatchFn, run: Run) -> list[object]:
    """Call a dispatch whose failure rolls the whole transaction back."""
    result = await _call(dispatch, conn, run)
    try:
        await _queries.execute(conn, _CHECK_TRANSACTION)
    except asyncpg.InFailedSQLTransactionError as exc:
        exc.add_note(_ABORTED_NOTE)
        raise
    return _dispatch_events(result)


async def _dispatch_or_fail(
    conn: Conn, dispatch: DispatchFn, fail_fn: FailFn, run: Run
) -> tuple[Run, list[object]]:
    """Call a dispatch in a savepoint; on failure undo it and fail the run.

    Returns the run as it ends up and the events to report after commit.
    """
    await _queries.execute(conn, _SAVEPOINT)
    try:
        result = await _call(dispatch, conn, run)
        # Fails if the dispatch swallowed a database error: a failure too.
        await _queries.execute(conn, _RELEASE)
    except Exception as exc:
        await _queries.execute(conn, _ROLLBACK_TO)
        if not state_machine.can_transition(run.status, RunStatus.FAILED):
            raise InvalidTransition(run.status, RunStatus.FAILED) from exc
        writes = field_writes(coerce_changes(await _call(fail_fn, run, exc)))
        failed = await RunOps.write(conn, run.id, RunStatus.FAILED.value, writes)
        return failed, [_moved(failed, run.status)]
    return run, _dispatch_events(result)


def _target_status(operation: object) -> RunStatus | None:
    """The status an operation moves to (None for none); checks the operation's type."""
    match operation:
        case (
            Transition(status)
            | TransitionOrDispatch(status, _)
            | TransitionOrDispatchOrFail(status, _, _)
        ):
            return state_machine.coerce_status(status)
        case Update() | Dispatch() | DispatchOrFail():
            return None
    raise TypeError(
        "operation must be one of squidmesh.progress's Update, Transition, Dispatch, "
        f"DispatchOrFail, TransitionOrDispatch, TransitionOrDispatchOrFail; "
        f"not {type(operation).__name__}"
    )
