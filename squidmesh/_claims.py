"""claim_runs: hand the oldest pending runs to a worker, moved to running.

One statement per call (``sql/queries/claims.sql`` says how it picks, locks
and writes): concurrent claimers, in this process or others, skip the runs
one another hold instead of waiting, and never get the same run.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import asyncpg

from . import _codec, _queries
from ._errors import InvalidArgument
from ._events import RunTransitioned
from ._queries import SQL
from ._types import Run, RunChanges, RunStatus
from ._values import coerce_changes, field_writes
from ._workflow import Workflow, name_problem

# The most runs one claim takes: one statement holds that many row locks and
# returns that many runs in one result.
MAX_CLAIM: Final = 1000


class ClaimOps:
    """The claim operation of a store (see ``RunStore.claim_runs``)."""

    __slots__ = ("_pool",)

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def claim(
        self,
        workflow: object,
        limit: object,
        changes: RunChanges | Mapping[str, Any] | None,
    ) -> tuple[list[Run], list[object]]:
        """Claim up to ``limit`` pending runs; (the runs oldest first, their events).

        Every argument is checked before anything is sent.
        """
        name = _check_workflow(workflow)
        size = _check_limit(limit)
        writes = field_writes(coerce_changes(changes))
        # One statement in its own transaction: write_rows runs it at READ
        # COMMITTED whatever the session's default, where a row another
        # claimer moved meanwhile is re-checked (and left out), not an error.
        if name is None:
            rows = await _queries.write_rows(self._pool, SQL.claim_runs, size, *writes)
        else:
            rows = await _queries.write_rows(
                self._pool, SQL.claim_runs_by_workflow, size, name, *writes
            )
        # An UPDATE returns its rows in no set order; sorting at most
        # MAX_CLAIM runs here keeps a Sort node out of the statement's plan.
        # Python orders UUIDs as PostgreSQL does (by their 128-bit value).
        runs = sorted(_codec.decode_runs(rows), key=_claim_order)
        events: list[object] = [
            RunTransitioned(run=run, from_status=RunStatus.PENDING, to_status=RunStatus.RUNNING)
            for run in runs
        ]
        return runs, events


def _claim_order(run: Run) -> tuple[datetime, UUID]:
    return run.inserted_at, run.id


def _check_workflow(value: object) -> str | None:
    """The workflow name to filter on, None for all.

    Any name is accepted, registered or not: a worker may claim the runs of a
    workflow this process does not define. A name no run can have (empty,
    too long, holding a NUL) is refused rather than matching nothing, since
    a claimer polling it would silently never get work.
    """
    if value is None:
        return None
    if isinstance(value, Workflow):
        return value.name
    if not isinstance(value, str):
        raise InvalidArgument(
            "workflow", f"must be a Workflow, a workflow name or None, not {value!r}"
        )
    problem = name_problem("workflow", value)
    if problem is not None:
        raise InvalidArgument("workflow", problem)
    return value


def _check_limit(value: object) -> int:
    # type() rather than isinstance(): True is an int, and never a count.
    if type(value) is not int or not 1 <= value <= MAX_CLAIM:
        raise InvalidArgument("limit", f"must be an int from 1 to {MAX_CLAIM}, not {value!r}")
    return value
