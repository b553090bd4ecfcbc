"""State and internals shared by the parts of ``RunStore``.

``RunStore`` is assembled from mixins, one per concern (core run operations,
step history, transactional progression); this base holds what they share:
the pool, the workflow registry, listener delivery, field-write encoding and
the locked-transaction skeleton.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Final
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from msgspec import UNSET

from . import _codec
from ._errors import InvalidRun, InvalidWorkflow, RunNotFound, map_db_errors
from ._events import Listener, emit
from ._ids import parse_id
from ._sql import Q
from ._types import Run, RunChanges
from ._workflow import MAX_NAME_LENGTH, Workflow

Conn = asyncpg.Connection | PoolConnectionProxy
Executor = asyncpg.Pool | Conn

# Every guarantee squidmesh documents is argued at READ COMMITTED, where a
# statement that waited for a row lock re-reads the newest row version. A
# user's database or pool may default to REPEATABLE READ or SERIALIZABLE; the
# store's own transactions therefore always name their level.
READ_COMMITTED: Final = "read_committed"

# (given?, value) per field, in the order the SQL's $n placeholders expect.
FieldParams = tuple[bool, str | None, bool, str | None, bool, str | None]
NO_CHANGES: Final[FieldParams] = (False, None, False, None, False, None)
_CHANGE_KEYS: Final = frozenset({"context", "current_step", "last_error"})


def coerce_changes(changes: RunChanges | Mapping[str, Any] | None) -> RunChanges:
    """Accept a ``RunChanges``, a dict of its fields, or None (no changes)."""
    if changes is None:
        return RunChanges()
    if isinstance(changes, RunChanges):
        return changes
    if isinstance(changes, Mapping):
        unknown = set(changes) - _CHANGE_KEYS
        if unknown:
            raise InvalidRun(
                f"unknown change keys {sorted(map(str, unknown))}; "
                "allowed: context, current_step, last_error"
            )
        return RunChanges(**changes)
    raise InvalidRun(f"changes must be a RunChanges or a dict, not {type(changes).__name__}")


def field_params(changes: RunChanges) -> FieldParams:
    """Check and encode field writes: UNSET = unchanged, None = clear.

    Raises ``InvalidRun`` before anything is sent when a value cannot be stored.
    """
    ctx, step, err = changes.context, changes.current_step, changes.last_error
    if ctx is UNSET and step is UNSET and err is UNSET:
        return NO_CHANGES
    ctx_text = step_val = err_text = None
    if ctx is not UNSET:
        ctx_text = "{}" if ctx is None else _encode_map("context", ctx)
    if step is not UNSET and step is not None:
        step_val = check_step_name("current_step", step)
    if err is not UNSET and err is not None:
        err_text = _encode_map("last_error", err)
    return (ctx is not UNSET, ctx_text, step is not UNSET, step_val, err is not UNSET, err_text)


def check_step_name(name: str, value: object) -> str:
    """A step name as stored: the rule definitions apply to names (``MAX_NAME_LENGTH``)."""
    if type(value) is not str:
        raise InvalidRun(f"{name} must be a str, not {type(value).__name__}")
    if not value or len(value) > MAX_NAME_LENGTH or _codec.text_problem(value):
        raise InvalidRun(
            f"{name} must be 1 to {MAX_NAME_LENGTH} characters"
            " with no NUL character or lone surrogate"
        )
    return value


def check_text(name: str, value: object) -> str | None:
    """An optional free-text value (an actor, a comment): None or a storable str."""
    if value is None:
        return None
    if type(value) is not str:
        raise InvalidRun(f"{name} must be a str or None, not {type(value).__name__}")
    problem = _codec.text_problem(value)
    if problem:
        raise InvalidRun(f"{name} {problem}")
    return value


def _encode_map(name: str, value: object) -> str:
    if type(value) is not dict:
        raise InvalidRun(f"{name} must be a dict (or None), not {type(value).__name__}")
    problem = _codec.json_problem(value, name)
    if problem:
        raise InvalidRun(f"{name} cannot be stored as JSON: {problem}")
    return _codec.encode(value)


def encode_json_map(name: str, value: object) -> str:
    """Check and encode a map-valued field (step input, error, ...) for ``::text::jsonb``."""
    return _encode_map(name, value)


async def fetch_write(executor: Executor, query: str, *args: object, row: bool = False) -> Any:
    """Run one write statement with READ COMMITTED semantics, whatever the session's default.

    The statement first runs as is: one round trip, and at the usual default
    (READ COMMITTED) all there is to it. Under a stricter default isolation a
    row changed by a concurrent writer after the statement's snapshot makes
    PostgreSQL refuse it with serialization_failure instead of re-reading the
    row; the statement was its own transaction, so nothing was written, and it
    is run again inside an explicit READ COMMITTED transaction (three more
    round trips, only on that path), where it behaves as documented.
    """
    try:
        if row:
            return await executor.fetchrow(query, *args)
        return await executor.fetchval(query, *args)
    except asyncpg.SerializationError:
        if not isinstance(executor, asyncpg.Pool) and executor.is_in_transaction():
            raise  # the caller's transaction is lost either way: theirs to retry
    if isinstance(executor, asyncpg.Pool):
        async with executor.acquire() as conn:
            return await _fetch_read_committed(conn, query, args, row)
    return await _fetch_read_committed(executor, query, args, row)


async def _fetch_read_committed(conn: Conn, query: str, args: tuple[object, ...], row: bool) -> Any:
    async with conn.transaction(isolation=READ_COMMITTED):
        if row:
            return await conn.fetchrow(query, *args)
        return await conn.fetchval(query, *args)


class StoreBase:
    """What every part of the store shares. Not public: use ``RunStore``."""

    _pool: asyncpg.Pool
    _workflows: dict[str, Workflow]
    _listeners: list[Listener]

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        workflows: Iterable[Workflow] = (),
        listeners: Iterable[Listener] = (),
    ) -> None:
        self._pool = pool
        self._workflows = {}
        self._derived = {}
        self._listeners = list(listeners)
        for workflow in workflows:
            self.register(workflow)

    # Whether the server has RETURNING old.* (PostgreSQL >= 18), which lets a
    # guarded transition be one plain UPDATE. Learnt from the first connection
    # used (asyncpg knows the version from the handshake: no round trip).
    _has_returning_old: bool | None = None

    def _returning_old(self, conn: Conn) -> bool:
        known = self._has_returning_old
        if known is None:
            known = self._has_returning_old = conn.get_server_version() >= (18, 0)
        return known

    def register(self, workflow: Workflow) -> None:
        """Add (or replace) a workflow definition, keyed by its name."""
        if not isinstance(workflow, Workflow):
            raise TypeError(f"register() takes a Workflow, not {type(workflow).__name__}")
        self._workflows[workflow.name] = workflow
        self._derived.clear()

    # Views of the registry that statements send along as arrays, computed
    # once (not per call) and dropped whenever register() changes it.
    _derived: dict[str, Any]

    def _entry_steps(self) -> tuple[list[str], list[str | None]]:
        """(names, entry steps) of the registered workflows, for the one-statement replay."""
        found: tuple[list[str], list[str | None]] | None = self._derived.get("entry_steps")
        if found is None:
            wfs = list(self._workflows.values())
            found = self._derived["entry_steps"] = (
                [w.name for w in wfs],
                [w.entry_step for w in wfs],
            )
        return found

    def _manual_kinds(self, step: str) -> tuple[list[str], list[str]]:
        """Registered workflows declaring ``step`` with a manual kind, and those kinds.

        Sent with a step-run insert so the kind is resolved from the run's
        workflow inside the same statement (no read of the run first).
        """
        by_step: dict[str, tuple[list[str], list[str]]] | None = self._derived.get("manual")
        if by_step is None:
            by_step = self._derived["manual"] = {}
            for name, workflow in self._workflows.items():
                for declared in workflow.steps:
                    if declared.kind != "step":
                        names, kinds = by_step.setdefault(declared.name, ([], []))
                        names.append(name)
                        kinds.append(declared.kind)
        return by_step.get(step, ([], []))

    @property
    def pool(self) -> asyncpg.Pool:
        """The asyncpg pool the store runs its statements on."""
        return self._pool

    @property
    def workflows(self) -> Mapping[str, Workflow]:
        """The registered workflow definitions by name (read-only view)."""
        return dict(self._workflows)

    def _workflow(self, workflow: Workflow | str) -> Workflow:
        if isinstance(workflow, Workflow):
            return workflow
        found = self._workflows.get(workflow) if isinstance(workflow, str) else None
        if found is None:
            raise InvalidWorkflow(workflow)
        return found

    def _definition(self, name: str) -> Workflow | None:
        """The registered definition of a stored run's workflow, if any."""
        return self._workflows.get(name)

    @staticmethod
    def _run_id(run_id: object) -> UUID:
        parsed = parse_id(run_id)
        if parsed is None:
            raise RunNotFound(run_id)
        return parsed

    async def _emit(self, events: Sequence[object]) -> None:
        if self._listeners and events:
            await emit(self._listeners, events)

    @contextlib.asynccontextmanager
    async def _locked_run(self, run_id: object) -> AsyncIterator[tuple[Conn, Run]]:
        """Open a transaction, lock the run's row and yield it as read under the lock.

        Round trips: BEGIN, the locking read, then whatever the body writes,
        then COMMIT. Events must be emitted by the caller after this block
        exits (after commit), never inside it.
        """
        uid = self._run_id(run_id)
        async with self._pool.acquire() as conn, conn.transaction(isolation=READ_COMMITTED):
            text = await conn.fetchval(Q["lock_run"], uid)
            if text is None:
                raise RunNotFound(run_id)
            yield conn, _codec.decode_run(text)

    @staticmethod
    async def _write_run(conn: Conn, run_id: UUID, status: str | None, params: FieldParams) -> Run:
        """Write status (None = unchanged) and fields of a row the caller has locked."""
        with map_db_errors():
            text = await conn.fetchval(Q["write_run"], run_id, status, *params)
        if text is None:  # the caller holds the lock, so the row cannot vanish
            raise RunNotFound(run_id)
        return _codec.decode_run(text)
