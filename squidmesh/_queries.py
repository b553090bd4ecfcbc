"""The query layer: the one module of the store that talks to asyncpg.

The operations (``_runs``, ``_steps``, ``_history``, ``_progress``) name a
query of ``sql/queries/*.sql`` through ``SQL`` (an attribute per query, so a
typo is a type error, not a runtime ``KeyError``) and run it through the
functions below, which take an executor (a pool or a connection) first. Here
live the policies every statement shares:

- **Isolation.** Writes keep READ COMMITTED semantics whatever the session's
  default (see ``write_value``); the store's own transactions name the level.
- **Errors.** A driver error on a write becomes a squidmesh error in one
  place, keyed by constraint name where the constraint says what happened
  (see ``_BY_CONSTRAINT``); infrastructure errors (a lost connection, a
  timeout, a cancellation) pass through unchanged.
- **Poolers.** A prepared statement that does not survive a connection
  pooler (PgBouncer in transaction mode with asyncpg's statement cache on)
  becomes ``PoolerMisconfigured``, which says what to change, on every path:
  reads, writes, and the store's transactions (see ``_POOLER_ERRORS``). Only
  the failure path pays for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final, LiteralString, NoReturn, get_type_hints

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from ._errors import (
    InvalidRun,
    InvalidTransition,
    PoolerMisconfigured,
    RunNotFound,
    StepRunNotFound,
)
from ._sql import load_queries

Conn = asyncpg.Connection | PoolConnectionProxy
Executor = asyncpg.Pool | Conn

READ_COMMITTED: Final = "read_committed"
# The SQLSTATE of the runs_write trigger's refusal of an illegal status change.
ILLEGAL_MOVE: Final = "SQM01"


class Queries:
    """Every named query of ``sql/queries/*.sql``; loaded once at import.

    The annotations are the contract with the files: a test checks that the
    names here and there are the same, and prepares each query against the
    schema.
    """

    # runs.sql
    insert_run: LiteralString
    get_run: LiteralString
    lock_run: LiteralString
    insert_replay: LiteralString
    transition_run: LiteralString
    transition_run_fast: LiteralString
    update_run: LiteralString
    cancel_run: LiteralString
    cancel_run_fast: LiteralString
    write_run: LiteralString
    insert_run_keyed: LiteralString
    get_run_by_key: LiteralString
    run_version: LiteralString
    # steps.sql
    begin_step: LiteralString
    schedule_step: LiteralString
    finish_step: LiteralString
    complete_manual_step: LiteralString
    record_resume: LiteralString
    lock_step_run: LiteralString
    lock_and_begin_attempt: LiteralString
    finish_attempt: LiteralString
    lock_and_pause_run: LiteralString
    # history.sql
    run_history: LiteralString
    # retention.sql
    retention_clock: LiteralString
    count_prunable_runs: LiteralString
    lock_and_prune_runs: LiteralString
    lock_and_prune_runs_waiting: LiteralString
    cancel_runs: LiteralString
    cancel_runs_waiting: LiteralString
    transition_stale_runs: LiteralString
    transition_stale_runs_waiting: LiteralString
    lock_and_prune_feed_ticks: LiteralString
    # listing.sql
    list_runs_by_status: LiteralString
    list_runs_by_workflow_status: LiteralString
    select_runs: LiteralString
    select_runs_by_workflow: LiteralString
    select_runs_by_trigger: LiteralString
    select_runs_by_workflow_trigger: LiteralString
    select_runs_by_replayed_from: LiteralString
    count_runs: LiteralString
    count_runs_by_workflow: LiteralString
    count_runs_by_trigger: LiteralString
    count_runs_by_workflow_trigger: LiteralString
    # feed.sql
    read_changes: LiteralString
    feed_tick: LiteralString
    newest_tick: LiteralString
    get_runs_by_ids: LiteralString
    notify_probe: LiteralString
    # claims.sql
    claim_runs: LiteralString
    claim_runs_by_workflow: LiteralString
    # scheduler.sql
    scheduler_clock: LiteralString
    read_cron_state: LiteralString
    fire_cron_ticks: LiteralString

    def __init__(self, texts: Mapping[str, str]) -> None:
        declared = set(get_type_hints(type(self)))
        if declared != set(texts):
            raise RuntimeError(
                "sql/queries/*.sql and squidmesh._queries.Queries disagree: "
                f"only in the files {sorted(set(texts) - declared)}, "
                f"only declared {sorted(declared - set(texts))}"
            )
        for name, text in texts.items():
            setattr(self, name, text)


SQL: Final = Queries(load_queries())


class ServerFeatures:
    """What the server offers, learnt from the first connection used.

    ``returning_old``: ``RETURNING old.*`` (PostgreSQL >= 18), which lets a
    guarded transition be one plain UPDATE. asyncpg knows the version from
    the handshake, so finding out costs no round trip.
    """

    __slots__ = ("returning_old",)

    def __init__(self) -> None:
        self.returning_old: bool | None = None

    def fast_paths(self, conn: Conn) -> bool:
        known = self.returning_old
        if known is None:
            known = self.returning_old = conn.get_server_version() >= (18, 0)
        return known


# -- reads ---------------------------------------------------------------------


async def value(ex: Executor, query: LiteralString, *args: object) -> Any:
    """The first column of the first row, or None."""
    try:
        return await ex.fetchval(query, *args)
    except _POOLER_ERRORS as exc:
        _raise_if_pooler(exc)
        raise


async def row(ex: Executor, query: LiteralString, *args: object) -> asyncpg.Record | None:
    """The first row, or None."""
    try:
        return await ex.fetchrow(query, *args)
    except _POOLER_ERRORS as exc:
        _raise_if_pooler(exc)
        raise


async def rows(ex: Executor, query: LiteralString, *args: object) -> list[asyncpg.Record]:
    try:
        return await ex.fetch(query, *args)
    except _POOLER_ERRORS as exc:
        _raise_if_pooler(exc)
        raise


# -- writes --------------------------------------------------------------------


async def write_value(
    ex: Executor, query: LiteralString, *args: object, subject: object = None
) -> Any:
    """Run one write statement; the first column of its first row, or None.

    ``subject`` is the id the caller asked about, named in a not-found error
    when a foreign key shows that the row it refers to is gone.

    Under a session default stricter than READ COMMITTED, a row changed by a
    concurrent writer after the statement's snapshot makes PostgreSQL refuse
    the statement (serialization_failure) instead of re-reading the row. The
    statement was its own transaction, so nothing was written, and it runs
    again inside an explicit READ COMMITTED transaction, where it behaves as
    documented. Three more round trips, on that path only.
    """
    # The statement is sent from here, not from a shared helper: on the hot
    # writes every coroutine layer shows at 16 connections. Failures go to
    # _write_failed, which retries or translates.
    try:
        return await ex.fetchval(query, *args)
    except Exception as exc:
        return await _write_failed(exc, ex, "fetchval", query, args, subject)


async def write_row(
    ex: Executor, query: LiteralString, *args: object, subject: object = None
) -> asyncpg.Record | None:
    """``write_value`` for a statement whose whole first row the caller reads."""
    try:
        return await ex.fetchrow(query, *args)
    except Exception as exc:
        row: asyncpg.Record | None = await _write_failed(exc, ex, "fetchrow", query, args, subject)
        return row


async def write_rows(
    ex: Executor, query: LiteralString, *args: object, subject: object = None
) -> list[asyncpg.Record]:
    """``write_value`` for a statement whose every row the caller reads."""
    try:
        return await ex.fetch(query, *args)
    except Exception as exc:
        found: list[asyncpg.Record] = await _write_failed(exc, ex, "fetch", query, args, subject)
        return found


async def _write_failed(
    failure: Exception,
    ex: Executor,
    method: str,
    query: LiteralString,
    args: tuple[object, ...],
    subject: object,
) -> Any:
    """What a write statement that raised ``failure`` comes to: its retry at
    READ COMMITTED (a serialization failure outside a transaction), or the
    error squidmesh raises for it."""
    try:
        if not isinstance(failure, asyncpg.SerializationError) or _in_transaction(ex):
            # (In a transaction the caller's is lost either way: theirs to retry.)
            raise failure
        async with _read_committed(ex) as conn:
            return await getattr(conn, method)(query, *args)
    except _DB_ERRORS as exc:
        _raise_translated(exc, subject)
    except _POOLER_ERRORS as exc:
        _raise_if_pooler(exc)
        raise
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == ILLEGAL_MOVE:
            # The runs_write trigger refused a status change. squidmesh checks
            # moves before it writes, so this means a bug or a raw write.
            moved = msgspec.json.decode(exc.detail or "{}")
            raise InvalidTransition(moved["from_status"], moved["to_status"]) from exc
        raise


def _in_transaction(ex: Executor) -> bool:
    return not isinstance(ex, asyncpg.Pool) and ex.is_in_transaction()


@contextlib.asynccontextmanager
async def _read_committed(ex: Executor) -> AsyncIterator[Conn]:
    if isinstance(ex, asyncpg.Pool):
        async with ex.acquire() as conn, conn.transaction(isolation=READ_COMMITTED):
            yield conn
    else:
        async with ex.transaction(isolation=READ_COMMITTED):
            yield ex


@contextlib.asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[Conn]:
    """A connection from ``pool`` in a READ COMMITTED transaction, committed on exit.

    Every guarantee squidmesh documents is argued at READ COMMITTED, where a
    statement that waited for a row lock re-reads the newest row version and
    each statement sees what committed before it started; a user's database
    or pool may default to a stricter level, so the level is named.
    """
    try:
        async with pool.acquire() as conn, conn.transaction(isolation=READ_COMMITTED):
            yield conn
    except _POOLER_ERRORS as exc:
        # A statement of the caller's code (a dispatch) that ran on the connection.
        _raise_if_pooler(exc)
        raise


@contextlib.asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[Conn]:
    """A connection from ``pool`` for several statements that are not one transaction."""
    try:
        async with pool.acquire() as conn:
            yield conn
    except _POOLER_ERRORS as exc:
        _raise_if_pooler(exc)
        raise


async def execute(conn: Conn, statement: LiteralString) -> None:
    """A utility statement without parameters (SAVEPOINT, RELEASE ...)."""
    await conn.execute(statement)


# -- errors --------------------------------------------------------------------

_DB_ERRORS: Final = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
)

# Constraints whose violation means something more precise than "the value
# cannot be stored". None: not an error of the caller's; the raw driver error
# reaches the operation, which handles it (begin_attempt retries).
_BY_CONSTRAINT: Final[Mapping[str, Callable[[object], Exception] | None]] = {
    # A replay's source, or a new step run's run, was deleted meanwhile.
    "runs_replayed_from_fkey": RunNotFound,
    "step_runs_run_id_fkey": RunNotFound,
    # A new attempt's step run was deleted meanwhile.
    "step_attempts_step_run_id_fkey": StepRunNotFound,
    # Two attempts took the same number: begin_attempt retries under the lock.
    "step_attempts_step_run_id_number_key": None,
}


def _raise_translated(exc: Exception, subject: object) -> NoReturn:
    name = getattr(exc, "constraint_name", None)
    if isinstance(name, str) and name in _BY_CONSTRAINT:
        make = _BY_CONSTRAINT[name]
        if make is None:
            raise exc
        raise make(subject) from exc
    if isinstance(exc, asyncpg.ProgramLimitExceededError):
        raise InvalidRun(f"the value is too large to store: {exc}") from exc
    suffix = f" (constraint {name})" if name else ""
    raise InvalidRun(f"the database rejected the value: {exc}{suffix}") from exc


# What asyncpg's statement cache meets behind a pooler that hands each
# transaction to any server connection (PgBouncer in transaction mode
# without max_prepared_statements, which needs 1.21 or later): a statement
# it prepared is not on the server connection it got ("... does not
# exist"), one of the same name is ("... already exists"), or, when
# processes prepared different statements under the same name, another
# statement is ("bind message supplies 1 parameters, but prepared statement
# ... requires 2"). The test for asyncpg's statement-name prefix keeps a
# user's own EXECUTE or DEALLOCATE of a missing statement what it is. Not
# every such mix-up fails: the pool must be configured right, and the error
# is there for one that is not.
_POOLER_ERRORS: Final = (
    asyncpg.InvalidSQLStatementNameError,
    asyncpg.DuplicatePreparedStatementError,
    asyncpg.ProtocolViolationError,
)
# (No quotes: a translated message quotes the name in its language's way.)
_ASYNCPG_STATEMENT: Final = "__asyncpg_"


def _raise_if_pooler(exc: asyncpg.PostgresError) -> None:
    """Raise ``PoolerMisconfigured`` when ``exc`` is about one of asyncpg's statements."""
    message = str(exc.args[0]) if exc.args else ""
    if _ASYNCPG_STATEMENT in message:
        raise PoolerMisconfigured(f"{type(exc).__name__}: {message}") from exc
