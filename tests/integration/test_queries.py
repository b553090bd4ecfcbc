"""Every named query prepares against the migrated schema with the parameter
and result types the Python side sends and reads."""

from __future__ import annotations

from typing import get_type_hints

import asyncpg
import pytest

from squidmesh._queries import SQL, Queries
from squidmesh._sql import load_queries

_FIELDS = ["bool", "text", "bool", "text", "bool", "text"]  # FieldWrites
# A run: its thirteen columns, first in the row (see sql/queries/runs.sql).
_RUN = [
    ("id", "bytea"),
    ("workflow", "text"),
    ("trigger", "text"),
    ("status", "text"),
    ("payload", "text"),
    ("context", "text"),
    ("current_step", "text"),
    ("last_error", "text"),
    ("replayed_from_run_id", "bytea"),
    ("version", "int8"),
    ("idempotency_key", "text"),
    ("inserted_at", "float8"),
    ("updated_at", "float8"),
]
_FROM = [("from_status", "text"), ("from_version", "int8")]
_STEP_RUN = [("step_run_json", "text")]
# listing.sql: a page query takes statuses, the (inserted_at, id) bound, created_after
# and the limit first; a count takes statuses and [created_after, created_before) and
# returns one count per status.
_PAGE = ["text[]", "timestamptz", "uuid", "timestamptz", "int8"]
_COUNT = ["text[]", "timestamptz", "timestamptz"]
_PER_STATUS = [("status", "text"), ("runs", "int8")]
# retention.sql: each batch row starts with the run's key (the batches' cursor).
_KEY = [("key_at", "timestamptz"), ("key_id", "uuid")]
_PRUNED = [*_KEY, ("status", "text"), ("step_runs", "int8"), ("attempts", "int8")]
_BULK_CANCELLED = [
    *_KEY,
    ("from_status", "text"),
    ("run", "text"),
    ("failed_step", "text"),
    ("attempt_number", "int4"),
    ("duration_s", "float8"),
]
_SWEPT = [*_RUN, *_KEY]

# name: (parameter types, result columns)
EXPECTED: dict[str, tuple[list[str], list[tuple[str, str]]]] = {
    "insert_run": (["uuid", "text", "text", "text", "text", "uuid"], _RUN),
    "get_run": (["uuid"], _RUN),
    "read_changes": (
        ["int8", "int8", "int8", "text", "int4", "interval"],
        [("json_agg", "text")],
    ),
    "feed_tick": (["interval"], [("feed_tick", "int8")]),
    "newest_tick": ([], [("coalesce", "int8")]),
    "get_runs_by_ids": (["text[]"], _RUN),
    "notify_probe": (["text"], [("pg_notify", "void")]),
    "lock_run": (["uuid"], _RUN),
    "insert_replay": (
        ["uuid", "uuid", "text[]", "text[]"],
        [*_RUN, ("source_workflow", "text")],
    ),
    "insert_run_keyed": (["uuid", "text", "text", "text", "text", "text", "text"], _RUN),
    "get_run_by_key": (["text", "text"], [*_RUN, ("idempotency_fingerprint", "text")]),
    "run_version": (["uuid"], [("version", "int8")]),
    "transition_run": (["uuid", "text", *_FIELDS, "text[]", "int8"], [*_RUN, *_FROM]),
    "transition_run_fast": (["uuid", "text", *_FIELDS, "text[]", "int8"], [*_RUN, *_FROM]),
    "update_run": (["uuid", *_FIELDS, "int8"], _RUN),
    "cancel_run": (
        ["uuid", "text", "int8"],
        [
            ("from_status", "text"),
            ("version", "int8"),
            ("run", "text"),
            ("failed_step", "text"),
            ("attempt_number", "int4"),
            ("duration_s", "float8"),
        ],
    ),
    "cancel_run_fast": (["uuid", "int8"], [*_RUN, *_FROM]),
    "write_run": (["uuid", "text", *_FIELDS], _RUN),
    "begin_step": (["uuid", "uuid", "text", "text", "text[]", "text[]"], _STEP_RUN),
    "schedule_step": (["uuid", "uuid", "text", "text", "text[]", "text[]"], _STEP_RUN),
    "finish_step": (["uuid", "text", "text", "text"], _STEP_RUN),
    "complete_manual_step": (
        ["uuid", "text", "text", "text", "text", "text", "timestamptz"],
        _STEP_RUN,
    ),
    "record_resume": (["uuid", "text"], _STEP_RUN),
    "lock_step_run": (["uuid"], [("id", "uuid")]),
    "lock_and_begin_attempt": (["uuid", "uuid"], [("attempt_json", "text")]),
    "finish_attempt": (["uuid", "text", "text"], [("attempt_json", "text")]),
    "lock_and_pause_run": (
        ["uuid", "uuid", "uuid", "text[]", *_FIELDS, "text", "int8"],
        [
            *_RUN,
            *_FROM,
            ("step_found", "bool"),
            ("attempt_found", "bool"),
            ("branch", "text"),
            ("error", "text"),
            ("step", "text"),
            ("step_failed", "bool"),
            ("attempt_number", "int4"),
            ("duration_s", "float8"),
        ],
    ),
    "run_history": (["uuid"], [*_RUN, ("part", "int4")]),
    # listing.sql
    "list_runs_by_status": (["text", *_PAGE[1:]], _RUN),
    "list_runs_by_workflow_status": (["text", *_PAGE[1:], "text"], _RUN),
    "select_runs": (_PAGE, _RUN),
    "select_runs_by_workflow": ([*_PAGE, "text"], _RUN),
    "select_runs_by_trigger": ([*_PAGE, "text"], _RUN),
    "select_runs_by_workflow_trigger": ([*_PAGE, "text", "text"], _RUN),
    "select_runs_by_replayed_from": ([*_PAGE, "uuid", "text", "text"], _RUN),
    "count_runs": (_COUNT, _PER_STATUS),
    "count_runs_by_workflow": ([*_COUNT, "text"], _PER_STATUS),
    "count_runs_by_trigger": ([*_COUNT, "text"], _PER_STATUS),
    "count_runs_by_workflow_trigger": ([*_COUNT, "text", "text"], _PER_STATUS),
    # retention.sql
    "retention_clock": ([], [("clock_timestamp", "timestamptz")]),
    "count_prunable_runs": (
        ["text[]", "timestamptz", "text"],
        [("status", "text"), ("runs", "int8"), ("step_runs", "int8"), ("attempts", "int8")],
    ),
    "lock_and_prune_runs": (
        ["int8", "timestamptz", "uuid", "text", "timestamptz", "text"],
        _PRUNED,
    ),
    "lock_and_prune_runs_waiting": (["int8", "text[]", "timestamptz", "text"], _PRUNED),
    "cancel_runs": (
        ["int8", "timestamptz", "uuid", "text", "text", "timestamptz", "text"],
        _BULK_CANCELLED,
    ),
    "cancel_runs_waiting": (["int8", "text[]", "text", "timestamptz", "text"], _BULK_CANCELLED),
    "transition_stale_runs": (
        ["int8", "timestamptz", "uuid", "text", "timestamptz", "text", "text", *_FIELDS],
        _SWEPT,
    ),
    "transition_stale_runs_waiting": (
        ["int8", "text[]", "timestamptz", "text", "text", *_FIELDS],
        _SWEPT,
    ),
    "lock_and_prune_feed_ticks": (
        ["int8", "int8", "timestamptz"],
        [("deleted", "int8"), ("last_id", "int8")],
    ),
    # claims.sql: the runs, sorted by (inserted_at, id) in _claims.
    "claim_runs": (["int8", *_FIELDS], _RUN),
    "claim_runs_by_workflow": (["int8", "text", *_FIELDS], _RUN),
    # scheduler.sql
    "scheduler_clock": ([], [("clock_timestamp", "timestamptz")]),
    "read_cron_state": (
        ["text[]", "text[]"],
        [("workflow", "text"), ("trigger", "text"), ("last_tick", "timestamptz")],
    ),
    "fire_cron_ticks": (
        ["text[]"] * 10,
        [("id", "uuid"), ("run", "text")],
    ),
}


def test_every_declared_query_is_in_the_files_and_expected_here() -> None:
    declared = set(get_type_hints(Queries))
    assert declared == set(load_queries())
    assert declared == set(EXPECTED)


def test_a_query_missing_from_the_files_fails_at_load() -> None:
    texts = dict(load_queries())
    del texts["get_run"]
    texts["get_runs"] = "SELECT 1"
    with pytest.raises(RuntimeError, match=r"get_runs.*get_run"):
        Queries(texts)


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_query_prepares_with_the_expected_types(pool: asyncpg.Pool, name: str) -> None:
    params, columns = EXPECTED[name]
    async with pool.acquire() as conn:
        if name.endswith("_fast") and conn.get_server_version() < (18, 0):
            pytest.skip("the *_fast queries use RETURNING old.*, new in PostgreSQL 18")
        statement = await conn.prepare(getattr(SQL, name))
        assert [t.name for t in statement.get_parameters()] == params
        assert [(a.name, a.type.name) for a in statement.get_attributes()] == columns
