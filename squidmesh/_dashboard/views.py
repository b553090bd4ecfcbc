"""What the dashboard's pages show, computed from runs and workflows.

Pure functions and frozen records: no I/O, no HTML. The templates lay these
out; the arithmetic (where a bar starts on the timeline, how wide a status
is on the counts bar, how a duration reads) lives here, where unit tests
reach it without a server or a browser.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from .. import state_machine
from .._types import Run, RunChange, RunStatus, StepAttempt, StepRun
from .._workflow import COMPLETE, NOW_ISO8601, TODAY_ISO8601, Trigger, Workflow

__all__ = (
    "Bar",
    "CountsBar",
    "Entry",
    "FieldView",
    "Lane",
    "Mark",
    "Segment",
    "StepView",
    "Tick",
    "Timeline",
    "TriggerView",
    "WorkflowView",
    "counts_bar",
    "format_duration",
    "format_time",
    "pretty_json",
    "timeline",
    "workflow_view",
)

#: The narrowest a bar is drawn, in percent of the timeline, so that an
#: instant (a step that took a millisecond of a day-long run) stays visible.
MIN_BAR_PERCENT: Final = 0.35
_TICKS: Final = 5
_JSON_ENCODER: Final = msgspec.json.Encoder(enc_hook=str)


# -- values ------------------------------------------------------------------------


def format_time(value: datetime | None, *, precise: bool = False) -> str:
    """An instant in UTC as a person reads it: ``2025-06-01 12:00:03``
    (with milliseconds when ``precise``); empty for None."""
    if value is None:
        return ""
    utc = value.astimezone(UTC)
    text = utc.strftime("%Y-%m-%d %H:%M:%S")
    if precise:
        text += f".{utc.microsecond // 1000:03d}"
    return text


def iso_time(value: datetime | None) -> str:
    """An instant as ISO 8601 in UTC (for ``<time datetime>`` and URLs)."""
    return "" if value is None else value.astimezone(UTC).isoformat()


def format_duration(seconds: float) -> str:
    """A duration as a person reads it: ``850 ms``, ``12.3 s``, ``4 min 05 s``,
    ``2 h 03 min``, ``3 d 4 h``."""
    if not math.isfinite(seconds) or seconds < 0:
        seconds = 0.0
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


#: The most of one JSON value a page shows (a payload may hold up to 64 MiB).
MAX_JSON_CHARS: Final = 100_000


def pretty_json(value: object, *, limit: int = MAX_JSON_CHARS) -> str:
    """A JSON value indented by two spaces, keys in their stored order; cut
    after ``limit`` characters, saying how much was left out."""
    text = msgspec.json.format(_JSON_ENCODER.encode(value), indent=2).decode()
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… ({len(text) - limit:,} more characters not shown)"


def error_summary(error: Mapping[str, Any] | None) -> str:
    """One line for an error map: its ``message`` (or ``error``/``reason``), else its JSON."""
    if not error:
        return ""
    for key in ("message", "error", "reason"):
        value = error.get(key)
        if isinstance(value, str) and value:
            return value
    return _JSON_ENCODER.encode(error).decode()


# -- the counts bar ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """One status on the counts bar: its share drawn from ``left`` (percent)."""

    status: str
    count: int
    left: float
    width: float


@dataclass(frozen=True, slots=True)
class CountsBar:
    """Every status with its count (in the state machine's order), the
    segments to draw (those with runs), and the total."""

    counts: tuple[tuple[str, int], ...]
    segments: tuple[Segment, ...]
    total: int


def counts_bar(counts: Mapping[RunStatus, int] | Mapping[str, int]) -> CountsBar:
    """The counts bar of ``count_runs_by_status``'s answer: each status's share
    of the total, laid end to end from 0 to 100 percent."""
    by_value = {str(status): int(n) for status, n in counts.items()}
    ordered = tuple(
        (status.value, by_value.get(status.value, 0)) for status in state_machine.STATES
    )
    total = sum(n for _, n in ordered)
    segments: list[Segment] = []
    left = 0.0
    for status, n in ordered:
        if n <= 0 or total == 0:
            continue
        width = 100.0 * n / total
        segments.append(Segment(status, n, left, width))
        left += width
    return CountsBar(ordered, tuple(segments), total)


# -- the timeline ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bar:
    """A span on a lane, from ``left`` percent, ``width`` percent wide."""

    left: float
    width: float
    css: str
    title: str
    label: str = ""


@dataclass(frozen=True, slots=True)
class Mark:
    """An instant on a lane, at ``at`` percent."""

    at: float
    css: str
    title: str
    label: str = ""


@dataclass(frozen=True, slots=True)
class Lane:
    """One row of the timeline: the run's status, a step run, or the audit events."""

    kind: str
    label: str
    detail: str
    css: str
    bars: tuple[Bar, ...] = ()
    marks: tuple[Mark, ...] = ()


@dataclass(frozen=True, slots=True)
class Tick:
    """A label on the time axis, at ``at`` percent."""

    at: float
    label: str


@dataclass(frozen=True, slots=True)
class Entry:
    """One thing that happened, for the timeline's list (oldest first);
    ``tone`` is ``bad`` (a failure), ``good`` (a completion) or empty."""

    at: datetime
    offset: str
    kind: str
    text: str
    tone: str


@dataclass(frozen=True, slots=True)
class Timeline:
    """A run's history drawn to scale, from ``start`` to ``end``."""

    start: datetime
    end: datetime
    span: str
    lanes: tuple[Lane, ...]
    ticks: tuple[Tick, ...]
    entries: tuple[Entry, ...]
    failed_attempts: int
    ongoing: bool


class _Scale:
    def __init__(self, start: datetime, end: datetime) -> None:
        self.start = start
        self.seconds = max((end - start).total_seconds(), 0.001)

    def at(self, when: datetime) -> float:
        return min(100.0, max(0.0, 100.0 * (when - self.start).total_seconds() / self.seconds))

    def bar(self, begin: datetime, finish: datetime) -> tuple[float, float]:
        left = self.at(begin)
        width = max(self.at(finish) - left, MIN_BAR_PERCENT)
        return min(left, 100.0 - MIN_BAR_PERCENT), width

    def offset(self, when: datetime) -> str:
        return "+" + format_duration((when - self.start).total_seconds())


def _tone(status: str) -> str:
    """How an entry reads: ``bad`` for a failure, ``good`` for a completion."""
    return {"failed": "bad", "completed": "good"}.get(status, "")


def _attempt_end(attempt: StepAttempt, step: StepRun, end: datetime) -> datetime:
    """Where an attempt's bar ends: when it finished; while it runs, when its
    step finished (a runtime may leave a manual step's attempt open), else now."""
    if attempt.status != "running":
        return attempt.updated_at
    return _step_end(step, end)


def _step_end(step: StepRun, end: datetime) -> datetime:
    return end if step.status in ("pending", "running") else step.updated_at


def timeline(run: Run, *, now: datetime) -> Timeline:
    """The run's transitions, step runs (with their attempts) and audit events
    on one time axis: from the run's creation to its last recorded instant,
    or to ``now`` while the run is not terminal."""
    transitions: Sequence[RunChange] = run.transitions or ()
    step_runs = sorted(run.step_runs or (), key=lambda s: (s.inserted_at, s.step))
    audit = sorted(run.audit_events or (), key=lambda e: e.at)
    ongoing = not state_machine.is_terminal(run.status)
    instants = [run.inserted_at, run.updated_at]
    instants += [t.at for t in transitions]
    for step in step_runs:
        instants += [step.inserted_at, step.updated_at]
        instants += [a.inserted_at for a in step.attempts] + [a.updated_at for a in step.attempts]
    instants += [e.at for e in audit]
    start = min(instants)
    end = max(instants)
    if ongoing:
        end = max(end, now)
    scale = _Scale(start, end)
    lanes: list[Lane] = []
    entries: list[Entry] = []

    # The run's status, one segment per status it held.
    status_bars: list[Bar] = []
    status_marks: list[Mark] = []
    for index, change in enumerate(transitions):
        until = transitions[index + 1].at if index + 1 < len(transitions) else end
        left, width = scale.bar(change.at, until)
        held = format_duration((until - change.at).total_seconds())
        status_bars.append(
            Bar(left, width, f"seg status-{change.to_status}", f"{change.to_status} for {held}")
        )
        moved = (
            f"created ({change.to_status})"
            if change.from_status is None
            else f"{change.from_status} → {change.to_status}"
        )
        status_marks.append(
            Mark(
                scale.at(change.at),
                "transition",
                f"{moved} at {format_time(change.at, precise=True)}",
            )
        )
        entries.append(
            Entry(change.at, scale.offset(change.at), "status", moved, _tone(change.to_status))
        )
    if not transitions:
        left, width = scale.bar(run.inserted_at, end)
        status_bars.append(Bar(left, width, f"seg status-{run.status}", f"now {run.status}"))
        entries.append(
            Entry(run.inserted_at, scale.offset(run.inserted_at), "status", "created", "")
        )
    lanes.append(
        Lane(
            "status", "run", str(run.status), "lane-status", tuple(status_bars), tuple(status_marks)
        )
    )

    failed_attempts = 0
    for step in step_runs:
        finish = _step_end(step, end)
        left, width = scale.bar(step.inserted_at, finish)
        took = format_duration((finish - step.inserted_at).total_seconds())
        bars = [Bar(left, width, f"step step-{step.status}", f"{step.step}: {step.status}, {took}")]
        marks: list[Mark] = []
        entries.append(
            Entry(
                step.inserted_at,
                scale.offset(step.inserted_at),
                "step",
                f"{step.step} began",
                "",
            )
        )
        for attempt in step.attempts:
            a_end = _attempt_end(attempt, step, end)
            a_left, a_width = scale.bar(attempt.inserted_at, a_end)
            a_took = format_duration((a_end - attempt.inserted_at).total_seconds())
            problem = error_summary(attempt.error)
            title = f"{step.step} attempt {attempt.attempt_number}: {attempt.status}, {a_took}"
            if problem:
                title += f": {problem}"
            bars.append(
                Bar(
                    a_left,
                    a_width,
                    f"attempt attempt-{attempt.status}",
                    title,
                    f"#{attempt.attempt_number}",
                )
            )
            if attempt.status == "failed":
                failed_attempts += 1
                marks.append(Mark(a_left + a_width, "attempt-failed-mark", title, "✕"))
                text = f"{step.step} attempt {attempt.attempt_number} failed"
                entries.append(
                    Entry(
                        attempt.updated_at,
                        scale.offset(attempt.updated_at),
                        "attempt",
                        f"{text}: {problem}" if problem else text,
                        "bad",
                    )
                )
            elif attempt.status == "completed":
                entries.append(
                    Entry(
                        attempt.updated_at,
                        scale.offset(attempt.updated_at),
                        "attempt",
                        f"{step.step} attempt {attempt.attempt_number} completed in {a_took}",
                        "",
                    )
                )
            else:
                entries.append(
                    Entry(
                        attempt.inserted_at,
                        scale.offset(attempt.inserted_at),
                        "attempt",
                        f"{step.step} attempt {attempt.attempt_number} running",
                        "",
                    )
                )
        if step.status in ("completed", "failed"):
            entries.append(
                Entry(
                    step.updated_at,
                    scale.offset(step.updated_at),
                    "step",
                    f"{step.step} {step.status} after {took}",
                    _tone(step.status),
                )
            )
        attempts = len(step.attempts)
        failed_here = sum(1 for a in step.attempts if a.status == "failed")
        detail = f"{step.status} · {attempts} attempt{'s' if attempts != 1 else ''}"
        if failed_here:
            detail += f", {failed_here} failed"
        lanes.append(Lane("step", step.step, detail, "lane-step", tuple(bars), tuple(marks)))

    if audit:
        audit_marks: list[Mark] = []
        for event in audit:
            text = _audit_text(event.type, event.step, event.actor, event.comment)
            audit_marks.append(
                Mark(
                    scale.at(event.at),
                    f"audit audit-{event.type}",
                    f"{text} at {format_time(event.at)}",
                    event.type,
                )
            )
            entries.append(
                Entry(
                    event.at,
                    scale.offset(event.at),
                    "audit",
                    text,
                    "bad" if event.type == "rejected" else "",
                )
            )
        lanes.append(
            Lane(
                "audit", "decisions", f"{len(audit)} event(s)", "lane-audit", (), tuple(audit_marks)
            )
        )

    ticks = tuple(
        Tick(100.0 * i / (_TICKS - 1), scale.offset(start + (end - start) * i / (_TICKS - 1)))
        for i in range(_TICKS)
    )
    ordered = sorted(enumerate(entries), key=lambda item: (item[1].at, item[0]))
    return Timeline(
        start=start,
        end=end,
        span=format_duration((end - start).total_seconds()),
        lanes=tuple(lanes),
        ticks=ticks,
        entries=tuple(entry for _, entry in ordered),
        failed_attempts=failed_attempts,
        ongoing=ongoing,
    )


def _audit_text(kind: str, step: str, actor: str | None, comment: str | None) -> str:
    text = f"{step}: {kind}"
    if actor:
        text += f" by {actor}"
    if comment:
        text += f" — “{comment}”"
    return text


def run_duration(run: Run, *, now: datetime) -> str:
    """How long the run has taken: until its last update when terminal, else until ``now``."""
    finish = run.updated_at if state_machine.is_terminal(run.status) else now
    return format_duration((finish - run.inserted_at).total_seconds())


# -- workflows ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldView:
    name: str
    type: str
    note: str


@dataclass(frozen=True, slots=True)
class TriggerView:
    name: str
    is_default: bool
    fields: tuple[FieldView, ...]
    cron: str | None
    timezone: str
    schedule: str
    next_fire: str
    catch_up: int | None


@dataclass(frozen=True, slots=True)
class StepView:
    name: str
    kind: str
    is_entry: bool
    after: tuple[str, ...]
    transitions: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class WorkflowView:
    name: str
    shape: str
    triggers: tuple[TriggerView, ...]
    steps: tuple[StepView, ...]


def _field_note(field: Any) -> str:
    if field.default is TODAY_ISO8601:
        return "default: today (UTC)"
    if field.default is NOW_ISO8601:
        return "default: now (UTC)"
    if field.has_default and callable(field.default):
        return "default: computed at creation"
    if field.has_default:
        try:
            return "default: " + _JSON_ENCODER.encode(field.default).decode()
        except (TypeError, ValueError):  # pragma: no cover - checked by Workflow
            return "has a default"
    return "optional" if field.is_optional else "required"


def cron_schedule(cron: str) -> str:
    """cronsim's English reading of a cron expression (``At 09:00 on Monday
    through Friday``); empty when it has none."""
    from cronsim import CronSim

    expression = {
        "@yearly": "0 0 1 1 *",
        "@annually": "0 0 1 1 *",
        "@monthly": "0 0 1 * *",
        "@weekly": "0 0 * * 0",
        "@daily": "0 0 * * *",
        "@midnight": "0 0 * * *",
        "@hourly": "0 * * * *",
    }.get(cron.strip().lower(), cron)
    try:
        return CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC)).explain()
    except Exception:  # an expression cronsim cannot explain: show it as written
        return ""


def next_fire(trigger: Trigger, now: datetime) -> datetime | None:
    """The next instant the scheduler fires ``trigger``, or None (no cron, or unknown)."""
    if not trigger.cron:
        return None
    try:
        from .._workflow.cron import CronSchedule

        return CronSchedule(trigger.cron, trigger.timezone).next_after(now)
    except Exception:  # no scheduler in this version, or a schedule it refuses
        return None


def _trigger_view(trigger: Trigger, is_default: bool, now: datetime) -> TriggerView:
    fields = tuple(
        FieldView(field.name, field.type_name, _field_note(field)) for field in trigger.payload
    )
    catch_up = getattr(trigger, "catch_up", None)
    fire = next_fire(trigger, now)
    return TriggerView(
        name=trigger.name,
        is_default=is_default,
        fields=fields,
        cron=trigger.cron,
        timezone=trigger.timezone or "UTC",
        schedule=cron_schedule(trigger.cron) if trigger.cron else "",
        next_fire=format_time(fire) + " UTC" if fire is not None else "",
        catch_up=catch_up if trigger.cron and isinstance(catch_up, int) else None,
    )


def _transition_order(workflow: Workflow) -> list[str]:
    """Steps in the order a run meets them: a breadth-first walk from the
    entry step along the transitions as declared, then any step not reached."""
    outgoing: dict[str, list[str]] = {}
    for transition in workflow.transitions:
        outgoing.setdefault(transition.from_step, []).append(transition.to)
    order: list[str] = []
    seen: set[str] = set()
    queue = deque([workflow.entry_step] if workflow.entry_step else [])
    while queue:
        name = queue.popleft()
        if name in seen or name == COMPLETE or workflow.step(name) is None:
            continue
        seen.add(name)
        order.append(name)
        queue.extend(outgoing.get(name, ()))
    order += [step.name for step in workflow.steps if step.name not in seen]
    return order


def workflow_view(workflow: Workflow, *, now: datetime) -> WorkflowView:
    """A workflow as the workflows page shows it: its triggers (the first is
    the default) and its steps in the order runs meet them."""
    triggers = tuple(
        _trigger_view(trigger, index == 0, now) for index, trigger in enumerate(workflow.triggers)
    )
    steps: list[StepView] = []
    if workflow.is_dependency_based:
        for name, after in workflow.step_layout():
            step = workflow.step(name)
            steps.append(StepView(name, step.kind if step else "step", not after, tuple(after), ()))
        shape = "dependencies"
    else:
        edges: dict[str, list[tuple[str, str]]] = {}
        for transition in workflow.transitions:
            edges.setdefault(transition.from_step, []).append((transition.on, transition.to))
        for name in _transition_order(workflow):
            step = workflow.step(name)
            steps.append(
                StepView(
                    name,
                    step.kind if step else "step",
                    name == workflow.entry_step,
                    (),
                    tuple(edges.get(name, ())),
                )
            )
        shape = "transitions"
    return WorkflowView(workflow.name, shape, triggers, tuple(steps))


def workflow_views(workflows: Iterable[Workflow], *, now: datetime) -> list[WorkflowView]:
    return [workflow_view(w, now=now) for w in sorted(workflows, key=lambda w: w.name)]


def since(now: datetime, **delta: float) -> datetime:
    """``now`` minus a ``timedelta(**delta)``, in UTC, to the second."""
    return (now - timedelta(**delta)).astimezone(UTC).replace(microsecond=0)
