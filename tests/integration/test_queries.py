"""Every named query prepares against the migrated schema with the parameter
and result types the Python side sends and reads."""

from __future__ import annotations

from typing import get_type_hints

import asyncpg
import pytest

from squidmesh._queries import SQL, Queries
from squidmesh._sql import load_queries

_FIELDS = ["bool", "text", "bool", "text", "bool", "text"]  # FieldWrites
_RUN = [("run_json", "text")]
_STEP_RUN = [("step_run_json", "text")]

# name: (parameter types, result columns)
EXPECTED: dict[str, tuple[list[str], list[tuple[str, str]]]] = {
    "insert_run": (["uuid", "text", "text", "text", "text", "uuid"], _RUN),
    "get_run": (["uuid"], _RUN),
    "lock_run": (["uuid"], _RUN),
    "list_runs": (["int8"], _RUN),
    "list_runs_by_workflow": (["int8", "text"], _RUN),
    "list_runs_by_status": (["int8", "text"], _RUN),
    "list_runs_by_workflow_status": (["int8", "text", "text"], _RUN),
    "insert_replay": (
        ["uuid", "uuid", "text[]", "text[]"],
        [("workflow", "text"), ("run", "text")],
    ),
    "transition_run": (
        ["uuid", "text", *_FIELDS, "text[]"],
        [("status", "text"), ("run", "text")],
    ),
    "transition_run_fast": (
        ["uuid", "text", *_FIELDS, "text[]"],
        [("status", "text"), ("run_json", "text")],
    ),
    "update_run": (["uuid", *_FIELDS], _RUN),
    "cancel_run": (
        ["uuid", "text"],
        [
            ("from_status", "text"),
            ("run", "text"),
            ("failed_step", "text"),
            ("attempt_number", "int4"),
            ("duration_s", "float8"),
        ],
    ),
    "cancel_run_fast": (["uuid"], [("status", "text"), ("run_json", "text")]),
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
        ["uuid", "uuid", "uuid", "text[]", *_FIELDS, "text"],
        [
            ("from_status", "text"),
            ("step_found", "bool"),
            ("attempt_found", "bool"),
            ("branch", "text"),
            ("error", "text"),
            ("run", "text"),
            ("step", "text"),
            ("step_failed", "bool"),
            ("attempt_number", "int4"),
            ("duration_s", "float8"),
        ],
    ),
    "run_history": (["uuid"], [("json_build_object", "text")]),
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
        statement = await conn.prepare(getattr(SQL, name))
    assert [t.name for t in statement.get_parameters()] == params
    assert [(a.name, a.type.name) for a in statement.get_attributes()] == columns
