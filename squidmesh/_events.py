"""Events reported to listeners after a change commits.

Events share a tagged base so any of them encodes to JSON (for a log or an
outbox) and decodes back through one tagged-union decoder.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
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


class _Delivery:
    """The events one outermost ``emit`` call still has to deliver, in commit order.

    ``owner`` is the task that drains the queue. A task a listener spawns
    inherits a copy of the context, and so sees this delivery too; it must not
    append to it, since nothing guarantees the owner is still draining (or
    even on the same thread) when it gets there.
    """

    __slots__ = ("owner", "pending")

    def __init__(self, owner: asyncio.Task[Any] | None) -> None:
        self.owner = owner
        self.pending: deque[tuple[tuple[Listener, ...], object]] = deque()


_delivery: ContextVar[_Delivery | None] = ContextVar("squidmesh_delivery", default=None)


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop: a coroutine driven by hand
        return None


async def emit(listeners: Sequence[Listener], events: Sequence[object]) -> None:
    """Call every listener with every event, in order; log and drop failures.

    Only called after commit, so a failing listener can never undo a change.
    A listener's returned awaitable is awaited before the next listener runs,
    and the outermost call returns only once every event, including those of
    writes the listeners made, has been delivered.

    A listener may write to the store. The events of such a write are not
    delivered on the spot (the next listener would then see a run's version 2
    before its version 1): they join the queue of the delivery already
    running in this task, after the events committed before them, and the
    store call the listener awaited returns once they are queued, before any
    listener has seen them. So every listener gets events in commit order.
    A write made from another task (one a listener spawns, ``asyncio.gather``,
    ``asyncio.wait_for`` before Python 3.12) is delivered by that task, at
    once: the ordering holds for the writes a listener awaits itself.

    Cancellation: only a cancellation of the calling task propagates (and
    drops what is still queued: the changes stay committed). Anything else a
    listener raises, ``asyncio.CancelledError`` included, is logged and the
    next listener still runs; ``KeyboardInterrupt`` and ``SystemExit``
    propagate.
    """
    task = _current_task()
    batch = tuple(listeners)
    running = _delivery.get()
    if running is not None and running.owner is task:
        running.pending.extend((batch, event) for event in events)
        return
    delivery = _Delivery(task)
    delivery.pending.extend((batch, event) for event in events)
    token = _delivery.set(delivery)
    try:
        while delivery.pending:
            batch, event = delivery.pending.popleft()
            for listener in batch:
                await _deliver(listener, event, task)
    finally:
        # Also on cancellation: a stale delivery left in the context would
        # swallow every later event of this task into a queue nobody drains.
        _delivery.reset(token)


async def _deliver(listener: Listener, event: object, task: asyncio.Task[Any] | None) -> None:
    try:
        result = listener(event)
        if inspect.isawaitable(result):
            await result
    except asyncio.CancelledError:
        # The change is committed: propagating a listener's own CancelledError
        # would make the caller believe the write failed and retry it.
        if task is not None and task.cancelling():
            raise
        _log_failure(listener, event)
    except Exception:
        _log_failure(listener, event)


def _log_failure(listener: Listener, event: object) -> None:
    logger.exception("squidmesh listener %r failed on %s", listener, type(event).__name__)


class EventBus:
    """A store's listeners; ``emit`` delivers events to them after commit."""

    __slots__ = ("_listeners", "_observe", "_watching")

    def __init__(
        self,
        listeners: Iterable[Listener] = (),
        observe: Callable[[Sequence[object]], None] | None = None,
        watching: Callable[[], bool] | None = None,
    ) -> None:
        self._listeners = list(listeners)
        # The store's watcher, told first and synchronously: a waiter of this
        # process gets a run it changed without a query. ``watching`` says
        # whether ``observe`` would do anything with events now.
        self._observe = observe
        self._watching = watching

    @property
    def wanted(self) -> bool:
        """Whether events would reach anyone now. A hot write with nobody to
        tell (no listeners, no watcher) skips building its events: at 16
        connections on a busy client every microsecond of its Python shows."""
        return bool(self._listeners) or (self._watching is not None and self._watching())

    async def emit(self, events: Sequence[object]) -> None:
        """Deliver ``events`` (see ``emit``); free when there is nothing to deliver."""
        if self._observe is not None and events:
            self._observe(events)
        if self._listeners and events:
            await emit(self._listeners, events)
