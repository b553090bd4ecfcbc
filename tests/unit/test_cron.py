"""Cron triggers: what a definition refuses, and the ticks of a schedule.

Ticks are computed from explicit instants only; the daylight-saving days are
Europe/Berlin's of 2026 (clocks go from 02:00 to 03:00 on 29 March, from
03:00 back to 02:00 on 25 October) and America/New_York's.
"""

from __future__ import annotations

import inspect
import logging
import pickle
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import anyio
import pytest

import squidmesh
from squidmesh import (
    NOW_ISO8601,
    TODAY_ISO8601,
    Field,
    Step,
    Trigger,
    Workflow,
    WorkflowDefinitionError,
)
from squidmesh._errors import InvalidArgument
from squidmesh._scheduler import MAX_BACKOFF, check_interval, run_scheduler
from squidmesh._workflow.cron import (
    MAX_CATCH_UP,
    MAX_CRON_TRIGGER_NAME,
    CronSchedule,
    cron_problem,
    tick_key,
    timezone_problem,
)

BERLIN = ZoneInfo("Europe/Berlin")


def workflow(*triggers: Trigger) -> Workflow:
    return Workflow("wf", triggers=triggers, steps=[Step("s")])


def problems(*triggers: Trigger) -> list[str]:
    with pytest.raises(WorkflowDefinitionError) as info:
        workflow(*triggers)
    return info.value.problems


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def berlin(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, *, fold: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN, fold=fold)


def all_ticks(schedule: CronSchedule, start: datetime, end: datetime) -> list[datetime]:
    """Every tick in (start, end], walking forwards with next_after."""
    ticks: list[datetime] = []
    at = start
    while (tick := schedule.next_after(at)) is not None and tick <= end:
        ticks.append(tick)
        at = tick
    return ticks


# -- refused at definition time -------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "says"),
    [
        ("61 * * * *", "Bad minute"),
        ("* 24 * * *", "Bad hour"),
        ("0 9 * * MONDAY", "Bad day-of-week"),
        ("0 9 * 13 *", "Bad month"),
        ("0 0 30 2 *", "Bad day-of-month"),  # never: February has no 30th
        ("0 9 * *", "expected 5 fields"),
        ("0 0 9 * * 1-5", "got 6"),  # seconds are not taken
        ("every day", "expected 5 fields"),
        ("@reboot", "expected 5 fields"),
        ("*/0 * * * *", "Bad minute"),
        ("5-1 * * * *", "Bad minute"),
    ],
)
def test_an_invalid_expression_is_refused(cron: str, says: str) -> None:
    (problem,) = problems(Trigger("nightly", cron=cron))
    assert problem.startswith(f"trigger 'nightly': invalid cron expression {cron!r}: ")
    assert says in problem
    assert cron_problem(cron) is not None


@pytest.mark.parametrize(
    "cron",
    [
        "0 9 * * 1-5",
        "*/15 * * * *",
        "0 0 L * *",
        "0 9 LW * *",
        "0 9 * * MON#2",
        "0 9 * * 5L",
        "0 0 1 JAN,JUL *",
        "30 2 * * *",
        "0 0 29 2 *",
        "  0 9 * * *  ",
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@HOURLY",
    ],
)
def test_a_valid_expression_is_accepted(cron: str) -> None:
    assert cron_problem(cron) is None
    assert workflow(Trigger("t", cron=cron)).trigger("t").cron == cron


@pytest.mark.parametrize(
    ("timezone", "says"),
    [
        ("Mars/Olympus_Mons", "no such IANA time zone"),
        ("europe/berlin", "no such IANA time zone"),  # names are case-sensitive
        (" UTC", "no such IANA time zone"),
        ("../etc/passwd", "not an IANA time zone name"),
        ("/etc/localtime", "not an IANA time zone name"),
        ("localtime", "the host's zone"),
        ("Europe/Berlin\x00", "not an IANA time zone name"),
    ],
)
def test_an_unknown_zone_is_refused(timezone: str, says: str) -> None:
    (problem,) = problems(Trigger("t", cron="0 9 * * *", timezone=timezone))
    assert problem.startswith(f"trigger 't': invalid timezone {timezone!r}: ")
    assert says in problem
    assert timezone_problem(timezone) is not None


def test_a_zone_is_checked_without_a_cron_too() -> None:
    (problem,) = problems(Trigger("t", timezone="Nowhere/Land"))
    assert "invalid timezone 'Nowhere/Land'" in problem


@pytest.mark.parametrize("timezone", [None, "UTC", "Etc/UTC", "Europe/Berlin", "Asia/Kolkata"])
def test_known_zones_and_none_are_accepted(timezone: str | None) -> None:
    assert workflow(Trigger("t", cron="0 9 * * *", timezone=timezone)).trigger("t").timezone == (
        timezone
    )


def test_a_cron_trigger_with_a_required_field_without_default_is_refused() -> None:
    (problem,) = problems(
        Trigger(
            "nightly",
            [
                Field("region", str),  # the one refused
                Field("note", str, required=False),
                Field("day", str, default=TODAY_ISO8601),
                Field("tags", list, default=list),
                Field("limit", int, required=True, default=10),
            ],
            cron="0 9 * * *",
        )
    )
    assert problem.startswith("trigger 'nightly': field 'region' is required and has no default")
    assert "give it a default or required=False" in problem


def test_the_same_required_field_is_fine_without_a_cron() -> None:
    assert workflow(Trigger("manual", [Field("region", str)])).trigger("manual")


@pytest.mark.parametrize("catch_up", [0, -1, MAX_CATCH_UP + 1, True, 1.0, "3", None])
def test_a_bad_catch_up_is_refused(catch_up: object) -> None:
    (problem,) = problems(Trigger("t", cron="0 9 * * *", catch_up=catch_up))  # type: ignore[arg-type]
    assert problem == (
        f"trigger 't': catch_up must be an int from 1 to {MAX_CATCH_UP}, got {catch_up!r}"
    )


def test_catch_up_needs_a_cron() -> None:
    (problem,) = problems(Trigger("t", catch_up=3))
    assert problem == "trigger 't': catch_up applies to a cron trigger only; this one has no cron"
    assert workflow(Trigger("t", cron="@hourly", catch_up=MAX_CATCH_UP))


def test_a_cron_trigger_name_leaves_room_for_the_tick_in_its_keys() -> None:
    longest = "n" * MAX_CRON_TRIGGER_NAME
    assert len(tick_key(longest, utc(2026, 12, 31, 23, 59))) == 255
    assert workflow(Trigger(longest, cron="@daily"))
    (problem,) = problems(Trigger(longest + "n", cron="@daily"))
    assert "a cron trigger's name is at most 224 characters" in problem
    # Without a cron the usual limit holds.
    assert workflow(Trigger("n" * 255))


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        Trigger("a", cron="61 * * * *"),
        Trigger("b", cron="0 9 * * *", timezone="Nowhere/Land"),
        Trigger("c", [Field("x", int)], cron="@daily"),
        Trigger("d", cron="@daily", catch_up=0),
    )
    assert [p.split(":")[0] for p in found] == [f"trigger {n!r}" for n in "abcd"]


def test_a_trigger_with_catch_up_is_a_frozen_definition() -> None:
    trigger = Trigger("t", cron="30 2 * * *", timezone="Europe/Berlin", catch_up=3)
    assert trigger.catch_up == 3 and Trigger("t").catch_up == 1
    assert repr(trigger) == (
        "Trigger('t', cron='30 2 * * *', timezone='Europe/Berlin', catch_up=3)"
    )
    assert repr(Trigger("t", cron="@daily")) == "Trigger('t', cron='@daily')"
    assert pickle.loads(pickle.dumps(trigger)) == trigger
    assert trigger != Trigger("t", cron="30 2 * * *", timezone="Europe/Berlin")
    assert hash(trigger) == hash(Trigger("t", cron="30 2 * * *", timezone="Europe/Berlin"))
    with pytest.raises(AttributeError):
        trigger.catch_up = 2  # type: ignore[misc]


# -- ticks -------------------------------------------------------------------------


def test_the_key_is_the_trigger_and_the_tick_as_a_utc_instant() -> None:
    assert tick_key("nightly", utc(2026, 3, 29, 1)) == "cron:nightly:2026-03-29T01:00:00+00:00"
    assert tick_key("nightly", berlin(2026, 3, 29, 3)) == "cron:nightly:2026-03-29T01:00:00+00:00"


def test_latest_includes_a_tick_at_now_and_excludes_after() -> None:
    schedule = CronSchedule("*/10 * * * *", None)
    now = utc(2026, 5, 1, 12, 0)
    assert schedule.latest(now, after=None, limit=1) == [now]
    assert schedule.latest(now - timedelta(microseconds=1), after=None, limit=1) == [
        utc(2026, 5, 1, 11, 50)
    ]
    assert schedule.latest(now + timedelta(seconds=59.5), after=None, limit=3) == [
        utc(2026, 5, 1, 11, 40),
        utc(2026, 5, 1, 11, 50),
        now,
    ]
    assert schedule.latest(now, after=utc(2026, 5, 1, 11, 40), limit=5) == [
        utc(2026, 5, 1, 11, 50),
        now,
    ]
    assert schedule.latest(now, after=now, limit=5) == []
    assert schedule.next_after(now) == utc(2026, 5, 1, 12, 10)
    assert schedule.next_after(now - timedelta(microseconds=1)) == now


def test_weekdays_at_nine_in_berlin() -> None:
    schedule = CronSchedule("0 9 * * 1-5", "Europe/Berlin")
    # Saturday 2026-03-28 noon: the latest is Friday's, 09:00 CET = 08:00 UTC.
    saturday = utc(2026, 3, 28, 12)
    assert schedule.latest(saturday, after=None, limit=1) == [utc(2026, 3, 27, 8)]
    # Monday after the change: 09:00 CEST = 07:00 UTC.
    assert schedule.next_after(saturday) == utc(2026, 3, 30, 7)


def test_daily_0230_on_berlins_spring_forward_day_fires_once_at_0300() -> None:
    schedule = CronSchedule("30 2 * * *", "Europe/Berlin")
    ticks = all_ticks(schedule, utc(2026, 3, 27), utc(2026, 3, 31))
    assert ticks == [
        berlin(2026, 3, 27, 2, 30),  # CET: 01:30 UTC
        berlin(2026, 3, 28, 2, 30),
        berlin(2026, 3, 29, 3, 0),  # no 02:30 that day: once, at 03:00 CEST (01:00 UTC)
        berlin(2026, 3, 30, 2, 30),  # CEST: 00:30 UTC
    ]
    assert [t.isoformat() for t in ticks] == [
        "2026-03-27T01:30:00+00:00",
        "2026-03-28T01:30:00+00:00",
        "2026-03-29T01:00:00+00:00",
        "2026-03-30T00:30:00+00:00",
    ]
    # Walking back gives the same ticks.
    assert schedule.latest(utc(2026, 3, 31), after=utc(2026, 3, 27), limit=10) == ticks
    assert schedule.latest(utc(2026, 3, 29, 1), after=None, limit=1) == [ticks[2]]
    assert schedule.latest(utc(2026, 3, 29, 0, 59, 59), after=None, limit=1) == [ticks[1]]


def test_daily_0230_on_berlins_fall_back_day_fires_once_at_the_first_0230() -> None:
    schedule = CronSchedule("30 2 * * *", "Europe/Berlin")
    ticks = all_ticks(schedule, utc(2026, 10, 23), utc(2026, 10, 27))
    assert [t.isoformat() for t in ticks] == [
        "2026-10-23T00:30:00+00:00",
        "2026-10-24T00:30:00+00:00",
        "2026-10-25T00:30:00+00:00",  # 02:30 CEST, the first of the two
        "2026-10-26T01:30:00+00:00",  # CET
    ]
    assert ticks[2] == berlin(2026, 10, 25, 2, 30, fold=0).astimezone(UTC)
    # At the second 02:30 (01:30 UTC) and after it, nothing new is due.
    second = berlin(2026, 10, 25, 2, 30, fold=1)
    assert second.astimezone(UTC) == utc(2026, 10, 25, 1, 30)
    assert schedule.latest(second, after=None, limit=1) == [ticks[2]]
    assert schedule.latest(second, after=ticks[2], limit=5) == []
    assert schedule.next_after(second) == ticks[3]
    assert schedule.latest(utc(2026, 10, 27), after=utc(2026, 10, 23), limit=10) == ticks


def test_an_interval_schedule_fires_on_the_instants_of_both_passes() -> None:
    # A wildcard hour runs on real time: the repeated hour twice, the
    # missing hour not at all (Debian cron's rule for such jobs).
    schedule = CronSchedule("0,30 * * * *", "Europe/Berlin")
    fall = all_ticks(schedule, utc(2026, 10, 24, 22, 59), utc(2026, 10, 25, 2, 0))
    assert [t.astimezone(BERLIN).strftime("%H:%M%z") for t in fall] == [
        "01:00+0200",
        "01:30+0200",
        "02:00+0200",
        "02:30+0200",
        "02:00+0100",
        "02:30+0100",
        "03:00+0100",
    ]
    spring = all_ticks(schedule, utc(2026, 3, 28, 23, 59), utc(2026, 3, 29, 1, 30))
    assert [t.astimezone(BERLIN).strftime("%H:%M") for t in spring] == [
        "01:00",
        "01:30",
        "03:00",
        "03:30",
    ]


def test_new_york_spring_forward_and_fall_back() -> None:
    schedule = CronSchedule("30 2 * * *", "America/New_York")
    spring = all_ticks(schedule, utc(2026, 3, 7, 12), utc(2026, 3, 9, 12))
    assert [t.isoformat() for t in spring] == [
        "2026-03-08T07:00:00+00:00",  # 03:00 EDT: no 02:30 that day
        "2026-03-09T06:30:00+00:00",
    ]
    fall = all_ticks(schedule, utc(2026, 10, 31, 12), utc(2026, 11, 2, 12))
    assert [t.isoformat() for t in fall] == [
        "2026-11-01T07:30:00+00:00",  # 02:30 EST (New York repeats 01:00-02:00, not 02:30)
        "2026-11-02T07:30:00+00:00",
    ]


def test_utc_names_and_none_read_the_same() -> None:
    now = utc(2026, 7, 1, 10, 17)
    expected = [utc(2026, 7, 1, 9), utc(2026, 7, 1, 10)]
    for timezone in (None, "UTC", "Etc/UTC"):
        assert CronSchedule("@hourly", timezone).latest(now, after=None, limit=2) == expected


def test_a_rare_schedule_finds_its_ticks_years_apart() -> None:
    schedule = CronSchedule("0 0 29 2 *", "Europe/Berlin")
    now = utc(2026, 6, 1)
    assert schedule.latest(now, after=None, limit=2) == [
        utc(2020, 2, 28, 23),
        utc(2024, 2, 28, 23),
    ]
    assert schedule.next_after(now) == utc(2028, 2, 28, 23)


def test_catch_up_takes_the_most_recent_missed_ticks_oldest_first() -> None:
    schedule = CronSchedule("0 * * * *", None)
    last_fired = utc(2026, 1, 1, 0)
    now = utc(2026, 1, 1, 10, 30)
    assert schedule.latest(now, after=last_fired, limit=3) == [
        utc(2026, 1, 1, 8),
        utc(2026, 1, 1, 9),
        utc(2026, 1, 1, 10),
    ]
    assert len(schedule.latest(now, after=last_fired, limit=100)) == 10


def test_a_cron_schedule_refuses_what_a_definition_refuses() -> None:
    with pytest.raises(ValueError, match="Bad hour"):
        CronSchedule("0 25 * * *", None)
    with pytest.raises(ValueError, match="no such IANA time zone"):
        CronSchedule("0 9 * * *", "Nowhere/Land")
    assert repr(CronSchedule("@daily", "Etc/UTC")) == "CronSchedule('@daily', 'Etc/UTC')"


# -- the store's methods -------------------------------------------------------------


def test_the_store_methods_have_the_contracts_signatures() -> None:
    fire = inspect.signature(squidmesh.RunStore.fire_due_triggers).parameters
    assert list(fire) == ["self", "now"]
    assert fire["now"].kind is inspect.Parameter.KEYWORD_ONLY and fire["now"].default is None
    assert inspect.iscoroutinefunction(squidmesh.RunStore.fire_due_triggers)
    scheduler = inspect.signature(squidmesh.RunStore.scheduler).parameters
    assert list(scheduler) == ["self", "interval"]
    assert scheduler["interval"].kind is inspect.Parameter.KEYWORD_ONLY
    assert scheduler["interval"].default == 1.0


@pytest.mark.parametrize("interval", [0, -1, float("nan"), float("inf"), True, "1", None])
def test_a_bad_interval_is_refused(interval: object) -> None:
    with pytest.raises(InvalidArgument, match="interval"):
        check_interval(interval)


@pytest.mark.parametrize("interval", [0.001, 1, 2.5])
def test_a_good_interval_is_taken(interval: float) -> None:
    assert check_interval(interval) == interval


def _defaults(fields: Sequence[Field]) -> Trigger:
    return Trigger("t", fields, cron="@daily")


def test_now_defaults_are_accepted_on_a_cron_trigger() -> None:
    assert workflow(_defaults([Field("at", str, default=NOW_ISO8601)]))


# -- the background loop ---------------------------------------------------------------

_REAL_SLEEP = anyio.sleep


def _record_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Make ``anyio.sleep`` note its seconds and only yield: no test waits for a backoff."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await _REAL_SLEEP(0)

    monkeypatch.setattr(anyio, "sleep", sleep)
    return slept


async def test_the_loop_logs_retries_with_backoff_and_recovers(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept = _record_sleeps(monkeypatch)
    outcomes: list[BaseException | None] = [
        ConnectionResetError("the server went away"),
        OSError("connection refused"),
        OSError("connection refused"),
        None,
        RuntimeError("again"),
        None,
    ]
    done = anyio.Event()

    async def fire() -> None:
        if not outcomes:
            done.set()
            await anyio.sleep_forever()
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    with caplog.at_level(logging.INFO, logger="squidmesh.scheduler"):
        async with anyio.create_task_group() as group:
            group.start_soon(run_scheduler, fire, 0.5)
            await done.wait()
            group.cancel_scope.cancel()
    # Doubling from the interval after each failure in a row; the interval after a success.
    assert slept == [1.0, 2.0, 4.0, 0.5, 1.0, 0.5]
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "firing cron triggers failed; retrying in 1 s"
    assert caplog.records[0].exc_info is not None  # the first failure with its traceback
    assert messages[1].startswith("firing cron triggers failed 2 times in a row (OSError:")
    assert "works again after 3 failed attempt(s)" in messages[3]
    assert messages[4] == "firing cron triggers failed; retrying in 1 s"


@pytest.mark.parametrize(("interval", "cap"), [(1.0, MAX_BACKOFF), (120.0, 120.0)])
async def test_the_backoff_stops_growing_at_30_seconds_or_the_interval(
    monkeypatch: pytest.MonkeyPatch, interval: float, cap: float
) -> None:
    slept = _record_sleeps(monkeypatch)

    async def fire() -> None:
        raise OSError("down")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(run_scheduler, fire, interval)
            while len(slept) < 40:
                await _REAL_SLEEP(0)
            group.cancel_scope.cancel()
    assert max(slept) == cap and slept[-1] == cap
