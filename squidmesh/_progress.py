"""Transactional progression: ``progress_run``, the ``*_and_dispatch`` and ``*_with`` operations.

Every operation here runs caller code (a changes function, a dispatch, a
``fail_fn``) inside one PostgreSQL transaction, after the run's row is locked
(or, for creation and replay, after the new row is inserted). Whatever the
caller code writes through the connection it is given commits or rolls back
together with the run change: the transactional-outbox guarantee.

The rules for that caller code (what a dispatch, a changes function and a
``fail_fn`` may and may not do) are in the docstring of the public module
``squidmesh.progress``.

Round trips are counted per operation in each docstring; a dispatch's own
statements come on top.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import asyncpg

from . import state_machine
from ._base import (
    NO_CHANGES,
    READ_COMMITTED,
    Conn,
    FieldParams,
    StoreBase,
    coerce_changes,
    field_params,
)
from ._errors import InvalidTransition
from ._events import DispatchEvents, RunCreated, RunReplayed, RunTransitioned
from ._types import Run, RunChanges, RunStatus
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

if TYPE_CHECKING:
    from ._workflow import Workflow

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


async def _call(fn: Callable[..., Any], *args: object) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _dispatch_events(result: object) -> list[Any]:
    return list(result.events) if isinstance(result, DispatchEvents) else []


class ProgressOps(StoreBase):
    """Operations that run caller code under the run's row lock (mixed into ``RunStore``)."""

    if TYPE_CHECKING:
        # Defined on RunStore (``_store.py``); declared here for the type checker.
        async def _insert_run(
            self, conn: Conn, workflow: Workflow | str, payload: object, trigger: str | None
        ) -> Run: ...

        async def _insert_replay(self, conn: Conn, run_id: object) -> Run: ...

    # -- building blocks ----------------------------------------------------

    async def create_and_dispatch_run(
        self,
        workflow: Workflow | str,
        payload: object,
        dispatch: DispatchFn,
        *,
        trigger: str | None = None,
    ) -> Run:
        """Create a pending run and call ``dispatch(conn, run)`` in the same transaction.

        Validation is that of ``create_run``. If the dispatch raises, the
        transaction rolls back (no run exists, nothing the dispatch wrote
        remains, no event) and its exception propagates unchanged. After
        commit, ``RunCreated`` is reported, then the events of a returned
        ``DispatchEvents``. Round trips: BEGIN, INSERT, a transaction check,
        COMMIT (4), plus the dispatch's statements. The dispatch runs inside
        the transaction: keep it short, never commit or change session state
        (rules in ``squidmesh.progress``).

        Raises:
            InvalidWorkflow: the workflow is not registered.
            InvalidTrigger: the workflow declares no such trigger.
            InvalidPayload: the payload is not a map or does not match the trigger.
        """
        async with self._pool.acquire() as conn, conn.transaction(isolation=READ_COMMITTED):
            run = await self._insert_run(conn, workflow, payload, trigger)
            extra = await self._dispatch(conn, dispatch, run)
        await self._emit([RunCreated(run=run), *extra])
        return run

    async def replay_and_dispatch_run(self, run_id: object, dispatch: DispatchFn) -> Run:
        """Replay a run (see ``replay_run``) and call ``dispatch(conn, new_run)`` in
        the same transaction.

        A raising dispatch rolls everything back (no replay exists) and its
        exception propagates unchanged. After commit, ``RunReplayed`` is
        reported, then the dispatch's events. Round trips: BEGIN, the
        INSERT ... SELECT, a transaction check, COMMIT (4), plus the
        dispatch's statements.

        Raises:
            RunNotFound: no run has that id.
            InvalidWorkflow: the source's workflow is not registered.
        """
        self._run_id(run_id)  # an unparsable id fails before a connection is taken
        async with self._pool.acquire() as conn, conn.transaction(isolation=READ_COMMITTED):
            run = await self._insert_replay(conn, run_id)
            extra = await self._dispatch(conn, dispatch, run)
        await self._emit([RunReplayed(run=run), *extra])
        return run

    async def transition_and_dispatch_run(
        self,
        run_id: object,
        to_status: RunStatus | str,
        changes: RunChanges | Mapping[str, Any] | None,
        dispatch: DispatchFn,
    ) -> Run:
        """Move a run to ``to_status`` with ``changes``, then call ``dispatch(conn, run)``
        in the same transaction.

        Locks the run row; the move is validated on the state read under the
        lock. A raising dispatch rolls back the move and everything it wrote,
        and its exception propagates unchanged. After commit,
        ``RunTransitioned`` is reported, then the dispatch's events. A
        terminal run raises ``InvalidTransition`` like ``transition_run``,
        and the dispatch is not called. Round trips: BEGIN, locking read,
        write, a transaction check, COMMIT (5), plus the dispatch's statements.

        Raises:
            RunNotFound: no run has that id.
            InvalidTransition: the state machine forbids the move.
            UnknownStatus: ``to_status`` is not a state.
            InvalidRun: a change cannot be stored (nothing is written).
        """
        to = state_machine.coerce_status(to_status)
        params = field_params(coerce_changes(changes))
        async with self._locked_run(run_id) as (conn, locked):
            state_machine.validate(locked.status, to)
            run = await self._write_run(conn, locked.id, to.value, params)
            extra = await self._dispatch(conn, dispatch, run)
        await self._emit(
            [RunTransitioned(run=run, from_status=locked.status, to_status=to), *extra]
        )
        return run

    async def update_and_dispatch_run(
        self,
        run_id: object,
        changes_or_fn: RunChanges | Mapping[str, Any] | ChangesFn | None,
        dispatch: DispatchFn,
    ) -> Run:
        """Write fields, then call ``dispatch(conn, run)`` in the same transaction.

        ``changes_or_fn`` is the changes, or a function computing them from
        the run as read under the lock. Status is untouched, whatever it is
        (like ``update_run``, a terminal run is written too). A raising
        dispatch rolls everything back and its exception propagates
        unchanged. No run event is reported (``update_run`` reports none);
        the dispatch's events are, after commit. Round trips: BEGIN, locking
        read, write (skipped when there is nothing to write), a transaction
        check, COMMIT (5), plus the dispatch's statements.

        Raises:
            RunNotFound: no run has that id.
            InvalidRun: a change cannot be stored (nothing is written).
        """
        changes_fn: ChangesFn | None = None
        given = NO_CHANGES
        if callable(changes_or_fn):
            changes_fn = changes_or_fn
        else:
            given = field_params(coerce_changes(changes_or_fn))
        async with self._locked_run(run_id) as (conn, locked):
            if changes_fn is not None:
                given = field_params(coerce_changes(await _call(changes_fn, locked)))
            run = await self._write_fields(conn, locked, given)
            extra = await self._dispatch(conn, dispatch, run)
        await self._emit(extra)
        return run

    async def update_run_with(self, run_id: object, changes_fn: ChangesFn) -> Run:
        """Write the fields ``changes_fn(run)`` computes from the run read under the lock.

        The read-modify-write is atomic: concurrent callers queue on the row
        lock, so each sees the previous one's result (a counter incremented
        this way never loses an increment). Status is untouched; no event.
        Round trips: BEGIN, locking read, write (skipped when the function
        returns no changes), COMMIT (4).

        Raises:
            RunNotFound: no run has that id.
            InvalidRun: a change cannot be stored (nothing is written).
        """
        async with self._locked_run(run_id) as (conn, locked):
            params = field_params(coerce_changes(await _call(changes_fn, locked)))
            run = await self._write_fields(conn, locked, params)
        return run

    async def transition_run_with(
        self, run_id: object, to_status: RunStatus | str, changes_fn: ChangesFn
    ) -> Run:
        """Move a run to ``to_status`` with the fields ``changes_fn(run)`` computes.

        Locks the run row and validates the move on the state read under the
        lock *before* calling ``changes_fn``, so it is never called for an
        illegal move. ``RunTransitioned`` is reported after commit. Round
        trips: BEGIN, locking read, write, COMMIT (4).

        Raises:
            RunNotFound: no run has that id.
            InvalidTransition: the state machine forbids the move.
            UnknownStatus: ``to_status`` is not a state.
            InvalidRun: a change cannot be stored (nothing is written).
        """
        to = state_machine.coerce_status(to_status)
        async with self._locked_run(run_id) as (conn, locked):
            state_machine.validate(locked.status, to)
            params = field_params(coerce_changes(await _call(changes_fn, locked)))
            run = await self._write_run(conn, locked.id, to.value, params)
        await self._emit((RunTransitioned(run=run, from_status=locked.status, to_status=to),))
        return run

    # -- progress_run -------------------------------------------------------

    async def progress_run(
        self, run_id: object, changes_fn: ChangesFn, operation: Operation
    ) -> Run | None:
        """Advance a run in one transaction: the runtime's "do the next thing" call.

        Locks the run row, then decides on the state read under the lock:

        1. terminal (failed, completed, cancelled): nothing is called or
           written; returns None.
        2. cancelling: the operation is ignored and nothing is dispatched;
           the run moves to cancelled keeping only the context
           ``changes_fn(run)`` computes (current_step and last_error are
           cleared; an UNSET context is kept as is); ``RunTransitioned``.
        3. otherwise the operation (``squidmesh.progress``) is applied with
           the fields ``changes_fn(run)`` computes:

           - ``Update()``: write the fields.
           - ``Transition(S)``: validated move to S with the fields.
           - ``Dispatch(d)``: write the fields, then ``d(conn, run)``; if it
             raises, everything rolls back and the exception propagates.
           - ``DispatchOrFail(d, f)``: the same, but ``d`` runs inside a
             savepoint; if it raises, what it wrote is undone (even if its
             SQL error aborted the transaction), the field writes stay, and
             the run moves to failed with the fields ``f(run, exc)`` returns,
             ``run`` being the run after the field writes. The move to
             failed is validated (``InvalidTransition``, everything rolled
             back, when it is illegal).
           - ``TransitionOrDispatch(S, d)``: already in S: as ``Dispatch``;
             otherwise a validated move to S with the fields, then ``d``.
           - ``TransitionOrDispatchOrFail(S, d, f)``: the same, with the fail
             branch of ``DispatchOrFail`` (``f`` sees the run after the move).

        For a move, legality is checked before ``changes_fn`` is called. After
        commit, events are reported in order: each ``RunTransitioned`` (the
        move to S, then the move to failed on the fail branch), then the
        events of a ``DispatchEvents`` the dispatch returned (dropped when
        the dispatch failed). The callables run under the row lock inside the
        transaction: keep them short, never commit or change session state
        (rules in ``squidmesh.progress``).

        Round trips: BEGIN, locking read, COMMIT, plus: one write (skipped for
        ``Update``/``Dispatch`` with no changes; none for a terminal run);
        after a plain dispatch, a transaction check; for the ``...OrFail``
        operations, SAVEPOINT and RELEASE around the dispatch instead, and on
        failure ROLLBACK TO SAVEPOINT and the write to failed.

        Returns:
            The run as committed, or None when the run was already terminal.

        Raises:
            RunNotFound: no run has that id.
            InvalidTransition: the requested move (or the move to failed) is illegal.
            UnknownStatus: the operation names a status that is not a state.
            InvalidRun: a change cannot be stored (nothing is written).
            TypeError: ``operation`` is not one of ``squidmesh.progress``'s.
        """
        target = _target_status(operation)
        events: list[Any] = []
        async with self._locked_run(run_id) as (conn, locked):
            if state_machine.is_terminal(locked.status):
                return None
            if locked.status is RunStatus.CANCELLING:
                computed = coerce_changes(await _call(changes_fn, locked))
                params = field_params(
                    RunChanges(context=computed.context, current_step=None, last_error=None)
                )
                run = await self._write_run(conn, locked.id, RunStatus.CANCELLED.value, params)
                events.append(_moved(run, locked.status))
            else:
                # Transition(S) always moves (S -> S is never legal, so it
                # raises); the TransitionOrDispatch variants only when not in S.
                if target is not None and (
                    target is not locked.status or isinstance(operation, Transition)
                ):
                    state_machine.validate(locked.status, target)
                    params = field_params(coerce_changes(await _call(changes_fn, locked)))
                    run = await self._write_run(conn, locked.id, target.value, params)
                    events.append(_moved(run, locked.status))
                else:
                    params = field_params(coerce_changes(await _call(changes_fn, locked)))
                    run = await self._write_fields(conn, locked, params)
                match operation:
                    case Update() | Transition():
                        pass
                    case Dispatch(dispatch) | TransitionOrDispatch(_, dispatch):
                        events += await self._dispatch(conn, dispatch, run)
                    case DispatchOrFail(dispatch, fail_fn) | TransitionOrDispatchOrFail(
                        _, dispatch, fail_fn
                    ):
                        run, more = await self._dispatch_or_fail(conn, dispatch, fail_fn, run)
                        events += more
        await self._emit(events)
        return run

    # -- internals ----------------------------------------------------------

    async def _write_fields(self, conn: Conn, locked: Run, params: FieldParams) -> Run:
        """Write fields without a status change; nothing to write costs no round trip."""
        if params == NO_CHANGES:
            return locked
        return await self._write_run(conn, locked.id, None, params)

    @staticmethod
    async def _dispatch(conn: Conn, dispatch: DispatchFn, run: Run) -> list[Any]:
        """Call a dispatch whose failure rolls the whole transaction back."""
        result = await _call(dispatch, conn, run)
        try:
            await conn.execute(_CHECK_TRANSACTION)
        except asyncpg.InFailedSQLTransactionError as exc:
            exc.add_note(_ABORTED_NOTE)
            raise
        return _dispatch_events(result)

    async def _dispatch_or_fail(
        self, conn: Conn, dispatch: DispatchFn, fail_fn: FailFn, run: Run
    ) -> tuple[Run, list[Any]]:
        """Call a dispatch in a savepoint; on failure undo it and fail the run.

        Returns the run as it ends up and the events to report after commit.
        """
        await conn.execute(_SAVEPOINT)
        try:
            result = await _call(dispatch, conn, run)
            # Fails if the dispatch swallowed a database error: a failure too.
            await conn.execute(_RELEASE)
        except Exception as exc:
            await conn.execute(_ROLLBACK_TO)
            if not state_machine.can_transition(run.status, RunStatus.FAILED):
                raise InvalidTransition(run.status, RunStatus.FAILED) from exc
            params = field_params(coerce_changes(await _call(fail_fn, run, exc)))
            failed = await self._write_run(conn, run.id, RunStatus.FAILED.value, params)
            return failed, [_moved(failed, run.status)]
        return run, _dispatch_events(result)


def _moved(run: Run, from_status: RunStatus) -> RunTransitioned:
    return RunTransitioned(run=run, from_status=from_status, to_status=run.status)


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
