"""Cron triggers that fire: ``fire_due_triggers`` and ``scheduler()`` on a real PostgreSQL.

Every tick is decided by an explicit ``now``, never by sleeping until a
wall-clock minute: each tick once, nothing twice at the same ``now``, the
first sight, ``catch_up``, Europe/Berlin's daylight-saving days, the state
kept in the database, four processes firing at once. Only the background
``scheduler()`` reads the database clock, with a ``* * * * *`` trigger,
which is due the moment it is first seen.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import textwrap
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

import squidmesh
from squidmesh import (
    NOW_ISO8601,
    TODAY_ISO8601,
    Field,
    RunCreated,
    RunStatus,
    RunStore,
    Step,
    Transition,
    Trigger,
    Workflow,
)
from squidmesh._errors import InvalidArgument
from squidmesh._scheduler import BATCH
from squidmesh._workflow.cron import CronSchedule, tick_key
from squidmesh.testing import wait_until_blocked
from tests.integration.test_privileges import _as_role
from tests.integration.test_search_path import _EVIL_SCHEMA

REPO = Path(__file__).resolve().parents[2]

REPORTS = Workflow(
    "reports",
    triggers=[
        Trigger("manual", [Field("region", str)]),
        Trigger(
            "every10",
            [
                Field("region", str, default="eu"),
                Field("day", str, default=TODAY_ISO8601),
                Field("at", str, default=NOW_ISO8601),
                Field("tags", list, default=list),
                Field("note", str, required=False),
            ],
            cron="*/10 * * * *",
        ),
    ],
    steps=[Step("build"), Step("send")],
    transitions=[
        Transition("build", on="ok", to="send"),
        Transition("send", on="ok", to="complete"),
    ],
)

HOURLY = Workflow(
    "hourly",
    triggers=[
        Trigger("one", cron="0 * * * *"),
        Trigger("three", cron="0 * * * *", catch_up=3),
    ],
    steps=[Step("work")],
)

NIGHTLY_BERLIN = Workflow(
    "nightly.berlin",
    triggers=[Trigger("nightly", cron="30 2 * * *", timezone="Europe/Berlin")],
    steps=[Step("work")],
)

EVERY_MINUTE = Workflow(
    "every.minute", triggers=[Trigger("tick", cron="* * * * *")], steps=[Step("work")]
)

# For the race between processes: dense, sparse and catch-up triggers in
# two workflows (a worker imports them from this module).
RACE = [
    Workflow(
        "race.a",
        triggers=[
            Trigger("minute", cron="* * * * *"),
            Trigger("five", cron="*/5 * * * *", catch_up=4),
            Trigger("hour", cron="0 * * * *", catch_up=2),
        ],
        steps=[Step("work")],
    ),
    Workflow(
        "race.b",
        triggers=[
            Trigger("minute", cron="* * * * *", catch_up=10),
            Trigger("berlin", cron="*/7 9-17 * * 1-5", timezone="Europe/Berlin", catch_up=3),
        ],
        steps=[Step("work")],
    ),
]


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def tick_of(run: squidmesh.Run) -> str:
    """``<trigger>@<tick>`` of a cron run, from its idempotency key."""
    key = run.idempotency_key
    assert key is not None and key.startswith(f"cron:{run.trigger}:")
    return f"{run.trigger}@{key.removeprefix(f'cron:{run.trigger}:')}"


def ticks(runs: Iterable[squidmesh.Run]) -> list[str]:
    return [tick_of(run) for run in runs]


def make_store(
    pool: asyncpg.Pool, *workflows: Workflow, events: list[Any] | None = None
) -> RunStore:
    return RunStore(pool, workflows=workflows, listeners=[] if events is None else [events.append])


async def stored_ticks(pool: asyncpg.Pool, workflow: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT trigger, idempotency_key FROM squidmesh.runs WHERE workflow = $1"
        " ORDER BY idempotency_key",
        workflow,
    )
    return [
        f"{r['trigger']}@{r['idempotency_key'].removeprefix('cron:' + r['trigger'] + ':')}"
        for r in rows
    ]


# -- each tick once ------------------------------------------------------------------


async def test_a_due_tick_creates_one_run_with_the_triggers_defaults(
    pool: asyncpg.Pool, events: list[Any]
) -> None:
    store = make_store(pool, REPORTS, events=events)
    now = utc(2026, 5, 4, 12, 5, 30)
    (run,) = await store.fire_due_triggers(now=now)
    assert run.workflow == "reports" and run.trigger == "every10"
    assert run.idempotency_key == "cron:every10:2026-05-04T12:00:00+00:00"
    assert run.status is RunStatus.PENDING and run.current_step == "build"
    # The defaults, read at the tick: a run caught up later carries its tick's date.
    assert run.payload == {
        "region": "eu",
        "day": "2026-05-04",
        "at": "2026-05-04T12:00:00.000000+00:00",
        "tags": [],
    }
    assert [type(e) for e in events] == [RunCreated] and events[0].run == run
    assert await store.get_run(run.id) == run
    # The same key and payload through the API find the tick's run: no conflict.
    again, created = await store.get_or_create_run(
        "reports", {}, trigger="every10", idempotency_key=run.idempotency_key
    )
    assert (again.id, created) == (run.id, False)


async def test_each_tick_once_and_a_second_call_at_the_same_now_creates_nothing(
    pool: asyncpg.Pool, events: list[Any]
) -> None:
    store = make_store(pool, REPORTS, events=events)
    start = utc(2026, 5, 4, 12, 0)
    created: list[str] = []
    for minute in range(0, 45):
        now = start + timedelta(minutes=minute, seconds=7)
        runs = await store.fire_due_triggers(now=now)
        created += ticks(runs)
        assert await store.fire_due_triggers(now=now) == []
        assert await store.fire_due_triggers(now=now - timedelta(minutes=3)) == []
    assert created == [f"every10@2026-05-04T12:{m:02}:00+00:00" for m in (0, 10, 20, 30, 40)]
    assert await stored_ticks(pool, "reports") == created
    assert len(events) == 5
    # A new store (no memory of what was due) at the same now: nothing.
    assert (
        await make_store(pool, REPORTS).fire_due_triggers(now=start + timedelta(minutes=44)) == []
    )


async def test_a_tick_at_exactly_now_is_due(pool: asyncpg.Pool) -> None:
    store = make_store(pool, REPORTS)
    (run,) = await store.fire_due_triggers(now=utc(2026, 5, 4, 12, 10))
    assert tick_of(run) == "every10@2026-05-04T12:10:00+00:00"
    assert await store.fire_due_triggers(now=utc(2026, 5, 4, 12, 19, 59, 999999)) == []
    (run,) = await store.fire_due_triggers(now=utc(2026, 5, 4, 12, 20))
    assert tick_of(run) == "every10@2026-05-04T12:20:00+00:00"


async def test_now_in_another_zone_is_the_same_instant(pool: asyncpg.Pool) -> None:
    store = make_store(pool, REPORTS)
    tokyo = datetime(2026, 5, 4, 21, 5, tzinfo=ZoneInfo("Asia/Tokyo"))  # 12:05 UTC
    (run,) = await store.fire_due_triggers(now=tokyo)
    assert tick_of(run) == "every10@2026-05-04T12:00:00+00:00"


async def test_first_sight_fires_only_the_latest_due_tick(pool: asyncpg.Pool) -> None:
    store = make_store(pool, HOURLY)
    runs = await store.fire_due_triggers(now=utc(2026, 5, 4, 10, 30))
    # catch_up does not apply the first time: only the latest tick, for both.
    assert ticks(runs) == ["one@2026-05-04T10:00:00+00:00", "three@2026-05-04T10:00:00+00:00"]


async def test_catch_up_fires_the_most_recent_missed_ticks_oldest_first(
    pool: asyncpg.Pool, events: list[Any]
) -> None:
    store = make_store(pool, HOURLY, events=events)
    await store.fire_due_triggers(now=utc(2026, 5, 4, 0, 0, 30))
    events.clear()
    # Ten hours without a scheduler: 01:00 ... 10:00 were missed.
    runs = await store.fire_due_triggers(now=utc(2026, 5, 4, 10, 30))
    assert ticks(runs) == [
        "three@2026-05-04T08:00:00+00:00",
        "three@2026-05-04T09:00:00+00:00",
        "one@2026-05-04T10:00:00+00:00",
        "three@2026-05-04T10:00:00+00:00",
    ]
    assert [e.run for e in events] == runs
    # Two missed ticks with catch_up=3: both.
    runs = await store.fire_due_triggers(now=utc(2026, 5, 4, 12, 0))
    assert ticks(runs) == [
        "three@2026-05-04T11:00:00+00:00",
        "one@2026-05-04T12:00:00+00:00",
        "three@2026-05-04T12:00:00+00:00",
    ]


async def test_the_state_survives_a_new_store(pool: asyncpg.Pool) -> None:
    first = make_store(pool, HOURLY)
    await first.fire_due_triggers(now=utc(2026, 5, 4, 10, 30))
    await first.aclose()
    state = await pool.fetch(
        "SELECT workflow, trigger, last_tick FROM squidmesh.cron_state ORDER BY trigger"
    )
    assert [tuple(r) for r in state] == [
        ("hourly", "one", utc(2026, 5, 4, 10)),
        ("hourly", "three", utc(2026, 5, 4, 10)),
    ]
    # A new process: it continues (catch-up), it does not start over (first sight).
    second = make_store(pool, HOURLY)
    runs = await second.fire_due_triggers(now=utc(2026, 5, 4, 15, 1))
    assert ticks(runs) == [
        "three@2026-05-04T13:00:00+00:00",
        "three@2026-05-04T14:00:00+00:00",
        "one@2026-05-04T15:00:00+00:00",
        "three@2026-05-04T15:00:00+00:00",
    ]
    last = await pool.fetchval("SELECT max(last_tick) FROM squidmesh.cron_state")
    assert last == utc(2026, 5, 4, 15)


async def test_the_state_never_moves_back(pool: asyncpg.Pool) -> None:
    store = make_store(pool, HOURLY)
    await store.fire_due_triggers(now=utc(2026, 5, 4, 10, 30))
    # Another store at an earlier now (a clock behind): nothing, and the state stays.
    other = make_store(pool, HOURLY)
    assert await other.fire_due_triggers(now=utc(2026, 5, 4, 8, 30)) == []
    assert await pool.fetchval("SELECT min(last_tick) FROM squidmesh.cron_state") == utc(
        2026, 5, 4, 10
    )


async def test_without_now_the_database_clock_is_read(pool: asyncpg.Pool) -> None:
    store = make_store(pool, EVERY_MINUTE)
    before = await pool.fetchval("SELECT clock_timestamp()")
    (run,) = await store.fire_due_triggers()
    tick = datetime.fromisoformat(run.idempotency_key.removeprefix("cron:tick:"))  # type: ignore[union-attr]
    assert tick == before.replace(second=0, microsecond=0) or tick == before.replace(
        second=0, microsecond=0
    ) + timedelta(minutes=1)
    assert await store.fire_due_triggers(now=tick) == []


async def test_now_must_be_an_aware_datetime(pool: asyncpg.Pool) -> None:
    store = make_store(pool, REPORTS)
    with pytest.raises(InvalidArgument, match="now"):
        await store.fire_due_triggers(now=datetime(2026, 5, 4, 12))
    with pytest.raises(InvalidArgument, match="now"):
        await store.fire_due_triggers(now="2026-05-04T12:00:00Z")  # type: ignore[arg-type]


async def test_a_store_without_cron_triggers_fires_nothing(pool: asyncpg.Pool) -> None:
    manual = Workflow("manual.only", triggers=[Trigger("go")], steps=[Step("s")])
    assert await make_store(pool, manual).fire_due_triggers(now=utc(2026, 1, 1)) == []
    assert await make_store(pool).fire_due_triggers() == []


async def test_a_registered_or_replaced_workflow_is_fired_by_its_current_definition(
    pool: asyncpg.Pool,
) -> None:
    store = make_store(pool)
    store.register(HOURLY)
    runs = await store.fire_due_triggers(now=utc(2026, 5, 4, 10, 30))
    assert len(runs) == 2
    # The same names, every ten minutes now: the next tick is 10:40, not 11:00.
    store.register(
        Workflow(
            "hourly",
            triggers=[Trigger("one", cron="*/10 * * * *"), Trigger("three", cron="0 * * * *")],
            steps=[Step("work")],
        )
    )
    runs = await store.fire_due_triggers(now=utc(2026, 5, 4, 10, 41))
    assert ticks(runs) == ["one@2026-05-04T10:40:00+00:00"]


async def test_a_trigger_whose_payload_cannot_be_built_is_logged_and_the_others_fire(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the factory broke")
        return len(calls)

    broken = Workflow(
        "broken",
        triggers=[Trigger("t", [Field("n", int, default=flaky)], cron="@hourly")],
        steps=[Step("s")],
    )
    store = make_store(pool, broken, HOURLY)
    with caplog.at_level(logging.ERROR, logger="squidmesh.scheduler"):
        runs = await store.fire_due_triggers(now=utc(2026, 5, 4, 10, 30))
    assert [r.workflow for r in runs] == ["hourly", "hourly"]
    assert "cannot build the payload" in caplog.text and "the factory broke" in caplog.text
    # Retried on the next call, at the same now: it fires once the factory works.
    (run,) = await store.fire_due_triggers(now=utc(2026, 5, 4, 10, 30))
    assert (run.workflow, run.payload) == ("broken", {"n": 2})


async def test_more_runs_than_one_statement_takes(pool: asyncpg.Pool) -> None:
    many = Workflow(
        "many",
        triggers=[Trigger(f"t{i:04}", cron="0 9 * * *") for i in range(BATCH + 150)],
        steps=[Step("s")],
    )
    store = make_store(pool, many)
    runs = await store.fire_due_triggers(now=utc(2026, 5, 4, 9, 0, 1))
    assert len(runs) == BATCH + 150
    assert [r.trigger for r in runs] == [f"t{i:04}" for i in range(BATCH + 150)]
    assert await pool.fetchval("SELECT count(*) FROM squidmesh.cron_state") == BATCH + 150
    assert await store.fire_due_triggers(now=utc(2026, 5, 4, 9, 0, 1)) == []


# -- daylight saving, end to end -------------------------------------------------------


async def _walk(store: RunStore, start: datetime, end: datetime, step: timedelta) -> list[str]:
    created: list[str] = []
    now = start
    while now <= end:
        created += ticks(await store.fire_due_triggers(now=now))
        now += step
    return created


async def test_berlins_spring_forward_day_fires_a_0230_trigger_once(pool: asyncpg.Pool) -> None:
    store = make_store(pool, NIGHTLY_BERLIN)
    created = await _walk(store, utc(2026, 3, 28, 12), utc(2026, 3, 30, 12), timedelta(minutes=10))
    assert created == [
        "nightly@2026-03-28T01:30:00+00:00",  # first sight at noon: that morning's 02:30 CET
        "nightly@2026-03-29T01:00:00+00:00",  # no 02:30 on the 29th: once, at 03:00 CEST
        "nightly@2026-03-30T00:30:00+00:00",  # 02:30 CEST
    ]


async def test_berlins_fall_back_day_fires_a_0230_trigger_once(pool: asyncpg.Pool) -> None:
    store = make_store(pool, NIGHTLY_BERLIN)
    # Every 5 minutes, through both 02:30s of the 25th (00:30 and 01:30 UTC).
    created = await _walk(store, utc(2026, 10, 24, 12), utc(2026, 10, 26, 12), timedelta(minutes=5))
    assert created == [
        "nightly@2026-10-24T00:30:00+00:00",
        "nightly@2026-10-25T00:30:00+00:00",  # the first 02:30 (CEST); the second fires nothing
        "nightly@2026-10-26T01:30:00+00:00",  # 02:30 CET
    ]


# -- the database's side ------------------------------------------------------------------


async def test_fire_due_triggers_ignores_a_hostile_search_path(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_EVIL_SCHEMA)
    finally:
        await conn.close()
    evil = await asyncpg.create_pool(
        dsn, min_size=1, max_size=2, server_settings={"search_path": "evil, pg_catalog"}
    )
    try:
        store = make_store(evil, HOURLY)
        runs = await store.fire_due_triggers(now=utc(2026, 5, 4, 10, 30))
        assert len(runs) == 2
        runs = await store.fire_due_triggers(now=utc(2026, 5, 4, 13, 30))
        assert len(runs) == 4  # one, and three's 11:00, 12:00, 13:00
        (run,) = await make_store(evil, EVERY_MINUTE).fire_due_triggers()
        # The real clock, not evil.clock_timestamp()'s year 2000.
        assert run.idempotency_key is not None and ":2000-" not in run.idempotency_key
        assert abs(run.inserted_at - datetime.now(UTC)) < timedelta(minutes=5)
    finally:
        await evil.close()


@pytest.mark.squidmesh_fresh_db  # a role, grants, and migration 0006 applied again
async def test_the_migration_gives_a_role_that_writes_runs_the_scheduler_state(
    dsn: str,
) -> None:
    role, password = f"app_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    admin = await asyncpg.connect(dsn)
    try:
        # As before 0006: the role was granted what it needed on runs.
        await admin.execute("DROP TABLE squidmesh.cron_state")
        await admin.execute(
            "DELETE FROM squidmesh.schema_migrations WHERE version = '0006_scheduler'"
        )
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        await admin.execute(f"GRANT USAGE ON SCHEMA squidmesh TO {role}")
        await admin.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA squidmesh TO {role}"
        )
        assert await squidmesh.migrate(admin) == ["0006_scheduler"]
        app_dsn = _as_role(dsn, role, password)
        try:
            app = await asyncpg.create_pool(app_dsn, min_size=1, max_size=2)
        except (asyncpg.InvalidAuthorizationSpecificationError, OSError) as exc:
            pytest.skip(f"this server does not let a new role log in from here: {exc}")
        try:
            store = make_store(app, HOURLY)
            assert len(await store.fire_due_triggers(now=utc(2026, 5, 4, 10, 30))) == 2
            assert len(await store.fire_due_triggers(now=utc(2026, 5, 4, 11, 30))) == 2
        finally:
            await app.close()
    finally:
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


# -- four processes at once ------------------------------------------------------------------

_WORKER = textwrap.dedent(
    """
    import asyncio, json, sys
    from datetime import datetime
    from squidmesh import RunStore
    from tests.integration.test_scheduler import RACE

    async def main(dsn, nows):
        async with RunStore.connect(
            dsn, workflows=RACE, listen=False, min_size=1, max_size=1
        ) as store:
            print("ready", flush=True)
            sys.stdin.readline()
            created = []
            for now in nows:
                runs = await store.fire_due_triggers(now=datetime.fromisoformat(now))
                created += [[r.workflow, r.idempotency_key] for r in runs]
            print(json.dumps(created), flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2:]))
    """
)


def _expected_race(nows: list[datetime]) -> set[tuple[str, str]]:
    """(workflow, key) of every run one process calling at ``nows`` in order creates."""
    expected: set[tuple[str, str]] = set()
    for workflow in RACE:
        for trigger in workflow.triggers:
            assert trigger.cron is not None
            schedule = CronSchedule(trigger.cron, trigger.timezone)
            last: datetime | None = None
            for now in nows:
                limit = 1 if last is None else trigger.catch_up
                for tick in schedule.latest(now, after=last, limit=limit):
                    expected.add((workflow.name, tick_key(trigger.name, tick)))
                    last = tick
    return expected


@pytest.mark.timeout(180)
async def test_four_processes_firing_at_once_create_each_ticks_run_exactly_once(
    pool: asyncpg.Pool, dsn: str
) -> None:
    # Monday 2026-03-30, 07:58 UTC (09:58 in Berlin), a minute at a time with
    # a few seconds in between, then two gaps that the catch-up rules fill.
    start = utc(2026, 3, 30, 7, 58, 3)
    nows = [start + timedelta(minutes=m, seconds=m % 5) for m in range(40)]
    nows += [start + timedelta(minutes=95), start + timedelta(hours=5, minutes=1)]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER,
            dsn,
            *[n.isoformat() for n in nows],
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(4)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if line != b"ready\n":
                assert proc.stderr is not None
                raise AssertionError(line + await proc.stderr.read())
        for proc in procs:  # all at once
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
        await asyncio.gather(*(proc.stdin.drain() for proc in procs if proc.stdin))
        outputs = await asyncio.wait_for(
            asyncio.gather(*(proc.communicate() for proc in procs)), 120
        )
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    per_process: list[list[tuple[str, str]]] = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
        last_line = out.decode().strip().splitlines()[-1]
        per_process.append([(workflow, key) for workflow, key in json.loads(last_line)])
    rows = await pool.fetch(
        "SELECT workflow, idempotency_key FROM squidmesh.runs WHERE workflow LIKE 'race.%'"
    )
    stored = [(r["workflow"], r["idempotency_key"]) for r in rows]
    assert len(stored) == len(set(stored))
    assert set(stored) == _expected_race(nows)
    # Each run was reported created by exactly one process.
    reported = [run for created in per_process for run in created]
    assert sorted(reported) == sorted(stored)


# -- scheduler(): in the background -------------------------------------------------------------


async def _wait_for_runs(store: RunStore, workflow: str, count: int, within: float) -> None:
    deadline = time.monotonic() + within
    while await store.count_runs(workflow=workflow) < count:
        assert time.monotonic() < deadline, f"no {count} run(s) of {workflow} in {within} s"
        await asyncio.sleep(0.02)


async def test_the_scheduler_creates_a_due_run_in_the_background(
    pool: asyncpg.Pool, events: list[Any]
) -> None:
    store = make_store(pool, EVERY_MINUTE, events=events)
    async with store.scheduler(interval=0.05):
        await _wait_for_runs(store, "every.minute", 1, within=10)
    assert [type(e) for e in events][:1] == [RunCreated]
    # Stopped: nothing runs after the block (the state says the minute fired).
    count = await store.count_runs(workflow="every.minute")
    await asyncio.sleep(0.2)
    assert await store.count_runs(workflow="every.minute") == count <= 2


async def test_the_scheduler_keeps_going_when_its_connection_is_killed(
    pool: asyncpg.Pool, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """As a database restart does: the scheduler's statement fails with its
    connection; it logs, backs off, and fires on a new connection."""
    own = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        store = make_store(own, EVERY_MINUTE)
        with caplog.at_level(logging.INFO, logger="squidmesh.scheduler"):
            async with store.scheduler(interval=0.05):
                await _wait_for_runs(store, "every.minute", 1, within=10)
                async with pool.acquire() as holder, holder.transaction():
                    # Hold the state table, so that the scheduler's next
                    # statement waits on it: then end its backend.
                    await holder.execute("LOCK TABLE squidmesh.cron_state IN EXCLUSIVE MODE")
                    store.register(
                        Workflow(
                            "after.kill", triggers=[Trigger("t", cron="@hourly")], steps=[Step("s")]
                        )
                    )
                    (blocked,) = await wait_until_blocked(pool, blocked_by=holder.get_server_pid())
                    assert await holder.fetchval("SELECT pg_terminate_backend($1)", blocked)
                await _wait_for_runs(store, "after.kill", 1, within=20)
    finally:
        await own.close()
    assert "firing cron triggers failed; retrying in 0.1 s" in caplog.text
    assert "firing cron triggers works again after 1 failed attempt(s)" in caplog.text


async def test_the_scheduler_propagates_the_blocks_exception_unwrapped(pool: asyncpg.Pool) -> None:
    store = make_store(pool, EVERY_MINUTE)
    with pytest.raises(KeyError, match="boom"):
        async with store.scheduler(interval=0.05):
            raise KeyError("boom")
    with pytest.raises(InvalidArgument, match="interval"):
        async with store.scheduler(interval=0):
            pass


async def test_the_scheduler_stops_when_cancelled_from_outside(pool: asyncpg.Pool) -> None:
    store = make_store(pool, EVERY_MINUTE)

    async def serve() -> None:
        async with store.scheduler(interval=0.05):
            await asyncio.sleep(3600)

    task = asyncio.get_running_loop().create_task(serve())
    await _wait_for_runs(store, "every.minute", 1, within=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
