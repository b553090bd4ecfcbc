"""What the dashboard's pages show, computed without a server: the timeline's
geometry, the counts bar, durations, workflows, time filters, the cross-site
checks of the action forms."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.requests import Request

from squidmesh import (
    InvalidArgument,
    Run,
    RunAuditEvent,
    RunChange,
    RunStatus,
    StepAttempt,
    StepRun,
)
from squidmesh._dashboard import router, security, views
from tests.integration.workflows import ETL_DAILY, INVOICE_REMINDER

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def change(version: int, before: str | None, after: str, seconds: float) -> RunChange:
    return RunChange(
        position="",
        run_id=uuid.UUID(int=1),
        workflow="w",
        run_version=version,
        from_status=None if before is None else RunStatus(before),
        to_status=RunStatus(after),
        at=at(seconds),
    )


def attempt(number: int, status: Any, begin: float, end: float, **extra: Any) -> StepAttempt:
    return StepAttempt(
        id=uuid.uuid4(),
        attempt_number=number,
        status=status,
        inserted_at=at(begin),
        updated_at=at(end),
        **extra,
    )


def make_run(status: str = "failed", **fields: Any) -> Run:
    values: dict[str, Any] = {
        "id": uuid.UUID(int=1),
        "workflow": "w",
        "trigger": "t",
        "status": RunStatus(status),
        "payload": {},
        "context": {},
        "current_step": None,
        "last_error": None,
        "replayed_from_run_id": None,
        "inserted_at": at(0),
        "updated_at": at(100),
    }
    values.update(fields)
    return Run(**values)


def story() -> Run:
    load = StepRun(
        id=uuid.uuid4(),
        step="load",
        status="completed",
        attempts=[
            attempt(1, "failed", 10, 20, error={"message": "timeout"}),
            attempt(2, "completed", 25, 40),
        ],
        inserted_at=at(10),
        updated_at=at(40),
    )
    send = StepRun(
        id=uuid.uuid4(),
        step="send",
        status="failed",
        attempts=[attempt(1, "failed", 50, 90, error={"reason": "smtp"})],
        inserted_at=at(50),
        updated_at=at(90),
    )
    return make_run(
        transitions=[
            change(1, None, "pending", 0),
            change(2, "pending", "running", 5),
            change(3, "running", "failed", 100),
        ],
        step_runs=[send, load],  # drawn in the order they began
        audit_events=[
            RunAuditEvent(type="approved", step="load", actor="ann", comment="ok", at=at(45))
        ],
    )


# -- values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 ms"),
        (0.8504, "850 ms"),
        (1.25, "1.2 s"),
        (12.3, "12 s"),
        (65, "1 min 05 s"),
        (3600 * 2 + 180, "2 h 03 min"),
        (86400 * 3 + 3600 * 4, "3 d 4 h"),
        (-5, "0 ms"),
        (float("nan"), "0 ms"),
    ],
)
def test_durations_read_as_a_person_says_them(seconds: float, text: str) -> None:
    assert views.format_duration(seconds) == text


def test_times_are_shown_in_utc() -> None:
    berlin = datetime(2025, 6, 1, 14, 0, 3, 456789, tzinfo=UTC).astimezone(
        __import__("zoneinfo").ZoneInfo("Europe/Berlin")
    )
    assert views.format_time(berlin) == "2025-06-01 14:00:03"
    assert views.format_time(berlin, precise=True) == "2025-06-01 14:00:03.456"
    assert views.iso_time(berlin) == "2025-06-01T14:00:03.456789+00:00"
    assert views.format_time(None) == ""


def test_json_is_indented_in_stored_order() -> None:
    assert views.pretty_json({"b": 1, "a": [1, {"c": None}]}) == (
        '{\n  "b": 1,\n  "a": [\n    1,\n    {\n      "c": null\n    }\n  ]\n}'
    )
    assert views.pretty_json({"a": "x" * 50}, limit=20) == (
        '{\n  "a": "xxxxxxxxxx\n… (43 more characters not shown)'
    )
    assert views.error_summary({"message": "boom", "code": 1}) == "boom"
    assert views.error_summary({"code": 1}) == '{"code":1}'
    assert views.error_summary(None) == ""


# -- the counts bar ----------------------------------------------------------------------


def test_the_counts_bar_lays_statuses_end_to_end() -> None:
    bar = views.counts_bar({RunStatus.PENDING: 1, RunStatus.COMPLETED: 2, RunStatus.FAILED: 1})
    assert bar.total == 4
    assert [name for name, _ in bar.counts] == [s.value for s in RunStatus]
    assert [(s.status, s.count, s.left, s.width) for s in bar.segments] == [
        ("pending", 1, 0.0, 25.0),
        ("failed", 1, 25.0, 25.0),
        ("completed", 2, 50.0, 50.0),
    ]


def test_an_empty_counts_bar_has_no_segments() -> None:
    bar = views.counts_bar(dict.fromkeys(RunStatus, 0))
    assert bar.total == 0 and bar.segments == ()
    assert dict(bar.counts) == dict.fromkeys((s.value for s in RunStatus), 0)


# -- the timeline ------------------------------------------------------------------------


def test_the_timeline_is_drawn_to_scale() -> None:
    line = views.timeline(story(), now=at(10_000))
    assert (line.start, line.end, line.span) == (at(0), at(100), "1 min 40 s")
    assert not line.ongoing and line.failed_attempts == 2
    status, load, send, audit = line.lanes
    assert [lane.kind for lane in line.lanes] == ["status", "step", "step", "audit"]
    # one segment per status held, each from its change to the next
    assert [(b.left, b.width, b.css) for b in status.bars] == [
        (0.0, 5.0, "seg status-pending"),
        (5.0, 95.0, "seg status-running"),
        (100.0 - views.MIN_BAR_PERCENT, views.MIN_BAR_PERCENT, "seg status-failed"),
    ]
    assert [m.at for m in status.marks] == [0.0, 5.0, 100.0]
    assert (load.label, send.label) == ("load", "send")
    assert load.detail == "completed · 2 attempts, 1 failed"
    assert [(b.left, b.width, b.css) for b in load.bars] == [
        (10.0, 30.0, "step step-completed"),
        (10.0, 10.0, "attempt attempt-failed"),
        (25.0, 15.0, "attempt attempt-completed"),
    ]
    assert load.bars[1].title == "load attempt 1: failed, 10 s: timeout"
    assert [(m.at, m.label) for m in load.marks] == [(20.0, "✕")]
    assert send.bars[1].title.endswith(": smtp")
    assert [(m.at, m.css) for m in audit.marks] == [(45.0, "audit audit-approved")]
    assert [t.label for t in line.ticks] == [
        "+0 ms",
        "+25 s",
        "+50 s",
        "+1 min 15 s",
        "+1 min 40 s",
    ]


def test_the_timeline_lists_every_entry_oldest_first() -> None:
    entries = views.timeline(story(), now=at(10_000)).entries
    assert [(e.offset, e.text, e.tone) for e in entries] == [
        ("+0 ms", "created (pending)", ""),
        ("+5.0 s", "pending → running", ""),
        ("+10 s", "load began", ""),
        ("+20 s", "load attempt 1 failed: timeout", "bad"),
        ("+40 s", "load attempt 2 completed in 15 s", ""),
        ("+40 s", "load completed after 30 s", "good"),
        ("+45 s", "load: approved by ann — “ok”", ""),
        ("+50 s", "send began", ""),
        ("+1 min 30 s", "send attempt 1 failed: smtp", "bad"),
        ("+1 min 30 s", "send failed after 40 s", "bad"),
        ("+1 min 40 s", "running → failed", "bad"),
    ]


def test_a_run_in_progress_is_drawn_until_now() -> None:
    step = StepRun(
        id=uuid.uuid4(),
        step="load",
        status="running",
        attempts=[attempt(1, "running", 10, 10)],
        inserted_at=at(10),
        updated_at=at(10),
    )
    run = make_run(
        "running",
        updated_at=at(5),
        transitions=[change(1, None, "pending", 0), change(2, "pending", "running", 5)],
        step_runs=[step],
    )
    line = views.timeline(run, now=at(200))
    assert line.ongoing and line.end == at(200)
    assert [(b.left, b.width) for b in line.lanes[1].bars] == [(5.0, 95.0), (5.0, 95.0)]
    assert views.run_duration(run, now=at(200)) == "3 min 20 s"


def test_an_attempt_left_open_ends_with_its_step() -> None:
    step = StepRun(
        id=uuid.uuid4(),
        step="approve",
        status="completed",
        attempts=[attempt(1, "running", 10, 10)],
        inserted_at=at(10),
        updated_at=at(60),
    )
    line = views.timeline(make_run("completed", step_runs=[step]), now=at(1000))
    assert [(b.left, b.width) for b in line.lanes[1].bars] == [(10.0, 50.0), (10.0, 50.0)]


def test_an_instant_run_still_has_a_visible_bar() -> None:
    run = make_run("completed", updated_at=at(0))
    line = views.timeline(run, now=at(50))
    assert [(b.left, b.width) for b in line.lanes[0].bars] == [(0.0, views.MIN_BAR_PERCENT)]
    assert [e.text for e in line.entries] == ["created"]


# -- workflows -------------------------------------------------------------------------


def test_a_transition_workflow_lists_steps_in_the_order_runs_meet_them() -> None:
    view = views.workflow_view(INVOICE_REMINDER, now=datetime(2025, 6, 2, tzinfo=UTC))
    assert view.shape == "transitions"
    assert [(s.name, s.kind, s.is_entry) for s in view.steps] == [
        ("load_invoice", "step", True),
        ("approve", "approval", False),
        ("send_email", "step", False),
        ("record_rejection", "step", False),
    ]
    assert view.steps[1].transitions == (("ok", "send_email"), ("error", "record_rejection"))
    delivery, nightly = view.triggers
    assert delivery.is_default and not nightly.is_default
    assert [(f.name, f.type, f.note) for f in delivery.fields] == [
        ("account_id", "str", "required"),
        ("note", "str", "optional"),
        ("posted_on", "str", "default: today (UTC)"),
    ]
    assert (nightly.cron, nightly.timezone) == ("0 9 * * 1-5", "Etc/UTC")
    assert nightly.schedule == "At 09:00 on Monday through Friday"
    # 2025-06-02 is a Monday: the next tick is that day at 09:00 UTC.
    assert nightly.next_fire in ("2025-06-02 09:00:00 UTC", "")
    assert delivery.cron is None and delivery.schedule == "" and delivery.catch_up is None


def test_a_dependency_workflow_lists_steps_by_phase() -> None:
    view = views.workflow_view(ETL_DAILY, now=T0)
    assert view.shape == "dependencies"
    assert [(s.name, s.after) for s in view.steps] == [
        ("extract", ()),
        ("transform", ("extract",)),
        ("audit", ("extract",)),
        ("load", ("transform",)),
    ]


@pytest.mark.parametrize(
    ("cron", "text"),
    [
        ("@daily", "At 00:00 every day"),
        ("*/15 * * * *", "Every 15th minute of every hour"),
        ("not cron", ""),
    ],
)
def test_cron_schedules_are_explained(cron: str, text: str) -> None:
    assert views.cron_schedule(cron) == text


# -- query values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("  ", None),
        ("2025-01-31T09:00", datetime(2025, 1, 31, 9, tzinfo=UTC)),
        ("2025-01-31T09:00:00Z", datetime(2025, 1, 31, 9, tzinfo=UTC)),
        ("2025-01-31T10:00:00+01:00", datetime(2025, 1, 31, 9, tzinfo=UTC)),
        ("2025-01-31T10:00:00 01:00", datetime(2025, 1, 31, 9, tzinfo=UTC)),  # "+" as a space
        ("2025-01-31T10:00 0100", datetime(2025, 1, 31, 9, tzinfo=UTC)),
        ("2025-01-31 09:00", datetime(2025, 1, 31, 9, tzinfo=UTC)),
    ],
)
def test_time_filters_are_utc_unless_they_say_otherwise(
    text: str, expected: datetime | None
) -> None:
    assert router._time_bound("created_after", text) == expected


def test_a_time_filter_that_is_no_time_is_refused() -> None:
    with pytest.raises(InvalidArgument) as refused:
        router._time_bound("created_before", "yesterday")
    assert refused.value.name == "created_before"
    assert "2025-01-31T09:00" in refused.value.reason


# -- cross-site checks ------------------------------------------------------------------


TOKEN = "A" * 43


def post(headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in {"host": "app.test", **headers}.items()]
    return Request({"type": "http", "method": "POST", "headers": raw, "path": "/"})


@pytest.mark.parametrize(
    ("headers", "submitted", "problem"),
    [
        ({"Cookie": f"squidmesh_csrf={TOKEN}"}, TOKEN, None),
        (
            {
                "Cookie": f"squidmesh_csrf={TOKEN}",
                "Sec-Fetch-Site": "same-origin",
                "Origin": "http://app.test",
            },
            TOKEN,
            None,
        ),
        ({"Cookie": f"squidmesh_csrf={TOKEN}", "Sec-Fetch-Site": "none"}, TOKEN, None),
        ({"Cookie": f"squidmesh_csrf={TOKEN}", "Sec-Fetch-Site": "cross-site"}, TOKEN, "site"),
        ({"Cookie": f"squidmesh_csrf={TOKEN}", "Origin": "http://app.test:8080"}, TOKEN, "origin"),
        ({"Cookie": f"squidmesh_csrf={TOKEN}", "Origin": "null"}, TOKEN, "origin"),
        ({}, TOKEN, "cookie is missing"),
        ({"Cookie": "squidmesh_csrf=short"}, "short", "cookie is missing"),
        ({"Cookie": f"squidmesh_csrf={TOKEN}"}, None, "does not match"),
        ({"Cookie": f"squidmesh_csrf={TOKEN}"}, "B" * 43, "does not match"),
    ],
)
def test_form_posts_must_come_from_the_dashboard(
    headers: dict[str, str], submitted: str | None, problem: str | None
) -> None:
    found = security.csrf_problem(post(headers), submitted)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_a_browser_keeps_its_token() -> None:
    fresh, new = security.csrf_token(post({}))
    assert new and len(fresh) == 43
    kept, new = security.csrf_token(post({"Cookie": f"squidmesh_csrf={fresh}"}))
    assert (kept, new) == (fresh, False)
