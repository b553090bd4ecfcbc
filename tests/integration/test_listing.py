"""page_runs, list_runs, count_runs and count_runs_by_status against a model.

A fixed set of runs is written with raw SQL (chosen timestamps, ties on
inserted_at included, replays), and every answer is compared with the same
filters applied in Python to that set.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from squidmesh import (
    InvalidArgument,
    InvalidCursor,
    Run,
    RunPage,
    RunStatus,
    RunStore,
    SquidMeshError,
    UnknownStatus,
)
from squidmesh.state_machine import STATES
from tests.integration.workflows import ETL_DAILY, INVOICE_REMINDER

T0 = datetime(2025, 3, 1, tzinfo=UTC)
INVOICE = INVOICE_REMINDER.name
ETL = ETL_DAILY.name


@dataclass(frozen=True)
class Row:
    id: UUID
    workflow: str
    trigger: str
    status: str
    inserted_at: datetime
    replayed_from: UUID | None


def _rows() -> list[Row]:
    rows: list[Row] = []
    for i in range(48):
        workflow = ETL if i % 3 == 2 else INVOICE
        if workflow == ETL:
            trigger = "manual"
        else:
            trigger = "nightly" if i % 4 == 0 else "invoice_delivery"
        # Ids in an order unrelated to i, so that runs sharing a timestamp
        # (two per minute) are ordered by id, not by insertion.
        run_id = UUID(int=((i * 29) % 48 + 1) << 64 | 0x4000_0000_0000_0000 | i)
        source = None
        if i >= 40:
            source = rows[3 if i % 2 else 5].id
            workflow, trigger = rows[3 if i % 2 else 5].workflow, rows[3 if i % 2 else 5].trigger
        rows.append(
            Row(
                id=run_id,
                workflow=workflow,
                trigger=trigger,
                status=STATES[(i * 5) % 8].value,
                inserted_at=T0 + timedelta(minutes=i // 2),
                replayed_from=source,
            )
        )
    return rows


ROWS = _rows()


@pytest.fixture
async def seeded(pool: asyncpg.Pool) -> list[Row]:
    await pool.executemany(
        "INSERT INTO squidmesh.runs"
        " (id, workflow, trigger, status, replayed_from_run_id, inserted_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $6)",
        [(r.id, r.workflow, r.trigger, r.status, r.replayed_from, r.inserted_at) for r in ROWS],
    )
    return ROWS


def expected(
    *,
    workflow: str | None = None,
    status: str | Iterable[str] | None = None,
    trigger: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    replayed_from: UUID | None = None,
) -> list[UUID]:
    """The model: the filters applied in Python, newest first."""
    statuses = None if status is None else {status} if isinstance(status, str) else set(status)
    found = [
        r
        for r in ROWS
        if (workflow is None or r.workflow == workflow)
        and (statuses is None or r.status in statuses)
        and (trigger is None or r.trigger == trigger)
        and (created_after is None or r.inserted_at >= created_after)
        and (created_before is None or r.inserted_at < created_before)
        and (replayed_from is None or r.replayed_from == replayed_from)
    ]
    found.sort(key=lambda r: (r.inserted_at, r.id), reverse=True)
    return [r.id for r in found]


async def walk(store: RunStore, limit: int, **filters: Any) -> list[Run]:
    """Every page of page_runs, in order."""
    runs: list[Run] = []
    cursor: str | None = None
    for _ in range(len(ROWS) + 2):
        page = await store.page_runs(limit=limit, cursor=cursor, **filters)
        assert len(page.runs) <= limit
        runs += page.runs
        if page.next_cursor is None:
            return runs
        assert len(page.runs) == limit  # a full page, and more to come
        cursor = page.next_cursor
    raise AssertionError("page_runs never returned a last page")


def ids(runs: Iterable[Run]) -> list[UUID]:
    return [r.id for r in runs]


# -- the usual loop ----------------------------------------------------------------


async def test_walking_the_pages_then_counting(store: RunStore) -> None:
    invoice_reminder = INVOICE_REMINDER
    for n in range(3):
        await store.create_run(invoice_reminder, {"account_id": f"acct_{n}"})

    # (README.md's own block, "Listing, paging and counting", runs in test_readme.py.)
    since = datetime.now(UTC) - timedelta(days=1)
    page = await store.page_runs(workflow=invoice_reminder, status="pending", limit=2)
    seen = list(page.runs)
    while page.next_cursor is not None:  # the same filters; the cursor says where to go on
        page = await store.page_runs(
            workflow=invoice_reminder, status="pending", limit=2, cursor=page.next_cursor
        )
        seen += page.runs
    counts = await store.count_runs_by_status(workflow=invoice_reminder, created_after=since)
    failed = await store.count_runs(status=["failed", "cancelled"], created_after=since)

    assert counts[RunStatus.PENDING] == len(seen) == 3 and counts[RunStatus.FAILED] == 0
    assert failed == 0 and len(counts) == 8


# -- every filter, alone and combined -------------------------------------------------

SOURCE = ROWS[3].id
FILTER_VALUES: dict[str, list[Any]] = {
    "workflow": [None, INVOICE, ETL],
    "status": [None, "running", ["completed", "failed", "pending"]],
    "trigger": [None, "nightly", "manual"],
    "created_after": [None, T0 + timedelta(minutes=5)],
    "created_before": [None, T0 + timedelta(minutes=17)],
    "replayed_from": [None, SOURCE],
}


def _combinations() -> Iterator[dict[str, Any]]:
    names = list(FILTER_VALUES)
    for values in itertools.product(*FILTER_VALUES.values()):
        yield {n: v for n, v in zip(names, values, strict=True) if v is not None}


COMBINATIONS = list(_combinations())


async def test_every_filter_combination_pages_lists_and_counts_like_the_model(
    store: RunStore, seeded: list[Row]
) -> None:
    assert len(COMBINATIONS) == 3 * 3 * 3 * 2 * 2 * 2
    nonempty = 0
    for filters in COMBINATIONS:
        want = expected(**filters)
        nonempty += bool(want)
        assert ids(await store.list_runs(**filters)) == want, filters
        assert ids(await walk(store, 4, **filters)) == want, filters
        if "replayed_from" not in filters:
            assert await store.count_runs(**filters) == len(want), filters
    # Not vacuous: many combinations match something (replayed_from narrows half of them).
    assert nonempty > len(COMBINATIONS) // 3


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 47, 48, 49, 1000])
async def test_walking_every_page_returns_every_run_once_newest_first(
    store: RunStore, seeded: list[Row], limit: int
) -> None:
    runs = await walk(store, limit)
    assert ids(runs) == expected()
    keys = [(r.inserted_at, r.id) for r in runs]
    assert keys == sorted(keys, reverse=True)
    # Ties on inserted_at are ordered by id, descending.
    assert any(a[0] == b[0] for a, b in itertools.pairwise(keys))


async def test_the_page_size_may_change_between_pages(store: RunStore, seeded: list[Row]) -> None:
    first = await store.page_runs(limit=5)
    second = await store.page_runs(limit=11, cursor=first.next_cursor)
    assert ids(first.runs) + ids(second.runs) == expected()[:16]


async def test_the_last_page_has_no_cursor(store: RunStore, seeded: list[Row]) -> None:
    exactly = await store.page_runs(limit=len(ROWS))
    assert len(exactly.runs) == len(ROWS) and exactly.next_cursor is None
    empty = await store.page_runs(workflow="no.such.workflow")
    assert empty == RunPage(runs=[], next_cursor=None)


async def test_filters_in_every_accepted_form(store: RunStore, seeded: list[Row]) -> None:
    by_name = ids(await store.list_runs(workflow=INVOICE))
    assert ids(await store.list_runs(workflow=INVOICE_REMINDER)) == by_name
    three = expected(status=["paused", "failed", "running"])
    for form in (
        ["paused", "failed", "running"],
        ("running", RunStatus.PAUSED, "failed"),
        {RunStatus.FAILED, RunStatus.RUNNING, RunStatus.PAUSED},
        frozenset({"paused", "failed", "running"}),
        (s for s in ["failed", "running", "paused"]),
        ["running", "running", "paused", "failed", "paused"],  # repeats count once
    ):
        assert ids(await store.list_runs(status=form)) == three
    assert await store.count_runs(status=["running", "paused", "failed", "paused"]) == len(three)
    assert ids(await store.list_runs(status=RunStatus.RUNNING)) == expected(status=["running"])
    assert ids(await store.list_runs(replayed_from=str(SOURCE))) == expected(replayed_from=SOURCE)
    # The same instant in another time zone is the same bound.
    cut = (T0 + timedelta(minutes=9)).astimezone(timezone(timedelta(hours=-5)))
    assert ids(await store.list_runs(created_after=cut)) == expected(
        created_after=T0 + timedelta(minutes=9)
    )


async def test_created_after_is_inclusive_and_created_before_exclusive(
    store: RunStore, seeded: list[Row]
) -> None:
    edge = T0 + timedelta(minutes=10)
    at_edge = {r.id for r in ROWS if r.inserted_at == edge}
    assert len(at_edge) == 2
    assert at_edge <= set(ids(await store.list_runs(created_after=edge)))
    assert not at_edge & set(ids(await store.list_runs(created_before=edge)))
    # Consecutive windows [a, b), [b, c) neither overlap nor leave a gap.
    windows = [T0, edge, T0 + timedelta(minutes=17), T0 + timedelta(hours=1)]
    parts: list[UUID] = []
    for a, b in reversed(list(itertools.pairwise(windows))):  # newest window first
        parts += ids(await walk(store, 3, created_after=a, created_before=b))
        assert await store.count_runs(created_after=a, created_before=b) == len(
            expected(created_after=a, created_before=b)
        )
    assert parts == expected()
    assert await store.list_runs(created_after=edge, created_before=edge) == []


async def test_filters_that_match_nothing(store: RunStore, seeded: list[Row]) -> None:
    nothing: list[dict[str, Any]] = [
        {"status": []},
        {"workflow": "no.such.workflow"},
        {"workflow": "nul\x00name"},  # no stored name can hold a NUL
        {"workflow": "\ud800"},  # nor a lone surrogate
        {"trigger": "nul\x00"},
        {"replayed_from": "not-a-uuid"},
        {"replayed_from": UUID(int=1)},
        {"created_after": T0 + timedelta(days=1)},
        {"created_before": T0},
    ]
    for filters in nothing:
        assert await store.list_runs(**filters) == [], filters
        assert await store.page_runs(**filters) == RunPage(runs=[]), filters
        if "replayed_from" not in filters:
            assert await store.count_runs(**filters) == 0, filters


# -- cursors ------------------------------------------------------------------------


async def test_a_cursor_round_trips_and_stays_short(store: RunStore, seeded: list[Row]) -> None:
    page = await store.page_runs(status=["running", "failed"], limit=2)
    assert isinstance(page.next_cursor, str) and len(page.next_cursor) <= 80
    assert page.next_cursor.isascii() and "=" not in page.next_cursor  # URL-safe as it is
    again = await store.page_runs(status=["running", "failed"], limit=2)
    assert again.next_cursor == page.next_cursor  # made from the position and filters only
    second = await store.page_runs(status=["failed", "running"], limit=2, cursor=page.next_cursor)
    assert ids(page.runs) + ids(second.runs) == expected(status=["running", "failed"])[:4]


def _flip(cursor: str, at: int) -> str:
    swapped = "A" if cursor[at] != "A" else "B"
    return cursor[:at] + swapped + cursor[at + 1 :]


async def test_a_cursor_not_made_by_squidmesh_is_refused(
    store: RunStore, seeded: list[Row]
) -> None:
    cursor = (await store.page_runs(limit=3)).next_cursor
    assert cursor is not None
    forged = base64.urlsafe_b64encode(b"\x94\x01\x00\xc4\x10" + bytes(30)).decode().rstrip("=")
    bad: list[object] = [
        "",
        "x",
        "not a cursor",
        "%%%%",
        "Ω" * 10,
        "A" * 10_000,
        cursor + "A",
        cursor[:-1],
        cursor[1:],
        cursor + "=",
        forged,
        b"bytes",
        42,
        {"cursor": cursor},
        *(_flip(cursor, at) for at in range(len(cursor))),  # every one-character edit
    ]
    for value in bad:
        if value == cursor:
            continue
        with pytest.raises(InvalidCursor) as caught:
            await store.page_runs(limit=3, cursor=value)  # type: ignore[arg-type]
        assert caught.value.cursor == value
        assert isinstance(caught.value, ValueError) and isinstance(caught.value, SquidMeshError)


async def test_a_cursor_from_other_filters_is_refused(store: RunStore, seeded: list[Row]) -> None:
    made_for: dict[str, Any] = {"workflow": INVOICE, "status": ["running", "failed"]}
    cursor = (await store.page_runs(limit=1, **made_for)).next_cursor
    assert cursor is not None
    for other in (
        {},
        {"workflow": INVOICE},
        {"workflow": ETL, "status": ["running", "failed"]},
        {**made_for, "status": "running"},
        {**made_for, "status": ["running", "failed", "pending"]},
        {**made_for, "trigger": "nightly"},
        {**made_for, "created_after": T0},
        {**made_for, "created_before": T0 + timedelta(hours=1)},
        {**made_for, "replayed_from": SOURCE},
        {**made_for, "workflow": "nul\x00"},
    ):
        with pytest.raises(InvalidCursor):
            await store.page_runs(limit=1, cursor=cursor, **other)
    # The same filters in other forms are the same filters.
    for same in (
        {"workflow": INVOICE_REMINDER, "status": ("failed", RunStatus.RUNNING)},
        {"workflow": INVOICE, "status": ["running", "failed", "running"]},
    ):
        await store.page_runs(limit=1, cursor=cursor, **same)
    # None and all eight statuses are the same filter too.
    everything = (await store.page_runs(limit=1)).next_cursor
    await store.page_runs(limit=1, cursor=everything, status=list(STATES))


# -- arguments ------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, -1, 1001, 10**30, True, False, 1.0, "5", None])
async def test_page_limit_must_be_an_int_from_1_to_1000(store: RunStore, limit: object) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await store.page_runs(limit=limit)  # type: ignore[arg-type]
    assert caught.value.name == "limit" and isinstance(caught.value, ValueError)


async def test_page_limits_at_the_edges(store: RunStore, seeded: list[Row]) -> None:
    assert ids((await store.page_runs(limit=1)).runs) == expected()[:1]
    assert ids((await store.page_runs(limit=1000)).runs) == expected()


async def test_list_runs_keeps_its_limit_rules(store: RunStore, seeded: list[Row]) -> None:
    everything = expected()
    for limit in (None, 0, -5, True, False, 2**63, 10**30, 2.5):
        assert ids(await store.list_runs(limit=limit)) == everything, limit  # type: ignore[arg-type]
    assert ids(await store.list_runs(limit=5)) == everything[:5]
    assert ids(await store.list_runs(limit=2**63 - 1)) == everything
    running = expected(status=["running", "paused"], trigger="nightly")
    got = await store.list_runs(status=["running", "paused"], trigger="nightly", limit=1)
    assert ids(got) == running[:1]
    assert await store.list_runs(workflow=42) == []  # type: ignore[arg-type]


NAIVE = datetime(2025, 3, 1, 12, 0)


@pytest.mark.parametrize("name", ["created_after", "created_before"])
@pytest.mark.parametrize("value", [NAIVE, NAIVE.date(), "2025-03-01T00:00:00Z", 1_700_000_000])
async def test_timestamps_must_be_aware_datetimes(store: RunStore, name: str, value: Any) -> None:
    calls: list[Callable[..., Awaitable[object]]] = [
        store.page_runs,
        store.list_runs,
        store.count_runs,
    ]
    if name == "created_after":
        calls.append(store.count_runs_by_status)
    for call in calls:
        with pytest.raises(InvalidArgument) as caught:
            await call(**{name: value})
        assert caught.value.name == name
    if value is NAIVE:
        assert "timezone-aware" in str(caught.value)


@pytest.mark.parametrize("status", ["bogus", "Running", ["running", "bogus"], 5, [None]])
async def test_unknown_statuses_are_refused(store: RunStore, status: Any) -> None:
    for call in (store.page_runs, store.list_runs, store.count_runs):
        with pytest.raises(UnknownStatus):
            await call(status=status)


# -- counts ----------------------------------------------------------------------------


async def test_count_runs_by_status_has_all_eight_statuses(
    store: RunStore, seeded: list[Row]
) -> None:
    counts = await store.count_runs_by_status()
    assert list(counts) == list(STATES)
    assert counts == {s: sum(r.status == s for r in ROWS) for s in STATES}
    for workflow, after in itertools.product(
        [None, INVOICE, INVOICE_REMINDER, ETL], [None, T0 + timedelta(minutes=12)]
    ):
        name = workflow if workflow is None or isinstance(workflow, str) else workflow.name
        got = await store.count_runs_by_status(workflow=workflow, created_after=after)
        assert got == {
            s: len(expected(workflow=name, status=[s], created_after=after)) for s in STATES
        }


async def test_counts_are_zero_where_nothing_matches(store: RunStore) -> None:
    assert await store.count_runs() == 0
    assert await store.count_runs_by_status() == dict.fromkeys(STATES, 0)
    assert await store.count_runs_by_status(workflow="nul\x00") == dict.fromkeys(STATES, 0)
    run = await store.create_run(ETL_DAILY, {})
    counts = await store.count_runs_by_status(workflow=ETL_DAILY)
    assert counts == {**dict.fromkeys(STATES, 0), RunStatus.PENDING: 1}
    assert await store.count_runs(workflow=ETL_DAILY, trigger="manual", status="pending") == 1
    later = run.inserted_at + timedelta(microseconds=1)
    assert await store.count_runs(created_after=later) == 0
    assert await store.count_runs(created_before=later) == 1


# -- a hostile search_path ------------------------------------------------------------

# Shadows of what listing.sql uses, each failing or lying if it is ever picked
# up unqualified (see tests/integration/test_search_path.py for the whole API).
HOSTILE = """
CREATE SCHEMA hostile;
CREATE FUNCTION hostile.unnest(anyarray) RETURNS SETOF anyelement
    LANGUAGE sql AS $$ SELECT x FROM pg_catalog.unnest($1) x LIMIT 0 $$;
CREATE FUNCTION hostile.fail_count(pg_catalog.int8, anyelement) RETURNS pg_catalog.int8
    LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hostile.count used'; END $$;
CREATE AGGREGATE hostile.count(anyelement) (SFUNC = hostile.fail_count, STYPE = pg_catalog.int8);
DO $$
DECLARE
    t pg_catalog.text;
    o pg_catalog.text;
    n int := 0;
BEGIN
    FOREACH t IN ARRAY ARRAY['text', 'uuid', 'timestamptz'] LOOP
        FOREACH o IN ARRAY ARRAY['=', '<', '<=', '>', '>='] LOOP
            n := n + 1;
            EXECUTE pg_catalog.format(
                'CREATE FUNCTION hostile.op_%s(%s, %s) RETURNS boolean LANGUAGE plpgsql AS '
                '$f$ BEGIN RAISE EXCEPTION ''hostile operator %s used''; END $f$', n, t, t, o);
            EXECUTE pg_catalog.format(
                'CREATE OPERATOR hostile.%s (LEFTARG = %s, RIGHTARG = %s, '
                'FUNCTION = hostile.op_%s)', o, t, t, n);
        END LOOP;
    END LOOP;
END $$;
CREATE DOMAIN hostile.text AS pg_catalog.text CHECK (false);
CREATE DOMAIN hostile.uuid AS pg_catalog.uuid CHECK (false);
CREATE DOMAIN hostile.timestamptz AS pg_catalog.timestamptz CHECK (false);
CREATE DOMAIN hostile.int8 AS pg_catalog.int8 CHECK (false);
"""


async def test_listing_ignores_a_hostile_search_path(
    store: RunStore, pool: asyncpg.Pool, dsn: str, seeded: list[Row]
) -> None:
    await pool.execute(HOSTILE)
    hostile = await asyncpg.create_pool(
        dsn, min_size=1, max_size=2, server_settings={"search_path": "hostile, pg_catalog"}
    )
    try:
        with pytest.raises(asyncpg.RaiseError, match="hostile operator"):
            await hostile.fetchval("SELECT 'a'::pg_catalog.text = 'a'::pg_catalog.text")
        exposed = RunStore(hostile)
        filters: list[dict[str, Any]] = [
            {},
            {"workflow": INVOICE, "status": ["running", "failed"]},
            {"trigger": "nightly", "created_after": T0 + timedelta(minutes=3)},
            {"workflow": INVOICE, "trigger": "nightly", "created_before": T0 + timedelta(hours=1)},
            {"replayed_from": SOURCE, "status": "running"},
        ]
        for f in filters:
            assert ids(await walk(exposed, 5, **f)) == expected(**f), f
            assert await exposed.list_runs(**f) == await store.list_runs(**f), f
            if "replayed_from" not in f:
                assert await exposed.count_runs(**f) == len(expected(**f)), f
        assert await exposed.count_runs_by_status(
            workflow=INVOICE, created_after=T0
        ) == await store.count_runs_by_status(workflow=INVOICE, created_after=T0)
    finally:
        await hostile.close()
