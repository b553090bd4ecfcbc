"""Events reported to listeners after a change commits.

Events share a tagged base so any of them encodes to JSON (for a log or an
outbox) and decodes back through one tagged-union decoder.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from ._types import JSONMap, Run, RunStatus

logger = logging.getLogger("squidmesh")


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base class of the events squidmesh reports."""


class RunCreated(Event, frozen=True, kw_only=True, tag="run_created"):
    """A run was created (``create_run``, ``create_and_dispatch_run``)."""

    run: Run


class RunReplayed(Event, frozen=True, kw_only=True, tag="run_replayed"):
    """A run was created as a replay; ``run.replayed_from_run_id`` is the source."""

    run: Run


class RunTransitioned(Event, frozen=True, kw_only=True, tag="run_transitioned"):
    """A run moved from one state to another."""

    run: Run
    from_status: RunStatus
    to_status: RunStatus


class StepFailed(Event, frozen=True, kw_only=True, tag="step_failed"):
    """A step was failed by the store (a paused run cancelled, a pause on a
    finished run). ``attempt_number`` is None when the step had no running
    attempt; ``duration_s`` counts from the attempt (or step run) start."""

    run: Run
    step: str
    attempt_number: int | None
    duration_s: float | None
    error: JSONMap


class DispatchEvents(msgspec.Struct, frozen=True):
    """Returned by a dispatch: extra events to report after commit, after the
    run's own event. Any objects may be listed; they are passed as given."""

    events: list[Any]


Listener = Callable[[Any], object] | Callable[[Any], Awaitable[object]]


async def emit(listeners: Sequence[Listener], events: Sequence[object]) -> None:
    """Call every listener with every event, in order; log and drop failures.

    Only called after commit, so a failing listener can never undo a change.
    """
    for event in events:
        for listener in listeners:
            try:
                result = listener(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception(
                    "squidmesh listener %r failed on %s", listener, type(event).__name__
                )
