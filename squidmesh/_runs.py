"""Run operations: create, replay, read, list, transition, update, cancel.

Each is one statement where no caller code runs under the lock. Writes
return what they wrote and the events to report; the store reports them
after commit.
"""

from __future__ import annotations

import hashlib
from typing import Final
from uuid import UUID

import asyncpg
import msgspec

from . import _codec, _queries, state_machine
from ._errors import (
    IdempotencyConflict,
    InvalidArgument,
    InvalidTransition,
    InvalidWorkflow,
    RunNotFound,
    VersionConflict,
)
from ._events import RunTransitioned, StepFailed
from ._ids import uuid7
from ._payload import build_payload
from ._queries import SQL, Conn, Executor, ServerFeatures
from ._registry import Registry
from ._types import JSONMap, Run, RunStatus
from ._values import MAX_BIGINT, FieldWrites, run_uuid
from ._workflow import Workflow

# Written to the paused step's step run and attempt when its run is cancelled
# (cancel_run on a paused run; pause_run on a cancelling or cancelled run).
CANCELLED_WHILE_PAUSED: Final[JSONMap] = {
    "message": "run cancelled while paused",
    "reason": "cancelled",
}
CANCELLED_WHILE_PAUSED_TEXT: Final = _codec.encode(CANCELLED_WHILE_PAUSED)


class RunOps:
    """The run operations of a store (see the ``RunStore`` methods of the same names)."""

    __slots__ = ("_pool", "_registry", "_server")

    def __init__(self, pool: asyncpg.Pool, registry: Registry, server: ServerFeatures) -> None:
        self._pool = pool
        self._registry = registry
        self._server = server

    # -- creation -----------------------------------------------------------

    async def insert(
        self,
        ex: Executor,
        workflow: Workflow | str,
        payload: object,
        trigger: str | None,
        idempotency_key: object = None,
    ) -> tuple[Run, bool]:
        """Insert a pending run through a trigger; (the run, whether it was created now).

        Without a key: one INSERT on ``ex``. With one: an INSERT that yields
        to an existing run of the same (workflow, key) (the unique index
        decides, so concurrent callers race safely), then, when it yielded,
        the existing run's read and a comparison of fingerprints.
        """
        wf = self._registry.resolve(workflow)
        trig = wf.trigger(trigger)
        text = _codec.encode(build_payload(trig, payload), floats=not trig._no_floats)
        if idempotency_key is None:
            inserted = await _queries.write_row(
                ex, SQL.insert_run, uuid7(), wf.name, trig.name, text, wf.entry_step, None
            )
            assert inserted is not None  # an INSERT ... VALUES returns its row
            return _codec.decode_run(inserted), True
        key = check_idempotency_key(idempotency_key)
        fingerprint = _fingerprint(trig.name, payload)
        # A run holding the key may be deleted between the two statements
        # (prune_runs): then the INSERT wins on the next turn.
        for _ in range(3):
            inserted = await _queries.write_row(
                ex,
                SQL.insert_run_keyed,
                uuid7(),
                wf.name,
                trig.name,
                text,
                wf.entry_step,
                key,
                fingerprint,
            )
            if inserted is not None:
                return _codec.decode_run(inserted), True
            found = await _queries.row(ex, SQL.get_run_by_key, wf.name, key)
            if found is not None:
                run = _codec.decode_run(found)
                if found["idempotency_fingerprint"] != fingerprint:
                    raise IdempotencyConflict(wf.name, key, run.id)
                return run, False
        raise RuntimeError(  # pragma: no cover - needs a delete racing every turn
            f"run with idempotency key {key!r} kept vanishing while it was looked up"
        )

    async def replay(self, ex: Executor, run_id: object) -> Run:
        """Insert a replay of a run; one INSERT ... SELECT on ``ex``."""
        uid = run_uuid(run_id)
        names, entry_steps = self._registry.entry_steps()
        row = await _queries.write_row(
            ex, SQL.insert_replay, uuid7(), uid, names, entry_steps, subject=run_id
        )
        if row is None:
            raise RunNotFound(run_id)
        if row[0] is None:
            raise InvalidWorkflow(row["source_workflow"])
        return _codec.decode_run(row)

    # -- reads --------------------------------------------------------------

    async def get(self, run_id: object) -> Run:
        row = await _queries.row(self._pool, SQL.get_run, run_uuid(run_id))
        if row is None:
            raise RunNotFound(run_id)
        return _codec.decode_run(row)

    # -- state changes ------------------------------------------------------

    async def transition(
        self, run_id: object, to: RunStatus, writes: FieldWrites, expected: int | None
    ) -> tuple[Run, RunStatus]:
        """The run as written and the status it moved from."""
        uid = run_uuid(run_id)
        sources = state_machine.sources_of(to)
        pool = self._pool
        row = None
        # Each statement is a transaction of its own, so they need not share
        # a connection: the common case is one pool call, like raw asyncpg's.
        if self._server.returning_old or await self._fast_paths():
            row = await _queries.write_row(
                pool, SQL.transition_run_fast, uid, to, *writes, sources, expected
            )
        if row is None:
            row = await _queries.write_row(
                pool, SQL.transition_run, uid, to, *writes, sources, expected
            )
        if row is None:
            raise RunNotFound(run_id)
        from_status = row["from_status"]
        if row[0] is None:
            _check_version(run_id, expected, row["from_version"])
            raise InvalidTransition(from_status, to)
        return _codec.decode_run(row), _codec.decode_status(from_status)

    async def update(self, run_id: object, writes: FieldWrites, expected: int | None) -> Run:
        uid = run_uuid(run_id)
        row = await _queries.write_row(self._pool, SQL.update_run, uid, *writes, expected)
        if row is None:
            if expected is not None:
                version = await _queries.value(self._pool, SQL.run_version, uid)
                if version is not None:
                    _check_version(run_id, expected, version)
            raise RunNotFound(run_id)
        return _codec.decode_run(row)

    async def cancel(self, run_id: object, expected: int | None) -> tuple[Run, list[object]]:
        uid = run_uuid(run_id)
        if self._server.returning_old or await self._fast_paths():
            row = await _queries.write_row(self._pool, SQL.cancel_run_fast, uid, expected)
            if row is not None:
                run = _codec.decode_run(row)
                return run, cancel_events(run, row["from_status"], None, None, None)
        # cancel_run_v2 decides every case (a paused run, a refused one, an
        # unknown id; every cancel before PostgreSQL 18) and returns the run
        # in the JSON shape of squidmesh.run_json.
        row = await _queries.write_row(
            self._pool, SQL.cancel_run, uid, CANCELLED_WHILE_PAUSED_TEXT, expected
        )
        if row is None:
            raise RunNotFound(run_id)
        from_status, version, text, failed_step, attempt_number, duration_s = row
        if text is None:
            _check_version(run_id, expected, version)
            raise InvalidTransition(from_status, RunStatus.CANCELLING)
        run = _codec.decode_run(text)
        return run, cancel_events(run, from_status, failed_step, attempt_number, duration_s)

    async def _fast_paths(self) -> bool:
        known = self._server.returning_old
        if known is None:  # once per store: asyncpg knows the version from the handshake
            async with _queries.connection(self._pool) as conn:
                known = self._server.fast_paths(conn)
        return known

    # -- inside a transaction that holds the run's lock ----------------------

    @staticmethod
    async def write(conn: Conn, run_id: UUID, status: str | None, writes: FieldWrites) -> Run:
        """Write status (None = unchanged) and fields of a row ``conn`` has locked."""
        row = await _queries.write_row(conn, SQL.write_run, run_id, status, *writes)
        if row is None:  # the caller holds the lock, so the row cannot vanish
            raise RunNotFound(run_id)
        return _codec.decode_run(row)


def check_idempotency_key(value: object) -> str:
    """An idempotency key as stored: a str of 1 to 255 characters PostgreSQL can hold."""
    if type(value) is not str or not value or len(value) > 255 or _codec.text_problem(value):
        raise InvalidArgument(
            "idempotency_key",
            "must be a str of 1 to 255 characters with no NUL or lone surrogate,"
            f" not {value!r:.80}",
        )
    return value


def check_expected_version(value: object) -> int | None:
    """``expected_version`` as given: None (no check) or a version number."""
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= MAX_BIGINT:
        raise InvalidArgument("expected_version", f"must be None or a positive int, not {value!r}")
    return value


def _check_version(run_id: object, expected: int | None, actual: int) -> None:
    """The version check comes first: a stale caller learns that before legality."""
    if expected is not None and actual != expected:
        raise VersionConflict(run_id, expected, actual)


def _fingerprint(trigger: str, payload: object) -> str:
    """What an idempotent creation is compared on: the trigger and the payload as the
    caller gave it (before defaults), canonically (key order does not matter)."""
    canonical = msgspec.json.encode([trigger, payload], order="sorted")
    return hashlib.sha256(canonical).hexdigest()


def cancel_events(
    run: Run,
    from_status: str,
    failed_step: str | None,
    attempt_number: int | None,
    duration_s: float | None,
) -> list[object]:
    """What a cancel reports: the move, then the paused step it failed, if any."""
    events: list[object] = [
        RunTransitioned(
            run=run, from_status=_codec.decode_status(from_status), to_status=run.status
        )
    ]
    if failed_step is not None:
        events.append(
            StepFailed(
                run=run,
                step=failed_step,
                attempt_number=attempt_number,
                duration_s=duration_s,
                error=dict(CANCELLED_WHILE_PAUSED),
            )
        )
    return events
